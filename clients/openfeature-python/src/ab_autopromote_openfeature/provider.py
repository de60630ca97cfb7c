"""``AutoPromoteProvider``: an OpenFeature provider that serves ab-autopromote's experiments from memory.

Flag key = experiment name, targeting key = unit id, value = variant name. Evaluation never touches the
network: a background thread owns an asyncio loop and one PostgreSQL connection that LISTENs on
``ab_serving_changed`` (schema/0008_serving.sql: any commit that changes what ``ab_assign`` returns) and
``ab_promotion_events`` (the worker's promotions and rollbacks), reloads what changed, re-reads everything every
``refresh_interval`` seconds in case a notification was lost, and reconnects with backoff when the database
goes away. Until then, evaluations serve the last weights it saw (reason CACHED).

One module of ~500 lines on purpose: the provider is one class with its thread, and the distribution stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagResolutionDetails, FlagValueType, Reason
from openfeature.hook import Hook, HookContext, HookHints
from openfeature.provider import AbstractProvider, Metadata

from .hashing import bucket_from_state, fnv1a32, range_ends

log = logging.getLogger("ab_autopromote_openfeature")

# What a lost or refused database connection raises; InternalClientError is asyncpg's answer to a statement sent
# on a session the server has just terminated.
_DB_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

SERVING_CHANNEL = "ab_serving_changed"
PROMOTION_CHANNEL = "ab_promotion_events"
SERVING_STATUSES = frozenset({"running", "promoted"})

# One query for a full load (ids NULL) or for the experiments a notification named.
_LOAD = """
SELECT s.experiment_id, s.experiment_name, s.status, s.hash_seed, s.variants, s.weights, e.metric_type,
       (SELECT p.id::text FROM experiment_promotions p WHERE p.experiment_id = s.experiment_id
         ORDER BY p.promoted_at DESC LIMIT 1) AS promotion_id
  FROM ab_serving s JOIN ab_experiments e ON e.id = s.experiment_id
 WHERE $1::bigint[] IS NULL OR s.experiment_id = ANY($1::bigint[]) OR s.experiment_name = ANY($2::text[])
