"""Population stability of the model's inputs: does today's scoring population look like the
population the model was trained on?

At training time :func:`drift_profile` stores, per feature, decile bin edges and the share of
training rows in each bin (missing values get a bin of their own; categorical features use
their categories). At scoring time :func:`population_stability` bins the scoring population
with the same edges and computes the population stability index

    PSI = sum over bins of (actual share - expected share) * ln(actual share / expected share)

Rules of thumb: < 0.1 stable, 0.1-0.25 some shift, > 0.25 a shift worth a look before acting
on the scores. The profile is small JSON, so it travels inside the model's metadata.

Like is compared with like. Some features move for every customer with the calendar alone: days
since the first purchase and days since signup grow by one a day, and counts over all history
only accumulate. On a log that starts at a fixed date most first purchases are censored at that
date, so a later scoring date moves the whole distribution although nobody changed (PSI 2.7 on
the simulated data; still 0.27 after taking off the days elapsed since the training snapshot,
because steady acquisition keeps the young end as it was). Those features are left out of the
check with the reason recorded in the scoring manifest; the windowed features that carry the
same signal (purchases and spend over 30/90/365 days, recency) are checked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MISSING = "__missing__"
# Features that move with the calendar for everyone (see the module docstring), and why.
NOT_COMPARED = {
    "days_since_first_purchase": "grows one day per day for every customer and is censored at the start of the "
                                 "log; recency and the windowed counts are checked instead",
    "tenure_days": "grows one day per day for every customer; the windowed counts are checked instead",
    "purchases_lifetime": "a count over all history, which grows with the log; purchases_30d/90d/365d are "
                          "checked instead",
    "season_month": "the calendar month of the label window: the same for every customer, and another at every "
                    "scoring date than at the latest training cutoff",
}
SHARE_FLOOR = 1e-4  # an empty bin would make ln() infinite; treat it as nearly empty instead


def _numeric_shares(values: pd.Series, edges: list[float]) -> list[float]:
    x = values.astype("float64").to_numpy()
    present = ~np.isnan(x)
    counts = np.bincount(np.searchsorted(np.asarray(edges), x[present], side="right"), minlength=len(edges) + 1)
    return [*(counts / max(len(x), 1)).tolist(), float((~present).sum() / max(len(x), 1))]


def _categorical_shares(values: pd.Series, categories: list[str]) -> list[float]:
    labels = values.astype("string").fillna(MISSING)
    shares = labels.value_counts(normalize=True)
    known = [float(shares.get(c, 0.0)) for c in categories]
    return [*known, float(1.0 - sum(known))]  # last bin: categories unseen in training


def drift_profile(frame: pd.DataFrame, numeric: list[str], categorical: list[str], bins: int = 10) -> dict:
    """Bin edges and expected shares of each feature in the reference (training) rows."""
    profile: dict[str, dict] = {}
    for name in numeric:
        values = frame[name].astype("float64")
        quantiles = values.dropna().quantile(np.linspace(0, 1, bins + 1)[1:-1]).to_numpy()
        edges = sorted(set(np.round(quantiles, 12).tolist()))
        profile[name] = {"kind": "numeric", "edges": edges, "shares": _numeric_shares(values, edges)}
    for name in categorical:
        categories = sorted(frame[name].astype("string").fillna(MISSING).unique().tolist())
        profile[name] = {"kind": "categorical", "categories": categories,
                         "shares": _categorical_shares(frame[name], categories)}
    return profile


def psi(expected: list[float], actual: list[float]) -> float:
    e = np.maximum(np.asarray(expected, dtype=float), SHARE_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def population_stability(profile: dict, frame: pd.DataFrame) -> dict[str, float]:
    """PSI per profiled feature present in ``frame``, largest first (not those of NOT_COMPARED)."""
    result = {}
    for name, spec in profile.items():
        if name not in frame or name in NOT_COMPARED:
            continue
        actual = (_numeric_shares(frame[name], spec["edges"]) if spec["kind"] == "numeric"
                  else _categorical_shares(frame[name], spec["categories"]))
        result[name] = round(psi(spec["shares"], actual), 6)
    return dict(sorted(result.items(), key=lambda item: (-item[1], item[0])))

