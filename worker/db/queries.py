"""The named SQL of ``queries.sql``, loaded once into a dict of name -> text."""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def _load() -> dict[str, str]:
    text = resources.files("worker.db").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        if name in queries:
            raise RuntimeError(f"queries.sql: duplicate query name {name!r}")
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


Q: dict[str, str] = _load()
# The daemon's evaluation locks the experiment and reads its snapshot in one round trip; a row another transaction
# holds is skipped (no row back). A running experiment whose stored decision already covers what this statement sees
# (ab_evaluation_due, schema/0007) is neither locked nor read: the replicas that hear the same NOTIFY evaluate a
# change once between them. The filter runs before the row lock, so such a check never makes another replica's
# evaluation wait or come back busy.
_ONE = "FROM ab_experiments e WHERE e.id = $1"
assert Q["experiment_snapshot"].endswith(_ONE), "queries.sql: experiment_snapshot must end with " + _ONE
Q["try_lock_snapshot"] = (
    Q["experiment_snapshot"]
    + " AND (e.status <> 'running' OR ab_evaluation_due(e.id))\n   FOR NO KEY UPDATE OF e SKIP LOCKED"
)
# The same for the running experiments among $1 (the daemon's batch evaluation).
Q["lock_running_snapshots"] = (
    Q["experiment_snapshot"].removesuffix(_ONE)
    + "FROM ab_experiments e WHERE e.id = ANY($1::bigint[]) AND e.status = 'running' AND ab_evaluation_due(e.id)\n"
    + " ORDER BY e.id FOR NO KEY UPDATE OF e SKIP LOCKED"
)
