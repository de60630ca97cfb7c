"""`autopromote demo`: every path of the product, live, on an embedded PostgreSQL.

Ten experiments, a traffic simulator whose users are assigned by the OpenFeature provider
(clients/openfeature-python, the same assignment as ab_assign) and whose metrics go in through ab_record_metrics
in real time, the worker itself, and a local sink that prints each notification as it is delivered. Beside them,
a CUPED experiment and its unadjusted twin (CUPED_TWINS): the same users, one sent with each user's pre-exposure
value.
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio
from aiohttp import web

from worker.db.connect import Connection, Pool, Record
from worker.db.sql import DEMO

TICK_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    rate: float  # conversion rate
    error_rate: float = 0.005
    latency_ms: float = 120.0  # median latency (log-normal)
    weight: float = 1.0
    traffic_share: float | None = None  # actual share of traffic when it differs from the weight (SRM)
    order_value: float = 50.0  # mean revenue of a converted visit (the guardrail scenario's revenue metric)


@dataclass(frozen=True, slots=True)
class Guardrail:
    """A revenue-per-visit guardrail (an ab_metrics row), fed through ab_record_metric."""

    name: str
    margin: float
    description: str


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    story: str  # what the demo shows with it
    arms: tuple[Arm, ...]
    expected: str
    post_promotion_error_rate: float | None = None  # the guard scenario: errors jump after promotion
    # A ramp scenario: the winner's errors jump (to post_promotion_error_rate) once it serves this share (%) or more
    ramp_breach_share: float | None = None
    manual_rollback_after: float | None = None  # seconds after promotion
    config: dict[str, Any] = field(default_factory=dict)
    guardrail: Guardrail | None = None


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("homepage-cta", "a clear winner", (Arm("control", 0.10), Arm("variant-b", 0.135)), "promoted"),
    Scenario(
        "button-color-aa",
        "an A/A test: identical arms",
        (Arm("control", 0.10), Arm("variant-b", 0.10)),
        "never promoted",
    ),
    Scenario(
        "search-ranking",
        "a winner with too many errors",
        (Arm("control", 0.10), Arm("variant-b", 0.14, error_rate=0.08)),
        "blocked by Error Rate Check",
    ),
    Scenario(
        "signup-flow",
        "a sample-ratio mismatch (50/50 weights, 60/40 traffic)",
        (Arm("control", 0.10, traffic_share=0.6), Arm("variant-b", 0.14, traffic_share=0.4)),
        "blocked by Traffic Balance Check",
    ),
    Scenario(
        "legacy-checkout",
        "a winner excluded by configuration (excludedExperiments: legacy-*)",
        (Arm("control", 0.10), Arm("variant-b", 0.14)),
        "excluded",
    ),
    Scenario(
        "checkout-flow",
        "promoted, then its error rate jumps: the guard rolls it back",
        (Arm("control", 0.10), Arm("variant-b", 0.14)),
        "rolled back by the guard",
        post_promotion_error_rate=0.15,
    ),
    Scenario(
        "pricing-banner",
        "promoted, then rolled back by hand with ab_request_rollback",
        (Arm("control", 0.10), Arm("variant-b", 0.14)),
        "rolled back by hand",
        manual_rollback_after=3.0,
    ),
    Scenario(
        "checkout-upsell",
        "a winner on conversion blocked by its revenue guardrail (smaller orders: -8% revenue per visit)",
        (Arm("control", 0.10, order_value=50.0), Arm("variant-b", 0.135, order_value=34.0)),
        "blocked by guardrail revenue_per_visit",
        guardrail=Guardrail("revenue_per_visit", 0.02, "revenue per visit; may be at most 2% worse"),
    ),
    Scenario(
        "onboarding-ramp",
        "promoted step by step (rollout.mode ramp: 50 -> 75 -> 95 -> 100), each step guarded against the control",
        (Arm("control", 0.10), Arm("variant-b", 0.135)),
        "ramped to 100%",
        config={
            "rollout": {"mode": "ramp", "steps": [75], "stepMinutes": 0.03, "stepMinExposures": 600},
            "guard": {"guardHours": 0.0015},
        },
    ),
    Scenario(
        "checkout-ramp",
        "ramped (50 -> 60 -> 80 -> 95 -> 100), its errors jump at the second step: the step's guard rolls it back",
        (Arm("control", 0.10), Arm("variant-b", 0.135)),
        "rolled back at step 2",
        post_promotion_error_rate=0.12,
        ramp_breach_share=80.0,
        config={
            "rollout": {"mode": "ramp", "steps": [60, 80], "stepMinutes": 0.03, "stepMinExposures": 600},
            "guard": {"guardHours": 0.05},
        },
    ),
)


@dataclass(frozen=True, slots=True)
class CupedTwin:
    """A ``mean`` experiment on order value per user, fed by CupedTwinTraffic; ``covariate``: sent with each
    user's order value of the month before the experiment (CUPED), or the very same data without it."""

    name: str
    story: str
    expected: str
    covariate: bool
    # Both twins need the same bar: 500 users per arm and a 1% lift (the demo's numbers are small, not its rule).
    config: dict[str, Any] = field(
        default_factory=lambda: {"thresholds": {"minSampleSize": 500, "minImprovement": 1.0}}
    )


