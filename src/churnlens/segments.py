"""Loyalty segments from interpretable indices built on the feature families (DOMAIN.md).

Three indices in [0, 1], each the mean of the components the data has (a component whose
feature is missing for a customer is skipped, not guessed). Every index can be computed from a
bare purchase log (customer, time, product, quantity, price); interaction and profile fields
enrich it where present:

* advocacy: buying at the product's usual price, exploring products not bought before, stable or
  growing spend, few returns; NPS, referrals, praise vs complaints where present;
* switching cost / habit: repeat-basket share, a regular cadence; contract, autopay, products
  held and tenure where present;
* price sensitivity: share of lines and of spend bought below the product's usual price;
  discount share, promotion response and paying below the category median where present.

The segment is the index with the highest value (brand advocate / brand user / brand
comparer), the margin is its lead over the runner-up (``low_confidence`` below
``score.segments.min_margin``), and customers with too little history get
``insufficient_history``, as do customers for whom fewer than two indices can be computed.
All transforms are fixed functions of one customer's features (no batch quantiles), so a
segment never depends on who else is in the batch; they read features only, never personas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnlens.config import PERSONAS, SegmentRules

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


def index_components(features: pd.DataFrame, rules: SegmentRules) -> dict[str, dict[str, pd.Series]]:
    """Every component, scaled to [0, 1] by a fixed transform; NaN where the feature is unknown."""
    nps = _get(features, "last_nps").fillna(_get(features, "mean_nps_365d"))
    below_usual = _clip(_get(features, "below_usual_price_share_365d") / rules.price_drop_share_full)
    below_usual_spend = _clip(_get(features, "below_usual_spend_share_365d") / rules.price_drop_share_full)
    repeat = _clip(_get(features, "repeat_line_share_365d") / rules.repeat_share_full)
    # A gap CV needs a few gaps: with two purchases it is 0 by construction, not "regular".
    enough_gaps = _get(features, "purchases_lifetime") >= rules.min_orders_for_cadence
    regular = _clip(1.0 - _get(features, "purchase_gap_cv")).where(enough_gaps)
    # Full price: below the product's usual price where known, else below the list price.
    discount = _get(features, "discount_share_365d")
    full_price = (1.0 - below_usual).fillna(_clip(1.0 - discount * 2.0))
    return {
        "advocacy_index": {
            "nps": _clip((nps - 5.0) / 5.0),
            "referrals": _clip(_get(features, "referrals_365d") / 2.0),
            "praise_vs_complaints": _clip((_get(features, "praise_complaint_balance_365d") + 1.0) / 2.0),
            "full_price_buying": full_price,
            "exploring_new_lines": 1.0 - repeat,
            "growing_spend": _clip(0.5 + _get(features, "spend_trend_90d") / 2.0),
            "few_returns": _clip(1.0 - _get(features, "return_rate_365d") * 5.0),
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
        },
    }


def assign_segments(features: pd.DataFrame, rules: SegmentRules) -> pd.DataFrame:
    """customer_id, the three indices, segment, margin and the component that decided it."""
    components = {name: pd.concat(parts, axis=1) for name, parts in index_components(features, rules).items()}
    out = pd.DataFrame({"customer_id": features["customer_id"].to_numpy()}, index=features.index)
    for index_name, parts in components.items():
        out[index_name] = parts.mean(axis=1, skipna=True)
    indices = out[list(INDEX_OF_SEGMENT.values())]
    # An index without a single observed component is unknown, and unknown never wins.
    scores = indices.fillna(-1.0).to_numpy()
    order = np.argsort(-scores, axis=1, kind="stable")
    segment_names = np.array(list(INDEX_OF_SEGMENT))
    out["segment"] = segment_names[order[:, 0]]
    rows = np.arange(len(out))
    out["segment_margin"] = scores[rows, order[:, 0]] - scores[rows, order[:, 1]]

    # The driver: the strongest observed component of the winning index (first one on ties).
    drivers = np.full(len(out), "", dtype=object)
    for segment, index_name in INDEX_OF_SEGMENT.items():
        names = np.array(list(components[index_name].columns), dtype=object)
        values = components[index_name].to_numpy(dtype="float64")
        observed = ~np.isnan(values).all(axis=1)
        strongest = names[np.argmax(np.nan_to_num(values, nan=-np.inf), axis=1)]
        wins = (out["segment"].to_numpy() == segment) & observed
        drivers[wins] = strongest[wins]
    out["segment_driver"] = drivers

    too_little = (_get(features, "purchases_lifetime").fillna(0) < rules.min_orders) | (
        _get(features, "days_since_first_purchase").fillna(0) < rules.min_tenure_days)
    out.loc[too_little, "segment"] = "insufficient_history"
    out.loc[too_little, "segment_driver"] = "too few purchases or too short a history"
    # Comparing needs at least two indices; with one, any customer would "win" it.
    too_few_signals = (indices.notna().sum(axis=1) < 2) & ~too_little
    out.loc[too_few_signals, "segment"] = "insufficient_history"
    out.loc[too_few_signals, "segment_driver"] = "fewer than two loyalty indices observable in the data"
    out.loc[too_few_signals, "segment_margin"] = np.nan
    out["low_confidence"] = (out["segment_margin"] < rules.min_margin) & ~too_little
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
