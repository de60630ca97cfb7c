"""worker.cli_json.dumps_indented writes what json.dumps(value, indent=2) writes, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.cli_json import dumps_indented

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
KEYS = st.text() | st.integers() | st.floats() | st.booleans() | st.none()
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.lists(inner, max_size=4).map(tuple) | st.dictionaries(KEYS, inner, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(VALUES)
def test_the_same_text_as_json_dumps(value: Any) -> None:
    assert dumps_indented(value) == json.dumps(value, indent=2)


@given(VALUES)
def test_other_indents_too(value: Any) -> None:
    assert dumps_indented(value, indent=4) == json.dumps(value, indent=4)


def test_a_scan_like_answer() -> None:
    answer = {
        "scanned": 2,
        "results": [
            {"experimentName": "caf\u00e9 \u2014 \U0001f600", "confidence": 5.9e-07, "interval": (1e16, -0.0)},
            {"empty": {}, "none": [], "nan": float("nan"), "inf": [float("inf"), float("-inf")], "flag": True},
        ],
    }
    assert dumps_indented(answer) == json.dumps(answer, indent=2)


@pytest.mark.parametrize("value", [object(), {"k": {1, 2}}, [b"bytes"], {(1, 2): "tuple key"}])
def test_what_json_cannot_hold_is_refused_like_json_dumps(value: Any) -> None:
    with pytest.raises(TypeError):
        json.dumps(value, indent=2)
    with pytest.raises(TypeError):
        dumps_indented(value)
