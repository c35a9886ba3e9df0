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

DAYS_PER_UNIT = 7.0
# log-parameter bounds: wide enough that a fit on real data sits inside them (checked in tests).
LOG_BOUNDS = (-9.0, 9.0)
_LOGIT_GRID = np.linspace(-30.0, 30.0, 601)


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
        return np.where(x > 0, 1.0 / (1.0 + np.exp(np.minimum(log_odds, 700.0))), 1.0)

    def probability_no_purchase(self, horizon: float, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """P(no purchase in (T, T + horizon] | x, t_x, T): the model's churn probability."""
        x, t_x, t, shape, rate = self._posterior(x, t_x, t)
        alive = self.probability_alive(x, t_x, t)
        return 1.0 - alive + alive * np.exp(shape * (np.log(rate) - np.log(rate + horizon)))

    def expected_purchases(self, horizon: float, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """E[purchases in (T, T + horizon] | x, t_x, T].

        An alive customer with rate lambda and dropout p buys (1 - exp(-lambda p H)) / p times in
        expectation; over the Gamma posterior of lambda that is (1 - (rate / (rate + p H))^shape) / p,
        averaged over the Beta(a, b + x) posterior of p on a fine logit grid, normalised numerically.
        This holds for any a, b > 0 (the textbook hypergeometric form needs a > 1) and stays finite
        for the extreme parameters of a fit on a handful of customers.
        """
        x, t_x, t, shape, rate = self._posterior(x, t_x, t)
        p = special.expit(_LOGIT_GRID)[None, :]
        log_p, log_q = np.log(p), np.log1p(-p)
        average = np.empty(len(x))
        for start in range(0, len(x), 5_000):  # bounded memory: rows x grid points per chunk
            part = slice(start, start + 5_000)
            # Beta density times the logit Jacobian p (1 - p): p^a (1 - p)^(b + x) on the grid.
            log_weight = self.a * log_p + (self.b + x[part, None]) * log_q
            weight = np.exp(log_weight - special.logsumexp(log_weight, axis=1, keepdims=True))
            k, c = shape[part, None], rate[part, None]
            per_p = -np.expm1(k * (np.log(c) - np.log(c + p * horizon))) / p
            average[part] = np.sum(weight * per_p, axis=1)
        return self.probability_alive(x, t_x, t) * average


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-customer log likelihood (Fader, Hardie & Lee 2005, eq. 6)."""
    r, alpha, a, b = params
    common = (gammaln(r + x) - gammaln(r) + r * np.log(alpha) + gammaln(a + b) + gammaln(b + x) - gammaln(b)
              - gammaln(a + b + x))
    term_alive = -(r + x) * np.log(alpha + t)
    term_dropped = np.where(
        x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x), -np.inf)
    return common + np.logaddexp(term_alive, term_dropped)


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, t: np.ndarray) -> BGNBD:
    """Maximum likelihood on (repeat purchase-days, time of the last one, age), all in weeks.

    Optimised over log parameters, so a < 1 (common on real logs) is as reachable as a > 1.
    """
    x, t_x, t = (np.asarray(v, dtype=float) for v in (x, t_x, t))
    if len(x) == 0:
        raise ValueError("BG/NBD needs at least one customer")
    counts = np.unique(np.column_stack([x, t_x, t]), axis=0, return_counts=True)
    (ux, utx, ut), weight = counts[0].T, counts[1]  # identical customers share one likelihood term

    def negative(log_params: np.ndarray) -> float:
        return -float(weight @ log_likelihood(np.exp(log_params), ux, utx, ut)) / weight.sum()

    start = np.log([1.0, max(float(np.mean(t)), 1.0), 1.0, 1.0])
    result = minimize(negative, start, method="L-BFGS-B", bounds=[LOG_BOUNDS] * 4)
    r, alpha, a, b = np.exp(result.x)
    return BGNBD(r=float(r), alpha=float(alpha), a=float(a), b=float(b))


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