CUPED_TWINS: tuple[CupedTwin, ...] = (
    CupedTwin(
        "order-value-cuped",
        "CUPED: +3% order value, sent with last month's order value (correlation 0.8)",
        "promoted first",
        covariate=True,
    ),
    CupedTwin(
        "order-value-plain",
        "the same users and data as order-value-cuped, without the covariate",
        "promoted later (or still waiting)",
        covariate=False,
    ),
)
TWIN_USERS_PER_TICK = 60  # per arm
TWIN_MEAN, TWIN_SD, TWIN_LIFT, TWIN_RHO = 50.0, 20.0, 0.03, 0.8


class CupedTwinTraffic:
    """Users of both twins: each tick, TWIN_USERS_PER_TICK per arm, order value y (+3% in variant-b) and last
    month's order value x, correlated TWIN_RHO. One set of users per tick goes to every twin still running: the
    CUPED one gets Σx, Σx², Σxy too, the other only Σy, Σy², so any difference in their decisions is CUPED's."""

    ARMS = (("control", 1.0), ("variant-b", 1.0 + TWIN_LIFT))

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def calls(self, running: set[str]) -> list[tuple[Any, ...]]:
        """One ab_record_metrics call (record_metrics_covariate's arguments) per running twin and arm."""
        out: list[tuple[Any, ...]] = []
        for arm, factor in self.ARMS:
            y_s = y_ss = x_s = x_ss = xy_s = 0.0
            for _ in range(TWIN_USERS_PER_TICK):
                z = self.rng.gauss(0.0, 1.0)
                noise = self.rng.gauss(0.0, 1.0)
                y = max(0.0, TWIN_MEAN * factor + TWIN_SD * (TWIN_RHO * z + math.sqrt(1 - TWIN_RHO**2) * noise))
                x = max(0.0, TWIN_MEAN + TWIN_SD * z)
                y_s, y_ss, x_s, x_ss, xy_s = y_s + y, y_ss + y * y, x_s + x, x_ss + x * x, xy_s + x * y
            for twin in CUPED_TWINS:
                if twin.name in running:
                    pre = (x_s, x_ss, xy_s) if twin.covariate else (None, None, None)
                    out.append((twin.name, arm, TWIN_USERS_PER_TICK, y_s, y_ss, *pre))
        return out


DEMO_CONFIG_ENV = {
    # The demo compresses days into a minute: experiments "started" two days ago, the guard watches for an
    # hour and acts after a few hundred exposures, and the reconciliation scan runs every 5 seconds.
    "AUTO_PROMOTION_EXCLUDED": "legacy-*",
    "AUTO_PROMOTION_GUARD_HOURS": "1",
    "AUTO_PROMOTION_GUARD_MIN_SAMPLES": "300",
    "AUTO_PROMOTION_SCAN_INTERVAL": "5",
    "AUTO_PROMOTION_POLL_INTERVAL": "1",
    "AUTO_PROMOTION_NOTIFY_RATE": "20",
    "AUTO_PROMOTION_NOTIFY_BACKOFF": "0.2",
    # Room for every demo winner inside the guard window at once (the default, 5, is about real traffic).
    "AUTO_PROMOTION_MAX_CONCURRENT": "10",
}