"""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServedExperiment:
    """What the provider serves for one experiment (immutable: the cache swaps whole entries)."""

    id: int
    name: str
    status: str
    seed_state: int
    variants: tuple[str, ...]
    ends: tuple[float, ...]
    metric_type: str
    promotion_id: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ServedExperiment:
        return cls(
            id=int(row["experiment_id"]),
            name=row["experiment_name"],
            status=row["status"],
            seed_state=fnv1a32(row["hash_seed"]),
            variants=tuple(row["variants"]),
            ends=range_ends([float(w) for w in row["weights"]]),
            metric_type=row["metric_type"],
            promotion_id=row["promotion_id"],
        )

    def assign(self, unit_id: str) -> str | None:
        """The variant ``unit_id`` sees (None: no variant has traffic); ``choose`` inlined, it is the hot path."""
        i = bisect_right(self.ends, bucket_from_state(self.seed_state, unit_id))
        return self.variants[i] if i < len(self.variants) else None

    def metadata(self) -> dict[str, bool | int | float | str]:
        meta: dict[str, bool | int | float | str] = {"status": self.status, "experimentId": self.id}
        if self.promotion_id is not None:
            meta["promotionId"] = self.promotion_id
        return meta


class ExposureHook(Hook):
    """Counts the variants served (reasons SPLIT and CACHED); the provider flushes them via ab_record_metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def after(self, hook_context: HookContext, details: FlagEvaluationDetails[FlagValueType], hints: HookHints) -> None:
        if details.variant is None or details.reason not in (Reason.SPLIT, Reason.CACHED):
            return
        key = (details.flag_key, details.variant)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def take(self) -> dict[tuple[str, str], int]:
        """The counts so far, and start again from zero."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts

    def give_back(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Counts a flush could not write: they go out with the next one."""
        with self._lock:
            for key, n in counts.items():
                self._counts[key] = self._counts.get(key, 0) + n

    def pending(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class AutoPromoteProvider(AbstractProvider):
    """OpenFeature provider for ab-autopromote. ``api.set_provider(AutoPromoteProvider(dsn))`` and evaluate
    ``client.get_string_details(experiment_name, default, EvaluationContext(targeting_key=unit_id))``.

    ``record_exposures=True`` adds a hook that counts each variant served and writes the counts through
    ``ab_record_metrics`` every ``exposure_flush_interval`` seconds (conversion experiments only: a mean
    experiment needs the metric's values with each exposure, which only the application has).
    """

    def __init__(
        self,
        dsn: str,
        *,
        refresh_interval: float = 30.0,
        record_exposures: bool = False,
        exposure_flush_interval: float = 5.0,
        init_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        super().__init__()
        if refresh_interval <= 0 or exposure_flush_interval <= 0 or init_timeout < 0 or connect_timeout <= 0:
            raise ValueError(
                "refresh_interval, exposure_flush_interval and connect_timeout must be positive "
                "and init_timeout not negative (seconds)"
            )
        self._dsn = dsn
        self.refresh_interval = refresh_interval
        self.exposure_flush_interval = exposure_flush_interval
        self.init_timeout = init_timeout
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.exposure_hook: ExposureHook | None = ExposureHook() if record_exposures else None
        # Read without a lock by evaluations: the background thread only ever replaces the whole dict.
        self._experiments: dict[str, ServedExperiment] = {}
        self._loaded = threading.Event()
        self._live = False  # connected and up to date; False: serving the cache (CACHED)
        self._stopping = False
        self._initialize_returned = False
        self._announce_ready = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Queue[tuple[str, Any]] | None = None
        self._stop: asyncio.Event | None = None
        self._flush_conn: asyncpg.Connection | None = None
        self._backoff = 0.05
        self._last_schema_error = ""
        self._start_lock = threading.Lock()
        self.loads = 0  # full loads so far (tests and operators read it)
        self.connects = 0

    # ------------------------------------------------------------------------------------------ lifecycle
    def get_metadata(self) -> Metadata:
        return Metadata(name="ab-autopromote")

    def get_provider_hooks(self) -> list[Hook]:
        return [self.exposure_hook] if self.exposure_hook is not None else []

    def initialize(self, evaluation_context: EvaluationContext | None = None) -> None:
        """Start the background thread and wait up to ``init_timeout`` s for the first load.

        Without a database by then it raises (OpenFeature marks the provider ERROR and evaluations get the
        default with PROVIDER_NOT_READY); it keeps trying and announces READY when the first load lands.
        """
        self.start()
        ready = self._loaded.wait(self.init_timeout)
        self._initialize_returned = True
        if not ready:
            self._announce_ready = True
            from openfeature.exception import ProviderNotReadyError

            raise ProviderNotReadyError(
                f"no experiments loaded from PostgreSQL within {self.init_timeout:g} s; "
                "serving defaults and retrying in the background"
            )

    def start(self) -> None:
        """Start the background thread (``initialize`` does it; direct users of the provider may call it)."""
        with self._start_lock:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._thread_main, name="ab-autopromote-provider", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        """Flush the exposures still counted, close the connection and stop the thread."""
        with self._start_lock:
            thread = self._thread
            self._stopping = True
            if thread is None:
                return
            # The thread may not have made its loop yet: keep asking until it has stopped.
            deadline = time.monotonic() + self.connect_timeout + 5
            while thread.is_alive() and time.monotonic() < deadline:
                loop, stop = self._loop, self._stop
                if loop is not None and stop is not None:
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        loop.call_soon_threadsafe(stop.set)
                thread.join(0.05)
            self._thread = None

    def wait_until_ready(self, timeout: float) -> bool:
        """True once the first load has landed (for scripts that want weights before serving)."""
        return self._loaded.wait(timeout)

    @property
    def live(self) -> bool:
        """Connected and listening: what is served is up to date (else it is the cache, reason CACHED)."""
        return self._live

    def experiment(self, name: str) -> ServedExperiment | None:
        return self._experiments.get(name)

    # ----------------------------------------------------------------------------------------- evaluation
    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        try:
            exp = self._experiments.get(flag_key)
            if exp is None:
                if not self._loaded.is_set():
                    return FlagResolutionDetails(
                        default_value,
                        error_code=ErrorCode.PROVIDER_NOT_READY,
                        reason=Reason.ERROR,
                        error_message="experiments not loaded from PostgreSQL yet",
                    )
                return FlagResolutionDetails(default_value, reason=Reason.DEFAULT, flag_metadata={"status": "unknown"})
            if exp.status not in SERVING_STATUSES:
                return FlagResolutionDetails(default_value, reason=Reason.DISABLED, flag_metadata=exp.metadata())
            unit = evaluation_context.targeting_key if evaluation_context is not None else None
            if not unit:
                return FlagResolutionDetails(
                    default_value,
                    error_code=ErrorCode.TARGETING_KEY_MISSING,
                    reason=Reason.ERROR,
                    error_message="set the evaluation context's targeting_key to the unit id (e.g. the user id)",
                )
            variant = exp.assign(unit)
            if variant is None:  # every weight is zero: nobody is in the experiment
                return FlagResolutionDetails(default_value, reason=Reason.DEFAULT, flag_metadata=exp.metadata())
            return FlagResolutionDetails(
                variant,
                reason=Reason.SPLIT if self._live else Reason.CACHED,
                variant=variant,
                flag_metadata=exp.metadata(),
            )
        except Exception as exc:  # never into the application
            log.exception("ab_autopromote.evaluation_failed flag=%s", flag_key)
            return FlagResolutionDetails(
                default_value,
                error_code=ErrorCode.GENERAL,
                reason=Reason.ERROR,
                error_message=f"{type(exc).__name__}: {exc}",
            )

    def _mismatch(self, flag_key: str, default_value: T, kind: str) -> FlagResolutionDetails[T]:
        return FlagResolutionDetails(
            default_value,
            error_code=ErrorCode.TYPE_MISMATCH,
            reason=Reason.ERROR,
            error_message=f"{flag_key}: experiments resolve to variant names; evaluate them as string flags, "
            f"not {kind}",
        )

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return self._mismatch(flag_key, default_value, "boolean")

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._mismatch(flag_key, default_value, "integer")

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._mismatch(flag_key, default_value, "float")

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self._mismatch(flag_key, default_value, "object")

    # ---------------------------------------------------------------------------------- background thread
    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception:
            log.exception("ab_autopromote.provider_thread_crashed")
        finally:
            self._live = False
            loop.close()
            self._loop = None

    async def _main(self) -> None:
        self._wake = asyncio.Queue()
        self._stop = asyncio.Event()
        if self._stopping:  # shut down before the loop existed
            return
        flusher = asyncio.create_task(self._flush_forever()) if self.exposure_hook is not None else None
        try:
            await self._serve_forever()
        finally:
            if flusher is not None:
                flusher.cancel()
                try:
                    await flusher
                except asyncio.CancelledError:
                    pass
                await self._flush()  # whatever was counted since the last flush
                if self._flush_conn is not None:
                    self._flush_conn.terminate()
                    self._flush_conn = None

    async def _serve_forever(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self.connect_timeout,
                    command_timeout=self.connect_timeout,
                    server_settings={"application_name": "ab-autopromote-openfeature"},
                )
                self.connects += 1
                await self._listen_and_serve(conn)
            except _DB_ERRORS as exc:
                self._went_stale(exc)
            except Exception as exc:  # a bug of ours must not end serving: keep the cache, log, try again
                log.exception("ab_autopromote.refresh_failed")
                self._went_stale(exc)
            finally:
                if conn is not None:
                    if not self._stop.is_set():
                        self._went_stale(None)
                    try:
                        await asyncio.wait_for(conn.close(), 1.0)
                    except _DB_ERRORS:
                        conn.terminate()
            if self._stop.is_set():
                return
            # Full jitter: a fleet of servers that lost the same database does not come back in lock step.
            delay = random.uniform(0, self._backoff)
            self._backoff = min(self._backoff * 2, self.max_backoff)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass

    async def _listen_and_serve(self, conn: asyncpg.Connection) -> None:
        assert self._wake is not None and self._stop is not None
        wake, stop = self._wake, self._stop

        def on_notify(_c: Any, _pid: int, channel: str, payload: str) -> None:
            wake.put_nowait((channel, payload))

        def on_lost(_c: Any) -> None:
            wake.put_nowait(("lost", None))

        conn.add_termination_listener(on_lost)
        # LISTEN first, load second: a change committed in between is both in the load and notified.
        await conn.add_listener(SERVING_CHANNEL, on_notify)
        await conn.add_listener(PROMOTION_CHANNEL, on_notify)
        while not wake.empty():
            wake.get_nowait()
        await self._load(conn, None, None)
        self._went_live()
        next_full = time.monotonic() + self.refresh_interval
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                get = asyncio.ensure_future(wake.get())
                done, _ = await asyncio.wait(
                    {get, stop_wait},
                    timeout=max(0.0, next_full - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if get not in done:
                    get.cancel()
                    if stop.is_set():
                        return
                    await self._load(conn, None, None)  # the fallback for a lost notification
                    next_full = time.monotonic() + self.refresh_interval
                    continue
                batch = [get.result()]
                while not wake.empty():  # one query for everything that arrived together
                    batch.append(wake.get_nowait())
                if any(kind == "lost" for kind, _ in batch) or conn.is_closed():
                    raise asyncpg.InterfaceError("connection to PostgreSQL lost")
                ids, names, everything = _targets(batch)
                if everything:
                    await self._load(conn, None, None)
                elif ids or names:
                    await self._load(conn, ids, names)
        finally:
            stop_wait.cancel()

    async def _load(self, conn: asyncpg.Connection, ids: list[int] | None, names: list[str] | None) -> None:
        rows = await conn.fetch(_LOAD, ids, names or [])
        fresh = {r["experiment_name"]: ServedExperiment.from_row(r) for r in rows}
        if ids is None:
            current = fresh
            self.loads += 1
        else:
            # Drop what was asked about (deleted experiments come back as no row) and any old name of a
            # renamed one, then put in what the database says now.
            asked, asked_names = set(ids) | {f.id for f in fresh.values()}, set(names or ())
            current = {n: e for n, e in self._experiments.items() if e.id not in asked and n not in asked_names}
            current.update(fresh)
        changed = [n for n in set(current) | set(self._experiments) if current.get(n) != self._experiments.get(n)]
        self._experiments = current
        first = not self._loaded.is_set()
        self._loaded.set()
        if changed and not first:
            self._emit(
                lambda: self.emit_provider_configuration_changed(ProviderEventDetails(flags_changed=sorted(changed)))
            )

    def _went_live(self) -> None:
        self._backoff = 0.05
        was_live = self._live
        self._live = True
        if not was_live:
            log.info("ab_autopromote.provider_live experiments=%d", len(self._experiments))
            if self._announce_ready or (self._initialize_returned and self.connects > 1):
                self._announce_ready = False
                self._emit(lambda: self.emit_provider_ready(ProviderEventDetails()))

    def _went_stale(self, exc: BaseException | None) -> None:
        if self._live:
            self._live = False
            log.warning(
                "ab_autopromote.provider_stale error=%s serving=cache",
                f"{type(exc).__name__}: {exc}" if exc else "disconnected",
            )
            self._emit(
                lambda: self.emit_provider_stale(
                    ProviderEventDetails(message="lost the PostgreSQL connection; serving cached weights")
                )
            )
        elif isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
            message = str(exc)
            if message != self._last_schema_error:  # once, not on every retry
                self._last_schema_error = message
                log.warning(
                    "ab_autopromote.schema_missing error=%s hint=%s",
                    message,
                    "apply the migrations (`autopromote migrate`, schema/0008_serving.sql)",
                )
        elif exc is not None:
            log.debug("ab_autopromote.connect_failed error=%s", f"{type(exc).__name__}: {exc}")

    def _emit(self, send: Callable[[], None]) -> None:
        try:
            send()
        except Exception:  # an application's event handler must not stop the refresh loop
            log.exception("ab_autopromote.event_handler_failed")

    # ------------------------------------------------------------------------------------------ exposures
    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.exposure_flush_interval)
            await self._flush()

    async def _flush(self) -> None:
        hook = self.exposure_hook
        if hook is None:
            return
        counts = hook.take()
        if not counts:
            return
        rows, skipped = [], {}
        for (name, variant), n in counts.items():
            exp = self._experiments.get(name)
            if exp is not None and exp.metric_type != "conversion":
                skipped[(name, variant)] = n
                continue
            rows.append((name, variant, n))
        if skipped:
            log.debug("ab_autopromote.exposures_skipped reason=mean_experiment count=%d", sum(skipped.values()))
        if not rows:
            return
        pending = list(rows)  # what is not written yet: only that is given back when the database fails
        try:
            conn = await self._flush_connection()
            try:
                async with conn.transaction():
                    await conn.executemany("SELECT ab_record_metrics($1, $2, $3::bigint, 0, 0)", rows)
                pending = []
            except asyncpg.DataError:
                # Some experiment or variant is gone (or was renamed): write the others one by one.
                for row in rows:
                    try:
                        await conn.execute("SELECT ab_record_metrics($1, $2, $3::bigint, 0, 0)", *row)
                    except asyncpg.DataError as exc:
                        log.warning(
                            "ab_autopromote.exposures_dropped experiment=%s variant=%s count=%d error=%s",
                            row[0],
                            row[1],
                            row[2],
                            exc,
                        )
                    pending.remove(row)
        except _DB_ERRORS as exc:
            log.info("ab_autopromote.exposures_deferred error=%s", f"{type(exc).__name__}: {exc}")
            hook.give_back({(n, v): c for n, v, c in pending})
            if self._flush_conn is not None:
                self._flush_conn.terminate()
                self._flush_conn = None

    async def _flush_connection(self) -> asyncpg.Connection:
        """A connection of the flusher's own: the listening one is busy waiting for notifications."""
        if self._flush_conn is None or self._flush_conn.is_closed():
            self._flush_conn = await asyncpg.connect(
                self._dsn,
                timeout=self.connect_timeout,
                command_timeout=self.connect_timeout,
                server_settings={"application_name": "ab-autopromote-openfeature-exposures"},
            )
        return self._flush_conn


def _targets(batch: list[tuple[str, Any]]) -> tuple[list[int], list[str], bool]:
    """Experiment ids and names named by a batch of notifications; True when one cannot be understood."""
    ids: list[int] = []
    names: list[str] = []
    for _channel, payload in batch:
        try:
            data = json.loads(payload)
            if isinstance(data.get("experiment_id"), int):
                ids.append(data["experiment_id"])
            if isinstance(data.get("experiment_name"), str):
                names.append(data["experiment_name"])
        except (TypeError, ValueError, AttributeError):
            return [], [], True
        if not ids and not names:
            return [], [], True
    return ids, names, False
