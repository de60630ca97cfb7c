"""The daemon's evaluation: decide on the folded statistics and, when eligible, promote — one experiment per
transaction (``evaluate_experiment``) or many (``evaluate_many``), skipping rows another transaction holds."""

from __future__ import annotations

import structlog

from worker.config import EffectiveConfig
from worker.db import store
from worker.db.connect import Connection, Pool, PostgresError
from worker.db.sql import Q
from worker.db.store import Seen
from worker.decide import Decision, ExperimentSnapshot
from worker.domain.results import Evaluation
from worker.retry import is_transient
from worker.services.deciding import MAX_ALERT_LOOKBACK_S, Decider
from worker.services.effects import Effects, count_evaluation
from worker.services.promote import Decided, PromoteService
from worker.stats import StatsInputError

log = structlog.get_logger("worker.engine")


def transient_db_error(exc: BaseException) -> bool:
    """True for a database error worth retrying as it is (worker.retry's one list), false for one that may be the
    data's."""
    return isinstance(exc, PostgresError) and is_transient(exc)


class EvaluateService:
    """evaluate_experiment and evaluate_many."""

    def __init__(
        self, pool: Pool, config: EffectiveConfig, decider: Decider, promote: PromoteService, effects: Effects
    ) -> None:
        self.pool = pool
        self.config = config
        self.decider = decider
        self.promote = promote
        self.effects = effects

    async def evaluate_experiment(self, experiment_id: int, *, actor: str = "autopromote") -> Evaluation:
        """The daemon's step: decide on the folded statistics and, when eligible, promote — one transaction.

        Returns action "busy" when another transaction (another replica) holds the experiment: retry later;
        "skipped" when it is not running (promoted ones are the guard's).
        """
        effective = self.config
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    outcome = await self._lock_and_act(conn, experiment_id, effective, actor)
            except (PostgresError, StatsInputError) as exc:
                if not transient_db_error(exc):  # a database that is restarting etc. is retried, not reported
                    exp = await conn.fetchrow(Q["experiment_by_id"], experiment_id)
                    if exp is not None:
                        await self.promote.record_failure(conn, exp, effective, actor, exc)
                raise
        self.effects.evaluated(outcome)
        if outcome.action == "promoted":
            assert outcome.promotion is not None
            self.effects.promoted(outcome.experiment_name, outcome.promotion, "daemon")
        return outcome

    async def _lock_and_act(
        self, conn: Connection, experiment_id: int, effective: EffectiveConfig, actor: str
    ) -> Evaluation:
        # Lock and read in one round trip. Alerts over the longest lookback a config may set: decide() keeps those
        # inside the experiment's own.
        row = await conn.fetchrow(Q["try_lock_snapshot"], experiment_id, MAX_ALERT_LOOKBACK_S)
        if row is None:
            [outcome] = await self._unlocked(conn, [experiment_id])
            return outcome
        if row["status"] != "running":
            return Evaluation(experiment_id, row["name"], None, "skipped")
        snapshot = ExperimentSnapshot.from_row(row)
        decision, cfg = self.decider.decide(snapshot, effective, row["config"])
        return await self.promote.act_daemon(conn, Decided(row, snapshot, decision, cfg, effective, actor), alone=True)

    async def evaluate_many(self, experiment_ids: list[int], *, actor: str = "autopromote") -> list[Evaluation]:
        """The daemon's batch step: evaluate many experiments in one transaction.

        One statement locks the running ones (``SKIP LOCKED``: one held elsewhere comes back "busy") and reads their
        snapshots; the not-eligible ones are recorded in one statement; an eligible one is promoted on its locked
        row in the same transaction. Experiments that are not running come back "skipped" (promoted ones are the
        guard's). Should the database refuse the batch for a reason that may be one experiment's (not a transient
        one: those propagate, and the caller retries the batch), each experiment is evaluated again in a
        transaction of its own, so that one experiment's failure never holds the others back.
        """
        if len(experiment_ids) == 1:
            return [await self.evaluate_experiment(experiment_ids[0], actor=actor)]  # a failure is recorded at once
        try:
            out, promoted = await self._evaluate_batch(experiment_ids, actor)
        except (PostgresError, StatsInputError) as exc:
            if transient_db_error(exc):
                raise
            log.warning(
                "evaluation.batch_failed",
                error=f"{type(exc).__name__}: {exc}",
                experiments=len(experiment_ids),
                retry="one transaction per experiment",
            )
            return [await self._evaluate_alone(exp_id, actor) for exp_id in experiment_ids]
        for e in out:
            if e.decision is not None and e.action != "fresh":
                count_evaluation(e.decision)
        for outcome in promoted:
            assert outcome.promotion is not None
            self.effects.promoted(outcome.experiment_name, outcome.promotion, "daemon")
        return out

    async def _evaluate_alone(self, experiment_id: int, actor: str) -> Evaluation:
        """evaluate_experiment; its own failure (already recorded and reported) comes back as "failed", for the
        reconciliation scan to try again; a transient one propagates."""
        try:
            return await self.evaluate_experiment(experiment_id, actor=actor)
        except (PostgresError, StatsInputError) as exc:
            if transient_db_error(exc):
                raise
            return Evaluation(experiment_id, "?", None, "failed")

    async def _unlocked(self, conn: Connection, experiment_ids: list[int]) -> list[Evaluation]:
        """The outcome for experiments the daemon's lock-and-read did not return: "skipped" (gone or not running:
        promoted ones are the guard's), "fresh" (running, and its stored decision covers everything this statement
        sees: another replica evaluated it already, or nothing changed), or "busy" (held by another transaction:
        retry). A fold that commits after this statement is marked by its folder, so "fresh" loses nothing."""
        found = {r["id"]: r for r in await conn.fetch(Q["unlocked_experiments"], experiment_ids)}
        out: list[Evaluation] = []
        for exp_id in experiment_ids:
            r = found.get(exp_id)
            if r is None or r["status"] != "running":
                out.append(Evaluation(exp_id, r["name"] if r else "?", None, "skipped"))
            else:
                out.append(Evaluation(exp_id, r["name"], None, "busy" if r["due"] else "fresh"))
        return out

    async def _evaluate_batch(self, experiment_ids: list[int], actor: str) -> tuple[list[Evaluation], list[Evaluation]]:
        effective = self.config
        out: list[Evaluation] = []
        promoted: list[Evaluation] = []
        async with self.pool.acquire() as conn, conn.transaction():
            locked = list(await conn.fetch(Q["lock_running_snapshots"], experiment_ids, MAX_ALERT_LOOKBACK_S))
            locked_ids = {r["id"] for r in locked}
            others = [i for i in experiment_ids if i not in locked_ids]
            if others:
                out.extend(await self._unlocked(conn, others))
            pairs = [(row, ExperimentSnapshot.from_row(row)) for row in locked]
            decided = await self.decider.decide_snapshots(effective, pairs)
            plain: list[Decision] = []
            for (row, snapshot), (decision, cfg) in zip(pairs, decided, strict=True):
                if not decision.eligible:
                    plain.append(decision)
                    continue
                outcome = await self.promote.act_daemon(
                    conn, Decided(row, snapshot, decision, cfg, effective, actor), alone=False
                )
                out.append(outcome)
                if outcome.action == "promoted":
                    promoted.append(outcome)
            # Only decisions in this transaction (nothing was promoted or audited): its commit need not wait for the
            # disk (worker.db.fold.RELAXED_COMMIT).
            stored = await store.record_many(
                conn, plain, relaxed=len(plain) == len(pairs), seen={row["id"]: Seen.of(row) for row, _ in pairs}
            )
            out.extend(
                Evaluation(d.experiment_id, d.experiment_name, d, "evaluated" if d.experiment_id in stored else "fresh")
                for d in plain
            )
        return out, promoted
