"""The named SQL of ``daemon.sql`` (the long-running worker's own queries), loaded once into a dict."""

from __future__ import annotations

from importlib import resources

from worker.db.queries import _HEADER


def _load() -> dict[str, str]:
    text = resources.files("worker.db").joinpath("daemon.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise RuntimeError(f"daemon.sql: duplicate query name {name!r}")
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


DQ: dict[str, str] = _load()
