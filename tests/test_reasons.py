"""Reasons in a CRM analyst's words: one phrase per model feature, the direction on every reason,
nothing that explains nothing, no model internals in the text."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from churnlens.features import SeasonWindow, feature_definitions
from churnlens.reasons import feature_phrases, plain_reasons

WINDOWS = (30, 90, 365)
# Model internals a CRM reader must never see: column names (checked separately), code quoting,
# formulas and the feature catalog's vocabulary.
FORBIDDEN = ("`", "/", "+ 1", "P(", "ln(", "log of", "cutoff", "label horizon", "BG/NBD", "nan", "inf",
             "none recorded")
DIRECTIONS = (" (raises the risk)", " (lowers the risk)")
# Every feature's column name, internal building blocks included.
SEASON = SeasonWindow(horizon_days=90)
COLUMN_NAME = re.compile(r"\b(" + "|".join(re.escape(f.name) for f in feature_definitions(WINDOWS, SEASON)) + r")\b")


def model_features(windows: tuple[int, ...] = WINDOWS) -> list[str]:
    return [f.name for f in feature_definitions(windows, SEASON) if not f.internal and f.for_model]


def reasons_of(features: dict, contributions: dict, k: int = 3) -> list[str]:
    """One customer's reasons, split: features and contributions by feature name."""
    frame = pd.DataFrame({name: [value] for name, value in features.items()})
    contribution = pd.DataFrame({name: [value] for name, value in contributions.items()})
    text = plain_reasons(contribution, frame, feature_phrases(WINDOWS), k=k).iloc[0]
    return text.split("; ") if text else []


def assert_reads_like_crm_text(text: str) -> None:
    assert text, "every customer gets a reason"
    for reason in text.split("; "):
        assert reason.endswith(DIRECTIONS), reason
    assert not [token for token in FORBIDDEN if token in text], text
    named = COLUMN_NAME.findall(text)
    assert not named, f"column names in {text!r}: {named}"


def test_every_model_feature_has_exactly_one_phrase() -> None:
    """A new model feature without a phrase fails here, not in a customer's text."""
    for windows in (WINDOWS, (7, 60, 180, 730)):
        assert set(feature_phrases(windows)) == set(model_features(windows)), windows
    assert "contract_type" in feature_phrases(WINDOWS)  # the categorical input too


def test_a_feature_without_a_phrase_is_refused() -> None:
    with pytest.raises(ValueError, match="no phrase for model features"):
        reasons_of({"tenure_days": 400.0}, {"brand_new_feature": 0.4})


@pytest.mark.parametrize(("features", "contribution", "expected"), [
    ({"days_since_last_purchase": 84.0, "mean_purchase_gap_days": 28.0}, "days_since_last_purchase",
     "no purchase for 84 days, 3.0x their usual gap"),
    # A trend reads as the two counts it compares: 3 purchases against 9, (3 + 1) / (9 + 1).
    ({"purchase_trend_90d": np.log(4 / 10), "purchases_90d": 3.0}, "purchase_trend_90d",
     "3 purchases in the last 90 days against 9 in the 90 before"),
    ({"spend_trend_90d": np.log(121 / 481), "spend_90d": 120.0}, "spend_trend_90d",
     "spend of 120 in the last 90 days against 480 in the 90 before"),
    ({"spend_trend_90d": np.log(1 / 481), "spend_90d": 0.0}, "spend_trend_90d",
     "no spend in the last 90 days against 480 in the 90 before"),
    ({"btyd_p_no_purchase_horizon": 0.8}, "btyd_p_no_purchase_horizon",
     "likely to have stopped buying, by the purchase-pattern model: 80%"),
    ({"purchases_same_season_last_year": 3.0}, "purchases_same_season_last_year",
     "3 purchases in the same weeks of the year a year ago"),
    ({"season_month": 11.0}, "season_month", "the time of year: the coming weeks centre on November"),
    ({"complaints_90d": 2.0}, "complaints_90d", "2 complaints in the last 90 days"),
    ({"complaints_90d": 1.0}, "complaints_90d", "1 complaint in the last 90 days"),
    ({"visits_30d": 0.0}, "visits_30d", "no visit in the last 30 days"),
    ({"below_usual_price_share_365d": 0.35}, "below_usual_price_share_365d",
     "bought 35% of lines below the product's usual price in the last 365 days"),
    ({"days_since_last_complaint": np.nan}, "days_since_last_complaint",
     "no complaint on record in the last 365 days"),
    ({"praise_complaint_balance_365d": -0.5, "praise_365d": 0.0, "complaints_365d": 1.0},
     "praise_complaint_balance_365d", "no compliment against 1 complaint in the last 365 days"),
    ({"price_vs_category_median_365d": 0.88}, "price_vs_category_median_365d",
     "paid on average 12% below the typical price in their categories"),
    ({"contract_type": "none"}, "contract_type", "no contract"),
    ({"contract_type": "annual"}, "contract_type", "annual contract"),
])
def test_a_reason_is_the_features_phrase_with_the_customers_own_values(features: dict, contribution: str,
                                                                       expected: str) -> None:
    assert reasons_of(features, {contribution: 0.7}) == [f"{expected} (raises the risk)"]


