"""Chaos benchmark: three `autopromote run` replicas on one database while faults hit them; prints one JSON object.

    python bench/bench_chaos.py                 # 90 s of faults over 200 experiments (about 3 minutes in all)
    python bench/bench_chaos.py --quick         # a ~20 s smoke run (tests/integration/test_bench_chaos.py runs it)
    python bench/bench_chaos.py --duration 120 --experiments 300 --keep-logs

Always runs on an embedded PostgreSQL of its own (worker.db.embedded), never on DATABASE_URL: it restarts the
server and makes it read-only. The bench database is set to `synchronous_commit = on` (the embedded server starts
with it off) so that the server behaves like a production one and a crash restart tests what the worker promises
(its folds commit relaxed on purpose; promotions must not).

What runs at once:
- 3 replicas (`python -m worker run`, real processes), restarted when they exit (like systemd/Kubernetes would);
- producers recording steadily with `ab_record_metrics` over the experiments: winners, A/A tests, and winners
  that breach their guard after promotion (their promoted variant then gets a 20% error rate);
- local Slack and webhook receivers (aiohttp on 127.0.0.1) that record every delivery;
- faults every `--fault-gap` seconds, in turn: `kill -9` of one replica (restarted at once), `pg_terminate_backend`
  of every worker backend, a restart of the server (alternately `pg_ctl stop -m fast` and `-m immediate`, a crash),
  and `--read-only-seconds` of read-only (ALTER SYSTEM SET default_transaction_read_only = on, reload, terminate
  every client backend; then off and reload).

Exact accounting of what the producers committed. Each producer transaction first inserts a marker row
(`chaos_bench_writes`, primary key = the write's id) and then records its metric updates, so the marker commits
if and only if the updates do. A write whose outcome is unknown (the connection dropped during the transaction or
its COMMIT) is retried with the same id: if the first attempt had committed, the marker's primary key refuses the
retry (unique violation: counted once, as committed); if not, the retry records it. A write still unresolved when
the run ends is looked up by its marker. So the expected totals per variant are the sums over the writes whose
marker exists, known exactly; the bench also checks that every write it saw acknowledged has its marker.
`lost_updates` / `double_folded_updates` compare those expected totals with `ab_variant_stats` (after the queue has
drained): per variant, updates (queue rows), exposures, conversions and errors, each shortfall / excess summed.

Recovery: a bench-owned row trigger on `ab_variant_stats` writes the time of every fold transaction
(`clock_timestamp()`, in the fold's own transaction, so a fold rolled back by a crash leaves no time). Recovery of a
fault = first fold after the fault ended - the end: kill -9 ends when the process is killed (and restarted);
terminate when pg_terminate_backend returns; restart when the server accepts connections again; read-only when
writes are allowed again (reload done). The producers' first commit after the end is reported beside it, since a
fold needs something to fold.

Notifications: the webhook is counted by its Idempotency-Key (the outbox id), Slack (which has no such header) by
(event, promotion id) from the message, which is one outbox row per target here. A second delivery of a key is
"explained" when a fault happened between the two deliveries (a worker that sent and could not mark the row sent).

Exit status 1 when a hard check fails (lost or double-folded updates, duplicate promotions, unexpected worker
exits); the JSON is printed either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import asyncpg  # noqa: E402
from aiohttp import web  # noqa: E402
from bench_daemon import machine_info, pct  # noqa: E402

from worker.db.connect import connect, with_database  # noqa: E402
from worker.db.embedded import EmbeddedPostgres, start_embedded  # noqa: E402
from worker.db.migrate import migrate  # noqa: E402
from worker.notify.events import _TITLES  # noqa: E402

FULL = {
    "duration": 90.0,
    "experiments": 200,
    "producers": 4,
    "rate": 400.0,
    "fault_gap": 4.0,
    "read_only_seconds": 10.0,
    "replicas": 3,
}
QUICK = {
    "duration": 20.0,
    "experiments": 30,
    "producers": 2,
    "rate": 150.0,
    "fault_gap": 2.0,
    "read_only_seconds": 4.0,
    "replicas": 3,
}
RECOVERY_GOAL_S = 5.0
BENCH_APP = "chaos-bench"  # application_name prefix of the bench's own sessions: never terminated as a worker's
ERROR_RATE_AFTER_BREACH = 0.20
BASE_RATE = 0.10
# InternalClientError too: asyncpg raises it ("cannot switch to state 12; another operation (2) is in progress")
# when a statement is sent on a connection whose session the server has just terminated (asyncpg#1069).
DB_FAULTS = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
TITLE_EVENT = {title: event for event, title in _TITLES.items()}

BENCH_SQL = """
CREATE TABLE chaos_bench_writes (
    write_id    bigint PRIMARY KEY,
    producer    int NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE chaos_bench_folds (
    xid xid8 PRIMARY KEY,
    at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION chaos_bench_log_fold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_bench_folds (xid) VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER chaos_bench_log_fold AFTER INSERT OR UPDATE ON ab_variant_stats
    FOR EACH ROW EXECUTE FUNCTION chaos_bench_log_fold();
"""


# ------------------------------------------------------------------------------------------------ experiments
@dataclass(slots=True)
class Experiment:
    name: str
    kind: str  # winner | breach | aa
    lift: float
    active_from: float  # seconds after the start when producers begin recording for it
    variant_ids: dict[str, int] = field(default_factory=dict)
    status: str = "running"
    promoted_variant: str | None = None


def plan_experiments(n: int, duration: float, rng: random.Random) -> list[Experiment]:
    """40% winners, 10% winners that breach their guard after promotion, 50% A/A; starts spread over the run."""
    out = []
    for i in range(n):
        kind = ("winner", "winner", "winner", "winner", "breach", "aa", "aa", "aa", "aa", "aa")[i % 10]
        lift = 0.0 if kind == "aa" else rng.choice((0.25, 0.35, 0.5))
        out.append(Experiment(f"chaos-{kind}-{i:04d}", kind, lift, rng.uniform(0, 0.5 * duration)))
    return out


def binomial(rng: random.Random, n: int, p: float) -> int:
    """A normal approximation (n is in the hundreds), clipped to [0, n]."""
    x = round(n * p + math.sqrt(n * p * (1 - p)) * rng.gauss(0, 1))
    return max(0, min(n, x))


# ------------------------------------------------------------------------------------------------ receivers
@dataclass(slots=True)
class Delivery:
    channel: str
    key: str
    event: str
    promotion_id: str | None
    experiment: str | None
    at: float


class Receivers:
    """Slack incoming-webhook and generic-webhook receivers on 127.0.0.1 that record every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/slack", self._slack)
        app.router.add_post("/webhook", self._webhook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _slack(self, request: web.Request) -> web.Response:
        body = await request.json()
        header = next((b["text"]["text"] for b in body.get("blocks", []) if b.get("type") == "header"), "")
        title = header.split(":", 1)[0]
        promotion = None
        for block in body.get("blocks", []):
            for f in block.get("fields", []) or []:
                if f.get("text", "").startswith("*Promotion*\n"):
                    promotion = f["text"].split("\n", 1)[1]
        experiment = header.split(": ", 1)[1] if ": " in header else None
        event = TITLE_EVENT.get(title, title)
        self.deliveries.append(Delivery("slack", f"{event}|{promotion}", event, promotion, experiment, time.time()))
        return web.Response(text="ok")

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.deliveries.append(
            Delivery(
                "webhook",
                request.headers.get("Idempotency-Key", "?"),
                body.get("event", "?"),
                body.get("promotionId"),
                body.get("experimentName"),
                time.time(),
            )
        )
        return web.json_response({"ok": True})


# ------------------------------------------------------------------------------------------------ replicas
@dataclass
class Replica:
    index: int
    log_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    generation: int = 0
    log_path: Path = field(default_factory=Path)

    def start(self) -> None:
        self.generation += 1
        self.log_path = self.log_dir / f"replica-{self.index}-{self.generation}.log"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started_at = time.time()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "(text)", "line": line[:300]})
        return out


def exit_cause(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What ended a replica: its last error event, and from the traceback the exception and the last frame in
    worker/ (a traceback is printed as text lines, not JSON)."""
    errors = [e for e in events if e.get("level") in ("error", "critical")]
    text = [e["line"] for e in events if e.get("event") == "(text)"]
    exceptions = [t.strip(" |+") for t in text if re.search(r"^[\s|+]*[\w.]+(Error|Exception|Exit)\b", t)]
    frames = [t.strip(" |") for t in text if 'File "' in t and "/worker/" in t]
    return {
        "last_error_event": ({k: v for k, v in errors[-1].items() if k != "timestamp"} if errors else None),
        "exception": exceptions[-1] if exceptions else None,
        "where": frames[-1] if frames else None,
    }


class Fleet:
    """The replicas and their supervisor: a replica that exits on its own is recorded and restarted."""

    def __init__(self, n: int, url: str, log_dir: Path, receivers_port: int) -> None:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AUTO_PROMOTION_", "AUTO_NOTIFY")) and k not in ("DATABASE_URL", "LOG_LEVEL")
        }
        env = {
            **base,
            "DATABASE_URL": url,
            "AUTO_PROMOTION_HTTP_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            "AUTO_PROMOTION_MAX_CONCURRENT": "10000",
            "AUTO_PROMOTION_SCAN_INTERVAL": "15",
            "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{receivers_port}/slack",
            "WEBHOOK_URL": f"http://127.0.0.1:{receivers_port}/webhook",
            "WEBHOOK_SECRET": "chaos-secret",
            "AUTO_PROMOTION_NOTIFY_RATE": "200",
            "AUTO_PROMOTION_NOTIFY_TIMEOUT": "3",
            "AUTO_PROMOTION_NOTIFY_BACKOFF": "0.5",
            "AUTO_PROMOTION_SHUTDOWN_GRACE": "10",
            "NO_COLOR": "1",
        }
        self.replicas = [Replica(i, log_dir, env) for i in range(n)]
        self.killed: set[int] = set()  # pids we killed on purpose
        self.exits: list[dict[str, Any]] = []
        self.kills = 0
        self.stopping = False

    def start(self) -> None:
        for r in self.replicas:
            r.start()

    def any_exited(self) -> bool:
        return any(r.proc is not None and r.proc.poll() is not None for r in self.replicas)

    def kill9(self, index: int) -> None:
        r = self.replicas[index]
        assert r.proc is not None
        if r.proc.poll() is None:
            self.killed.add(r.proc.pid)
            r.proc.send_signal(signal.SIGKILL)
            r.proc.wait()
            self.kills += 1
        r.start()

    async def supervise(self, db_down: Any) -> None:
        while not self.stopping:
            for r in self.replicas:
                proc = r.proc
                if proc is None or proc.poll() is None or proc.pid in self.killed:
                    continue
                events = r.events()
                ready = any(e.get("event") == "daemon.caught_up" for e in events)
                self.exits.append(
                    {
                        "replica": r.index,
                        "generation": r.generation,
                        "exit_code": proc.returncode,
                        "after_seconds": round(time.time() - r.started_at, 2),
                        "was_ready": ready,
                        "database_fault_in_progress": bool(db_down()),
                        "at": time.time(),
                        **exit_cause(events),
                        "log": str(r.log_path),
                    }
                )
                self.killed.add(proc.pid)  # recorded once
                await asyncio.sleep(1.0)  # a restart delay like systemd's RestartSec
                if not self.stopping:
                    r.start()
            await asyncio.sleep(0.1)

    async def wait_ready(self, within: float) -> None:
        """Until every replica is past its start-up (caught up) or has exited, so that SIGTERM meets a daemon that
        handles it (a process still importing Python would die of the signal's default action)."""
        deadline = time.time() + within
        while time.time() < deadline:
            if all(
                r.proc is not None
                and (r.proc.poll() is not None or any(e.get("event") == "daemon.caught_up" for e in r.events()))
                for r in self.replicas
            ):
                return
            await asyncio.sleep(0.2)

    def stop(self) -> list[int | None]:
        """SIGTERM to every replica; their exit codes (0 is a clean shutdown)."""
        self.stopping = True
        for r in self.replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for r in self.replicas:
            if r.proc is None:
                codes.append(None)
                continue
            try:
                codes.append(r.proc.wait(30))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
                codes.append(None)
        return codes


# ------------------------------------------------------------------------------------------------ producers
@dataclass(slots=True)
class Write:
    rows: list[tuple[str, str, int, int, int]]  # experiment, variant, exposures, conversions, errors
    state: str = "pending"  # pending | acked | unknown (an attempt failed; the next attempt or the marker decides)
    acked_by_conflict: bool = False
    attempts: int = 0
    acked_at: float | None = None


class Producers:
    """Producers that record steadily, retry their own writes with the same marker id, and count exactly."""

    def __init__(self, url: str, experiments: list[Experiment], n: int, rate: float, seed: int) -> None:
        self.url = url
        self.experiments = experiments
        self.n = n
        self.rate = rate
        self.seed = seed
        self.writes: dict[int, Write] = {}
        self.next_id = 0
        self.start = 0.0
        self.stop_event = asyncio.Event()
        self.failed_attempts = 0
        self.ack_times: list[float] = []

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.url, command_timeout=10, timeout=5, server_settings={"application_name": f"{BENCH_APP}-producer"}
        )

    def _rows_for(self, e: Experiment, rng: random.Random) -> list[tuple[str, str, int, int, int]]:
        n = rng.randint(100, 400)
        if e.status == "promoted" and e.promoted_variant:
            v = e.promoted_variant
            p = BASE_RATE * (1 + e.lift) if v != "control" else BASE_RATE
            err = ERROR_RATE_AFTER_BREACH if e.kind == "breach" else 0.005
            return [(e.name, v, n, binomial(rng, n, p), binomial(rng, n, err))]
        return [
            (e.name, "control", n, binomial(rng, n, BASE_RATE), binomial(rng, n, 0.005)),
            (e.name, "variant-b", n, binomial(rng, n, BASE_RATE * (1 + e.lift)), binomial(rng, n, 0.005)),
        ]

    async def run(self) -> None:
        self.start = time.time()
        await asyncio.gather(*(self._produce(p) for p in range(self.n)))

    async def _produce(self, p: int) -> None:
        rng = random.Random(self.seed * 1000 + p)
        per_tx = 10
        interval = per_tx / (self.rate / self.n)
        conn: asyncpg.Connection | None = None
        due = time.time()
        while not self.stop_event.is_set():
            elapsed = time.time() - self.start
            active = [e for e in self.experiments if e.active_from <= elapsed and e.status != "stopped"]
            if not active:
                await asyncio.sleep(0.05)
                continue
            rows: list[tuple[str, str, int, int, int]] = []
            while len(rows) < per_tx:
                rows.extend(self._rows_for(rng.choice(active), rng))
            self.next_id += 1
            write_id = self.next_id
            self.writes[write_id] = Write(rows)
            conn = await self._write(p, write_id, conn)
            due = max(due + interval, time.time() - interval)
            delay = due - time.time()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), delay)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _write(self, p: int, write_id: int, conn: asyncpg.Connection | None) -> asyncpg.Connection | None:
        """Retry until acknowledged (or the final deadline once stopping); returns the connection to keep using."""
        w = self.writes[write_id]
        delay = 0.02
        while True:
            w.attempts += 1
            try:
                if conn is None or conn.is_closed():
                    conn = await self._connect()
                async with conn.transaction():
                    # The marker first: a retry of a write that did commit stops here, before recording twice.
                    await conn.execute(
                        "INSERT INTO chaos_bench_writes (write_id, producer) VALUES ($1, $2)", write_id, p
                    )
                    await conn.executemany("SELECT ab_record_metrics($1, $2, $3, $4, $5)", w.rows)
                w.state, w.acked_at = "acked", time.time()
                self.ack_times.append(w.acked_at)
                return conn
            except asyncpg.UniqueViolationError:
                w.state, w.acked_by_conflict, w.acked_at = "acked", True, time.time()
                self.ack_times.append(w.acked_at)
                return conn
            except DB_FAULTS:
                self.failed_attempts += 1
                w.state = "unknown"
                if conn is not None:
                    conn.terminate()
                    conn = None
                now = time.time()
                if now >= (self._final_deadline or math.inf):
                    return None
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(0.2, delay * 2)

    _final_deadline: float | None = None


