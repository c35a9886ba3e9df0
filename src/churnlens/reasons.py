"""Each customer's top reasons in a CRM analyst's words.

The scoring job names the features whose SHAP contributions push a customer's churn risk up the
most (or, with nothing pushing up, what keeps it low) with the customer's own values and units,
and says on every reason which way it pushes: "no purchase for 84 days, 3.0x their usual gap
(raises the risk)".

Every model feature has one customer-facing phrase, defined once in :func:`feature_phrases`
(windowed phrases expanded for ``features.windows_days``). The catalog's descriptions are written
for whoever computes a feature ("log of (purchases in the last 90 days + 1) / ..."); these are
written for whoever calls the customer, so a trend reads as the two counts it compares.

A value that explains nothing is never offered as a reason: a purchase gap of a customer with a
single purchase, a mean gap of 0 days (several orders on one day), a ratio without its
denominator, a missing value (except where absence is itself the news: no complaint on record).
The next feature by contribution takes its place.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType

import numpy as np
import pandas as pd

from churnlens.segments import purchases_prior_90d

RAISES, LOWERS = " (raises the risk)", " (lowers the risk)"
# A mean gap under a day is several orders on one day, not a buying rhythm to be overdue against.
MIN_USUAL_GAP_DAYS = 1.0
# A spread of gaps needs at least two gaps: with two purchases it is 0 by construction.
MIN_PURCHASES_FOR_SPREAD = 3
PHRASE_MODEL = "by the purchase-pattern model"  # BG/NBD, in words a CRM reader needs no paper for


@dataclass(frozen=True)
class Phrase:
    """One model feature as a reason. ``says`` words one customer's values: the feature's own, then
    those of ``reads``, in that order (floats, or the text of a ``categorical`` feature).
    ``explains`` tells for a whole chunk at once, from the feature's values and the chunk's
    :class:`Columns`, where a value explains anything; None = wherever it is known."""

    says: Callable[..., str]
    reads: tuple[str, ...] = ()
    explains: Callable[[np.ndarray, Columns], np.ndarray] | None = None
    categorical: bool = False


def spend_prior_90d(features: pd.DataFrame) -> pd.Series:
    """Spend in the 90 days before the last 90, recovered from ``spend_90d`` and ``spend_trend_90d``
    (the log of the two spends' ratio, each plus one). The trend counts an order at no less than
    0, so the recovery is exact wherever no order of the last 90 days has a negative value."""
    if "spend_90d" not in features or "spend_trend_90d" not in features:
        return pd.Series(np.nan, index=features.index)
    # From steady inputs, so engines that differ in the last bits recover the same cents.
    recent = np.clip(nine_digits(features["spend_90d"].astype("float64").to_numpy()), 0.0, None)
    trend = nine_digits(features["spend_trend_90d"].astype("float64").to_numpy())
    prior = (recent + 1.0) * np.exp(-trend) - 1.0
    return pd.Series(np.round(np.clip(prior, 0.0, None), 2), index=features.index)


# Values the phrases read that are no feature: recovered exactly from the features that are.
RECOVERED: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "purchases_prior_90d": purchases_prior_90d,
    "spend_prior_90d": spend_prior_90d,
}
# A phrase that already says another feature's value: when both would be named, the other one
# gives its place to the next feature ("no purchase for 84 days, 3.0x their usual gap" is the
# overdue ratio too).
COVERED_BY = {
    "overdue_ratio": "days_since_last_purchase",
    "purchases_90d": "purchase_trend_90d",
    "spend_90d": "spend_trend_90d",
    "praise_365d": "praise_complaint_balance_365d",
    "complaints_365d": "praise_complaint_balance_365d",
}


class Columns:
    """A chunk's feature columns as arrays, each read once (the loops run over column arrays, by
    position: a row lookup per customer costs more than the model): floats, NaN throughout for a
    column the data lacks, the text of a ``categorical`` column, and the :data:`RECOVERED` values."""

    def __init__(self, features: pd.DataFrame, categorical: frozenset[str] = frozenset()) -> None:
        self._features = features
        self._categorical = categorical
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = self._read(name)
        return self._arrays[name]

    def _read(self, name: str) -> np.ndarray:
        if name in RECOVERED:
            return RECOVERED[name](self._features).astype("float64").to_numpy()
        if name not in self._features:
            return np.full(len(self._features), np.nan)
        column = self._features[name]
        if name in self._categorical:
            return column.astype(object).where(column.notna(), None).to_numpy(dtype=object)
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            column = pd.to_numeric(column, errors="coerce")  # e.g. a batch whose column is all missing
        return column.astype("float64").to_numpy()


def _known(values: np.ndarray) -> np.ndarray:
    return pd.notna(values)


def nine_digits(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to nine significant digits (a new array).

    Engines sum in different orders, so a value can differ in its last bits: 43.414999999 on one
    and 43.415000001 on another would print 43.41 and 43.42. Nine significant digits first make
    both the same number before it is rounded for reading. Rounded per decimal exponent: the whole
    column at once, not a number-to-text round trip per value."""
    steady = np.array(values, dtype="float64")
    rounded = np.isfinite(steady) & (steady != 0)
    decimals = np.zeros(len(steady), dtype=np.int64)
    decimals[rounded] = 8 - np.floor(np.log10(np.abs(steady[rounded]))).astype(np.int64)
    for places in np.unique(decimals[rounded]).tolist():
        same = rounded & (decimals == places)
        steady[same] = np.round(steady[same], places)
    return steady


