"""The one loader of named SQL: a ``.sql`` file of sections, each under a ``-- name: <name>`` header.

A header is followed by comment lines that describe the query (dropped) and then the statement; a trailing
``;`` is dropped too. Files are read from the installed package (``importlib.resources``), so a wheel built
without its ``.sql`` files fails at import with a message that says what to fix, not with a KeyError later.
Every ``.sql`` file of the package is loaded through here: ``Q`` (queries.sql, the engine's and the API's
statements), ``DQ`` (daemon.sql, the long-running worker's own), ``NQ`` (notify.sql, the notification outbox),
``MQ`` (migrate.sql, the migrator's bookkeeping), ``DEMO`` (demo.sql, ``autopromote demo``), ``AQ``
(approvals.sql, the approvals and the Slack interactions' replay guard), ``RLQ`` (rollouts.sql, the progressive
rollout) and ``RQ`` in worker.db.reads (reads.sql).
"""

from __future__ import annotations

import re
from importlib import resources

HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str, *, source: str = "<sql>") -> dict[str, str]:
    """Queries by name from the text of a ``.sql`` file; a name given twice is an error (it would shadow)."""
    parts = HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise RuntimeError(f"{source}: the query name {name!r} is used twice; rename one")
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        statement = "\n".join(lines).strip().rstrip(";").strip()
        if not statement:
            raise RuntimeError(f"{source}: the query {name!r} has no SQL under its header")
        queries[name] = statement
    return queries


def load_queries(package: str, filename: str) -> dict[str, str]:
    """Queries by name from ``filename`` inside ``package`` (e.g. ``"worker.db.sql"``, ``"reads.sql"``)."""
    source = f"{package.replace('.', '/')}/{filename}"
    try:
        text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuntimeError(
            f"{source} is missing: the package was built without it; list it under "
            "[tool.setuptools.package-data] in pyproject.toml"
        ) from None
    return parse_queries(text, source=source)


Q: dict[str, str] = load_queries("worker.db", "queries.sql")
DQ: dict[str, str] = load_queries("worker.db", "daemon.sql")
NQ: dict[str, str] = load_queries("worker.db", "notify.sql")
DEMO: dict[str, str] = load_queries("worker.db", "demo.sql")
MQ: dict[str, str] = load_queries("worker.db", "migrate.sql")
AQ: dict[str, str] = load_queries("worker.db", "approvals.sql")
RLQ: dict[str, str] = load_queries("worker.db", "rollouts.sql")
