"""Reading experiments and deciding on them: each experiment under its own config (with_experiment_overrides), one
or many at once (many share vectorised statistics). Shared by promote, evaluate and scan."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import anyio.lowlevel

from worker.config import (
    AutoPromotionConfig,
    ConfigError,
    EffectiveConfig,
    Settings,
    with_experiment_overrides,
    with_request_overrides,
)
from worker.db.connect import Connection, Record
from worker.db.sql import Q
from worker.db.store import Seen
from worker.decide import (
    Decision,
    ExperimentSnapshot,
    VariantSnapshot,
    failed_decision,
    metric_definitions,
    safe_decide,
)
from worker.domain.errors import ExperimentNotFound, InvalidRequest
from worker.domain.metric_rule import analyze_metrics_many
from worker.stats import ExperimentAnalysis, StatsInputError, analyze_many
from worker.stats.metrics import MetricAnalysis

# The longest alert lookback a config may set (worker/config validates alertLookbackHours up to 90 days).
MAX_ALERT_LOOKBACK_S = 24 * 90 * 3600.0

DecisionAndConfig = tuple[Decision, AutoPromotionConfig]


class Decider:
    """The config, the read and the decision of one experiment (or many)."""

    def __init__(self, settings: Settings, config: EffectiveConfig) -> None:
        self.settings = settings
        self.config = config

    @staticmethod
    def experiment_config(effective: EffectiveConfig, overrides: Mapping[str, Any] | None) -> AutoPromotionConfig:
        """The effective config with the experiment's own ``config`` column applied (ConfigError if invalid).

        Every decision and action takes its config from here alone (worker.config.with_experiment_overrides): no
        caller passes a value, such as dryRun, that could beat the experiment's own.
        """
        return with_experiment_overrides(effective, overrides)

    def cfg_or_base(self, effective: EffectiveConfig, overrides: Mapping[str, Any] | None) -> AutoPromotionConfig:
        """experiment_config, or the base config when the experiment's own is invalid."""
        try:
            return self.experiment_config(effective, overrides)
        except ConfigError:
            return effective.config

    def lookback_s(self, effective: EffectiveConfig, overrides: Mapping[str, Any] | None) -> float:
        """The experiment's alert lookback, in seconds."""
        return self.cfg_or_base(effective, overrides).safety_checks.alert_lookback_hours * 3600.0

    @staticmethod
    def with_dry_run(effective: EffectiveConfig, dry_run: bool | None) -> EffectiveConfig:
        """A caller's explicit dry_run as what it is, one more request-layer value: it cannot beat an experiment's
        own dryRun: true (worker.config.with_experiment_overrides)."""
        if dry_run is None:
            return effective
        try:
            return with_request_overrides(effective, {"dryRun": dry_run})
        except ConfigError as exc:
            raise InvalidRequest("invalid configuration: " + "; ".join(exc.errors), {"field": "dryRun"}) from None

    async def find(self, conn: Connection, name: str) -> Record:
        """The ab_experiments row named ``name``; InvalidRequest or ExperimentNotFound."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest("experimentName is required", {"field": "experimentName"})
        row = await conn.fetchrow(Q["experiment_by_name"], name)
        if row is None:
            raise ExperimentNotFound(f"no experiment named {name[:200]!r}", {"experimentName": name[:200]})
        return row

    async def snapshot(
        self, conn: Connection, experiment_id: int, lookback_s: float
    ) -> tuple[ExperimentSnapshot, Seen] | None:
        """The snapshot of one experiment and what it was read at."""
        row = await conn.fetchrow(Q["experiment_snapshot"], experiment_id, lookback_s)
        return None if row is None else (ExperimentSnapshot.from_row(row), Seen.of(row))

    def decide(
        self,
        snapshot: ExperimentSnapshot,
        effective: EffectiveConfig,
        overrides: Mapping[str, Any] | None,
        analysis: ExperimentAnalysis | None = None,
        metrics: tuple[MetricAnalysis, ...] | None = None,
    ) -> DecisionAndConfig:
        """The decision under the experiment's config (a failed decision when that config is invalid)."""
        try:
            cfg = self.experiment_config(effective, overrides)
        except ConfigError as exc:
            cfg = effective.config
            return failed_decision(snapshot, cfg, "invalid per-experiment config: " + "; ".join(exc.errors)), cfg
        return safe_decide(snapshot, cfg, *((analysis, metrics) if not overrides else (None, None))), cfg

    async def decide_snapshots(
        self, effective: EffectiveConfig, pairs: list[tuple[Mapping[str, Any], ExperimentSnapshot]]
    ) -> list[DecisionAndConfig]:
        """Decide each (experiment row, snapshot); many at once share vectorised statistics."""
        analyses = (
            vectorised_analyses([e for e, _ in pairs], {s.id: list(s.variants) for _, s in pairs}, effective.config)
            if len(pairs) > 50
            else {}
        )
        metrics = vectorised_metric_analyses(pairs, effective.config) if len(pairs) > 50 else {}
        out: list[DecisionAndConfig] = []
        for i, (exp, snapshot) in enumerate(pairs):
            if i % 250 == 249:
                await anyio.lowlevel.checkpoint()  # thousands of decisions must not stall the event loop
            try:
                out.append(
                    self.decide(snapshot, effective, exp["config"], analyses.get(snapshot.id), metrics.get(snapshot.id))
                )
            except Exception as exc:
                why = f"evaluation failed: {type(exc).__name__}: {exc}"
                out.append((failed_decision(snapshot, effective.config, why), effective.config))
        return out