def _steady(values: np.ndarray) -> list:
    """The values as Python numbers (or texts) for wording, in :func:`nine_digits`."""
    return values.tolist() if values.dtype == object else nine_digits(values).tolist()


# --------------------------------------------------------------------------- units
def _count(value: float, one: str, many: str) -> str:
    """"no purchase", "1 purchase", "12 purchases"."""
    shown = f"{value:,.0f}"
    return f"no {one}" if shown in ("0", "-0") else f"1 {one}" if shown == "1" else f"{shown} {many}"


def _days(value: float) -> str:
    shown = f"{value:,.0f}"
    return "less than a day" if shown in ("0", "-0") else "1 day" if shown == "1" else f"{shown} days"


def _percent(share: float) -> str:
    percent = share * 100.0
    if 0.0 < percent < 0.5:
        return "under 1%"
    if 99.5 <= percent < 100.0:
        return "over 99%"
    return f"{percent:.0f}%"


def _amount(value: float) -> str:
    # No currency symbol: the data's currency is unknown. Cents only where they are worth reading.
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".removesuffix(".00")


def _counted(one: str, many: str, span: str) -> Callable[[float], str]:
    return lambda value: f"{_count(value, one, many)} {span}"


def _share(template: str) -> Callable[[float], str]:
    return lambda value: template.format(_percent(value))


# --------------------------------------------------------------------------- phrases that read more
def _no_purchase_for(days: float, mean_gap: float) -> str:
    if _days(days) == "less than a day":
        return "last purchase less than a day ago"
    usual = f", {days / mean_gap:.1f}x their usual gap" if mean_gap >= MIN_USUAL_GAP_DAYS else ""
    return f"no purchase for {_days(days)}{usual}"


def _usual_gap(days: float) -> str:
    return "usually buys every day" if _days(days) == "1 day" else f"usually buys every {_days(days)}"


def _purchases_against_before(trend: float, recent: float, prior: float) -> str:
    if np.isnan(recent) or np.isnan(prior):  # the counts are not in the data: say which way it went
        return f"buying {_which_way(trend, 'more often', 'less often', 'as often')}"
    before = "none" if prior == 0 else f"{prior:,.0f}"
    return f"{_count(recent, 'purchase', 'purchases')} in the last 90 days against {before} in the 90 before"


def _spend_against_before(trend: float, recent: float, prior: float) -> str:
    if np.isnan(recent) or np.isnan(prior):
        return f"spending {_which_way(trend, 'more', 'less', 'as much')}"
    now = "no spend" if recent == 0 else f"spend of {_amount(recent)}"
    before = "none" if prior == 0 else _amount(prior)
    return f"{now} in the last 90 days against {before} in the 90 before"


def _which_way(change: float, more: str, less: str, same: str) -> str:
    if change == 0:
        return f"{same} in the last 90 days as in the 90 before"
    return f"{more if change > 0 else less} in the last 90 days than in the 90 before"


def _compliments_against_complaints(balance: float, praise: float, complaints: float) -> str:
    if np.isnan(praise) or np.isnan(complaints):
        more = "compliments than complaints" if balance > 0 else "complaints than compliments"
        return f"more {more} in the last 365 days"
    return (f"{_count(praise, 'compliment', 'compliments')} against "
            f"{_count(complaints, 'complaint', 'complaints')} in the last 365 days")


