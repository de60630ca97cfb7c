"""Prometheus metrics: every number an operator would ask about, in one registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

UPDATES_FOLDED = Counter(
    "autopromote_updates_folded_total", "Metric updates folded into per-variant statistics", registry=REGISTRY
)
FOLD_PARKED = Counter(
    "autopromote_fold_parked_updates_total",
    "Metric updates the fold moved to ab_metric_dead_letters because their totals would overflow",
    registry=REGISTRY,
)
QUEUE_BACKLOG = Gauge(
    "autopromote_queue_backlog", "Metric updates waiting in ab_metric_updates (sampled)", registry=REGISTRY
)
EVALUATIONS = Counter(
    "autopromote_evaluations_total", "Experiment evaluations, by outcome", ["outcome"], registry=REGISTRY
)
PROMOTIONS = Counter("autopromote_promotions_total", "Committed promotions", ["mode"], registry=REGISTRY)
ROLLBACKS = Counter("autopromote_rollbacks_total", "Committed rollbacks, by trigger", ["trigger"], registry=REGISTRY)
SAFETY_CHECK_FAILURES = Counter(
    "autopromote_safety_check_failures_total", "Failed safety checks, by check", ["check"], registry=REGISTRY
)
DECISION_LATENCY = Histogram(
    "autopromote_decision_latency_seconds",
    "From the commit of the metric update to the end of the evaluation it triggered",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
LISTENER_RECONNECTS = Counter(
    "autopromote_listener_reconnects_total", "Reconnections of the LISTEN connection", registry=REGISTRY
)
LISTENER_CONNECTED = Gauge("autopromote_listener_connected", "1 while the LISTEN connection is up", registry=REGISTRY)
NOTIFICATIONS = Counter(
    "autopromote_notifications_total",
    "Notification delivery attempts, by channel and outcome (sent, retry, dead)",
    ["channel", "outcome"],
    registry=REGISTRY,
)
NOTIFICATIONS_DEAD = Counter(
    "autopromote_notifications_dead_total",
    "Notifications dead-lettered after the last attempt",
    ["channel"],
    registry=REGISTRY,
)
GUARD_BREACHES = Counter(
    "autopromote_guard_breaches_total", "Post-promotion guard breaches, by metric", ["metric"], registry=REGISTRY
)
APPROVALS_DECIDED = Counter(
    "autopromote_approvals_decided_total",
    "Approvals decided: approved, declined (by an operator), expired (declined by the timeout), closed (approved, "
    "but no longer eligible)",
    ["outcome"],
    registry=REGISTRY,
)
ROLLOUT_TRANSITIONS = Counter(
    "autopromote_rollout_transitions_total",
    "Committed rollout transitions by this replica (advanced, completed, paused, resumed, awaiting_approval)",
    ["action"],
    registry=REGISTRY,
)
SCANS = Counter("autopromote_scans_total", "Reconciliation scans run by this replica", registry=REGISTRY)
SCAN_DURATION = Histogram(
    "autopromote_scan_duration_seconds",
    "Duration of reconciliation scans",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "autopromote_api_requests_total",
    "HTTP API requests, by route and status",
    ["route", "status"],
    registry=REGISTRY,
)
DB_RETRIES = Counter(
    "autopromote_db_retries_total",
    "Failed attempts of a long-running task retried after a transient database error, by task",
    ["task"],
    registry=REGISTRY,
)
