"""Loyalty segments from interpretable indices built on the feature families (DOMAIN.md).

Three indices in [0, 1], each the mean of the components the data has (a component whose
feature is missing for a customer is skipped, not guessed). Every index can be computed from a
bare purchase log (customer, time, product, quantity, price); interaction and profile fields
enrich it where present:

* advocacy: evidence of attachment - exploring, i.e. buying products not bought before while
  spend holds (the last 90 days at least those before; nothing bought in the last 90 days is spend
  that did not hold, and a customer with nothing in the 90 days before has had no time to show
  it); NPS, referrals, praise vs complaints where present. New lines alone are no attachment (a
  comparer switching between products buys them too) and spend that holds alone is no exploring
  (a habitual user's spend holds too). Full-price buying and few returns do not count as evidence
  (nearly every occasional buyer shows both): they scale the advocacy index down for customers who
  buy in price drops or return a lot;
* switching cost / habit: repeat-basket share (for a single basket, the share with which its
  products are usually re-bought: staples vs one-off lines), a regular cadence; contract,
  autopay, products held and tenure where present;
* price sensitivity (the comparer): share of lines and of spend bought below the product's usual
  price, switching between products (new lines while spend falls away); discount share,
  promotion response and paying below the category median where present.

The segment is the index with the highest value (brand advocate / brand user / brand
comparer), the margin is its lead over the runner-up (``low_confidence`` below
``score.segments.min_margin``). ``insufficient_history`` goes to those for whom fewer than two
indices can be computed and to those whose best index stays under ``score.segments.min_index``
(no attitude shows; a segment is never the leftover of the other two). A short history (fewer
than ``min_orders`` purchases or a first purchase less than ``min_tenure_days`` ago, typically a
single basket) goes through the same rule with what it shows - price-drop buying, a basket of
staples or of one-off lines; whatever needs time (repeats, cadence, spend that holds) is unknown
for it, never 0 - and its segment is always ``low_confidence``.
All transforms are fixed functions of one customer's features (no batch quantiles), so a
segment never depends on who else is in the batch; they read features only, never personas.

Evidence levels. The rules above read product lines (level ``lines``: a product id, and a price
where the log has one). Many real logs hold less: purchases with an amount but no products
(``purchases``), or nothing but dates (``dates``). Such a log is read by what it can show
(:func:`coarse_components`): the attitudes as trends and rhythm of buying -
* advocacy: buying (and spend, where amounts exist) that grows - "carries stable growth";
* switching cost / habit: a regular cadence, a steady basket value, a long observed tenure;
* price sensitivity: irregular timing, volatile basket values, buying that falls away -
  "compares all the time", the most volatile group -
plus whatever the interaction and customer tables add, as at the lines level. Each row says the
level it was read from (``segment_evidence``); a segment whose winning index rests on a single
observed component is thin evidence and flagged ``low_confidence``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnlens.config import PERSONAS, SegmentRules

# Richest first: a log is read at the first level whose signals it holds (:func:`evidence_level`).
EVIDENCE_LEVELS = ("lines", "purchases", "dates")
# Features that exist only where the log has product ids (and prices): the lines-level rules.
LINE_LEVEL_FEATURES = ("repeat_line_share_365d", "product_repeat_rate_365d", "below_usual_price_share_365d")
# Timing against a reference that needs no data: purchases at random instants (a Poisson process)
# have gaps whose CV is 1, no rhythm at all; at half that a customer keeps a clear rhythm. The
# coarse levels read cadence on that scale (the lines level keeps 1 - CV, which its rules were
# measured with).
RANDOM_TIMING_CV = 1.0
REGULAR_TIMING_CV = 0.5
# Features that exist only where the log has amounts.
AMOUNT_FEATURES = ("spend_365d", "spend_trend_90d", "spend_volatility_365d")

INDEX_OF_SEGMENT = {
    PERSONAS[0]: "advocacy_index",  # brand_advocate
    PERSONAS[1]: "switching_cost_index",  # brand_user
    PERSONAS[2]: "price_sensitivity_index",  # brand_comparer
}


def _clip(series: pd.Series) -> pd.Series:
    return series.astype("float64").clip(0.0, 1.0)


def _get(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name].astype("float64") if name in frame else pd.Series(np.nan, index=frame.index)


def contract_lock_in(features: pd.DataFrame, rules: SegmentRules) -> pd.Series:
    """Lock-in of the contract type via ``score.segments.contract_lock_in``; an unmapped type is
    unknown (NaN, the component is skipped), never a silent zero."""
    if "contract_type" not in features:
        return pd.Series(np.nan, index=features.index)
    return features["contract_type"].map(rules.contract_lock_in).astype("float64")


def unknown_contract_types(features: pd.DataFrame, rules: SegmentRules) -> dict[str, int]:
    """Contract types the params do not map, with their customer counts (for the segment report)."""
    if "contract_type" not in features:
        return {}
    types = features["contract_type"].dropna().astype(str)
    unmapped = types[~types.isin(list(rules.contract_lock_in))]
    return {str(name): int(n) for name, n in unmapped.value_counts().sort_index().items()}


def own_repeat_share(features: pd.DataFrame) -> pd.Series:
    """Share of the customer's lines on products they had bought before; unknown for a single
    basket, where it is 0 by construction (nothing earlier to repeat), not evidence of anything."""
    return _get(features, "repeat_line_share_365d").where(_get(features, "purchases_lifetime") >= 2)


def purchases_prior_90d(features: pd.DataFrame) -> pd.Series:
    """Purchases in the 90 days before the last 90, recovered exactly from ``purchases_90d`` and
    ``purchase_trend_90d`` (the log of their ratio, each plus one)."""
    recent = _get(features, "purchases_90d")
    return np.round((recent + 1.0) * np.exp(-_get(features, "purchase_trend_90d")) - 1.0)


def stable_or_growing_spend(features: pd.DataFrame) -> pd.Series:
    """1 when the last 90 days' spend is at least that of the 90 days before, falling to 0 at a
    quarter of it; 0 when nothing was bought in the last 90 days (spend stopped, it did not hold).
    Unknown when nothing was bought in the 90 days before but something since: a new (or
    returning) customer's spend has had no time to hold, so it is no evidence of attachment."""
    held = _clip(1.0 + _get(features, "spend_trend_90d") / np.log(4.0))
    recent = _get(features, "purchases_90d")
    held = held.where(~((purchases_prior_90d(features) == 0) & (recent > 0)))
    return held.where(~(recent == 0), 0.0)


