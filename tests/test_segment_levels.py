"""Segments for logs without product lines: read from purchases with amounts, or from dates only,
each row saying which level it was read from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.config import SegmentRules, parse_params
from churnlens.engines.duckdb import compute_snapshots
from churnlens.features import scoring_cutoff
from churnlens.segments import PERSONAS, agreement_with_truth, assign_segments, evidence_level, unavailable_evidence
from churnlens.simulate import simulate
from conftest import small_params_dict

PRODUCT_COLUMNS = ["product_id", "category", "unit_price", "list_price"]


def shopper(**overrides) -> dict:
    """A customer of a log with amounts but no products: ten purchases over 400 days, two in each
    of the last two quarters, an unremarkable rhythm and basket value."""
    base = {"customer_id": "S", "purchases_lifetime": 10, "days_since_first_purchase": 400, "purchases_90d": 2,
            "purchase_trend_90d": 0.0, "spend_trend_90d": 0.0, "purchase_gap_cv": 0.75,
            "spend_volatility_365d": 0.5, "return_rate_365d": 0.0, "spend_365d": 500.0}
    return {**base, **overrides}


def test_the_level_is_the_richest_the_log_holds() -> None:
    no_amounts = ["spend_365d", "spend_trend_90d", "spend_volatility_365d"]
    assert evidence_level(pd.DataFrame([shopper(repeat_line_share_365d=0.2)])) == "lines"
    assert evidence_level(pd.DataFrame([shopper()])) == "purchases"
    assert evidence_level(pd.DataFrame([shopper()]).drop(columns=no_amounts)) == "dates"
    # Products without amounts: the lines rules read spend too, so such a log is read by its dates.
    assert evidence_level(pd.DataFrame([shopper(repeat_line_share_365d=0.2)]).drop(columns=no_amounts)) == "dates"
    assert unavailable_evidence("lines") == {}
    assert list(unavailable_evidence("dates")) == ["lines", "purchases"]
    assert "product_id" in unavailable_evidence("purchases")["lines"]


def test_purchases_level_rules_by_hand() -> None:
    frame = pd.DataFrame([
        # Bought 4 in the last quarter against 2 before (growth ln(5/3) / ln 2 of a doubling), spend tripled.
        shopper(customer_id="grows", purchases_90d=4, purchase_trend_90d=np.log(5 / 3), spend_trend_90d=np.log(3.0)),
        # A clear rhythm (gap CV 0.5 = fully regular), the same basket value, a year and more of buying.
        shopper(customer_id="habit", purchase_gap_cv=0.5, spend_volatility_365d=0.1),
        # Random timing (CV 1), volatile baskets, and nothing bought in the last quarter.
        shopper(customer_id="drifts", purchases_90d=0, purchase_trend_90d=np.log(1 / 3), spend_trend_90d=-3.0,
                purchase_gap_cv=1.0, spend_volatility_365d=1.2),
        # One basket: no trend, rhythm or basket variation to read.
        shopper(customer_id="once", purchases_lifetime=1, days_since_first_purchase=30, purchases_90d=1,
                purchase_trend_90d=np.log(2.0), purchase_gap_cv=np.nan, spend_volatility_365d=np.nan),
    ])
    result = assign_segments(frame, SegmentRules()).set_index("customer_id")
    assert result["segment"].to_dict() == {"grows": "brand_advocate", "habit": "brand_user",
                                           "drifts": "brand_comparer", "once": "insufficient_history"}
    assert set(result["segment_evidence"]) == {"purchases"}
    assert result.loc["grows", "advocacy_index"] == pytest.approx((np.log(5 / 3) / np.log(2.0) + 1.0) / 2)
    # habit: regular 1.0, steady basket 0.9, tenure 400 / 365 -> 1.0.
    assert result.loc["habit", "switching_cost_index"] == pytest.approx((1.0 + 0.9 + 1.0) / 3)
    assert result.loc["habit", "segment_driver"] == "regular_cadence"
    assert result.loc["drifts", "price_sensitivity_index"] == pytest.approx(1.0)
    assert result.loc["once", "segment_driver"] == "fewer than two loyalty indices observable in the data"


def test_a_coarse_segment_resting_on_one_measure_is_low_confidence() -> None:
    # Dates only, three purchases (too few for a rhythm): a trend and a tenure, one measure per index.
    frame = pd.DataFrame([shopper(customer_id="thin", purchases_lifetime=3, purchases_90d=2,
                                  purchase_trend_90d=np.log(3 / 2), purchase_gap_cv=np.nan)])
    result = assign_segments(frame.drop(columns=["spend_365d", "spend_trend_90d", "spend_volatility_365d"]),
                             SegmentRules())
    assert result.loc[0, "segment_evidence"] == "dates"
    assert result.loc[0, "segment"] in PERSONAS and bool(result.loc[0, "low_confidence"])


@pytest.fixture(scope="module")
def simulated():
    params = parse_params(small_params_dict(simulate={"n_customers": 1500}))
    data = simulate(params.simulate)
    return params, data, scoring_cutoff(params.features, data.transactions["timestamp"].max())


@pytest.mark.parametrize(("level", "drop", "min_f1"), [
    ("purchases", PRODUCT_COLUMNS, 0.45),
    ("dates", [*PRODUCT_COLUMNS, "amount", "quantity", "order_id"], 0.40),
])
def test_a_log_without_product_lines_still_gets_segments(simulated, level, drop, min_f1) -> None:
    """The simulator's personas leave a trace in rhythm and trends alone: far weaker than in product
    lines (macro-F1 .87 there), yet well above the third a guess would get, and every repeat buyer
    gets a segment."""
    params, data, cutoff = simulated
    transactions = data.transactions.drop(columns=[c for c in drop if c in data.transactions])
    frame, _ = compute_snapshots({"transactions": transactions}, [cutoff], params.features, with_labels=False)
    assigned = assign_segments(frame, params.score.segments)
    assert set(assigned["segment_evidence"]) == {level}
    repeat_buyers = (frame["purchases_lifetime"] >= params.score.segments.min_orders).to_numpy()
    assert assigned.loc[repeat_buyers, "segment"].isin(PERSONAS).mean() >= 0.8
    assert agreement_with_truth(assigned, data.ground_truth)["macro_f1"] >= min_f1
    assert set(assigned["segment"]) >= set(PERSONAS)