async def create_scenarios(conn: Connection, scenarios: tuple[Scenario, ...] = SCENARIOS) -> None:
    """Insert the demo experiments (running for two days already) and their variants."""
    async with conn.transaction():
        for s in scenarios:
            exp_id = await conn.fetchval(
                DEMO["create_experiment"],
                s.name,
                s.story,
                s.config,
            )
            for i, arm in enumerate(s.arms):
                await conn.execute(
                    DEMO["create_variant"],
                    exp_id,
                    arm.name,
                    i == 0,
                    arm.weight,
                )
            if s.guardrail is not None:
                g = s.guardrail
                await conn.execute(DEMO["create_guardrail"], exp_id, g.name, g.margin, g.description)
        for twin in CUPED_TWINS:
            exp_id = await conn.fetchval(DEMO["create_mean_experiment"], twin.name, twin.story, twin.config)
            for i, (arm_name, _) in enumerate(CupedTwinTraffic.ARMS):
                await conn.execute(DEMO["create_variant"], exp_id, arm_name, i == 0, 1.0)


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 0 or p <= 0:
        return 0
    mean = n * p
    if n < 50:
        return sum(1 for _ in range(n) if rng.random() < p)
    # Normal approximation is plenty for a demo at these sizes.
    return max(0, min(n, round(rng.gauss(mean, math.sqrt(mean * (1 - p))))))


