from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.config import ScoreConfig, SegmentRules
from churnlens.score import PROBABILITY_BOUNDS, build_scores, retention_plan, risk_tiers, segment_report
from churnlens.segments import assign_segments, purchases_prior_90d, stable_or_growing_spend
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
    """A customer of a bare purchase log (no interaction or profile fields): two purchases in each
    of the last two quarters, spend level."""
    base = {"customer_id": "B", "purchases_lifetime": 6, "days_since_first_purchase": 300, "purchases_90d": 2,
            "purchase_trend_90d": 0.0, "spend_trend_90d": 0.0, "below_usual_price_share_365d": 0.0,
            "below_usual_spend_share_365d": 0.0, "repeat_line_share_365d": 0.2, "purchase_gap_cv": 0.8,
            "return_rate_365d": 0.0}
    return {**base, **overrides}


def test_purchases_in_the_quarter_before_by_hand() -> None:
    frame = pd.DataFrame([buyer(), buyer(purchase_trend_90d=np.log(3 / 2)), buyer(purchase_trend_90d=np.log(3.0)),
                          buyer(purchases_90d=0, purchase_trend_90d=np.log(1 / 5))])
    assert purchases_prior_90d(frame).tolist() == [2.0, 1.0, 0.0, 4.0]


def test_stable_or_growing_spend_by_hand() -> None:
    frame = pd.DataFrame([buyer(spend_trend_90d=0.3), buyer(spend_trend_90d=0.0),
                          buyer(spend_trend_90d=-np.log(2.0)), buyer(spend_trend_90d=-np.log(8.0)),
                          buyer(spend_trend_90d=0.0, purchases_90d=0, purchase_trend_90d=np.log(1 / 3)),
                          buyer(spend_trend_90d=4.0, purchase_trend_90d=np.log(3.0))])
    # Held or grew: 1; halved: half way to a quarter; below a quarter, or nothing bought lately: 0;
    # bought lately but nothing in the quarter before (new): no spend yet to hold, unknown.
    held = stable_or_growing_spend(frame).tolist()
    assert held[:5] == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0]) and np.isnan(held[5])


def test_advocacy_is_evidence_scaled_down_by_price_drops_and_returns() -> None:
    frame = pd.DataFrame([
        buyer(customer_id="explorer"),
        # A fifth of the lines in price drops: full-price buying 0.5; returns 10%: few returns 0.5.
        buyer(customer_id="bargains", below_usual_price_share_365d=0.2, below_usual_spend_share_365d=0.2),
        buyer(customer_id="returns", return_rate_365d=0.1),
    ])
    result = assign_segments(frame, SegmentRules()).set_index("customer_id")
    # Evidence: new lines 0.8 bought while spend held (1.0) -> 0.8; qualifiers scale it by 1, 0.75, 0.75.
    assert result["advocacy_index"].to_dict() == pytest.approx({"explorer": 0.8, "bargains": 0.6, "returns": 0.6})
    assert result.loc["explorer", "segment"] == "brand_advocate"
    assert result.loc["explorer", "segment_driver"] == "exploring_with_spend_that_holds"


def test_new_lines_are_exploring_or_switching_by_whether_spend_holds() -> None:
    frame = pd.DataFrame([
        buyer(customer_id="holds", repeat_line_share_365d=0.1),
        # Nothing bought in the last 90 days (two purchases the quarter before): spend did not hold.
        buyer(customer_id="fell_away", repeat_line_share_365d=0.1, purchases_90d=0, purchase_trend_90d=np.log(1 / 3)),
        buyer(customer_id="repeats", repeat_line_share_365d=0.8),
    ])
    result = assign_segments(frame, SegmentRules()).set_index("customer_id")
    assert result["segment"].to_dict() == {"holds": "brand_advocate", "fell_away": "brand_comparer",
                                           "repeats": "brand_user"}
    # fell_away: price drops 0 and 0, switching 0.9 -> 0.3; habit: repeat 0.2, cadence 0.2 -> 0.2.
    assert result.loc["fell_away", "price_sensitivity_index"] == pytest.approx(0.3)
    assert result.loc["fell_away", "advocacy_index"] == pytest.approx(0.0)
    assert result.loc["fell_away", "segment_driver"] == "switching_products"
    # repeats: new lines 0.2 while spend holds -> advocacy 0.2; habit: repeat 1.0, cadence 0.2 -> 0.6.
    assert result.loc["repeats", "advocacy_index"] == pytest.approx(0.2)
    assert result.loc["repeats", "switching_cost_index"] == pytest.approx(0.6)


def test_spend_that_holds_alone_makes_no_advocate() -> None:
    # Bought at the usual price, returned nothing, spend held, but no product ids (no repeat or
    # exploration measure) and too few purchases for a cadence: no attitude shows.
    quiet = buyer(purchases_lifetime=3, repeat_line_share_365d=np.nan, purchase_gap_cv=np.nan)
    result = assign_segments(pd.DataFrame([quiet, {**quiet, "purchases_90d": 0, "spend_trend_90d": -2.0}]),
                             SegmentRules())
    assert set(result["segment"]) == {"insufficient_history"}
    assert result.loc[0, "segment_driver"] == "fewer than two loyalty indices observable in the data"