def _price_against_typical(ratio: float) -> str:
    off = round((ratio - 1.0) * 100.0)
    if off == 0:
        return "paid the typical price in their categories on average"
    return f"paid on average {abs(off)}% {'above' if off > 0 else 'below'} the typical price in their categories"


def _month_name(month: float) -> str:
    return calendar.month_name[int(month)]


def _contract(kind: str) -> str:
    return "no contract" if kind.strip().lower() == "none" else f"{kind.replace('_', ' ')} contract"


# --------------------------------------------------------------------------- when a value explains anything
def _has_rhythm(columns: Columns) -> np.ndarray:
    return columns["mean_purchase_gap_days"] >= MIN_USUAL_GAP_DAYS


def _rhythm_known(values: np.ndarray, columns: Columns) -> np.ndarray:
    return _known(values) & _has_rhythm(columns)


def _spread_known(values: np.ndarray, columns: Columns) -> np.ndarray:
    return _rhythm_known(values, columns) & (columns["purchases_lifetime"] >= MIN_PURCHASES_FOR_SPREAD)


def _repeats_known(values: np.ndarray, columns: Columns) -> np.ndarray:
    # A single basket repeats nothing by construction (segments.own_repeat_share reads it the same way).
    return _known(values) & (columns["purchases_lifetime"] >= 2)


def _always(values: np.ndarray, columns: Columns) -> np.ndarray:
    return np.ones(len(values), dtype=bool)  # a missing value says "none on record": news in itself


def _some_feedback(values: np.ndarray, columns: Columns) -> np.ndarray:
    # Neither praise nor complaint: a balance of 0 that says nothing (most customers never complain).
    feedback = columns["praise_365d"] + columns["complaints_365d"]
    return _known(values) & ((values != 0) | (feedback > 0))


def _contract_known(values: np.ndarray, columns: Columns) -> np.ndarray:
    return np.array([value is not None and value != "unknown" for value in values.tolist()], dtype=bool)


def _not_negative(values: np.ndarray, columns: Columns) -> np.ndarray:
    return _known(values) & (values >= 0)


