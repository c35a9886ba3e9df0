from __future__ import annotations

import numpy as np
import pytest

from churnlens.bgnbd import BGNBD, at_bound, fit_bgnbd
from churnlens.portable import PREDICTION_BITS


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


def _adaptive_expected_purchases(model: BGNBD, horizon: float, x: float, t: float) -> float:
    """The alive customer's E[purchases] by adaptive quadrature (QUADPACK's algebraic-weight rule
    carries the Beta density's endpoint singularities), independent of the fast Gauss-Jacobi rule."""
    from scipy import integrate, special

    shape, z = model.r + x, horizon / (model.alpha + t)

    def per_p(p: float) -> float:
        return shape * z if p == 0 else -np.expm1(-shape * np.log1p(p * z)) / p

    value, _ = integrate.quad(per_p, 0, 1, weight="alg", wvar=(model.a - 1, model.b + x - 1), epsabs=0,
                              epsrel=1e-12, limit=500)
    return value / np.exp(special.betaln(model.a, model.b + x))


def test_expected_purchases_match_adaptive_quadrature_for_any_fit_including_a_below_one() -> None:
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(25):
        model = BGNBD(r=float(np.exp(rng.uniform(-2, 2))), alpha=float(np.exp(rng.uniform(-3, 4))),
                      a=float(np.exp(rng.uniform(-5, 1.5))), b=float(np.exp(rng.uniform(-1, 5))))
        t = rng.uniform(0, 104, 12)
        x = np.floor(rng.uniform(0, 1, 12) * 7 * t)  # at most one repeat purchase-day per day of age
        t_x = t * rng.uniform(0, 1, 12) * (x > 0)
        fast = model.expected_purchases(13.0, x, t_x, t) / model.probability_alive(x, t_x, t)
        reference = np.array([_adaptive_expected_purchases(model, 13.0, xi, ti) for xi, ti in zip(x, t, strict=True)])
        worst = max(worst, float(np.max(np.abs(fast - reference) / reference)))
    # Both predictions keep PREDICTION_BITS significant bits (the same bytes on every CPU); the
    # quadrature is exact to well below that.
    assert worst < 2.0 ** -(PREDICTION_BITS - 1)


def test_a_row_scores_the_same_alone_or_in_any_batch() -> None:
    """Engines score cutoffs in different batches (Spark per partition): a row's features may not
    depend on which other rows it is evaluated with."""
    model = BGNBD(r=0.5, alpha=0.4, a=0.2, b=2.4)  # small alpha: rows spread over several quadrature tiers
    x, t_x, t, _ = simulate_bgnbd(3000, **vars(model), weeks=30, seed=3)
    t = t * np.linspace(0.01, 1, len(t))
    t_x = np.minimum(t_x, t)
    whole = model.expected_purchases(13.0, x, t_x, t)
    pieces = np.concatenate([model.expected_purchases(13.0, x[i:i + 7], t_x[i:i + 7], t[i:i + 7])
                             for i in range(0, len(x), 7)])
    assert np.array_equal(whole, pieces)


def test_fit_is_a_maximum_of_the_likelihood() -> None:
    """No nearby parameter set explains the customers better than the fitted one."""
    from churnlens.bgnbd import log_likelihood

    x, t_x, t, _ = simulate_bgnbd(4000, r=0.24, alpha=4.4, a=0.79, b=2.4, weeks=52, seed=4)
    fitted = np.log(list(vars(fit_bgnbd(x, t_x, t)).values()))
    best = log_likelihood(np.exp(fitted), x, t_x, t).sum()
    rng = np.random.default_rng(0)
    for step in rng.normal(0, 1e-3, (40, 4)):
        assert log_likelihood(np.exp(fitted + step), x, t_x, t).sum() <= best + 1e-9


def test_a_fit_with_parameters_on_a_bound_ends_at_the_same_point_from_wherever_the_optimiser_stopped() -> None:
    """A short history where nobody drops out leaves a and b on their bounds. The rate parameters
    must still be the constrained optimum's, not wherever L-BFGS-B stopped (which moves with the
    CPU's vector unit), so the polished point is the same from nearby stopping points."""
    from churnlens.bgnbd import LOG_BOUNDS, fit_objective, newton_polished

    x, t_x, t, _ = simulate_bgnbd(3000, r=0.5, alpha=2.0, a=1e-6, b=1e4, weeks=17, seed=5)
    fitted = fit_bgnbd(x, t_x, t)
    assert set(at_bound(fitted)) >= {"a", "b"} and "r" not in at_bound(fitted)
    optimum = np.log(list(vars(fitted).values()))
    bounded = np.isin(list(vars(fitted)), at_bound(fitted))
    objective = fit_objective(x, t_x, t)
    rng = np.random.default_rng(0)
    # Stopping points: the free parameters a little off the optimum, the bounded ones 1e-4 inside their bound.
    starts = [optimum + np.where(bounded, -np.sign(optimum) * 1e-4, rng.normal(0, 1e-5, 4)) for _ in range(3)]
    polished = [newton_polished(start, lambda point: objective(point)[1]) for start in starts]
    assert all(np.isin(p[bounded], LOG_BOUNDS).all() for p in polished)  # on the bounds exactly
    assert np.max(np.abs(polished[1] - polished[0])) < 1e-10 and np.max(np.abs(polished[2] - polished[0])) < 1e-10