class TrafficSimulator:
    """Simulated users of an application that asks the OpenFeature provider which variant each one sees.

    Every tick, ``users_per_tick`` users (ids drawn from a population, so the same users come back) visit each
    experiment; each is assigned by ``AutoPromoteProvider`` exactly as a real service would, so a promotion or
    a rollback changes the traffic the moment the provider hears of it. Users served the caller's default (a
    rolled-back or stopped experiment) are not exposures. A visit is ``visits_per_user`` exposures; their
    conversions, errors and latencies follow the arm's rates and go in through ab_record_metrics.
    """

    DOMAIN = "autopromote-demo"

    def __init__(
        self,
        pool: Pool,
        database_url: str,
        scenarios: tuple[Scenario, ...] = SCENARIOS,
        *,
        users_per_tick: int = 150,
        visits_per_user: int = 4,
        population: int = 50_000,
        seed: int = 7,
    ) -> None:
        self.pool = pool
        self.database_url = database_url
        self.scenarios = {s.name: s for s in scenarios}
        self.users_per_tick = users_per_tick
        self.visits = visits_per_user
        self.population = population
        self.rng = random.Random(seed)
        self.recorded_exposures = 0
        self.twins = CupedTwinTraffic(seed + 1)
        self.provider: Any = None
        self._keep: dict[str, dict[str, float]] = {}  # SRM scenarios: share of each arm's users that get counted
        for s in scenarios:
            if any(a.traffic_share is not None for a in s.arms):
                total_weight = sum(a.weight for a in s.arms)
                ratios = {
                    a.name: (a.traffic_share or a.weight / total_weight) / (a.weight / total_weight) for a in s.arms
                }
                top = max(ratios.values())
                self._keep[s.name] = {name: r / top for name, r in ratios.items()}

    async def start(self) -> None:
        """Connect the provider (its own thread and connection) and wait for its first load."""
        from ab_autopromote_openfeature import AutoPromoteProvider
        from openfeature import api

        self.provider = AutoPromoteProvider(self.database_url, refresh_interval=5.0)
        await anyio.to_thread.run_sync(self.provider.initialize)
        api.set_provider(self.provider, self.DOMAIN)

    async def close(self) -> None:
        if self.provider is not None:
            await anyio.to_thread.run_sync(self.provider.shutdown)

    def assign_users(self) -> dict[tuple[str, str], int]:
        """(experiment, variant) -> users this tick, each assigned through the OpenFeature client."""
        from openfeature import api
        from openfeature.evaluation_context import EvaluationContext

        client = api.get_client(self.DOMAIN)
        counts: dict[tuple[str, str], int] = {}
        for name, scenario in self.scenarios.items():
            control = scenario.arms[0].name
            keep = self._keep.get(name)
            exp = self.provider.experiment(name) if self.provider is not None else None
            promoted = exp is not None and exp.status == "promoted"
            for _ in range(self.users_per_tick):
                user = f"user-{self.rng.randrange(self.population)}"
                details = client.get_string_details(name, control, EvaluationContext(targeting_key=user))
                if details.variant is None:  # the caller's default: not part of the experiment
                    continue
                if keep is not None and not promoted and self.rng.random() >= keep.get(details.variant, 1.0):
                    continue  # the sample-ratio-mismatch scenario: some of this arm's visits are never logged
                counts[(name, details.variant)] = counts.get((name, details.variant), 0) + 1
        return counts

    async def tick(self) -> None:
        if self.provider is None:
            await self.start()
        # The assignments are plain CPU work: off the event loop the worker shares with us.
        users = await anyio.to_thread.run_sync(self.assign_users)
        calls: list[tuple[Any, ...]] = []
        metric_calls: list[tuple[Any, ...]] = []
        for (name, variant), n_users in users.items():
            scenario = self.scenarios[name]
            arm = next((a for a in scenario.arms if a.name == variant), None)
            if arm is None:
                continue
            exp = self.provider.experiment(name)
            promoted = exp is not None and exp.status == "promoted"
            n = n_users * self.visits
            error_rate = arm.error_rate
            if promoted and scenario.post_promotion_error_rate is not None:
                if scenario.ramp_breach_share is None:
                    error_rate = scenario.post_promotion_error_rate
                elif variant != scenario.arms[0].name and _served_share(exp, variant) >= scenario.ramp_breach_share:
                    error_rate = scenario.post_promotion_error_rate
            latencies = [round(self.rng.lognormvariate(math.log(arm.latency_ms), 0.35), 2) for _ in range(min(n, 40))]
            conversions = _binomial(self.rng, n, arm.rate)
            calls.append((name, variant, n, conversions, _binomial(self.rng, n, error_rate), latencies))
            if scenario.guardrail is not None:
                # A converted visit spends a gamma-distributed order value, the others nothing: the per-visit sums.
                orders = [self.rng.gammavariate(4.0, arm.order_value / 4.0) for _ in range(conversions)]
                metric_calls.append(
                    (name, variant, scenario.guardrail.name, n, sum(orders), sum(x * x for x in orders))
                )
        twin_calls = self.twins.calls(self._running_twins())
        if not calls and not twin_calls:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            if calls:
                await conn.executemany(DEMO["record_metrics"], calls)
            if metric_calls:
                await conn.executemany(DEMO["record_metric"], metric_calls)
            if twin_calls:
                await conn.executemany(DEMO["record_metrics_covariate"], twin_calls)
        self.recorded_exposures += sum(c[2] for c in calls) + sum(c[2] for c in twin_calls)

    def _running_twins(self) -> set[str]:
        """The twins a real application would still split: not yet promoted (as the provider last heard)."""
        out = set()
        for twin in CUPED_TWINS:
            exp = self.provider.experiment(twin.name) if self.provider is not None else None
            if exp is None or exp.status == "running":
                out.add(twin.name)
        return out

    async def run(self, stop: anyio.Event) -> None:
        try:
            while not stop.is_set():
                started = time.monotonic()
                await self.tick()
                with anyio.move_on_after(max(0.0, TICK_SECONDS - (time.monotonic() - started))):
                    await stop.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()


def _served_share(exp: Any, variant: str) -> float:
    """The share of traffic (percent) the provider serves ``variant`` of ``exp`` now."""
    if exp is None or variant not in exp.variants:
        return 0.0
    i = exp.variants.index(variant)
    return 100.0 * (float(exp.ends[i]) - (float(exp.ends[i - 1]) if i else 0.0))