def test_windowed_phrases_follow_the_configured_windows() -> None:
    frame = pd.DataFrame({"purchases_60d": [2.0], "spend_7d": [45.5]})
    contribution = pd.DataFrame({"purchases_60d": [0.5], "spend_7d": [0.3]})
    text = plain_reasons(contribution, frame, feature_phrases((7, 60, 180))).iloc[0]
    assert text == "2 purchases in the last 60 days (raises the risk); spend of 45.50 in the last 7 days (raises the risk)"


def test_reasons_read_the_same_when_engines_differ_in_the_last_bits() -> None:
    """Seen on a two-worker Spark cluster: a mean of 43.41499999999999 there and 43.41500000000001
    on DuckDB (within 1e-15 relative) printed as 43.41 and 43.42."""
    features = pd.DataFrame({"avg_order_value_365d": [43.41499999999999, 43.41500000000001]}, index=[1, 2])
    contribution = pd.DataFrame({"avg_order_value_365d": [0.5, 0.5]}, index=[1, 2])
    reasons = plain_reasons(contribution, features, feature_phrases(WINDOWS))
    assert reasons.loc[1] == reasons.loc[2]
    assert reasons.loc[1].startswith("average order of 43.4")


def test_every_reason_says_which_way_it_pushes() -> None:
    features = {"days_since_last_purchase": 5.0, "mean_purchase_gap_days": 20.0, "purchases_90d": 6.0,
                "complaints_90d": 1.0, "visits_30d": 3.0}
    # Something pushes up: only that is named, strongest first; what lowers the risk is no reason for it.
    assert reasons_of(features, {"days_since_last_purchase": -0.4, "purchases_90d": 0.2, "complaints_90d": 0.6,
                                 "visits_30d": -0.1}) == ["1 complaint in the last 90 days (raises the risk)",
                                                          "6 purchases in the last 90 days (raises the risk)"]
    # Nothing pushes up: what keeps the risk low, largest first; a contribution of 0 pushes neither way.
    assert reasons_of(features, {"days_since_last_purchase": -0.4, "purchases_90d": -0.6, "complaints_90d": 0.0,
                                 "visits_30d": -0.1}) == [
        "6 purchases in the last 90 days (lowers the risk)",
        "no purchase for 5 days, 0.2x their usual gap (lowers the risk)",
        "3 visits in the last 30 days (lowers the risk)"]


def test_values_that_explain_nothing_give_way_to_the_next_feature() -> None:
    single_purchase = {"purchases_lifetime": 1.0, "mean_purchase_gap_days": np.nan, "purchase_gap_std_days": np.nan,
                       "purchase_gap_cv": np.nan, "overdue_ratio": np.nan, "repeat_line_share_365d": 0.0,
                       "last_nps": np.nan, "days_since_last_purchase": 40.0, "complaints_365d": 0.0,
                       "praise_365d": 0.0, "praise_complaint_balance_365d": 0.0, "visits_90d": 2.0}
    gaps = ["mean_purchase_gap_days", "purchase_gap_std_days", "purchase_gap_cv", "overdue_ratio"]
    contributions = {name: 0.9 for name in gaps} | {"repeat_line_share_365d": 0.8, "last_nps": 0.8,
                                                     "praise_complaint_balance_365d": 0.7,
                                                     "days_since_last_purchase": 0.5, "visits_90d": 0.3}
    # No gap of one purchase, no repeat within a single basket, no survey never answered, no balance
    # of no feedback at all: the next features by contribution instead.
    assert reasons_of(single_purchase, contributions) == ["no purchase for 40 days (raises the risk)",
                                                          "2 visits in the last 90 days (raises the risk)"]
    # Several orders on one day: a mean gap of minutes is no rhythm to be overdue against.
    same_day = {"purchases_lifetime": 3.0, "mean_purchase_gap_days": 0.01, "purchase_gap_std_days": 0.005,
                "purchase_gap_cv": 0.5, "overdue_ratio": 4000.0, "days_since_last_purchase": 40.0,
                "visits_90d": 2.0}
    assert reasons_of(same_day, {name: 0.9 for name in gaps} | {"days_since_last_purchase": 0.5,
                                                                "visits_90d": 0.3}) == [
        "no purchase for 40 days (raises the risk)", "2 visits in the last 90 days (raises the risk)"]