# ------------------------------------------------------------------------------------------------ faults
@dataclass(slots=True)
class Fault:
    kind: str
    started: float
    ended: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class Chaos:
    """Injects the faults in turn, every ``gap`` seconds, until ``until``."""

    def __init__(self, server: EmbeddedPostgres, db: str, fleet: Fleet, gap: float, read_only_seconds: float) -> None:
        self.server = server
        self.db = db
        self.fleet = fleet
        self.gap = gap
        self.read_only_seconds = read_only_seconds
        self.faults: list[Fault] = []
        self.db_down = False
        self.admin_errors: list[str] = []

    async def _admin(self) -> asyncpg.Connection:
        deadline = time.time() + 60
        while True:
            try:
                return await asyncpg.connect(
                    self.server.dsn(self.db),
                    timeout=5,
                    server_settings={"application_name": f"{BENCH_APP}-admin", "default_transaction_read_only": "off"},
                )
            except DB_FAULTS:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _terminate(self, conn: asyncpg.Connection, everyone: bool) -> int:
        """pg_terminate_backend of the workers' sessions (and the producers' when ``everyone``)."""
        who = "" if everyone else f"AND application_name NOT LIKE '{BENCH_APP}%'"
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 "
                f"AND backend_type = 'client backend' AND pid <> pg_backend_pid() {who}",
                self.db,
            )
        )

    async def run(self, until: float) -> None:
        kinds = ("kill9", "terminate", "restart", "read_only")
        k = 0
        restarts = 0
        await asyncio.sleep(min(self.gap, max(0.0, until - time.time())))
        while time.time() < until:
            kind = kinds[k % len(kinds)]
            fault = Fault(kind, time.time())
            if kind == "kill9":
                index = (k // len(kinds)) % len(self.fleet.replicas)
                self.fleet.kill9(index)
                fault.detail["replica"] = index
            elif kind == "terminate":
                conn = await self._admin()
                try:
                    fault.detail["backends_terminated"] = await self._terminate(conn, everyone=False)
                finally:
                    await conn.close()
            elif kind == "restart":
                mode = ("fast", "immediate")[restarts % 2]
                restarts += 1
                fault.detail["mode"] = mode
                self.db_down = True
                try:
                    await asyncio.to_thread(self.server.stop, mode)
                    fault.detail["down_at"] = time.time()
                    await asyncio.to_thread(self.server.start)
                finally:
                    self.db_down = False
            elif kind == "read_only":
                conn = await self._admin()
                try:
                    await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
                    await conn.execute("SELECT pg_reload_conf()")
                    fault.detail["backends_terminated"] = await self._terminate(conn, everyone=True)
                    await asyncio.sleep(self.read_only_seconds)
                    await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
                    await conn.execute("SELECT pg_reload_conf()")
                    # A reload is asynchronous: wait until a fresh session sees writes allowed.
                    while True:
                        probe = await asyncpg.connect(
                            self.server.dsn(self.db), server_settings={"application_name": f"{BENCH_APP}-probe"}
                        )
                        try:
                            if await probe.fetchval("SHOW default_transaction_read_only") == "off":
                                break
                        finally:
                            await probe.close()
                        await asyncio.sleep(0.01)
                finally:
                    await conn.close()
            fault.ended = time.time()
            self.faults.append(fault)
            k += 1
            await asyncio.sleep(self.gap)


# ------------------------------------------------------------------------------------------------ state
async def follow_state(url: str, experiments: dict[str, Experiment], stop: asyncio.Event) -> None:
    """Tell the producers which experiments were promoted (and to which variant) or rolled back."""
    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(
                    url, timeout=5, command_timeout=5, server_settings={"application_name": f"{BENCH_APP}-state"}
                )
            rows = await conn.fetch(
                "SELECT e.name, e.status, p.promoted_variant_name FROM ab_experiments e "
                "LEFT JOIN experiment_promotions p ON p.experiment_id = e.id AND p.rollback_at IS NULL"
            )
            for r in rows:
                e = experiments.get(r["name"])
                if e is not None:
                    e.status = r["status"]
                    e.promoted_variant = r["promoted_variant_name"]
        except DB_FAULTS:
            if conn is not None:
                conn.terminate()
            conn = None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.3)
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close(timeout=2)