def test_one_basket_shows_price_drops_or_staples_and_is_always_low_confidence() -> None:
    # One basket, bought in the last 90 days; its own repeat share is 0 by construction.
    one = {"purchases_lifetime": 1, "days_since_first_purchase": 20, "purchases_90d": 1,
           "purchase_trend_90d": np.log(2.0), "spend_trend_90d": 5.0, "repeat_line_share_365d": 0.0}
    frame = pd.DataFrame([
        buyer(customer_id="drops", below_usual_price_share_365d=0.3, below_usual_spend_share_365d=0.25,
              product_repeat_rate_365d=0.1, **one),
        buyer(customer_id="staples", below_usual_price_share_365d=0.05, product_repeat_rate_365d=0.3, **one),
        buyer(customer_id="one_off", below_usual_price_share_365d=0.05, product_repeat_rate_365d=0.05, **one),
    ])
    result = assign_segments(frame, SegmentRules()).set_index("customer_id")
    assert result["segment"].to_dict() == {"drops": "brand_comparer", "staples": "brand_user",
                                           "one_off": "insufficient_history"}
    # Repeats, cadence and spend that holds need time: unknown, not 0 or 1.
    assert result["advocacy_index"].isna().all()
    # drops: price drops 0.75 and 0.625 -> 0.6875 against habit 0.2 (products re-bought 10% of the time).
    assert result.loc["drops", "segment_margin"] == pytest.approx(0.6875 - 0.2)
    assert result.loc["drops", "segment_driver"] == "bought_in_price_drops (short history)"
    assert result.loc["staples", "switching_cost_index"] == pytest.approx(0.6)
    assert result.loc["staples", "segment_driver"] == "repeat_basket (short history)"
    assert result["low_confidence"].to_dict() == {"drops": True, "staples": True, "one_off": False}
    # The same baskets from a customer with a history: the margins alone decide the flag.
    settled = assign_segments(frame.assign(purchases_lifetime=2, days_since_first_purchase=200,
                                           repeat_line_share_365d=np.nan), SegmentRules())
    assert not settled["low_confidence"].any()


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
        "as_of": pd.Timestamp("2024-06-01", tz="UTC"),  # the control group's draw is keyed by the scoring date
    })
    # b's contract shows (the user/medium offer presumes one); nobody answered a survey.
    premises = pd.DataFrame({"contract": [False, True, False, False], "survey": [False] * 4})
    plan = retention_plan(scored, score_config, premises).set_index("customer_id")
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
    bare = HAND_BUILT[["customer_id", "purchases_lifetime", "days_since_first_purchase"]]
    result = assign_segments(bare, SegmentRules())
    assert set(result["segment"]) == {"insufficient_history"}
    assert result.loc[0, "segment_driver"] == "fewer than two loyalty indices observable in the data"


def test_scores_never_claim_certainty(score_config) -> None:
    features = HAND_BUILT.copy()
    scores = build_scores(features, np.array([0.0, 1.0, 0.5, 1e-9]), assign_segments(features, SegmentRules()),
                          score_config, pd.Timestamp("2024-06-01"), "churnlens", "3")
    assert scores["churn_probability"].between(*PROBABILITY_BOUNDS).all()
    assert scores.set_index("customer_id").loc["comparer", "churn_probability"] == 0.5  # inside: untouched


def test_new_rules_stay_per_customer() -> None:
    rng = np.random.default_rng(3)
    many = pd.DataFrame([buyer(customer_id=f"c{i}", purchases_lifetime=int(rng.integers(1, 12)),
                               days_since_first_purchase=float(rng.uniform(10, 500)),
                               purchases_90d=int(rng.integers(0, 3)), spend_trend_90d=float(rng.normal(0, 1.5)),
                               below_usual_price_share_365d=float(rng.uniform(0, 0.6)),
                               below_usual_spend_share_365d=float(rng.uniform(0, 0.6)),
                               purchase_trend_90d=float(rng.choice([0.0, np.log(2.0), np.log(3.0)])),
                               repeat_line_share_365d=float(rng.uniform(0, 1)),
                               product_repeat_rate_365d=float(rng.uniform(0, 0.4)),
                               return_rate_365d=float(rng.uniform(0, 0.2))) for i in range(60)])
    # New lines only, but new as a customer too (nothing in the quarter before): no attitude shows.
    quiet = buyer(customer_id="quiet", repeat_line_share_365d=0.05, purchase_trend_90d=np.log(3.0))
    many = pd.concat([many, pd.DataFrame([quiet, buyer(customer_id="explorer")])], ignore_index=True)
    together = assign_segments(many, SegmentRules())
    drivers = set(together["segment_driver"])  # the new rules fire in this batch
    assert together.set_index("customer_id").loc["quiet", "segment_driver"] == (
        "no loyalty index reaches score.segments.min_index")
    assert {"switching_products", "exploring_with_spend_that_holds", "repeat_basket (short history)"} <= drivers
    for i in range(len(many)):
        alone = assign_segments(many.iloc[[i]].reset_index(drop=True), SegmentRules())
        pd.testing.assert_frame_equal(alone, together.iloc[[i]].reset_index(drop=True))