def advocacy_qualifiers(features: pd.DataFrame, rules: SegmentRules) -> pd.DataFrame:
    """Full-price buying and few returns, in [0, 1]. Nearly every occasional buyer shows both, so
    they are no evidence of attachment on their own: they scale the advocacy evidence down for a
    customer who buys in price drops or returns a lot, instead of lifting everyone else."""
    below_usual = _clip(_get(features, "below_usual_price_share_365d") / rules.price_drop_share_full)
    discount = _get(features, "discount_share_365d")
    # Full price: below the product's usual price where known, else below the list price.
    return pd.DataFrame({"full_price_buying": (1.0 - below_usual).fillna(_clip(1.0 - discount * 2.0)),
                         "few_returns": _clip(1.0 - _get(features, "return_rate_365d") * 5.0)})


def new_lines_share(features: pd.DataFrame) -> pd.Series:
    """Share of the customer's lines on products they had not bought before (unknown for a single
    basket, where every line is new by construction)."""
    return _clip(1.0 - own_repeat_share(features))


def exploring_with_spend_that_holds(features: pd.DataFrame) -> pd.Series:
    """New lines bought while spend holds: the advocate's exploring (DOMAIN.md). New lines alone are
    no attachment (a comparer switching between products buys them too), spend that holds alone
    is no exploring (a habitual user's spend holds too)."""
    return new_lines_share(features) * stable_or_growing_spend(features)


def switching_products(features: pd.DataFrame) -> pd.Series:
    """New lines bought while spend falls away: the comparer's switching between products
    (DOMAIN.md), the same lines as :func:`exploring_with_spend_that_holds` without the attachment."""
    return new_lines_share(features) * (1.0 - stable_or_growing_spend(features))