async def wait_until(url: str, query: str, within: float, give_up: Any = None) -> bool:
    """Poll ``query`` (a boolean) until true or ``within`` seconds (or ``give_up()``); tolerant of a connection
    that drops."""
    deadline = time.time() + within
    while time.time() < deadline and not (give_up and give_up()):
        with contextlib.suppress(*DB_FAULTS):
            conn = await asyncpg.connect(url, timeout=5, server_settings={"application_name": f"{BENCH_APP}-wait"})
            try:
                while time.time() < deadline and not (give_up and give_up()):
                    if await conn.fetchval(query):
                        return True
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()
        await asyncio.sleep(0.1)
    return False


# ------------------------------------------------------------------------------------------------ checks
def summarise(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"p50_s": None, "max_s": None}
    return {"p50_s": round(pct(values, 50) or 0.0, 3), "max_s": round(max(values), 3)}


async def account_updates(conn: asyncpg.Connection, producers: Producers) -> dict[str, Any]:
    """Expected totals (writes whose marker committed) vs folded statistics, per variant."""
    committed = {r[0] for r in await conn.fetch("SELECT write_id FROM chaos_bench_writes")}
    variant_ids = {
        (r["experiment"], r["variant"]): r["id"]
        for r in await conn.fetch(
            "SELECT e.name AS experiment, v.name AS variant, v.id FROM ab_variants v "
            "JOIN ab_experiments e ON e.id = v.experiment_id"
        )
    }
    expected: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    acked = acked_missing = unknown_committed = unknown_not_committed = conflicts = 0
    for write_id, w in producers.writes.items():
        if w.state == "acked":
            acked += 1
            conflicts += w.acked_by_conflict
            if write_id not in committed:
                acked_missing += 1
        elif write_id in committed:
            unknown_committed += 1
        else:
            unknown_not_committed += 1
        if write_id in committed:
            for exp, var, n, c, err in w.rows:
                t = expected[variant_ids[(exp, var)]]
                t[0] += 1
                t[1] += n
                t[2] += c
                t[3] += err
    unknown_markers = len(committed - set(producers.writes))
    folded = {
        r["variant_id"]: [r["updates_folded"], r["exposures"], r["conversions"], r["errors"]]
        for r in await conn.fetch(
            "SELECT variant_id, updates_folded, exposures, conversions, errors FROM ab_variant_stats"
        )
    }
    pending = int(await conn.fetchval("SELECT count(*) FROM ab_metric_updates"))
    lost = [0, 0, 0, 0]
    double = [0, 0, 0, 0]
    for vid in set(expected) | set(folded):
        e = expected.get(vid, [0, 0, 0, 0])
        f = folded.get(vid, [0, 0, 0, 0])
        for i in range(4):
            lost[i] += max(0, e[i] - f[i])
            double[i] += max(0, f[i] - e[i])
    names = ("updates", "exposures", "conversions", "errors")
    return {
        "lost_updates": lost[0],
        "double_folded_updates": double[0],
        "lost": dict(zip(names, lost, strict=True)),
        "double_folded": dict(zip(names, double, strict=True)),
        "writes": len(producers.writes),
        "writes_committed": len(committed),
        "updates_committed": sum(t[0] for t in expected.values()),
        "exposures_committed": sum(t[1] for t in expected.values()),
        "writes_acknowledged": acked,
        "acknowledged_by_marker_conflict": conflicts,
        "acknowledged_but_not_committed": acked_missing,
        "unresolved_at_end_committed": unknown_committed,
        "unresolved_at_end_not_committed": unknown_not_committed,
        "markers_without_write": unknown_markers,
        "failed_attempts_retried": producers.failed_attempts,
        "queue_rows_left": pending,
    }