async def manual_rollbacks(pool: Pool, stop: anyio.Event, scenarios: tuple[Scenario, ...] = SCENARIOS) -> None:
    """What an operator would do from psql: ab_request_rollback() a few seconds after the promotion."""
    pending = {s.name: s.manual_rollback_after for s in scenarios if s.manual_rollback_after is not None}
    while pending and not stop.is_set():
        rows = await pool.fetch(
            DEMO["promotions_to_roll_back"],
            list(pending),
        )
        for r in rows:
            delay = pending.get(r["experiment_name"])
            if delay is not None and r["age"] >= delay:
                await pool.execute(
                    DEMO["request_rollback"],
                    r["id"],
                    "conversion drop reported by the support team (demo: rolled back by hand)",
                )
                pending.pop(r["experiment_name"], None)
        with anyio.move_on_after(0.5):
            await stop.wait()


# ------------------------------------------------------------------------------------------- notifications
@dataclass(slots=True)
class NotificationSink:
    """A local stand-in for Slack and a webhook receiver that prints what it gets."""

    lines: list[str] = field(default_factory=list)
    on_line: Callable[[str], None] | None = None
    count: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/slack", self._slack)
        app.router.add_post("/webhook", self._webhook)
        return app

    def _emit(self, line: str) -> None:
        self.count += 1
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    async def _slack(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._emit("slack    " + str(body.get("text", ""))[:150])
        return web.Response(text="ok")

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        what = body.get("event", "?")
        exp = body.get("experimentName", "?")
        ramp = body.get("rollout") if isinstance(body.get("rollout"), dict) else None
        confidence, improvement = body.get("confidence"), body.get("improvement")
        if body.get("reason"):
            extra = body["reason"]
        elif ramp is not None:
            extra = f"{body.get('variant')} at {ramp.get('treatmentShare')}% (step {ramp.get('step')})"
        elif body.get("variant") and confidence is not None and improvement is not None:
            extra = f"{body.get('variant')} at {confidence:.1f}% confidence, {improvement:+.1f}%"
        else:
            extra = str(body.get("variant") or "")
        self._emit(f"webhook  {what:<22} {exp:<16} {str(extra)[:90]}")
        return web.Response(text="ok")


# ------------------------------------------------------------------------------------------------- display
STATUS_QUERY = DEMO["status"]


def describe(row: Record) -> tuple[str, str, str, str]:
    """experiment, exposures per variant, confidence, decision or blocking reason."""
    variants = row["variants"] or []
    exposures = " / ".join(f"{v['n']:,}" for v in variants)
    decision = row["decision"] or {}
    promotion = row["promotion"]
    confidence = f"{decision.get('confidence', 0.0):6.2f}%" if decision else "     -"
    status = row["status"]
    ramp = row["rollout"]
    if status == "promoted" and promotion and ramp and ramp["state"] != "complete":
        share = ramp["steps"][ramp["step"] - 1]
        what = (
            f"RAMPING {promotion['variant']} at {share:g}% (step {ramp['step']} of {len(ramp['steps'])}, "
            f"{ramp['state']})"
        )
    elif status == "promoted" and promotion and ramp:
        what = f"PROMOTED {promotion['variant']} ({promotion['improvement']:+.1f}%), ramped to 100%"
    elif status == "promoted" and promotion:
        what = f"PROMOTED {promotion['variant']} ({promotion['improvement']:+.1f}%)"
    elif status == "rolled_back" and promotion:
        who = promotion.get("rolled_back_by") or "?"
        what = f"ROLLED BACK by {who}: {promotion.get('rollback_reason') or ''}"
    elif decision.get("reasons"):
        what = "waiting: " + decision["reasons"][0]
    elif decision.get("eligible"):
        what = "eligible"
    else:
        what = "collecting data"
    return row["name"], exposures, confidence, what


def render_table(rows: list[Record], width: int = 150) -> list[str]:
    data = [describe(r) for r in rows]
    head = ("experiment", "exposures per variant", "confidence", "decision / blocking reason")
    widths = [max(len(head[i]), *(len(d[i]) for d in data)) if data else len(head[i]) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:3], widths, strict=True)) + "  " + head[3]]
    lines.append("-" * min(width, sum(widths) + 6 + 40))
    for d in data:
        line = "  ".join(x.ljust(w) for x, w in zip(d[:3], widths, strict=True)) + "  " + d[3]
        lines.append(line[:width])
    return lines