def vectorised_analyses(
    experiments: list[Mapping[str, Any]], variants: Mapping[int, list[VariantSnapshot]], cfg: AutoPromotionConfig
) -> dict[int, ExperimentAnalysis]:
    """Statistics of many experiments in a few numpy calls (grouped by variant count and metric type).

    Only experiments under the base config with a control first and at least one treatment; any group the
    vectorised path refuses falls back to the scalar path (decide computes it), so results never differ.
    """
    tuning = cfg.sequential_tuning
    if isinstance(tuning, str):
        return {}  # auto: each experiment has an N* of its own (domain/tuning.py); decide() computes each
    groups: dict[tuple[int, str], list[tuple[int, list[VariantSnapshot]]]] = {}
    for exp in experiments:
        vs = variants.get(exp["id"], [])
        if exp["config"] or len(vs) < 2 or not vs[0].is_control or sum(v.is_control for v in vs) != 1:
            continue
        groups.setdefault((len(vs), exp["metric_type"]), []).append((exp["id"], vs))
    out: dict[int, ExperimentAnalysis] = {}
    for (_, metric_type), members in groups.items():
        exposures = [[v.exposures for v in vs] for _, vs in members]
        mean_metric = metric_type == "mean"
        try:
            many = analyze_many(
                exposures,
                None if mean_metric else [[v.conversions for v in vs] for _, vs in members],
                value_sum=[[v.value_sum for v in vs] for _, vs in members] if mean_metric else None,
                value_sum_sq=[[v.value_sum_sq for v in vs] for _, vs in members] if mean_metric else None,
                weights=[[v.weight for v in vs] for _, vs in members],
                metric_type="mean" if mean_metric else "conversion",
                method=cfg.method,
                alpha=cfg.alpha,
                n_star=tuning,
                correction=cfg.correction,
                srm_threshold=cfg.safety_checks.srm_threshold,
            )
        except StatsInputError:
            continue  # one impossible row spoils the batch: decide() reports each on its own
        for e, (exp_id, vs) in enumerate(members):
            out[exp_id] = many.experiment(e, [v.name for v in vs])
    return out


def vectorised_metric_analyses(
    pairs: list[tuple[Mapping[str, Any], ExperimentSnapshot]], cfg: AutoPromotionConfig
) -> dict[Hashable, tuple[MetricAnalysis, ...]]:
    """The several-metrics statistics of many experiments in a few numpy calls (analyze_metrics_many).

    Only experiments with ab_metrics rows under the base config, with one control and a treatment; the others (and
    any the vectorised path refuses) are analysed by decide() itself, so results never differ."""
    tuning = cfg.sequential_tuning
    if isinstance(tuning, str):
        return {}  # auto: each experiment has an N* of its own (domain/tuning.py); decide() computes each
    items = []
    for exp, s in pairs:
        if exp["config"] or not s.metrics:
            continue
        controls = [v for v in s.variants if v.is_control]
        treatments = [v.name for v in s.variants if not v.is_control]
        if len(controls) != 1 or not treatments:
            continue
        items.append((s.id, metric_definitions(s), controls[0].name, treatments))
    if not items:
        return {}
    return analyze_metrics_many(items, method=cfg.method, alpha=cfg.alpha, n_star=tuning, correction=cfg.correction)