async def check_promotions(conn: asyncpg.Connection, experiments: list[Experiment]) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT e.name, e.status, count(p.id) AS promotions, count(p.id) FILTER (WHERE p.rollback_at IS NULL) "
        "AS active, count(p.id) FILTER (WHERE p.rollback_at IS NOT NULL) AS rolled_back, "
        "(SELECT count(*) FROM ab_promotion_audit_log a WHERE a.experiment_id = e.id AND a.action = 'promoted') "
        "AS audit_promoted "
        "FROM ab_experiments e LEFT JOIN experiment_promotions p ON p.experiment_id = e.id GROUP BY e.id"
    )
    kinds = {e.name: e.kind for e in experiments}
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    duplicates = inconsistent = 0
    for r in rows:
        kind = kinds.get(r["name"], "?")
        by_kind[kind]["experiments"] += 1
        by_kind[kind]["promoted"] += r["promotions"] > 0
        by_kind[kind]["rolled_back"] += r["rolled_back"]
        duplicates += max(0, r["promotions"] - 1) + max(0, r["active"] - 1)
        if (r["active"] and r["status"] != "promoted") or (
            r["rolled_back"] and not r["active"] and r["status"] != "rolled_back"
        ):
            inconsistent += 1
    weights_wrong = int(
        await conn.fetchval(
            "SELECT count(*) FROM experiment_promotions p JOIN ab_variants v ON v.experiment_id = p.experiment_id "
            "WHERE p.rollback_at IS NULL AND v.traffic_weight <> CASE WHEN v.name = p.promoted_variant_name "
            "THEN 100 ELSE 0 END"
        )
    )
    audit = await conn.fetch("SELECT action, count(*) AS n FROM ab_promotion_audit_log GROUP BY action")
    return {
        "duplicate_promotions": duplicates,
        "status_inconsistent": inconsistent,
        "active_promotions_with_wrong_weights": weights_wrong,
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "audit_rows_by_action": {r["action"]: r["n"] for r in audit},
    }


