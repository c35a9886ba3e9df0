from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.config import ScoreConfig, SegmentRules
from churnlens.score import (PROBABILITY_BOUNDS, build_scores, feature_descriptions, plain_reasons, retention_plan,
                             risk_tiers, segment_report)
from churnlens.segments import assign_segments, stable_or_growing_spend
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
    assert result.loc["advocate", "segment_driver"] in {"nps", "referrals"}
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


def buyer(**overrides) -> dict:
    """A customer of a bare purchase log (no interaction or profile fields)."""
    base = {"customer_id": "B", "purchases_lifetime": 6, "days_since_first_purchase": 300, "purchases_90d": 2,
            "spend_trend_90d": 0.0, "below_usual_price_share_365d": 0.0, "below_usual_spend_share_365d": 0.0,
            "repeat_line_share_365d": 0.2, "purchase_gap_cv": 0.8, "return_rate_365d": 0.0}
    return {**base, **overrides}


def test_stable_or_growing_spend_by_hand() -> None:
    frame = pd.DataFrame([buyer(spend_trend_90d=0.3), buyer(spend_trend_90d=0.0),
                          buyer(spend_trend_90d=-np.log(2.0)), buyer(spend_trend_90d=-np.log(8.0)),
                          buyer(spend_trend_90d=0.0, purchases_90d=0)])
    # Held or grew: 1; halved: half way to a quarter; below a quarter, or nothing bought lately: 0.
    assert stable_or_growing_spend(frame).tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])


def test_advocacy_is_evidence_scaled_down_by_price_drops_and_returns() -> None:
    frame = pd.DataFrame([
        buyer(customer_id="explorer"),
        # A fifth of the lines in price drops: full-price buying 0.5; returns 10%: few returns 0.5.
        buyer(customer_id="bargains", below_usual_price_share_365d=0.2, below_usual_spend_share_365d=0.2),
        buyer(customer_id="returns", return_rate_365d=0.1),
    ])
    result = assign_segments(frame, SegmentRules()).set_index("customer_id")
    # Evidence: exploring 0.8 and spend that held 1.0 -> 0.9; qualifiers scale it by 1, 0.75, 0.75.
    assert result["advocacy_index"].to_dict() == pytest.approx({"explorer": 0.9, "bargains": 0.675,
                                                               "returns": 0.675})
    assert result.loc["explorer", "segment"] == "brand_advocate"
    assert result.loc["explorer", "segment_driver"] == "stable_or_growing_spend"


def test_full_price_and_few_returns_alone_make_no_advocate() -> None:
    # Bought at the usual price, returned nothing, but no product ids (no repeat or exploration
    # measure), too few purchases for a cadence and nothing bought for 90 days: no attitude shows.
    quiet = buyer(purchases_lifetime=3, purchases_90d=0, spend_trend_90d=-2.0, repeat_line_share_365d=np.nan,
                  purchase_gap_cv=np.nan)
    result = assign_segments(pd.DataFrame([quiet]), SegmentRules())
    assert result.loc[0, "segment"] == "insufficient_history"
    assert result.loc[0, "segment_driver"] == "no loyalty index reaches score.segments.min_index"
    # The same customer still buying: spend that holds is evidence of attachment.
    active = assign_segments(pd.DataFrame([{**quiet, "purchases_90d": 1, "spend_trend_90d": 0.0}]), SegmentRules())
    assert active.loc[0, "segment"] == "brand_advocate"


def test_one_basket_in_price_drops_is_a_low_confidence_comparer() -> None:
    one_basket = {"purchases_lifetime": 1, "days_since_first_purchase": 20, "purchases_90d": 1}
    frame = pd.DataFrame([
        buyer(customer_id="drops", below_usual_price_share_365d=0.3, below_usual_spend_share_365d=0.25, **one_basket),
        buyer(customer_id="full_price", below_usual_price_share_365d=0.05, **one_basket),
    ])
    result = assign_segments(frame, SegmentRules()).set_index("customer_id")
    assert result.loc["drops", "segment"] == "brand_comparer"
    assert bool(result.loc["drops", "low_confidence"]) and np.isnan(result.loc["drops", "segment_margin"])
    assert result.loc["drops", "segment_driver"].startswith("bought_in_price_drops")
    assert result.loc["full_price", "segment"] == "insufficient_history"
    assert not result.loc["full_price", "low_confidence"]
    switched_off = assign_segments(frame, SegmentRules(single_basket_price_index=None))
    assert set(switched_off["segment"]) == {"insufficient_history"}


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


def test_new_rules_stay_per_customer() -> None:
    rng = np.random.default_rng(3)
    many = pd.DataFrame([buyer(customer_id=f"c{i}", purchases_lifetime=int(rng.integers(1, 12)),
                               days_since_first_purchase=float(rng.uniform(10, 500)),
                               purchases_90d=int(rng.integers(0, 3)), spend_trend_90d=float(rng.normal(0, 1.5)),
                               below_usual_price_share_365d=float(rng.uniform(0, 0.6)),
                               below_usual_spend_share_365d=float(rng.uniform(0, 0.6)),
                               repeat_line_share_365d=float(rng.uniform(0, 1)),
                               return_rate_365d=float(rng.uniform(0, 0.2))) for i in range(60)])
    quiet = buyer(customer_id="quiet", purchases_90d=0, repeat_line_share_365d=np.nan, purchase_gap_cv=np.nan)
    many = pd.concat([many, pd.DataFrame([quiet])], ignore_index=True)
    together = assign_segments(many, SegmentRules())
    drivers = set(together["segment_driver"])  # the new rules fire in this batch
    assert "no loyalty index reaches score.segments.min_index" in drivers
    assert any(d.endswith("(too short a history to compare indices)") for d in drivers)
    for i in range(len(many)):
        alone = assign_segments(many.iloc[[i]].reset_index(drop=True), SegmentRules())
        pd.testing.assert_frame_equal(alone, together.iloc[[i]].reset_index(drop=True))
