"""Population stability of the model's inputs: does today's scoring population look like the
population the model was trained on?

At training time :func:`drift_profile` stores, per feature, decile bin edges and the share of
training rows in each bin (missing values get a bin of their own; categorical features use
their categories). At scoring time :func:`population_stability` bins the scoring population
with the same edges and computes the population stability index

    PSI = sum over bins of (actual share - expected share) * ln(actual share / expected share)

Rules of thumb: < 0.1 stable, 0.1-0.25 some shift, > 0.25 a shift worth a look before acting
on the scores. The profile is small JSON, so it travels inside the model's metadata.

Like is compared with like: an *ageing* feature (days since the first purchase, days since
signup) grows by one every day for every customer, so a later scoring date shifts its whole
distribution although nobody changed; on a log that starts at a fixed date the first observed
purchase is censored there, so the shift is large (PSI 2.7 on the simulated data, 8 on a real
retail log). The profile records the reference instant, and those features are compared after
taking off the days elapsed since it: a population that only grew older is stable, a wave of
new customers is still caught.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MISSING = "__missing__"
# Features that grow one day per day by definition (see the module docstring).
AGEING_FEATURES = frozenset({"days_since_first_purchase", "tenure_days"})
# Counts over all history only accumulate: the whole distribution moves as the log grows and no
# shift by elapsed time undoes that. They are left out of the check, with the reason recorded;
# their windowed counterparts are checked.
NOT_COMPARED = {"purchases_lifetime": "a count over all history, which grows with the log; "
                                      "purchases_30d/90d/365d are checked instead"}
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


def drift_profile(frame: pd.DataFrame, numeric: list[str], categorical: list[str], bins: int = 10,
                  reference: pd.Timestamp | None = None) -> dict:
    """Bin edges and expected shares of each feature in the reference (training) rows taken at
    instant ``reference``; with it, ageing features are compared net of the time elapsed since."""
    profile: dict[str, dict] = {}
    for name in numeric:
        values = frame[name].astype("float64")
        quantiles = values.dropna().quantile(np.linspace(0, 1, bins + 1)[1:-1]).to_numpy()
        edges = sorted(set(np.round(quantiles, 12).tolist()))
        profile[name] = {"kind": "numeric", "edges": edges, "shares": _numeric_shares(values, edges)}
        if reference is not None and name in AGEING_FEATURES:
            profile[name]["ages_from"] = pd.Timestamp(reference).isoformat()
    for name in categorical:
        categories = sorted(frame[name].astype("string").fillna(MISSING).unique().tolist())
        profile[name] = {"kind": "categorical", "categories": categories,
                         "shares": _categorical_shares(frame[name], categories)}
    return profile


def psi(expected: list[float], actual: list[float]) -> float:
    e = np.maximum(np.asarray(expected, dtype=float), SHARE_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def population_stability(profile: dict, frame: pd.DataFrame, as_of: pd.Timestamp | None = None) -> dict[str, float]:
    """PSI per profiled feature present in ``frame`` (taken at instant ``as_of``), largest first."""
    result = {}
    for name, spec in profile.items():
        if name not in frame or name in NOT_COMPARED:
            continue
        actual = (_numeric_shares(_aged_back(frame[name], spec, as_of), spec["edges"]) if spec["kind"] == "numeric"
                  else _categorical_shares(frame[name], spec["categories"]))
        result[name] = round(psi(spec["shares"], actual), 6)
    return dict(sorted(result.items(), key=lambda item: (-item[1], item[0])))


def _aged_back(values: pd.Series, spec: dict, as_of: pd.Timestamp | None) -> pd.Series:
    """An ageing feature's values as they would read at the profile's reference instant."""
    if as_of is None or "ages_from" not in spec:
        return values
    elapsed = (_naive_utc(as_of) - _naive_utc(spec["ages_from"])) / pd.Timedelta(days=1)
    return values.astype("float64") - elapsed


def _naive_utc(instant: pd.Timestamp | str) -> pd.Timestamp:
    stamp = pd.Timestamp(instant)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp
