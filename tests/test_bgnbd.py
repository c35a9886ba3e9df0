from __future__ import annotations

import numpy as np
import pytest
from scipy.special import hyp2f1

from churnlens.bgnbd import BGNBD, fit_bgnbd


def simulate_bgnbd(n: int, r: float, alpha: float, a: float, b: float, weeks: float, seed: int = 0):
    """Customers from the BG/NBD story: Poisson buying at rate lambda, dropout p after each purchase."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(r, 1 / alpha, n), rng.beta(a, b, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        now = 0.0
        while True:
            now += rng.exponential(1 / lam[i])
            if now > weeks:
                break
            x[i], t_x[i] = x[i] + 1, now
            if rng.random() < p[i]:
                break
    return x, t_x, np.full(n, weeks)


def test_fit_recovers_known_parameters() -> None:
    truth = {"r": 0.8, "alpha": 4.0, "a": 0.8, "b": 2.5}
    x, t_x, t = simulate_bgnbd(4000, **truth, weeks=52)
    fitted = fit_bgnbd(x, t_x, t)
    assert fitted.r == pytest.approx(truth["r"], rel=0.25)
    assert fitted.alpha == pytest.approx(truth["alpha"], rel=0.35)
    assert fitted.b / (fitted.a + fitted.b) == pytest.approx(truth["b"] / (truth["a"] + truth["b"]), abs=0.1)


def test_expected_purchases_rank_recent_frequent_buyers_higher() -> None:
    model = BGNBD(r=0.8, alpha=4.0, a=1.5, b=2.5)
    expected = model.expected_purchases(13.0, x=np.array([10, 10, 0]), t_x=np.array([51, 20, 0]),
                                        t=np.array([52, 52, 52]))
    assert expected[0] > expected[1]  # same frequency, the one who bought recently is more alive
    assert expected[0] > expected[2] > 0
    # With no history, the expectation is the prior's: r / alpha per week, thinned by dropout.
    assert model.expected_purchases(13.0, np.array([0]), np.array([0]), np.array([0]))[0] == pytest.approx(
        (1.5 + 2.5 - 1) / (1.5 - 1) * (1 - (4.0 / 17.0) ** 0.8 * hyp2f1(0.8, 2.5, 3.0, 13.0 / 17.0)))
