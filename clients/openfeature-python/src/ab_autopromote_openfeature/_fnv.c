/* The hot path of hashing.py in C: FNV-1a 32 over a string's UTF-16 code units, and GrowthBook's v2 bucket.
 * Optional: setup.py builds it when a compiler is there, and hashing.py falls back to the same code in Python
 * (tests/test_serving_sql.py checks both against PostgreSQL's ab_fnv1a32 and GrowthBook's published vectors). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>

#define FNV_PRIME 16777619u
#define FNV_OFFSET 2166136261u

static uint32_t fnv_str(uint32_t h, PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c > 0xFFFF) { /* an astral-plane character is two UTF-16 code units, as JavaScript sees it */
            c -= 0x10000;
            h = (h ^ (0xD800u + (c >> 10))) * FNV_PRIME;
            h = (h ^ (0xDC00u + (c & 0x3FFu))) * FNV_PRIME;
        } else {
            h = (h ^ c) * FNV_PRIME;
        }
    }
    return h;
}

static int state_arg(PyObject *obj, uint32_t *out) {
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (v == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (v > 0xFFFFFFFFul) { PyErr_SetString(PyExc_OverflowError, "state must fit in 32 bits"); return -1; }
    *out = (uint32_t)v;
    return 0;
}

static PyObject *fnv1a32(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t h = FNV_OFFSET;
    if (nargs < 1 || nargs > 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "fnv1a32(s: str, state: int = FNV_OFFSET)");
        return NULL;
    }
    if (nargs == 2 && state_arg(args[1], &h) < 0) return NULL;
    return PyLong_FromUnsignedLong(fnv_str(h, args[0]));
}

static PyObject *bucket_from_state(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t h;
    char digits[16];
    if (nargs != 2 || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "bucket_from_state(seed_state: int, unit_id: str)");
        return NULL;
    }
    if (state_arg(args[0], &h) < 0) return NULL;
    h = fnv_str(h, args[1]);
    int len = snprintf(digits, sizeof digits, "%u", (unsigned)h);
    uint32_t n = FNV_OFFSET;
    for (int i = 0; i < len; i++) n = (n ^ (unsigned char)digits[i]) * FNV_PRIME;
    return PyFloat_FromDouble((double)(n % 10000u) / 10000.0);
}

static PyMethodDef methods[] = {
    {"fnv1a32", (PyCFunction)(void (*)(void))fnv1a32, METH_FASTCALL, "FNV-1a 32 over UTF-16 code units."},
    {"bucket_from_state", (PyCFunction)(void (*)(void))bucket_from_state, METH_FASTCALL,
     "GrowthBook's v2 bucket of unit_id, continuing from the seed's FNV state."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fnv", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fnv(void) { return PyModule_Create(&module); }
