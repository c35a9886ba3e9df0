from __future__ import annotations

import numpy as np
import pytest

from churnlens.bgnbd import BGNBD, at_bound, fit_bgnbd


def simulate_bgnbd(n: int, r: float, alpha: float, a: float, b: float, weeks: float, horizon: float = 0.0,
                   seed: int = 0):
    """Customers from the BG/NBD story: Poisson buying at rate lambda, dropout p after each repeat
    purchase. Returns (x, t_x, T) over ``weeks`` and the purchases in the ``horizon`` after it."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(r, 1 / alpha, n), rng.beta(a, b, n)
    x, t_x, future = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        now = 0.0
        while True:
            now += rng.exponential(1 / lam[i])
            if now > weeks + horizon:
                break
            if now > weeks:
                future[i] += 1
            else:
                x[i], t_x[i] = x[i] + 1, now
            if rng.random() < p[i]:
                break
    return x, t_x, np.full(n, weeks), future


@pytest.mark.parametrize("truth", [{"r": 0.24, "alpha": 4.4, "a": 0.79, "b": 2.4},
                                   {"r": 0.8, "alpha": 4.0, "a": 1.6, "b": 2.5}])
def test_fit_recovers_known_parameters_including_a_below_one(truth: dict) -> None:
    x, t_x, t, _ = simulate_bgnbd(6000, **truth, weeks=52, seed=1)
    fitted = fit_bgnbd(x, t_x, t)
    assert at_bound(fitted) == []
    assert fitted.r == pytest.approx(truth["r"], rel=0.2)
    assert fitted.alpha == pytest.approx(truth["alpha"], rel=0.3)
    assert fitted.a == pytest.approx(truth["a"], rel=0.4)
    assert fitted.b / (fitted.a + fitted.b) == pytest.approx(truth["b"] / (truth["a"] + truth["b"]), abs=0.06)


def test_conditional_predictions_match_a_monte_carlo_of_the_model() -> None:
    """P(no purchase in H), E[purchases in H] and P(alive) against what the simulated customers did."""
    model = BGNBD(r=0.5, alpha=3.0, a=0.79, b=2.4)
    x, t_x, t, future = simulate_bgnbd(30000, **vars(model), weeks=40, horizon=13, seed=2)
    none = model.probability_no_purchase(13.0, x, t_x, t)
    expected = model.expected_purchases(13.0, x, t_x, t)
    groups = {"no repeat": x == 0, "one or two": (x >= 1) & (x <= 2), "three plus": x >= 3,
              "recent": (t - t_x < 4) & (x > 0), "lapsed": (t - t_x > 20) & (x > 0)}
    for name, inside in groups.items():
        assert inside.sum() > 500, name
        assert none[inside].mean() == pytest.approx((future[inside] == 0).mean(), abs=0.02), name
        assert expected[inside].mean() == pytest.approx(future[inside].mean(), rel=0.08, abs=0.02), name
    alive = model.probability_alive(x, t_x, t)
    assert np.all((alive > 0) & (alive <= 1)) and np.all(alive[x == 0] == 1)
    assert np.all((none > 0) & (none <= 1))


def test_scores_rank_recent_frequent_buyers_as_less_likely_to_churn() -> None:
    model = BGNBD(r=0.8, alpha=4.0, a=0.7, b=2.5)
    args = (np.array([10, 10, 0]), np.array([51, 20, 0]), np.array([52, 52, 52]))
    none, expected = model.probability_no_purchase(13.0, *args), model.expected_purchases(13.0, *args)
    assert none[0] < none[1] and expected[0] > expected[1]  # same frequency, the recent buyer is more alive
    assert expected[0] > expected[2] > 0
