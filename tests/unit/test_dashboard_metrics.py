"""The dashboard's metrics table and metric charts, from a real decision's check data and history rows."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.test_decide_metrics import NOW, config, mean_sums, revenue, snapshot
from worker.db.reads import EvaluationSnapshot
from worker.decide import decide
from worker.domain.metric_history import history_name, metric_points, split_history_name
from worker.http.dashboard.views import metric_charts, metrics_table


def _decision_data() -> dict[str, object]:
    guard = revenue(mean_sums(20_000, 10.0, 8.0), mean_sums(20_000, 9.6, 8.0))
    return decide(snapshot(guard), config()).to_check_data()


def test_the_metrics_table_shows_role_lift_interval_margin_and_verdict_in_words() -> None:
    groups = metrics_table(_decision_data())
    assert [g["name"] for g in groups] == ["primary", "revenue_per_user"]
    primary, guard = groups
    assert primary["role"] == "primary" and primary["margin"] is None
    assert guard["role"] == "guardrail" and guard["margin"] == "-2.0%" and guard["p_label"] == "NI p-value"
    (row,) = guard["rows"]
    assert row["variant"] == "variant-b" and row["lift"] == "-4.0%"
    assert row["verdict"] == "worse" and row["icon"] == "▼"  # words and a shape, not colour alone
    assert 'class="margin"' in row["bar"]  # the margin is drawn against the interval
    assert 'class="margin"' not in primary["rows"][0]["bar"]
    assert metrics_table(None) == [] and metrics_table({"metrics": "junk"}) == []


def test_history_rows_name_the_metric_and_the_builtin_rows_keep_their_names() -> None:
    assert history_name("primary", "variant-b") == "variant-b"
    assert split_history_name("variant-b") == ("primary", "variant-b")
    name = history_name("revenue_per_user", "variant-b")
    assert split_history_name(name) == ("revenue_per_user", "variant-b")
    guard = revenue(mean_sums(20_000, 10.0, 8.0), mean_sums(20_000, 9.6, 8.0))
    points = list(metric_points(decide(snapshot(guard), config()).metrics))
    assert [p[0] for p in points] == [name]  # the built-in metric is the lift chart's, not repeated


def test_a_chart_per_metric_and_treatment_from_the_history() -> None:
    rows = [
        EvaluationSnapshot(NOW + timedelta(hours=h), "variant-b", 1000 * h, 1000 * h, 0.01, -0.02, 0.04, 50.0, False)
        for h in range(1, 4)
    ]
    rows += [
        EvaluationSnapshot(
            NOW + timedelta(hours=h),
            "variant-b",
            1000 * h,
            1000 * h,
            -0.04,
            -0.06,
            -0.02,
            10.0,
            False,
            metric="revenue_per_user",
        )
        for h in range(1, 4)
    ]
    charts = metric_charts("checkout", _decision_data(), rows, 95.0)
    (chart,) = charts
    assert chart["metric"] == "revenue_per_user" and chart["kept"] == 3
    assert chart["title"] == "guardrail revenue_per_user: lift of variant-b (margin -2.0%)"
    assert "<svg" in chart["wide"] and "<svg" in chart["narrow"]