class Display:
    """A refreshing table on a terminal; plain progress lines when the output is a file or a pipe."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.live = out.isatty()
        self.events: list[str] = []
        self._last_plain: dict[str, str] = {}

    def notification(self, line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')}  {line}"
        self.events.append(stamped)
        if not self.live:
            print(f"notification  {line}", file=self.out, flush=True)

    def update(self, rows: list[Record], header: list[str]) -> None:
        if self.live:
            lines = [*header, "", *render_table(rows), "", "notifications delivered to the local sink:"]
            lines += [f"  {e}" for e in self.events[-10:]] or ["  (none yet)"]
            self.out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
            self.out.flush()
            return
        # Plain output: one line when an experiment's decision changes kind, not on every new number.
        for name, exposures, confidence, what in (describe(r) for r in rows):
            kind = re.sub(r"[-+]?[\d.,]+(e-?\d+)?%?", "#", what)
            if self._last_plain.get(name) != kind:
                self._last_plain[name] = kind
                print(
                    f"progress      {name:<16} n={exposures:<18} confidence {confidence}  {what}",
                    file=self.out,
                    flush=True,
                )


def summary_lines(rows: list[Record]) -> list[str]:
    promoted, blocked, rolled = [], [], []
    for r in rows:
        decision = r["decision"] or {}
        promotion = r["promotion"]
        if r["status"] == "promoted" and promotion:
            ramp = r["rollout"]
            path = ""
            if ramp:
                shares = " -> ".join(f"{x:g}%" for x in ramp["steps"])
                path = f"; ramp {shares}: {ramp['state']} at step {ramp['step']}"
            promoted.append(
                f"  {r['name']}: {promotion['variant']} at {promotion['confidence']:.2f}% confidence, "
                f"{promotion['improvement']:+.2f}%{path}"
            )
        elif r["status"] == "rolled_back" and promotion:
            rolled.append(
                f"  {r['name']}: {promotion['variant']} rolled back by {promotion['rolled_back_by']}: "
                f"{promotion['rollback_reason']}"
            )
        else:
            reason = (decision.get("reasons") or ["no decision yet"])[0]
            blocked.append(f"  {r['name']}: {reason}")
    out = ["", "summary", "======="]
    out += [f"promoted ({len(promoted)}):", *(promoted or ["  none"])]
    out += [f"blocked ({len(blocked)}):", *(blocked or ["  none"])]
    out += [f"rolled back ({len(rolled)}):", *(rolled or ["  none"])]
    return out + cuped_lines(rows)


def _users_per_arm(decision: dict[str, Any] | None) -> int | None:
    variants = (decision or {}).get("variants") or []
    return min((int(v["exposures"]) for v in variants), default=None)


def _variance_reduction(decision: dict[str, Any]) -> float | None:
    """The built-in metric's first treatment's varianceReduction in a stored decision (None: no CUPED)."""
    for metric in decision.get("metrics") or []:
        for t in metric.get("treatments") or []:
            return None if t.get("varianceReduction") is None else float(t["varianceReduction"])
    return None


def cuped_lines(rows: list[Record]) -> list[str]:
    """CUPED against its twin: how many users per arm each needed to decide (from the promotion's decision)."""
    by_name = {r["name"]: r for r in rows}
    out = ["CUPED vs the same data without the covariate:"]
    for twin in CUPED_TWINS:
        r = by_name.get(twin.name)
        if r is None:
            continue
        promotion, decision = r["promotion"], r["decision"] or {}
        if r["status"] == "promoted" and promotion:
            users = _users_per_arm(promotion.get("decision"))
            what = f"promoted {promotion['variant']} ({promotion['improvement']:+.1f}%) at {users or 0:,} users per arm"
        else:
            users = _users_per_arm(decision)
            what = f"not decided yet at {users or 0:,} users per arm"
        shown: dict[str, Any] = decision if decision.get("metrics") else (promotion or {}).get("decision") or {}
        reduction = _variance_reduction(shown)
        if reduction is not None:
            what += f"; CUPED cut the lift's variance by {100 * reduction:.0f}%"
        out.append(f"  {twin.name}: {what}")
    return out


def dump_json(rows: list[Record]) -> str:
    return json.dumps([describe(r) for r in rows])
