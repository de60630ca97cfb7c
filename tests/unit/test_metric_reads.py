"""The scan's bulk form of an experiment's metrics reads into the same values as the per-experiment JSON form."""

from __future__ import annotations

from worker.db.metric_reads import bulk_metric_snapshots
from worker.domain.metrics import MetricSums, metric_snapshots

DEFS = [
    ["7", "basket", "mean", "primary", "increase", "0", "average basket", "auto"],
    ["9", "rps", "ratio", "guardrail", "decrease", "0.02", "", "off"],
    ["12", "clicked", "proportion", "secondary", "increase", "0", "", "auto"],
]
SUMS = [
    [7.0, 1.0, 4.0, 10.0, 30.0, 0.0, 0.0, 0.0, 4.0, 8.0, 20.0, 24.0],  # a covariate for every unit
    [7.0, 2.0, 3.0, 6.0, 14.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # none
    [9.0, 2.0, 2.0, 10.0, 100.0, 4.0, 10.0, 30.0, 0.0, 0.0, 0.0, 0.0],
]
NAMES = {1: "control", 2: "b"}


def test_the_bulk_form_reads_as_the_json_form() -> None:
    as_json = [
        {"name": "basket", "kind": "mean", "role": "primary", "direction": "increase", "margin": 0.0,
         "description": "average basket", "cuped": "auto",
         "sums": {"control": {"units": 4, "value_sum": 10.0, "value_sum_sq": 30.0, "denominator_sum": None,
                              "denominator_sum_sq": None, "value_denominator_product_sum": None, "pre_units": 4,
                              "pre_sum": 8.0, "pre_sum_sq": 20.0, "pre_value_product_sum": 24.0},
                  "b": {"units": 3, "value_sum": 6.0, "value_sum_sq": 14.0, "pre_units": 0}}},
        {"name": "rps", "kind": "ratio", "role": "guardrail", "direction": "decrease", "margin": 0.02,
         "description": "", "cuped": "off",
         "sums": {"b": {"units": 2, "value_sum": 10.0, "value_sum_sq": 100.0, "denominator_sum": 4.0,
                        "denominator_sum_sq": 10.0, "value_denominator_product_sum": 30.0, "pre_units": 0}}},
        {"name": "clicked", "kind": "proportion", "role": "secondary", "direction": "increase", "margin": 0,
         "description": "", "cuped": "auto", "sums": {}},
    ]  # fmt: skip
    assert bulk_metric_snapshots(DEFS, SUMS, NAMES) == metric_snapshots(as_json)


def test_denominators_only_for_a_ratio_and_covariates_only_when_sent() -> None:
    basket, rps, clicked = bulk_metric_snapshots(DEFS, SUMS, NAMES)
    assert basket.sums["b"] == MetricSums(units=3, value_sum=6.0, value_sum_sq=14.0)
    assert basket.sums["control"].has_covariate and not basket.sums["b"].has_covariate
    assert rps.sums["b"].value_denominator_product_sum == 30.0 and rps.definition.margin == 0.02
    assert basket.sums["b"].denominator_sum is None and clicked.sums == {}


def test_no_metrics_is_empty_and_an_unknown_variant_keeps_its_id() -> None:
    assert bulk_metric_snapshots(None, None, NAMES) == ()
    (basket,) = bulk_metric_snapshots(DEFS[:1], [[7.0, 5.0, *SUMS[1][2:]]], NAMES)
    assert set(basket.sums) == {"5"}
