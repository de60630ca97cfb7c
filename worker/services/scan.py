"""The scan: evaluate every running experiment from a few bulk reads; promote the eligible ones (at most
maxConcurrentPromotions), each on its locked row in a transaction of its own."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import anyio.lowlevel

from worker.config import AutoPromotionConfig, EffectiveConfig, Settings
from worker.db import store
from worker.db.connect import Connection, Pool, PostgresError, Record
from worker.db.fold import fold_pending_updates
from worker.db.metric_reads import bulk_metric_snapshots
from worker.db.sql import Q
from worker.db.store import Seen
from worker.decide import AlertInfo, Decision, ExperimentSnapshot, VariantSnapshot, metric_json
from worker.domain.errors import EngineError
from worker.domain.eta import EtaRequest, check_etas
from worker.domain.metrics import MetricSnapshot
from worker.domain.results import CheckResult, ScanItem, ScanResult
from worker.services.deciding import MAX_ALERT_LOOKBACK_S, Decider, DecisionAndConfig
from worker.services.effects import Effects
from worker.services.promote import PromoteService
from worker.stats import StatsInputError

SCAN_CHUNK = 1000
SCAN_STATE_MIN_AGE_S = 30.0


class ScanService:
    """scan_and_promote_winners."""

    def __init__(
        self,
        pool: Pool,
        settings: Settings,
        config: EffectiveConfig,
        decider: Decider,
        promote: PromoteService,
        effects: Effects,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.config = config
        self.decider = decider
        self.promote = promote
        self.effects = effects

    async def scan(
        self,
        *,
        config: EffectiveConfig | None = None,
        actor: str = "autopromote",
        dry_run: bool | None = None,
        include_results: bool = True,
        include_eta: bool = False,
    ) -> ScanResult:
        """Evaluate every running experiment; promote the eligible ones (at most maxConcurrentPromotions).

        One experiment's failure is reported in its result and never stops the scan. ``include_results=False``
        (the daemon's reconciliation) keeps only the counts, so memory does not grow with the experiment count.
        ``include_eta`` adds each blocked experiment's ETA (domain/eta.py; about a millisecond each, so only the
        CLI's table asks for it).
        Each experiment is decided and acted on under its own config (with_experiment_overrides): ``dry_run`` and
        ``config`` are request-layer values that cannot lift an experiment's own ``dryRun: true``. A dry run is
        reported (audit row, promotion.eligible) once per change of eligibility, not at every scan.
        """
        effective = self.decider.with_dry_run(config or self.config, dry_run)
        tally = _Tally(effective, include_results, include_eta)
        async with self.pool.acquire() as conn:
            await fold_pending_updates(conn, batch_size=self.settings.fold_batch_size)
            running = await conn.fetch(Q["running_experiments"])
            # In chunks: memory and event-loop stalls stay bounded however many experiments there are.
            for start in range(0, len(running), SCAN_CHUNK):
                with collections_paused():
                    await self._scan_chunk(conn, list(running[start : start + SCAN_CHUNK]), tally, actor)
        dry = effective.config.dry_run
        self.effects.scan_completed(tally.scanned, tally.eligible, tally.promoted, dry)
        return {
            "scanned": tally.scanned,
            "eligible": tally.eligible,
            "promoted": tally.promoted,
            "dryRun": dry,
            "results": tally.results,
        }

    async def _scan_chunk(self, conn: Connection, chunk: list[Record], tally: _Tally, actor: str) -> None:
        decided, seen = await self.decide_all(conn, tally.effective, chunk)
        # The daemon's evaluations keep last decisions current; its reconciliation scan rewrites only those that are
        # missing, stale, or whose eligibility changed (building them is most of a scan's cost).
        fresh: dict[int, bool] = (
            {}
            if tally.include_results
            else {
                r["experiment_id"]: r["eligible"]
                for r in await conn.fetch(Q["fresh_states"], [e["id"] for e in chunk], SCAN_STATE_MIN_AGE_S)
            }
        )
        # Experiments whose stored decision covers this read and says the same eligibility: storing the decision
        # again would write nothing (record_evaluations_bulk), and a dry run of an eligible one was reported when it
        # became eligible. Most of an unchanged scan's cost was building, encoding and sending those decisions.
        covered = await self._covered(conn, seen)
        checks: dict[int, CheckResult] = {}
        to_record: list[Decision] = []
        projections: list[tuple[ScanItem, EtaRequest]] = []
        started = {e["id"]: e["started_at"] for e in chunk}
        for i, (decision, cfg) in enumerate(decided):
            if i % 500 == 499:
                await anyio.lowlevel.checkpoint()  # let the listener and HTTP server run
            if fresh.get(decision.experiment_id) is decision.eligible and not decision.eligible:
                tally.scanned += 1
                continue
            unchanged = covered.get(decision.experiment_id) is decision.eligible
            if unchanged and not decision.eligible:
                # Of its check data only the winning variant (there is none without a winner) and the metrics are
                # shown (Decision.to_check_data).
                winning = decision.to_check_data()["winningVariant"] if decision.winner is not None else None
                metrics = [metric_json(m) for m in decision.metrics]
            else:
                check = checks[decision.experiment_id] = decision.to_check_data()
                winning, metrics = check["winningVariant"], check["metrics"]
            item: ScanItem = {
                "experimentName": decision.experiment_name,
                "eligible": decision.eligible,
                "confidence": decision.confidence,
                "improvement": decision.improvement,
                "winningVariant": winning,
                "reasons": list(decision.reasons),
                "promoted": False,
                "metrics": metrics,
            }
            if "error" in decision.extra:
                item["error"] = decision.extra["error"]
            elif tally.include_eta:
                when = EtaRequest(check, cfg, "running", started.get(decision.experiment_id), decision.evaluated_at)
                projections.append((item, when))
            if decision.eligible:
                tally.eligible += 1
                if unchanged and (cfg.dry_run or not cfg.enabled):
                    # Its dry run was reported already and nothing changed since: the locked re-check
                    # (promote_locked) would store nothing and report nothing.
                    item["dryRun"] = True
                else:
                    await self._promote_one(conn, decision, cfg, item, tally, actor)
            elif not unchanged:
                to_record.append(decision)
            tally.add(item)
        # Every projection of the chunk in one vectorised pass, for the people reading the results.
        for (item, _), eta in zip(projections, check_etas([r for _, r in projections]), strict=True):
            item["eta"] = eta
        await store.record_many(conn, to_record, history=False, checks=checks, seen=seen)

    @staticmethod
    async def _covered(conn: Connection, seen: dict[int, Seen]) -> dict[int, bool | None]:
        """The experiments among ``seen`` whose stored decision covers what they were read at (covered_states),
        with the stored eligibility."""
        known = [(exp_id, s) for exp_id, s in seen.items() if s.version is not None and s.snapshot is not None]
        if not known:
            return {}
        rows = await conn.fetch(
            Q["covered_states"], [exp_id for exp_id, _ in known], [s.version for _, s in known], known[0][1].snapshot
        )
        return {r["experiment_id"]: r["eligible"] for r in rows}

    async def _promote_one(
        self, conn: Connection, decision: Decision, cfg: AutoPromotionConfig, item: ScanItem, tally: _Tally, actor: str
    ) -> None:
        """An eligible experiment of the scan: promote it (or report its dry run) unless the limit is reached."""
        limit = tally.effective.config.max_concurrent_promotions
        if cfg.enabled and not cfg.dry_run and tally.promoted >= limit:
            item["reasons"] = [f"concurrency limit: {limit} promotion(s) already made in this scan"]
            item["eligible"] = False
            return
        try:
            outcome = await self.promote.promote_locked(
                conn, decision.experiment_id, tally.effective, actor=actor, mode="scan"
            )
        except EngineError as exc:
            item["error"] = exc.message
        except (PostgresError, StatsInputError) as exc:
            item["error"] = f"{type(exc).__name__}: {exc}"
            exp = await conn.fetchrow(Q["experiment_by_id"], decision.experiment_id)
            if exp is not None:
                await self.promote.record_failure(conn, exp, tally.effective, actor, exc)
        else:
            item["dryRun"] = bool(outcome.get("dryRun"))
            if outcome["success"] and not outcome.get("dryRun"):
                tally.promoted += 1
                item["promoted"] = True
                item["promotionId"] = outcome["promotionId"]
            elif not outcome["success"]:
                item["reasons"] = outcome.get("reasons", [])
                if "approvalId" in outcome:
                    item["approvalId"] = outcome["approvalId"]

    async def decide_all(
        self, conn: Connection, effective: EffectiveConfig, experiments: list[Record]
    ) -> tuple[list[DecisionAndConfig], dict[int, Seen]]:
        """Decisions for ``experiments`` (rows of ab_experiments) with the config of each, from three bulk reads;
        what each was read at.

        The snapshot is taken before the reads: every alert visible in it is visible to the alert read too, so the
        stored snapshot never claims an alert the decision did not see. The version is the one the statistics were
        read at."""
        first = await conn.fetchrow(Q["current_snapshot"])
        now, read_snapshot = first["now"], first["snapshot"]
        variant_rows = await conn.fetch(Q["variants_with_stats_for"], [e["id"] for e in experiments])
        alert_rows = await conn.fetch(Q["all_open_critical_alerts"], MAX_ALERT_LOOKBACK_S)
        promo_rows = await conn.fetch(Q["all_active_promotions"])
        versions: dict[int, int] = {e["id"]: 0 for e in experiments}
        variants: dict[int, list[VariantSnapshot]] = {}
        metric_rows: dict[int, Record] = {}
        variant_names: dict[int, str] = {}
        for v in variant_rows:
            versions[v["experiment_id"]] += v["updates_folded"]
            variants.setdefault(v["experiment_id"], []).append(VariantSnapshot.from_row(v, lenient_sketch=True))
            variant_names[v["variant_id"]] = v["name"]
            if v["metric_defs"] is not None:
                metric_rows[v["experiment_id"]] = v
        metrics: dict[int, tuple[MetricSnapshot, ...]] = {
            exp_id: bulk_metric_snapshots(r["metric_defs"], r["metric_sums"], variant_names)
            for exp_id, r in metric_rows.items()
        }
        global_alerts = tuple(
            AlertInfo.from_row(a, global_alert=True) for a in alert_rows if a["experiment_id"] is None
        )
        alerts: dict[int, list[AlertInfo]] = {}
        for a in alert_rows:
            if a["experiment_id"] is not None:
                alerts.setdefault(a["experiment_id"], []).append(AlertInfo.from_row(a, global_alert=False))
        active = {p["experiment_id"]: str(p["id"]) for p in promo_rows}
        in_guard = sum(1 for p in promo_rows if p["in_guard"])
        pairs = [
            (
                exp,
                ExperimentSnapshot(
                    id=exp["id"],
                    name=exp["name"],
                    status=exp["status"],
                    started_at=exp["started_at"],
                    metric_type=exp["metric_type"],
                    priority=exp["priority"],
                    variants=tuple(variants.get(exp["id"], ())),
                    now=now,
                    active_promotion_id=active.get(exp["id"]),
                    critical_alerts=tuple(
                        sorted((*alerts.get(exp["id"], ()), *global_alerts), key=lambda a: a.created_at, reverse=True)
                    ),
                    promotions_in_guard_window=in_guard,
                    metrics=metrics.get(exp["id"], ()),
                ),
            )
            for exp in experiments
        ]
        decided = await self.decider.decide_snapshots(effective, pairs)
        return decided, {exp_id: Seen(version, read_snapshot) for exp_id, version in versions.items()}


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No cyclic garbage collection while a chunk is decided: it allocates hundreds of thousands of short-lived,
    acyclic objects (the decisions and, with several metrics, each metric's results), whose allocations would
    trigger collections that walk every live decision again and again (a quarter of a 5-metric scan's time). Reference
    counting still frees them; the collector runs again after the chunk, which bounds what waits for it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Tally:
    """A scan's running counts and results."""

    def __init__(self, effective: EffectiveConfig, include_results: bool, include_eta: bool = False) -> None:
        self.effective = effective
        self.include_results = include_results
        self.include_eta = include_eta and include_results
        self.scanned = 0
        self.eligible = 0
        self.promoted = 0
        self.results: list[ScanItem] = []

    def add(self, item: ScanItem) -> None:
        if self.include_results or item.get("error") or item["promoted"]:
            self.results.append(item)
        self.scanned += 1