async def check_notifications(
    conn: asyncpg.Connection, deliveries: list[Delivery], faults: list[Fault], deaths_at: list[float]
) -> dict[str, Any]:
    promotions = await conn.fetch(
        "SELECT id::text AS id, rollback_at IS NOT NULL AS rolled_back FROM experiment_promotions"
    )
    outbox = {
        r["status"]: r["n"]
        for r in await conn.fetch("SELECT status, count(*) AS n FROM notification_outbox GROUP BY status")
    }
    outbox_rows = {
        (r["channel"], r["event"], r["promotion_id"])
        for r in await conn.fetch("SELECT channel, event, promotion_id::text FROM notification_outbox")
    }
    seen = {(d.channel, d.event, d.promotion_id) for d in deliveries}
    known = {r["id"] for r in promotions}
    missing: dict[str, int] = Counter()
    promotions_without = rollbacks_without = 0
    for r in promotions:
        gaps = [ch for ch in ("slack", "webhook") if (ch, "promotion.promoted", r["id"]) not in seen]
        for ch in gaps:
            missing[f"{ch}:promotion.promoted"] += 1
        promotions_without += bool(gaps)
        if r["rolled_back"]:
            gaps = [ch for ch in ("slack", "webhook") if (ch, "promotion.rolled_back", r["id"]) not in seen]
            for ch in gaps:
                missing[f"{ch}:promotion.rolled_back"] += 1
            rollbacks_without += bool(gaps)
    by_key: dict[tuple[str, str], list[float]] = defaultdict(list)
    for d in deliveries:
        by_key[(d.channel, d.key)].append(d.at)
    windows = [(f.started, f.ended) for f in faults] + [(t, t) for t in deaths_at]
    extra = explained = 0
    for times in by_key.values():
        times.sort()
        for first, again in itertools.pairwise(times):
            extra += 1
            explained += any(s <= again and e >= first - 1.0 for s, e in windows)
    return {
        "promotions_without_notifications": promotions_without,
        "rollbacks_without_notifications": rollbacks_without,
        "missing_by_channel_and_event": dict(missing),
        "notifications_delivered_twice_by_key": extra,
        "duplicates_after_a_fault": explained,
        "duplicates_without_a_fault": extra - explained,
        "deliveries": len(deliveries),
        "distinct_keys": len(by_key),
        "deliveries_for_unknown_promotions": sum(
            1 for d in deliveries if d.promotion_id and d.promotion_id not in known
        ),
        "delivered_without_outbox_row": len({s for s in seen if s[2] is not None} - outbox_rows),
        "outbox_by_status": outbox,
        "by_event": dict(Counter(f"{d.channel}:{d.event}" for d in deliveries)),
    }