def test_a_value_already_said_gives_way_to_the_next_feature() -> None:
    features = {"days_since_last_purchase": 84.0, "mean_purchase_gap_days": 28.0, "overdue_ratio": 3.0,
                "purchases_lifetime": 9.0, "purchases_90d": 1.0, "purchase_trend_90d": np.log(2 / 5),
                "visits_30d": 0.0}
    reasons = reasons_of(features, {"overdue_ratio": 0.9, "days_since_last_purchase": 0.8, "purchases_90d": 0.7,
                                    "purchase_trend_90d": 0.6, "visits_30d": 0.1})
    assert reasons == ["no purchase for 84 days, 3.0x their usual gap (raises the risk)",
                       "1 purchase in the last 90 days against 4 in the 90 before (raises the risk)",
                       "no visit in the last 30 days (raises the risk)"]


def random_features(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Every model feature with values of every kind it can take: counts, shares, days, trends,
    zeros, missing values; a mean gap from 0 days on."""
    columns = {}
    for name in model_features():
        if name == "contract_type":
            columns[name] = rng.choice(np.array(["annual", "monthly", "none", "unknown", None], dtype=object), n)
            continue
        values = rng.choice([0.0, 1.0, 2.0, 3.0], n) if rng.random() < 0.3 else rng.exponential(30.0, n)
        if "trend" in name:
            values = rng.normal(0.0, 2.0, n)
        elif "share" in name or "rate" in name or name.startswith("btyd_p_") or name in ("autopay",):
            values = rng.uniform(0.0, 1.0, n)
        elif name == "praise_complaint_balance_365d":
            values = rng.uniform(-0.9, 0.9, n)
        columns[name] = np.where(rng.random(n) < 0.15, np.nan, values)
    frame = pd.DataFrame(columns)
    frame["purchases_lifetime"] = rng.integers(1, 6, n).astype(float)
    return frame


def test_no_reason_shows_a_column_name_a_formula_or_catalog_jargon() -> None:
    rng = np.random.default_rng(11)
    features = random_features(2_000, rng)
    phrases = feature_phrases(WINDOWS)
    for name in model_features():  # each phrase on its own, so none goes unread
        contribution = pd.DataFrame({name: rng.choice([-0.5, 0.5], len(features))})
        texts = [text for text in plain_reasons(contribution, features, phrases) if text]
        assert texts, f"{name}: never a reason"
        for text in texts:
            assert_reads_like_crm_text(text)
    names = model_features()
    contribution = pd.DataFrame(rng.normal(0.0, 0.5, (len(features), len(names))), columns=names)
    for text in plain_reasons(contribution, features, phrases, k=len(names)):
        assert_reads_like_crm_text(text)


def test_the_scoring_job_writes_reasons_a_crm_analyst_can_read(reviewed_project: dict) -> None:
    """The real path: a small simulated log, trained and scored against a real MLflow store."""
    scores = pd.read_parquet(reviewed_project["root"] / "data/scores/scores.parquet")
    sample = scores["top_reasons"].sample(min(len(scores), 200), random_state=0)
    for text in sample:
        assert_reads_like_crm_text(text)
    reasons = [reason for text in scores["top_reasons"] for reason in text.split("; ")]
    assert any(reason.startswith("no purchase for ") for reason in reasons)
    assert not any("every less than a day" in reason for reason in reasons)
