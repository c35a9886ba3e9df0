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


def _customers(rng: np.random.Generator, first_purchase: pd.Series, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Features at ``cutoff`` of customers whose first observed purchase is ``first_purchase``."""
    tenure = (cutoff - first_purchase).dt.days.astype("float64")
    return pd.DataFrame({"days_since_first_purchase": tenure, "spend": rng.normal(100, 20, len(tenure))})


def test_a_population_that_only_aged_is_stable_and_a_wave_of_newcomers_is_flagged() -> None:
    rng = np.random.default_rng(2)
    start, reference = pd.Timestamp("2023-01-01"), pd.Timestamp("2024-01-01")
    # A log that starts at a fixed date: many first purchases are censored at its first day.
    first = pd.Series(start + pd.to_timedelta(np.minimum(rng.integers(0, 600, 5_000), 364), unit="D"))
    profile = drift_profile(_customers(rng, first, reference), ["days_since_first_purchase", "spend"], [],
                            reference=reference)
    later = reference + pd.Timedelta(days=120)
    aged = _customers(rng, first, later)
    assert population_stability(profile, aged)["days_since_first_purchase"] > 1.0  # without the adjustment
    assert population_stability(profile, aged, later)["days_since_first_purchase"] < 0.01
    newcomers = pd.Series(later - pd.to_timedelta(rng.integers(1, 120, 2_500), unit="D"))
    grown = _customers(rng, pd.concat([first, newcomers], ignore_index=True), later)
    assert population_stability(profile, grown, later)["days_since_first_purchase"] > 0.25
    assert population_stability(profile, grown, later)["spend"] < 0.01


def test_counts_over_all_history_are_left_out_with_a_reason() -> None:
    from churnlens.drift import NOT_COMPARED

    rng = np.random.default_rng(3)
    reference = pd.DataFrame({"purchases_lifetime": rng.poisson(5, 5_000).astype(float)})
    profile = drift_profile(reference, ["purchases_lifetime"], [])
    assert population_stability(profile, reference + 10) == {}  # grown with the log: not an alarm
    assert NOT_COMPARED["purchases_lifetime"]