@cache
def feature_phrases(windows_days: tuple[int, ...]) -> Mapping[str, Phrase]:
    """Model feature name -> its phrase; windowed features for each of ``windows_days`` (built once
    per windows, read-only: every caller shares it)."""
    windows = tuple(windows_days)
    long = max(windows)
    phrases: dict[str, Phrase] = {
        # ---- purchase frequency
        "days_since_last_purchase": Phrase(_no_purchase_for, ("mean_purchase_gap_days",)),
        "days_since_first_purchase": Phrase(lambda days: f"first purchase {_days(days)} ago"),
        "purchases_lifetime": Phrase(_counted("purchase", "purchases", "in total")),
        "mean_purchase_gap_days": Phrase(_usual_gap, explains=_rhythm_known),
        "purchase_gap_std_days": Phrase(lambda days: f"gaps between purchases vary by about {_days(days)}",
                                        explains=_spread_known),
        "purchase_trend_90d": Phrase(_purchases_against_before, ("purchases_90d", "purchases_prior_90d")),
        "return_rate_365d": Phrase(_share("{} of their lines in the last 365 days were returns")),
        "overdue_ratio": Phrase(lambda ratio: f"no purchase for {ratio:.1f}x their usual gap",
                                explains=_rhythm_known),
        "purchase_gap_cv": Phrase(_share("gaps between purchases vary by {} around their average"),
                                  explains=_spread_known),
        "repeat_line_share_365d": Phrase(_share("{} of their lines in the last 365 days were products bought before"),
                                         explains=_repeats_known),
        "purchase_days_lifetime": Phrase(_counted("day", "different days", "with a purchase in total")),
        "btyd_p_alive": Phrase(_share(f"likely still an active buyer, {PHRASE_MODEL}: {{}}")),
        "btyd_expected_purchases_horizon": Phrase(
            lambda days: f"expected to buy on {days:.1f} days in the coming period, {PHRASE_MODEL}"),
        "btyd_p_no_purchase_horizon": Phrase(_share(f"likely to have stopped buying, {PHRASE_MODEL}: {{}}")),
        "purchases_same_season_last_year": Phrase(
            _counted("purchase", "purchases", "in the same weeks of the year a year ago")),
        "season_month": Phrase(lambda month: f"the time of year: the coming weeks centre on {_month_name(month)}"),
        # ---- economic
        "avg_order_value_365d": Phrase(lambda value: f"average order of {_amount(value)} in the last 365 days"),
        "spend_trend_90d": Phrase(_spend_against_before, ("spend_90d", "spend_prior_90d")),
        "spend_volatility_365d": Phrase(_share("order values in the last 365 days vary by {} around their average")),
        "discount_share_365d": Phrase(_share("bought {} of lines below list price in the last 365 days")),
        "discount_depth_365d": Phrase(_share("average discount of {} on lines bought below list price")),
        "price_vs_category_median_365d": Phrase(_price_against_typical),
        "below_usual_price_share_365d": Phrase(
            _share("bought {} of lines below the product's usual price in the last 365 days")),
        "below_usual_spend_share_365d": Phrase(
            _share("{} of spend in the last 365 days on lines below the product's usual price")),
        # ---- product differentiation
        "distinct_categories_365d": Phrase(
            lambda n: f"bought from {_count(n, 'category', 'categories')} in the last 365 days"),
        "distinct_products_365d": Phrase(
            lambda n: f"bought {_count(n, 'product', 'different products')} in the last 365 days"),
        "premium_share_365d": Phrase(_share("{} of spend in the last 365 days on premium lines, priced over 1.5x "
                                             "their category's typical price")),
        # ---- interaction
        "support_contacts_90d": Phrase(_counted("support contact", "support contacts", "in the last 90 days")),
        "campaign_responses_365d": Phrase(_counted("campaign response", "campaign responses",
                                                    "in the last 365 days")),
        "days_since_last_contact": Phrase(
            lambda days: f"no contact on record in the last {long} days" if np.isnan(days)
            else f"last contact {_days(days)} ago", explains=_always),
        "days_since_last_complaint": Phrase(
            lambda days: f"no complaint on record in the last {long} days" if np.isnan(days)
            else f"last complaint {_days(days)} ago", explains=_always),
        # ---- emotional
        "last_nps": Phrase(lambda score: f"last survey score {score:.0f} out of 10"),
        "mean_nps_365d": Phrase(lambda score: f"average survey score {score:.1f} out of 10 in the last 365 days"),
        "complaints_365d": Phrase(_counted("complaint", "complaints", "in the last 365 days")),
        "complaints_90d": Phrase(_counted("complaint", "complaints", "in the last 90 days")),
        "praise_365d": Phrase(_counted("compliment", "compliments", "in the last 365 days")),
        "referrals_365d": Phrase(_counted("referral", "referrals", "in the last 365 days")),
        "praise_complaint_balance_365d": Phrase(_compliments_against_complaints, ("praise_365d", "complaints_365d"),
                                                explains=_some_feedback),
        # ---- switching cost
        "tenure_days": Phrase(lambda days: f"customer for {_days(days)}", explains=_not_negative),
        "products_held": Phrase(lambda n: f"holds {_count(n, 'product', 'products')}"),
        "contract_type": Phrase(_contract, explains=_contract_known, categorical=True),
        "days_to_contract_end": Phrase(lambda days: f"contract renews in {_days(days)}"),
        "autopay": Phrase(lambda flag: "pays by automatic payment" if flag >= 0.5 else "no automatic payment"),
        "plan_price": Phrase(lambda price: f"plan price of {_amount(price)}"),
    }
    for w in windows:
        phrases[f"purchases_{w}d"] = Phrase(_counted("purchase", "purchases", f"in the last {w} days"))
        phrases[f"spend_{w}d"] = Phrase(
            lambda value, w=w: f"no spend in the last {w} days" if value == 0
            else f"spend of {_amount(value)} in the last {w} days")
        phrases[f"visits_{w}d"] = Phrase(_counted("visit", "visits", f"in the last {w} days"))
    return MappingProxyType(phrases)