async def recovery(conn: asyncpg.Connection, faults: list[Fault], ack_times: list[float]) -> dict[str, Any]:
    folds = sorted(r[0].timestamp() for r in await conn.fetch("SELECT at FROM chaos_bench_folds"))
    acks = sorted(ack_times)
    out: dict[str, Any] = {}
    for kind in ("kill9", "terminate", "restart", "read_only"):
        rec, prod = [], []
        for f in (x for x in faults if x.kind == kind):
            nxt = next((t for t in folds if t > f.ended), None)
            if nxt is not None:
                rec.append(nxt - f.ended)
            ack = next((t for t in acks if t > f.ended), None)
            if ack is not None:
                prod.append(ack - f.ended)
        durations = [x.ended - x.started for x in faults if x.kind == kind]
        out[kind] = {
            "faults": len(durations),
            **summarise(rec),
            "producer_first_commit_p50_s": summarise(prod)["p50_s"],
            "fault_duration_p50_s": summarise(durations)["p50_s"],
            "within_goal": bool(rec) and max(rec) <= RECOVERY_GOAL_S,
        }
    gaps = [b - a for a, b in itertools.pairwise(folds)]
    out["longest_gap_between_folds_s"] = round(max(gaps), 3) if gaps else None
    out["folds"] = len(folds)
    return out


