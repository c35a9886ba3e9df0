from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.config import ScoreConfig, SegmentRules
from churnlens.score import (PROBABILITY_BOUNDS, build_scores, feature_descriptions, plain_reasons, retention_plan,
                             risk_tiers, segment_report)
from churnlens.segments import assign_segments
from conftest import project_params_dict


def customer(**overrides) -> dict:
    base = {"customer_id": "X", "purchases_lifetime": 10, "days_since_first_purchase": 400, "last_nps": 6.0,
            "mean_nps_365d": 6.0, "referrals_365d": 0, "praise_complaint_balance_365d": 0.0,
            "discount_share_365d": 0.2, "contract_type": "none", "autopay": 0.0, "products_held": 1,
            "tenure_days": 400, "campaign_responses_365d": 1, "spend_volatility_365d": 0.7,
            "price_vs_category_median_365d": 1.0, "spend_365d": 1000.0}
    return {**base, **overrides}


HAND_BUILT = pd.DataFrame([
    customer(customer_id="advocate", last_nps=10, referrals_365d=3, praise_complaint_balance_365d=0.8,
             discount_share_365d=0.0),
    customer(customer_id="user", contract_type="annual", autopay=1.0, products_held=5, tenure_days=1200, last_nps=7),
    customer(customer_id="comparer", last_nps=4, discount_share_365d=0.8, campaign_responses_365d=8,
             spend_volatility_365d=1.4, price_vs_category_median_365d=0.7),
    customer(customer_id="newcomer", purchases_lifetime=1, days_since_first_purchase=10),
])


def test_segment_rules_on_hand_built_customers() -> None:
    result = assign_segments(HAND_BUILT, SegmentRules()).set_index("customer_id")
    assert result["segment"].to_dict() == {"advocate": "brand_advocate", "user": "brand_user",
                                           "comparer": "brand_comparer", "newcomer": "insufficient_history"}
    assert result.loc["advocate", "segment_driver"] in {"nps", "referrals", "full_price_buying"}
    assert result.loc["user", "segment_driver"] in {"contract", "autopay"}
    assert (result.loc[["advocate", "user", "comparer"], "segment_margin"] > 0.2).all()


def test_segment_ignores_missing_components_instead_of_guessing() -> None:
    frame = HAND_BUILT.drop(columns=["last_nps", "mean_nps_365d", "referrals_365d", "praise_complaint_balance_365d"])
    result = assign_segments(frame, SegmentRules()).set_index("customer_id")
    assert result.loc["comparer", "segment"] == "brand_comparer"
    assert result.loc["user", "segment"] == "brand_user"


def test_segment_does_not_depend_on_the_batch() -> None:
    alone = assign_segments(HAND_BUILT.iloc[[2]], SegmentRules())
    together = assign_segments(HAND_BUILT, SegmentRules()).iloc[[2]].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, together)


@pytest.fixture
def score_config() -> ScoreConfig:
    raw = project_params_dict()["score"]
    raw["campaign_budget"] = 20.0
    return ScoreConfig(**raw)


def test_risk_tiers(score_config) -> None:
    assert risk_tiers([0.1, 0.3, 0.59, 0.6, 0.95], score_config).tolist() == ["low", "medium", "medium", "high", "high"]


def test_priority_and_budget_by_hand(score_config) -> None:
    scored = pd.DataFrame({
        "customer_id": ["a", "b", "c", "d"],
        "churn_probability": [0.9, 0.5, 0.7, 0.1],
        "customer_value": [100.0, 1000.0, 400.0, 50.0],
        "segment": ["brand_comparer", "brand_user", "brand_advocate", "brand_comparer"],
        "risk_tier": ["high", "medium", "high", "low"],
    })
    plan = retention_plan(scored, score_config).set_index("customer_id")
    # comparer/high: 15 cost, 0.25 success; user/medium: 10, 0.25; advocate/high: 25, 0.40; comparer/low: 0.3, 0.02
    expected = {"a": 0.9 * 100 * 0.25 - 15, "b": 0.5 * 1000 * 0.25 - 10, "c": 0.7 * 400 * 0.40 - 25,
                "d": 0.1 * 50 * 0.02 - 0.3}
    assert plan["priority"].to_dict() == pytest.approx(expected)
    assert list(plan.index) == ["b", "c", "a", "d"]  # ranked by expected value saved
    # Budget 20: b (10) fits, c (25) would exceed it, a (15) would too (10 + 25 skipped, 10 + 15 = 25 > 20)
    assert plan["in_campaign"].to_dict() == {"b": True, "c": False, "a": False, "d": False}


