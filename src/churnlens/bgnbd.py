"""BG/NBD (Fader, Hardie & Lee, 2005): the classic "buy till you die" model, fitted with scipy.

Customers buy at a Poisson rate ``lambda ~ Gamma(r, alpha)`` while alive and drop out right after
any repeat purchase with probability ``p ~ Beta(a, b)``. The inputs per customer are the standard
sufficient statistics, on *purchase-days* (several invoices on one day are one transaction):
``x`` repeat purchase-days, ``t_x`` the time from the first to the last purchase-day and ``T`` the
time from the first purchase-day to the cutoff. Time is measured in weeks to keep the parameters
well scaled.

As a churn score the model gives P(no purchase in the next ``H``) directly: a customer who is dead
never buys again, and one who is alive has a Gamma(r + x, alpha + T) posterior rate, so

    P(no purchase in (T, T + H]) = 1 - P(alive) + P(alive) * ((alpha + T) / (alpha + T + H)) ** (r + x)

(1 - P(alive) alone is a poor churn score: one-time buyers get P(alive) = 1 by construction.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy import special
from scipy.special import gammaln
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from churnlens.portable import settled, significant

DAYS_PER_UNIT = 7.0
# log-parameter bounds: wide enough that a fit on real data sits inside them (checked in tests).
LOG_BOUNDS = (-9.0, 9.0)
# L-BFGS-B stops 1e-7 (relative) from the optimum, at a point that moves with the last bits of
# exp and log, which differ between CPUs (see churnlens.portable). So the fit ends with Newton
# steps (2e-12 apart across vector units on the shop's log) and keeps 6 significant digits, and
# every prediction is settled: the same data give the same bytes on every machine.
PARAMETER_DIGITS = 6
NEWTON_STEPS = 3


@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float

    def _posterior(self, x, t_x, t) -> tuple[np.ndarray, ...]:
        x, t_x, t = (np.asarray(v, dtype=float) for v in (x, t_x, t))
        return x, t_x, t, self.r + x, self.alpha + t

    def probability_alive(self, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """P(still alive at T | x, t_x, T); 1 for customers without a repeat purchase."""
        x, t_x, t, shape, rate = self._posterior(x, t_x, t)
        log_odds = (np.log(self.a) - np.log(np.maximum(self.b + x - 1, 1e-300))
                    + shape * (np.log(rate) - np.log(self.alpha + t_x)))
        return settled(np.where(x > 0, 1.0 / (1.0 + np.exp(np.minimum(log_odds, 700.0))), 1.0))

    def probability_no_purchase(self, horizon: float, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """P(no purchase in (T, T + horizon] | x, t_x, T): the model's churn probability."""
        x, t_x, t, shape, rate = self._posterior(x, t_x, t)
        alive = self.probability_alive(x, t_x, t)
        return settled(1.0 - alive + alive * np.exp(shape * (np.log(rate) - np.log(rate + horizon))))

    def expected_purchases(self, horizon: float, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """E[purchases in (T, T + horizon] | x, t_x, T].

        An alive customer with rate lambda and dropout p buys (1 - exp(-lambda p H)) / p times in
        expectation; over the Gamma posterior of lambda that is (1 - (rate / (rate + p H))^shape) / p,
        averaged over the Beta(a, b + x) posterior of p by Gauss-Jacobi quadrature. The quadrature
        takes the Beta density as its weight, so it is exact at p -> 0 for any a, b > 0 (the textbook
        hypergeometric form needs a > 1) and the integrand left over is smooth; each row gets as many
        points as the sharpness of that integrand needs (:data:`QUADRATURE_TIERS`).
        """
        x, t_x, t, shape, rate = self._posterior(x, t_x, t)
        scaled = horizon / rate
        tier = np.searchsorted([limit for limit, _ in QUADRATURE_TIERS], np.maximum(shape * scaled, 3.0 * scaled))
        average = np.empty(len(x))
        for level in np.unique(tier):
            rows = np.flatnonzero(tier == level)
            average[rows] = _posterior_average(self.a, self.b, x[rows], shape[rows], scaled[rows],
                                               QUADRATURE_TIERS[level][1])
        return settled(self.probability_alive(x, t_x, t) * average)


def _posterior_average(a: float, b: float, x: np.ndarray, shape: np.ndarray, scaled: np.ndarray,
                       points: int) -> np.ndarray:
    """Mean of (1 - (1 + p H / rate)^-shape) / p over p ~ Beta(a, b + x), per row."""
    distinct, which = np.unique(x, return_inverse=True)
    nodes, weights = beta_quadrature(a, b + distinct, points)  # the posterior of p depends on x alone
    average = np.empty(len(x))
    step = max(1, _CHUNK_CELLS // points)  # bounded memory: rows x points per chunk
    for start in range(0, len(x), step):
        part = slice(start, start + step)
        p = nodes[which[part]]
        # 1 - (rate / (rate + p H))^shape, without cancellation when p H << rate
        per_p = -np.expm1(-shape[part, None] * np.log1p(p * scaled[part, None])) / p
        average[part] = np.sum(weights[which[part]] * per_p, axis=1)
    return average


# The integrand (1 - (1 + p z)^-k) / p, z = H / rate, k = shape, bends at p ~ 1 / (k z) and has its
# only singularity at p = -1 / z: the sharper it is, the more Gauss-Jacobi points it needs. Tiers of
# (largest max(k z, 3 z), points) keep the relative error below 1e-8 against adaptive quadrature
# (checked in test_bgnbd.py, a < 1 included); real cutoffs sit almost entirely in the first tier.
QUADRATURE_TIERS = ((30.0, 32), (200.0, 64), (1_500.0, 128), (8_000.0, 256), (40_000.0, 512), (np.inf, 1024))
_CHUNK_CELLS = 2_000_000


def beta_quadrature(a: float, b: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (each row summing to 1) of Gauss quadrature for Beta(a, b_i), one row per b_i.

    Golub-Welsch on the Jacobi recurrence, mapped from [-1, 1] to p in [0, 1]: weights are the
    squared first components of the eigenvectors, so no normalising constant (which overflows
    for large b) is ever formed.
    """
    from scipy.linalg import eigh_tridiagonal

    nodes, weights = np.empty((len(b), points)), np.empty((len(b), points))
    k = np.arange(points, dtype=float)
    for row, b_row in enumerate(np.asarray(b, dtype=float)):
        # weight (1 - u)^al (1 + u)^be on [-1, 1] with p = (1 + u) / 2: al for 1 - p, be for p
        al, be = b_row - 1.0, a - 1.0
        s = 2.0 * k + al + be
        with np.errstate(invalid="ignore", divide="ignore"):
            diagonal = np.where(k == 0, (be - al) / (al + be + 2.0), (be * be - al * al) / (s * (s + 2.0)))
            j = k[1:]
            sj = 2.0 * j + al + be
            squared = np.where(j == 1, 4.0 * (1.0 + al) * (1.0 + be) / ((2.0 + al + be) ** 2 * (3.0 + al + be)),
                               4.0 * j * (j + al) * (j + be) * (j + al + be) / (sj * sj * (sj + 1.0) * (sj - 1.0)))
        u, vectors = eigh_tridiagonal(diagonal, np.sqrt(squared))
        nodes[row] = np.clip((1.0 + u) / 2.0, np.finfo(float).tiny, 1.0)
        weights[row] = vectors[0] ** 2 / np.sum(vectors[0] ** 2)
    return nodes, weights


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-customer log likelihood (Fader, Hardie & Lee 2005, eq. 6)."""
    r, alpha, a, b = params
    term_alive, term_dropped = _branch_terms(r, alpha, a, b, x, np.log(alpha + t), np.log(alpha + t_x))
    return _count_terms(r, alpha, a, b, x) + np.logaddexp(term_alive, term_dropped)


def _count_terms(r: float, alpha: float, a: float, b: float, x: np.ndarray) -> np.ndarray:
    """The part of eq. 6 that depends on the number of repeat purchases x alone."""
    return (gammaln(r + x) - gammaln(r) + r * np.log(alpha) + gammaln(a + b) + gammaln(b + x) - gammaln(b)
            - gammaln(a + b + x))


def _branch_terms(r: float, alpha: float, a: float, b: float, x: np.ndarray, log_age: np.ndarray,
                  log_last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 6's two branches in logs: still alive at the end, or dropped out after the last repeat
    purchase (impossible, -inf, without one)."""
    repeat = x > 0
    term_dropped = np.full(len(x), -np.inf)
    term_dropped[repeat] = np.log(a) - np.log(b + x[repeat] - 1) - (r + x[repeat]) * log_last[repeat]
    return -(r + x) * log_age, term_dropped


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> BGNBD:
    """Maximum likelihood on (repeat purchase-days, time of the last one, age), all in weeks.

    Optimised over log parameters, so a < 1 (common on real logs) is as reachable as a > 1.
    """
    x, t_x, t = (np.asarray(v, dtype=float) for v in (x, t_x, t))
    if len(x) == 0:
        raise ValueError("BG/NBD needs at least one customer")
    objective = fit_objective(x, t_x, t)
    start = np.log([1.0, max(float(np.mean(t)), 1.0), 1.0, 1.0])
    # Analytic gradient: 5x fewer likelihood evaluations than finite differences, and tolerances
    # tight enough that the optimum, not the optimiser's path, decides the parameters.
    # One BLAS thread: L-BFGS-B's 4-parameter updates call BLAS, whose worker threads only spin
    # on a busy machine (1.7x slower fits with two cores shared, identical results either way).
    with threadpool_limits(1, user_api="blas"):
        result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=[LOG_BOUNDS] * 4,
                          options={"ftol": 1e-14, "gtol": 1e-9})
        optimum = newton_polished(result.x, lambda point: objective(point)[1])
    r, alpha, a, b = (significant(float(value), PARAMETER_DIGITS) for value in np.exp(optimum))
    return BGNBD(r=r, alpha=alpha, a=a, b=b)


def fit_objective(x: np.ndarray, t_x: np.ndarray, t: np.ndarray):
    """log parameters -> (the weighted mean negative log likelihood, its gradient) on these customers;
    identical customers share one term."""
    counts = np.unique(np.column_stack([x, t_x, t]), axis=0, return_counts=True)
    (ux, utx, ut), weight = counts[0].T, counts[1].astype(float)
    distinct, which = np.unique(ux, return_inverse=True)
    return lambda log_params: _mean_negative_log_likelihood(log_params, ux, utx, ut, weight, distinct, which)


def newton_polished(point: np.ndarray, gradient, steps: int = NEWTON_STEPS) -> np.ndarray:
    """``point`` after a fixed number of Newton steps on ``gradient`` (Hessian by central
    differences of it), so the answer is the optimum's, not the optimiser's path's.

    A fixed count, not a test on the objective: near the optimum such a test compares values that
    differ only in their last bits, and would branch differently on different CPUs. A parameter the
    optimiser left on a bound is set on it exactly and the steps move the others only: a short
    history with few repeat purchases leaves the dropout unidentified (a and b on their bounds), and
    the rate parameters must still not end wherever L-BFGS-B happened to stop. Left as it is where a
    step is not a descent step from a convex neighbourhood.
    """
    lower, upper = point <= LOG_BOUNDS[0] + 1e-3, point >= LOG_BOUNDS[1] - 1e-3
    point = np.where(lower, LOG_BOUNDS[0], np.where(upper, LOG_BOUNDS[1], point))
    free = np.flatnonzero(~(lower | upper))
    if len(free) == 0:
        return point
    units = np.eye(len(point))[free]
    for _ in range(steps):
        hessian = np.array([(gradient(point + 1e-5 * unit)[free] - gradient(point - 1e-5 * unit)[free]) / 2e-5
                            for unit in units])
        hessian = (hessian + hessian.T) / 2
        if not np.all(np.linalg.eigvalsh(hessian) > 0):
            return point
        step = np.linalg.solve(hessian, gradient(point)[free])
        if not np.all(np.isfinite(step)) or np.max(np.abs(step)) > 0.1:
            return point
        point = point.copy()
        point[free] -= step
    return point


def _mean_negative_log_likelihood(log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, t: np.ndarray,
                                  weight: np.ndarray, distinct: np.ndarray, which: np.ndarray
                                  ) -> tuple[float, np.ndarray]:
    """-weighted mean of :func:`log_likelihood` and its gradient in the log parameters. The gamma
    terms depend on x alone, so they are evaluated once per distinct x (``x == distinct[which]``)."""
    r, alpha, a, b = params = np.exp(log_params)
    per_x = np.bincount(which, weight)
    common = _count_terms(r, alpha, a, b, distinct)
    log_age, log_last = np.log(alpha + t), np.log(alpha + t_x)
    repeat, shape = x > 0, r + x
    term_alive, term_dropped = _branch_terms(r, alpha, a, b, x, log_age, log_last)
    both = np.logaddexp(term_alive, term_dropped)
    dropped = np.exp(term_dropped - both)  # the dropped-out branch's share of each likelihood
    alive = 1.0 - dropped
    d_common = np.array([
        _dot(per_x, special.digamma(r + distinct) - special.digamma(r) + np.log(alpha)),
        per_x.sum() * r / alpha,
        _dot(per_x, special.digamma(a + b) - special.digamma(a + b + distinct)),
        _dot(per_x, special.digamma(a + b) + special.digamma(b + distinct) - special.digamma(b)
             - special.digamma(a + b + distinct)),
    ])
    inverse_gap = np.zeros(len(x))
    inverse_gap[repeat] = 1.0 / (b + x[repeat] - 1)
    d_rows = np.array([
        _dot(weight, -alive * log_age - dropped * log_last),
        _dot(weight, -shape * (alive / (alpha + t) + dropped / (alpha + t_x))),
        _dot(weight, dropped) / a,
        -_dot(weight, dropped * inverse_gap),
    ])
    total = weight.sum()
    value = -(_dot(per_x, common) + _dot(weight, both)) / total
    return float(value), -(d_common + d_rows) * params / total


def _dot(weights: np.ndarray, values: np.ndarray) -> float:
    # Not ``@``: a multithreaded BLAS dot on two busy cores took 13 ms for 44k rows instead of 0.04.
    return float(np.sum(weights * values))


def at_bound(model: BGNBD) -> list[str]:
    """Names of the parameters the optimiser left on a bound (a sign the fit is unreliable)."""
    return [name for name, value in vars(model).items()
            if not LOG_BOUNDS[0] + 1e-3 < np.log(value) < LOG_BOUNDS[1] - 1e-3]


# ---------------------------------------------------------------- features: one fit per cutoff
BTYD_FEATURES = ("btyd_p_alive", "btyd_expected_purchases_horizon", "btyd_p_no_purchase_horizon")
BTYD_INPUTS = ("purchase_days_lifetime", "days_since_first_purchase", "days_since_last_purchase")
MAX_FIT_CUSTOMERS = 100_000  # a larger cutoff is fitted on a deterministic sample of this size


def _fit_inputs(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Rounded to a microsecond-scale grid: engines that sum in another order give bit-identical
    # inputs, hence identical fits.
    return tuple(np.round(v, 9) for v in rfm_inputs(frame))


def fit_for_cutoff(frame) -> BGNBD:
    """BG/NBD fitted on one cutoff's customers (their statistics stop at the cutoff). Above
    MAX_FIT_CUSTOMERS, every k-th customer in id order: the same sample on every engine."""
    ordered = frame.sort_values("customer_id", kind="stable")
    step = max(1, -(-len(ordered) // MAX_FIT_CUSTOMERS))
    return fit_bgnbd(*_fit_inputs(ordered.iloc[::step]))


def btyd_columns(frame, model: BGNBD, horizon_days: int):
    """P(alive), expected purchases and P(no purchase) in the label horizon, per row of ``frame``."""
    import pandas as pd

    inputs = _fit_inputs(frame)
    horizon = horizon_days / DAYS_PER_UNIT
    values = (model.probability_alive(*inputs), model.expected_purchases(horizon, *inputs),
              model.probability_no_purchase(horizon, *inputs))
    return pd.DataFrame(dict(zip(BTYD_FEATURES, values, strict=True)), index=frame.index)


def fits_per_cutoff(frame) -> dict:
    """One BG/NBD per cutoff of a snapshot frame (customer_id, cutoff and the history features)."""
    return {cutoff: fit_for_cutoff(rows) for cutoff, rows in frame.groupby("cutoff", sort=True)}


def with_btyd_features(frame, horizon_days: int, fits: dict | None = None):
    """``frame`` with the BTYD columns appended, each cutoff scored by its own fit."""
    import pandas as pd

    fits = fits_per_cutoff(frame) if fits is None else fits
    if frame.empty:
        return frame.assign(**{name: pd.Series(dtype="float64") for name in BTYD_FEATURES})
    parts = [btyd_columns(rows, fits[cutoff], horizon_days) for cutoff, rows in frame.groupby("cutoff", sort=True)]
    return pd.concat([frame, pd.concat(parts).reindex(frame.index)], axis=1)


def rfm_inputs(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(repeat purchases, weeks from first to last purchase, weeks from first purchase to cutoff)
    from a snapshot's history features; purchase-days when the snapshot has them."""
    count = "purchase_days_lifetime" if "purchase_days_lifetime" in frame else "purchases_lifetime"
    x = (frame[count].to_numpy(dtype=float) - 1).clip(min=0)
    t = frame["days_since_first_purchase"].to_numpy(dtype=float) / DAYS_PER_UNIT
    t_x = t - frame["days_since_last_purchase"].to_numpy(dtype=float) / DAYS_PER_UNIT
    return x, np.clip(t_x, 0, None), t