def plain_reasons(contribution: pd.DataFrame, features: pd.DataFrame, phrases: Mapping[str, Phrase],
                  k: int = 3) -> pd.Series:
    """The k features pushing each row's risk up the most, each in its :func:`feature_phrases`
    words with the customer's own values and "(raises the risk)". A row with nothing pushing up
    names what keeps its risk low instead, each "(lowers the risk)": every customer with a feature
    that moves their risk gets a reason (a row where none does, or none says anything, gets "").
    Values that explain nothing are skipped for the next feature by contribution; a feature whose
    contribution is 0 pushes neither way and is never named. ``features`` is aligned with
    ``contribution``, whose columns are model feature names (or ``step__name``)."""
    names = [column.split("__")[-1] for column in contribution.columns]
    unworded = sorted(set(names) - set(phrases))
    if unworded:
        raise ValueError(f"reasons: no phrase for model features {unworded}: add one to "
                         "churnlens.reasons.feature_phrases")
    values = contribution.to_numpy(dtype=float)
    columns = Columns(features, frozenset(name for name, phrase in phrases.items() if phrase.categorical))
    explains = np.ones(values.shape, dtype=bool)
    for j, name in enumerate(names):
        decide = phrases[name].explains
        explains[:, j] = _known(columns[name]) if decide is None else decide(columns[name], columns)
    pushes = np.where(explains, values, 0.0)
    raises = (pushes > 0).any(axis=1)
    # Rows with something pushing the risk up name only that; the others what keeps it lowest.
    strength = np.where(raises[:, None], pushes, -pushes)
    strength[~(strength > 0)] = -np.inf
    chosen = _strongest(strength, names, k)
    return pd.Series(_texts(chosen, raises, names, phrases, columns), index=features.index, dtype="string")


def _strongest(strength: np.ndarray, names: list[str], k: int) -> np.ndarray:
    """Per row, the positions of its k strongest features, strongest first (-1 where fewer are
    eligible), dropping one whose value another chosen phrase already says (:data:`COVERED_BY`)
    for the next. ``strength``: -inf where a feature is not eligible."""
    position = {name: j for j, name in enumerate(names)}
    pairs = [(position[covered], position[by]) for covered, by in COVERED_BY.items()
             if covered in position and by in position]
    chosen = _top(strength, k)
    rows, remaining = np.arange(len(strength)), strength
    while pairs:
        picked = chosen[rows]
        redundant = np.zeros(remaining.shape, dtype=bool)
        for covered, by in pairs:
            redundant[:, covered] = (picked == covered).any(axis=1) & (picked == by).any(axis=1)
        again = redundant.any(axis=1)
        if not again.any():
            break
        # Only the rows that named both choose again; the others keep their choice.
        rows, remaining = rows[again], remaining[again]  # a copy: the caller's strength stays as given
        remaining[redundant[again]] = -np.inf
        chosen[rows] = _top(remaining, k)
    return chosen


def _top(strength: np.ndarray, k: int) -> np.ndarray:
    # k argmax passes, not a sort of every feature: the first of equal values wins, as in a stable
    # sort, at a fraction of its cost (a full sort was most of the reasons' text step).
    remaining = strength.copy()
    rows = np.arange(len(strength))
    chosen = np.full((len(strength), min(k, strength.shape[1])), -1, dtype=np.int64)
    for rank in range(chosen.shape[1]):
        best = remaining.argmax(axis=1)
        eligible = remaining[rows, best] > -np.inf
        chosen[eligible, rank] = best[eligible]
        remaining[rows, best] = -np.inf
    return chosen


def _texts(chosen: np.ndarray, raises: np.ndarray, names: list[str], phrases: Mapping[str, Phrase],
           columns: Columns) -> np.ndarray:
    """Each row's chosen phrases, each with the row's direction, joined by "; "; worded one feature
    at a time over the rows that name it (column arrays, not a row lookup per customer)."""
    cells = np.full(chosen.shape, "", dtype=object)
    for j in np.unique(chosen[chosen >= 0]).tolist():
        rows, ranks = np.nonzero(chosen == j)
        phrase = phrases[names[j]]
        read = [_steady(columns[name][rows]) for name in (names[j], *phrase.reads)]
        cells[rows, ranks] = np.array(list(map(phrase.says, *read)), dtype=object)
    # A row names only what raises its risk, or only what lowers it: one direction per row. Ranks
    # fill from the first, so a row's phrases are a prefix of its cells.
    direction = np.where(raises, RAISES, LOWERS).astype(object)
    texts = np.full(len(cells), "", dtype=object)
    for rank in range(cells.shape[1]):
        named = cells[:, rank] != ""
        between = direction[named] + "; " if rank else ""
        texts[named] = texts[named] + between + cells[named, rank]
    worded = texts != ""
    texts[worded] = texts[worded] + direction[worded]
    return texts
