"""Population stability index: hand-computed values and the behaviour of the bins."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from churnlens.drift import drift_profile, population_stability, psi


def test_psi_by_hand() -> None:
    expected, actual = [0.5, 0.5], [0.25, 0.75]
    by_hand = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(expected, expected) == 0.0


def _frame(rng: np.random.Generator, shift: float, n: int = 20_000) -> pd.DataFrame:
    spend = rng.normal(100 + shift, 20, n)
    spend[: n // 10] = np.nan  # a missing share of its own
    plan = rng.choice(["annual", "monthly", "none"], n, p=[0.2, 0.3, 0.5])
    return pd.DataFrame({"spend": spend, "plan": pd.array(plan, dtype="string")})


def test_same_population_is_stable_and_a_shift_is_caught() -> None:
    rng = np.random.default_rng(0)
    profile = drift_profile(_frame(rng, 0), ["spend"], ["plan"])
    assert population_stability(profile, _frame(rng, 0))["spend"] < 0.01
    shifted = population_stability(profile, _frame(rng, 30))
    assert shifted["spend"] > 0.25 and shifted["plan"] < 0.01
    assert list(shifted) == ["spend", "plan"]  # largest first


def test_missing_values_and_unseen_categories_count_as_drift() -> None:
    rng = np.random.default_rng(1)
    reference = _frame(rng, 0)
    profile = drift_profile(reference, ["spend"], ["plan"])
    now = reference.copy()
    now.loc[: len(now) // 2, "spend"] = np.nan  # half missing instead of a tenth
    now.loc[: len(now) // 2, "plan"] = "weekly"  # a plan type training never saw
    result = population_stability(profile, now)
    assert result["spend"] > 0.25 and result["plan"] > 0.25


def test_profile_is_plain_json_and_skips_absent_features() -> None:
    import json

    rng = np.random.default_rng(2)
    profile = drift_profile(_frame(rng, 0), ["spend"], ["plan"])
    assert json.loads(json.dumps(profile)) == profile
    assert population_stability(profile, _frame(rng, 0).drop(columns=["plan"])).keys() == {"spend"}
    assert sum(profile["spend"]["shares"]) == pytest.approx(1.0)



def test_a_population_that_only_aged_raises_no_alarm_and_a_real_shift_does() -> None:
    from churnlens.drift import NOT_COMPARED

    rng = np.random.default_rng(2)
    start, reference = pd.Timestamp("2023-01-01"), pd.Timestamp("2024-01-01")
    # A log that starts at a fixed date: many first purchases are censored at its first day.
    first = pd.Series(start + pd.to_timedelta(np.maximum(rng.integers(-300, 365, 5_000), 0), unit="D"))
    orders = rng.poisson(6, 5_000).astype(float)

    def customers(cutoff: pd.Timestamp, spend_shift: float = 0.0) -> pd.DataFrame:
        days = (cutoff - start).days
        return pd.DataFrame({"days_since_first_purchase": (cutoff - first).dt.days.astype(float),
                             "purchases_lifetime": orders * days / 365,
                             "spend_365d": rng.normal(100 + spend_shift, 20, len(first))})

    names = ["days_since_first_purchase", "purchases_lifetime", "spend_365d"]
    profile = drift_profile(customers(reference), names, [])
    later = reference + pd.Timedelta(days=120)
    aged = customers(later)
    assert psi(profile["days_since_first_purchase"]["shares"],
               drift_profile(aged, ["days_since_first_purchase"], [])["days_since_first_purchase"]["shares"]) == 0
    stability = population_stability(profile, aged)
    assert max(stability.values()) < 0.25 and not set(stability) & set(NOT_COMPARED)
    assert population_stability(profile, customers(later, spend_shift=30))["spend_365d"] > 0.25


def test_features_left_out_of_drift_say_why() -> None:
    from churnlens.drift import NOT_COMPARED

    assert {"days_since_first_purchase", "tenure_days", "purchases_lifetime"} <= set(NOT_COMPARED)
    assert all(len(reason) > 20 for reason in NOT_COMPARED.values())
