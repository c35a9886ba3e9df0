"""BG/NBD (Fader, Hardie & Lee, 2005): the classic "buy till you die" baseline, fitted with scipy.

Used as a churn *ranking*: the fewer purchases the model expects in the label horizon, the
likelier the customer churns. (1 - P(alive) is a poor churn score: one-time buyers get
P(alive) = 1 by construction.) Time is measured in weeks to keep the parameters well scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1

DAYS_PER_UNIT = 7.0


@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float

    def expected_purchases(self, horizon: float, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """E[purchases in (T, T + horizon] | x repeat purchases, last at t_x, observed for T]."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x, t_x, t = (np.asarray(v, dtype=float) for v in (x, t_x, t))
        ratio = (alpha + t) / (alpha + t + horizon)
        hyper = hyp2f1(r + x, b + x, a + b + x - 1, horizon / (alpha + t + horizon))
        numerator = (a + b + x - 1) / (a - 1) * (1 - ratio ** (r + x) * hyper)
        alive_odds = np.where(x > 0, a / np.maximum(b + x - 1, 1e-12) * ((alpha + t) / (alpha + t_x)) ** (r + x), 0.0)
        return numerator / (1 + alive_odds)


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
    r, alpha, a, b = params
    common = (gammaln(r + x) - gammaln(r) + r * np.log(alpha) + gammaln(a + b) + gammaln(b + x) - gammaln(b)
              - gammaln(a + b + x))
    term_alive = -(r + x) * np.log(alpha + t)
    term_dropped = np.where(
        x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x), -np.inf)
    return common + np.logaddexp(term_alive, term_dropped)


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> BGNBD:
    """Maximum likelihood on (repeat purchases, time of last purchase, age), all in weeks."""
    x, t_x, t = (np.asarray(v, dtype=float) for v in (x, t_x, t))
    if len(x) == 0:
        raise ValueError("BG/NBD needs at least one customer")

    def negative(log_params: np.ndarray) -> float:
        return -float(np.sum(log_likelihood(np.exp(log_params), x, t_x, t)))

    start = np.log([1.0, max(float(np.mean(t)), 1.0), 1.5, 3.0])
    result = minimize(negative, start, method="L-BFGS-B", bounds=[(-8, 8)] * 4)
    r, alpha, a, b = np.exp(result.x)
    # The expectation needs a > 1; a fitted a <= 1 means almost no dropout signal.
    return BGNBD(r=r, alpha=alpha, a=max(a, 1.0 + 1e-6), b=b)


def rfm_inputs(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(repeat purchases, weeks from first to last purchase, weeks from first purchase to cutoff)."""
    x = (frame["purchases_lifetime"].to_numpy(dtype=float) - 1).clip(min=0)
    t = frame["days_since_first_purchase"].to_numpy(dtype=float) / DAYS_PER_UNIT
    t_x = t - frame["days_since_last_purchase"].to_numpy(dtype=float) / DAYS_PER_UNIT
    return x, np.clip(t_x, 0, None), t