def test_build_scores_rows_and_report(score_config) -> None:
    features = HAND_BUILT.copy()
    segments = assign_segments(features, SegmentRules())
    scores = build_scores(features, np.array([0.2, 0.5, 0.9, 0.4]), segments, score_config,
                          pd.Timestamp("2024-06-01"), "churnlens", "3")
    assert len(scores) == 4 and scores["customer_id"].is_unique
    assert set(scores["model_version"]) == {"3"} and (scores["as_of"] == pd.Timestamp("2024-06-01", tz="UTC")).all()
    report = segment_report(scores, previous=scores.assign(segment="brand_user"))
    assert sum(s["customers"] for s in report["segments"].values()) == 4
    assert report["stability"] == {"customers_in_both_runs": 4, "changed_segment": 3}


def test_too_few_observable_indices_is_not_a_guess() -> None:
    bare = HAND_BUILT[["customer_id", "purchases_lifetime", "days_since_first_purchase", "spend_volatility_365d"]]
    result = assign_segments(bare, SegmentRules())
    assert set(result["segment"]) == {"insufficient_history"}
    assert result.loc[0, "segment_driver"] == "fewer than two loyalty indices observable in the data"


def test_scores_never_claim_certainty(score_config) -> None:
    features = HAND_BUILT.copy()
    scores = build_scores(features, np.array([0.0, 1.0, 0.5, 1e-9]), assign_segments(features, SegmentRules()),
                          score_config, pd.Timestamp("2024-06-01"), "churnlens", "3")
    assert scores["churn_probability"].between(*PROBABILITY_BOUNDS).all()
    assert scores.set_index("customer_id").loc["comparer", "churn_probability"] == 0.5  # inside: untouched


def test_reasons_read_the_same_when_engines_differ_in_the_last_bits() -> None:
    """Seen on a two-worker Spark cluster: a mean of 43.41499999999999 there and 43.41500000000001
    on DuckDB (within 1e-15 relative) printed as 43.41 and 43.42."""
    features = pd.DataFrame({"mean_purchase_value_365d": [43.41499999999999, 43.41500000000001]}, index=[1, 2])
    contribution = pd.DataFrame({"num__mean_purchase_value_365d": [0.5, 0.5]}, index=[1, 2])
    reasons = plain_reasons(contribution, features, feature_descriptions((30, 90, 365)))
    assert reasons.loc[1] == reasons.loc[2]


def test_reasons_are_plain_words_with_the_customers_own_values() -> None:
    features = pd.DataFrame({"days_since_last_purchase": [84.0, 5.0], "mean_purchase_gap_days": [28.0, 20.0],
                             "purchases_90d": [1.0, 6.0]}, index=[7, 9])
    contribution = pd.DataFrame({"num__days_since_last_purchase": [0.9, -0.4], "num__mean_purchase_gap_days":
                                 [-0.1, -0.2], "num__purchases_90d": [0.3, -0.6]}, index=[7, 9])
    reasons = plain_reasons(contribution, features, feature_descriptions((30, 90, 365)))
    at_risk, loyal = reasons.loc[7], reasons.loc[9]
    assert at_risk.startswith(f"no purchase for 84 days, {84 / 28:.1f}x their usual gap")
    assert "purchases in the 90 days: 1" in at_risk and "gap" in at_risk.split(";")[0]
    assert "mean" not in at_risk  # a feature that lowers the risk is no reason for it
    # Nothing pushes this customer's risk up: what keeps it low, largest first.
    assert loyal.startswith("low risk: purchases in the 90 days: 6; no purchase for 5 days")