def evidence_level(features: pd.DataFrame) -> str:
    """The richest level of detail the log behind ``features`` holds (:data:`EVIDENCE_LEVELS`),
    told by the features the engine could compute from it: a property of the data set, so every
    customer of one log is read by the same rules."""
    # The lines rules read spend as well as products (exploring while spend holds, spend in price
    # drops): products without amounts read as lines lost every ordering on the retail log (advocates
    # churned 24%, users 13%), so such a log is read by its dates, which kept them.
    if not any(name in features for name in AMOUNT_FEATURES):
        return "dates"
    return "lines" if any(name in features for name in LINE_LEVEL_FEATURES) else "purchases"


def _trend_shares(trend: pd.Series, features: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(grows, falls away) of a last-90-days against the 90-days-before trend (a log ratio):
    grows is 1 from a doubling, falls away is 1 from a fall to a quarter, both 0 when it held.
    Nothing bought in the last 90 days fell away; bought lately but nothing in the 90 days before
    (a new or returning customer) has no trend yet: unknown, not growth."""
    recent = _get(features, "purchases_90d")
    no_trend_yet = (purchases_prior_90d(features) == 0) & (recent > 0)
    grows = _clip(trend / np.log(2.0)).where(~no_trend_yet).where(~(recent == 0), 0.0)
    falls = _clip(-trend / np.log(4.0)).where(~no_trend_yet).where(~(recent == 0), 1.0)
    return grows.where(trend.notna()), falls.where(trend.notna())


def unavailable_evidence(level: str) -> dict[str, str]:
    """The richer evidence levels a log at ``level`` lacks, each with what it would need (for the
    segment report: what could not be read, and why)."""
    lacking = {
        "lines": "no product ids (ingest.transactions.columns.product_id): repeat baskets, new lines and buying "
                 "below a product's usual price cannot be read",
        "purchases": "no amounts (ingest.transactions.columns.amount, or quantity and unit_price): basket values "
                     "and spend trends cannot be read",
    }
    return {name: why for name, why in lacking.items()
            if EVIDENCE_LEVELS.index(name) < EVIDENCE_LEVELS.index(level)}


def coarse_components(features: pd.DataFrame, rules: SegmentRules) -> dict[str, dict[str, pd.Series]]:
    """The components of a log without product lines (levels ``purchases`` and ``dates``): trends
    and rhythm of buying, basket values where amounts exist (DOMAIN.md's advocate "carries stable
    growth", the user's "regular, subscription-like cadence, long tenure", the comparer's
    "irregular timing, volatile spend"). Each pair of mirrored components reads one measure both
    ways: where one is 1 the other is 0, and in between the measure argues for both in proportion."""
    several = _get(features, "purchases_lifetime") >= 2
    enough_gaps = _get(features, "purchases_lifetime") >= rules.min_orders_for_cadence
    gap_cv = _get(features, "purchase_gap_cv").where(enough_gaps)
    # A basket value's CV needs two purchases in the year; a single one has no variation to show.
    basket_cv = _get(features, "spend_volatility_365d").where(several)
    # A trend needs two purchases: one basket bought long ago is recency, not an attitude.
    buying_grows, buying_falls = (share.where(several) for share in
                                  _trend_shares(_get(features, "purchase_trend_90d"), features))
    spend_grows = _trend_shares(_get(features, "spend_trend_90d"), features)[0].where(several)
    # The customer table's signup where it exists (on the lines level's 3-year scale), else the
    # first purchase the log shows: a year of buying is a long tenure in a purchase log, and a log
    # of a year or two could never show three.
    tenure = _clip(_get(features, "tenure_days") / (3 * 365.0)).fillna(
        _clip(_get(features, "days_since_first_purchase") / 365.0))
    shared = index_components(features, rules)
    return {
        "advocacy_index": {
            **{name: shared["advocacy_index"][name] for name in ("nps", "referrals", "praise_vs_complaints")},
            "buying_grows": buying_grows,
            "spend_grows": spend_grows,
        },
        "switching_cost_index": {
            "regular_cadence": _clip((RANDOM_TIMING_CV - gap_cv) / (RANDOM_TIMING_CV - REGULAR_TIMING_CV)),
            "steady_basket_value": _clip(1.0 - basket_cv),
            **{name: shared["switching_cost_index"][name] for name in ("contract", "autopay", "products_held")},
            "tenure": tenure,
        },
        "price_sensitivity_index": {
            "irregular_timing": _clip((gap_cv - REGULAR_TIMING_CV) / (RANDOM_TIMING_CV - REGULAR_TIMING_CV)),
            "volatile_basket_value": _clip(basket_cv),
            "buying_falls_away": buying_falls,
            **{name: shared["price_sensitivity_index"][name]
               for name in ("discount_share", "promotion_response", "below_category_price")},
        },
    }


def index_components(features: pd.DataFrame, rules: SegmentRules) -> dict[str, dict[str, pd.Series]]:
    """Every component of the lines level, scaled to [0, 1] by a fixed transform; NaN where the
    feature is unknown."""
    nps = _get(features, "last_nps").fillna(_get(features, "mean_nps_365d"))
    below_usual = _clip(_get(features, "below_usual_price_share_365d") / rules.price_drop_share_full)
    below_usual_spend = _clip(_get(features, "below_usual_spend_share_365d") / rules.price_drop_share_full)
    # The customer's own repeat share where they have an earlier purchase; for a single basket,
    # the repeat share a basket of those products usually has (staples vs one-off lines).
    repeat = _clip(own_repeat_share(features).fillna(_get(features, "product_repeat_rate_365d"))
                   / rules.repeat_share_full)
    # A gap CV needs a few gaps: with two purchases it is 0 by construction, not "regular".
    enough_gaps = _get(features, "purchases_lifetime") >= rules.min_orders_for_cadence
    regular = _clip(1.0 - _get(features, "purchase_gap_cv")).where(enough_gaps)
    discount = _get(features, "discount_share_365d")
    return {
        "advocacy_index": {
            "nps": _clip((nps - 5.0) / 5.0),
            "referrals": _clip(_get(features, "referrals_365d") / 2.0),
            "praise_vs_complaints": _clip((_get(features, "praise_complaint_balance_365d") + 1.0) / 2.0),
            "exploring_with_spend_that_holds": exploring_with_spend_that_holds(features),
        },
        "switching_cost_index": {
            "repeat_basket": repeat,
            "regular_cadence": regular,
            "contract": contract_lock_in(features, rules),
            "autopay": _clip(_get(features, "autopay")),
            "products_held": _clip((_get(features, "products_held") - 1.0) / 4.0),
            "tenure": _clip(_get(features, "tenure_days") / (3 * 365.0)),
        },
        "price_sensitivity_index": {
            "bought_in_price_drops": below_usual,
            "spend_in_price_drops": below_usual_spend,
            "discount_share": _clip(discount * 1.5),
            "promotion_response": _clip(_get(features, "campaign_responses_365d") / 6.0),
            "below_category_price": _clip((1.0 - _get(features, "price_vs_category_median_365d")) * 3.0),
            "switching_products": switching_products(features),
        },
    }


def short_history(features: pd.DataFrame, rules: SegmentRules) -> pd.Series:
    """Fewer purchases than ``min_orders`` or a first purchase less than ``min_tenure_days`` ago."""
    return (_get(features, "purchases_lifetime").fillna(0) < rules.min_orders) | (
        _get(features, "days_since_first_purchase").fillna(0) < rules.min_tenure_days)


def assign_segments(features: pd.DataFrame, rules: SegmentRules) -> pd.DataFrame:
    """customer_id, the three indices, segment, margin, low_confidence and the component that
    decided it (or why there is no segment)."""
    level = evidence_level(features)
    by_level = index_components if level == "lines" else coarse_components
    components = {name: pd.concat(parts, axis=1) for name, parts in by_level(features, rules).items()}
    out = pd.DataFrame({"customer_id": features["customer_id"].to_numpy()}, index=features.index)
    for index_name, parts in components.items():
        out[index_name] = parts.mean(axis=1, skipna=True)
    out["advocacy_index"] *= advocacy_qualifiers(features, rules).mean(axis=1, skipna=True).fillna(1.0)
    out["segment_evidence"] = level
    indices = out[list(INDEX_OF_SEGMENT.values())]
    # An index without a single observed component is unknown, and unknown never wins.
    scores = indices.fillna(-1.0).to_numpy()
    order = np.argsort(-scores, axis=1, kind="stable")
    segment_names = np.array(list(INDEX_OF_SEGMENT))
    out["segment"] = segment_names[order[:, 0]]
    rows = np.arange(len(out))
    best = scores[rows, order[:, 0]]
    out["segment_margin"] = best - scores[rows, order[:, 1]]

    # The driver: the strongest observed component of the winning index (first one on ties).
    drivers = np.full(len(out), "", dtype=object)
    for segment, index_name in INDEX_OF_SEGMENT.items():
        names = np.array(list(components[index_name].columns), dtype=object)
        values = components[index_name].to_numpy(dtype="float64")
        observed = ~np.isnan(values).all(axis=1)
        strongest = names[np.argmax(np.nan_to_num(values, nan=-np.inf), axis=1)]
        wins = (out["segment"].to_numpy() == segment) & observed
        drivers[wins] = strongest[wins]
    short = short_history(features, rules).to_numpy()
    out["segment_driver"] = np.where(short, drivers + " (short history)", drivers)

    # Comparing needs at least two indices; with one, any customer would "win" it.
    too_few_signals = (indices.notna().sum(axis=1) < 2).to_numpy()
    out.loc[too_few_signals, "segment"] = "insufficient_history"
    out.loc[too_few_signals, "segment_driver"] = "fewer than two loyalty indices observable in the data"
    out.loc[too_few_signals, "segment_margin"] = np.nan
    # A winner with hardly any evidence is no segment: without this, a customer who shows none of
    # the three attitudes would land in whichever index happens to be listed first on a tie.
    no_signal = (best < rules.min_index) & ~too_few_signals
    out.loc[no_signal, "segment"] = "insufficient_history"
    out.loc[no_signal, "segment_driver"] = "no loyalty index reaches score.segments.min_index"
    # One basket (or a few weeks) goes through the same rule, but what it shows is thin evidence:
    # its segment is a lead to check, never more. So is a coarse-level winner that rests on one
    # observed measure. (At the lines level an index of one component is the rule's design: a bare
    # log's advocacy is its exploring alone, and short history and margin flag its thin cases.)
    thin = np.zeros(len(out), dtype=bool)
    if level != "lines":
        for segment, index_name in INDEX_OF_SEGMENT.items():
            observed = components[index_name].notna().sum(axis=1).to_numpy()
            thin |= (out["segment"].to_numpy() == segment) & (observed < 2)
    out["low_confidence"] = ((out["segment_margin"] < rules.min_margin) | short | thin) & out["segment"].isin(
        list(INDEX_OF_SEGMENT))
    return out.reset_index(drop=True)


def agreement_with_truth(assigned: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How well segments recover known personas (simulated data): macro-F1 over the three
    segments among customers that got one, coverage (share not ``insufficient_history``) and
    the confusion matrix ``truth -> assigned -> count`` over everyone with a known persona."""
    from sklearn.metrics import f1_score

    both = assigned[["customer_id", "segment"]].merge(truth[["customer_id", "persona"]], on="customer_id")
    if both.empty:
        return {"customers": 0}
    decided = both[both["segment"].isin(PERSONAS)]
    confusion = pd.crosstab(both["persona"], both["segment"])
    return {
        "customers": len(both),
        "coverage": float(len(decided) / len(both)),
        "macro_f1": float(f1_score(decided["persona"], decided["segment"], labels=list(PERSONAS), average="macro",
                                   zero_division=0)) if len(decided) else 0.0,
        "confusion_matrix": {str(persona): {str(segment): int(n) for segment, n in row.items()}
                             for persona, row in confusion.iterrows()},
    }