# ------------------------------------------------------------------------------------------------ main
async def run(params: dict[str, Any], seed: int, keep_logs: bool) -> dict[str, Any]:
    duration, n_exp = float(params["duration"]), int(params["experiments"])
    server = start_embedded()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    fleet: Fleet | None = None
    receivers = Receivers()
    try:
        admin = await asyncpg.connect(server.url)
        pg_version = await admin.fetchval("SHOW server_version")
        machine = {
            **machine_info(pg_version, True),
            "database": "embedded, its own (fsync=off; synchronous_commit=on for the bench database), same machine",
        }
        db = f"chaos_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{db}"')
        # The embedded server runs with synchronous_commit off (a command-line option; only a database or role
        # setting overrides it): production-like durability for this database.
        await admin.execute(f'ALTER DATABASE "{db}" SET synchronous_commit = on')
        await admin.close()
        url = with_database(server.url, db)
        conn = await connect(url)
        await migrate(conn)
        await conn.execute(BENCH_SQL)
        rng = random.Random(seed)
        experiments = plan_experiments(n_exp, duration, rng)
        await conn.execute(
            "INSERT INTO ab_experiments (name, status, started_at) "
            "SELECT unnest($1::text[]), 'running', now() - interval '48 hours'",
            [e.name for e in experiments],
        )
        await conn.execute(
            "INSERT INTO ab_variants (experiment_id, name, is_control) SELECT e.id, v.name, v.name = 'control' "
            "FROM ab_experiments e, (VALUES ('control'), ('variant-b')) v(name)"
        )
        await conn.close()

        await receivers.start()
        fleet = Fleet(int(params["replicas"]), url, log_dir, receivers.port)
        fleet.start()
        ready = await wait_until(
            url,
            f"SELECT count(*) >= {len(fleet.replicas)} FROM pg_stat_activity "
            "WHERE application_name = 'autopromote-listener'",
            60,
            give_up=fleet.any_exited,
        )
        if not ready:
            tail = fleet.replicas[0].log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the replicas did not start; replica 0 said:\n{tail}")
        await asyncio.sleep(2.0)  # let every replica finish its start-up catch-up

        by_name = {e.name: e for e in experiments}
        producers = Producers(url, experiments, int(params["producers"]), float(params["rate"]), seed)
        chaos = Chaos(server, db, fleet, float(params["fault_gap"]), float(params["read_only_seconds"]))
        state_stop = asyncio.Event()
        supervisor = asyncio.create_task(fleet.supervise(lambda: chaos.db_down))
        state_task = asyncio.create_task(follow_state(url, by_name, state_stop))
        t0 = time.time()
        producing = asyncio.create_task(producers.run())
        await chaos.run(until=t0 + duration)
        # Producers run to the end of the duration (and a little beyond the last fault), then stop.
        await asyncio.sleep(max(0.0, t0 + duration - time.time()))
        producers._final_deadline = time.time() + 60
        producers.stop_event.set()
        await producing
        produce_seconds = time.time() - t0
        drained = await wait_until(url, "SELECT NOT EXISTS (SELECT 1 FROM ab_metric_updates)", 120)
        # Guards and the rollbacks they trigger come a moment after the last folds; then the notifications.
        await asyncio.sleep(3.0)
        state_stop.set()
        await state_task
        outbox_done = await wait_until(
            url, "SELECT NOT EXISTS (SELECT 1 FROM notification_outbox WHERE status = 'pending')", 120
        )
        await asyncio.sleep(1.0)  # a delivery in flight when the row was marked
        await fleet.wait_ready(30)
        fleet.stopping = True
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        stop_codes = fleet.stop()

        conn = await connect(url)
        try:
            updates = await account_updates(conn, producers)
            promotions = await check_promotions(conn, experiments)
            # A replica that died on its own between a send and its mark explains a redelivery as a kill does.
            deaths_at = [f.started for f in chaos.faults if f.kind == "kill9"] + [x["at"] for x in fleet.exits]
            notes = await check_notifications(conn, receivers.deliveries, chaos.faults, deaths_at)
            rec = await recovery(conn, chaos.faults, producers.ack_times)
        finally:
            await conn.close()
        worker_exits = len(fleet.exits)
        hard = {
            "lost_updates": updates["lost_updates"] == 0 and sum(updates["lost"].values()) == 0,
            "double_folded_updates": updates["double_folded_updates"] == 0
            and sum(updates["double_folded"].values()) == 0,
            "duplicate_promotions": promotions["duplicate_promotions"] == 0,
            "worker_exits": worker_exits == 0,
            "acknowledged_but_not_committed": updates["acknowledged_but_not_committed"] == 0,
            "queue_drained": drained and updates["queue_rows_left"] == 0,
            "clean_shutdown": all(c == 0 for c in stop_codes),
        }
        soft = {
            "outbox_drained": outbox_done,
            "every_promotion_notified": notes["promotions_without_notifications"] == 0,
            "recovery_within_goal": all(
                v["within_goal"] for k, v in rec.items() if isinstance(v, dict) and v["faults"]
            ),
        }
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return {
            "bench": "chaos",
            "params": {**params, "seed": seed},
            "machine": machine,
            "lost_updates": updates["lost_updates"],
            "double_folded_updates": updates["double_folded_updates"],
            "duplicate_promotions": promotions["duplicate_promotions"],
            "promotions_without_notifications": notes["promotions_without_notifications"],
            "notifications_delivered_twice_by_key": notes["notifications_delivered_twice_by_key"],
            "worker_exits": worker_exits,
            "worker_exits_after_start_up": sum(1 for x in fleet.exits if x["was_ready"]),
            "worker_exits_during_start_up": sum(1 for x in fleet.exits if not x["was_ready"]),
            "worker_kills": fleet.kills,
            "worker_exit_causes": dict(Counter(f"{x['exception']} at {x['where']}" for x in fleet.exits)),
            "recovery": rec,
            "recovery_goal_s": RECOVERY_GOAL_S,
            "checks": {"passed": all(hard.values()), "hard": hard, "soft": soft},
            "updates": {
                **updates,
                "produce_seconds": round(produce_seconds, 1),
                "updates_per_s": round(updates["updates_committed"] / produce_seconds, 1),
            },
            "promotions": promotions,
            "notifications": notes,
            "workers": {
                "replicas": len(fleet.replicas),
                "starts": sum(r.generation for r in fleet.replicas),
                "unexpected_exits": fleet.exits,
                "exit_codes_at_sigterm": stop_codes,
                "logs": str(log_dir) if keep_logs else None,
            },
            "faults": [
                {
                    "kind": f.kind,
                    "at_s": round(f.started - t0, 2),
                    "seconds": round(f.ended - f.started, 2),
                    **{k: v for k, v in f.detail.items() if k != "down_at"},
                }
                for f in chaos.faults
            ],
        }
    finally:
        if fleet is not None and not fleet.stopping:
            fleet.stop()
        await receivers.stop()
        server.cleanup()
        if not keep_logs:
            import shutil

            shutil.rmtree(log_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run over 30 experiments")
    parser.add_argument("--duration", type=float, help="seconds of producing under faults (default 90, quick 20)")
    parser.add_argument("--experiments", type=int, help="experiments (default 200, quick 30)")
    parser.add_argument("--producers", type=int, help="producer connections (default 4)")
    parser.add_argument("--rate", type=float, help="metric updates per second over all producers (default 400)")
    parser.add_argument("--fault-gap", type=float, help="seconds between two faults (default 4, quick 2)")
    parser.add_argument("--read-only-seconds", type=float, help="how long the server stays read-only (default 10)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--keep-logs", action="store_true", help="keep the replicas' JSON logs (path in the output)")
    args = parser.parse_args()
    params = dict(QUICK if args.quick else FULL)
    for key in ("duration", "experiments", "producers", "rate", "fault_gap", "read_only_seconds"):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    if params["duration"] < 1 or params["experiments"] < 1 or params["producers"] < 1 or params["rate"] <= 0:
        parser.error("--duration, --experiments, --producers and --rate must be positive")
    params["quick"] = args.quick
    result = asyncio.run(run(params, args.seed, args.keep_logs))
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["checks"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
