"""The retention playbook fitted to the data: an action is assigned only where its premise shows.

A renewal concession "before contract end" presumes a contract; a feedback call on the customer's
NPS answer presumes a survey. A web shop's log has neither, and offering those actions there is
worse than useless (the CRM cannot act on them, and it hides the offer the customer could get).
So an action in ``score.actions`` may name the premises it ``needs`` (:data:`PREMISES`), each read
per customer from the features; where one does not hold the cell's ``fallback`` is assigned
instead, and config validation makes sure every such cell has a fallback that needs nothing, so
every segment and risk tier always resolves to an action.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnlens.config import RetentionAction, ScoreConfig


@dataclass(frozen=True)
class Premise:
    """What an action presumes about a customer, and the features that show it (any one known)."""

    name: str
    features: tuple[str, ...]
    meaning: str  # what is missing, read after "these customers have no"
    source: str  # where such data comes from, for the report's "why"


PREMISES: dict[str, Premise] = {premise.name: premise for premise in (
    Premise("contract", ("days_to_contract_end",),
            "contract term that renews (a contract end to act before)",
            "a customers table with contract_term_months and signup_date (ingest.customers)"),
    Premise("survey", ("last_nps", "mean_nps_365d"),
            "NPS or survey answer to follow up",
            "an interactions table with survey answers (ingest.interactions, type survey with a value)"),
)}


def premises_shown(features: pd.DataFrame) -> pd.DataFrame:
    """Per customer (indexed like ``features``), whether each premise holds: one of its features is
    known for that customer. A feature the data never had is absent, so its premise never holds."""
    shown = {}
    for name, premise in PREMISES.items():
        known = np.zeros(len(features), dtype=bool)
        for feature in premise.features:
            if feature in features:
                known |= features[feature].notna().to_numpy()
        shown[name] = known
    return pd.DataFrame(shown, index=features.index)


def _cells(config: ScoreConfig) -> pd.DataFrame:
    rows = []
    for segment, tiers in config.actions.items():
        for tier, action in tiers.items():
            fallback = action.fallback or action
            rows.append({"segment": segment, "risk_tier": tier, "action": action.action, "cost": action.cost,
                         "success_rate": action.success_rate, "needs": tuple(action.needs),
                         "fallback": fallback.action, "fallback_cost": fallback.cost,
                         "fallback_success_rate": fallback.success_rate})
    return pd.DataFrame(rows)


def assign_actions(segment: pd.Series, risk_tier: pd.Series, premises: pd.DataFrame | None,
                   config: ScoreConfig) -> pd.DataFrame:
    """Per row: action, action_cost, action_success_rate for its segment and risk tier, the cell's
    fallback where a premise of the action does not hold for that customer, and
    ``action_premise_missing`` (the premises that sent it to the fallback, comma-separated, or "").
    ``premises`` (:func:`premises_shown`, aligned with the rows): None = no premise holds."""
    cells = _cells(config)
    keys = pd.MultiIndex.from_frame(cells[["segment", "risk_tier"]])
    at = keys.get_indexer(pd.MultiIndex.from_arrays([segment.astype(object).to_numpy(),
                                                     risk_tier.astype(object).to_numpy()]))
    if (at < 0).any():
        first = int(np.flatnonzero(at < 0)[0])
        raise KeyError(f"score.actions has no action for segment {segment.iloc[first]!r} at risk tier "
                       f"{risk_tier.iloc[first]!r}")
    missing = np.full(len(at), "", dtype=object)
    for name in PREMISES:
        needed = np.array([name in needs for needs in cells["needs"]], dtype=bool)[at]
        holds = (premises[name].to_numpy(dtype=bool) if premises is not None and name in premises
                 else np.zeros(len(at), dtype=bool))
        lacking = needed & ~holds
        missing[lacking] = np.where(missing[lacking] == "", name, missing[lacking] + "," + name)
    fall_back = missing != ""
    pick = lambda primary, other: np.where(fall_back, cells[other].to_numpy()[at], cells[primary].to_numpy()[at])  # noqa: E731
    return pd.DataFrame({
        "action": pd.array(pick("action", "fallback").astype(object), dtype="string"),
        "action_cost": pick("cost", "fallback_cost").astype(float),
        "action_success_rate": pick("success_rate", "fallback_success_rate").astype(float),
        "action_premise_missing": pd.array(missing, dtype="string"),
    }, index=segment.index)


def actions_replaced(scores: pd.DataFrame, config: ScoreConfig) -> dict[str, dict]:
    """For the segment report: each action that some customers could not be given, why, what they
    got instead and how many (from the scores' ``action_premise_missing``)."""
    if "action_premise_missing" not in scores:
        return {}
    replaced = scores[scores["action_premise_missing"].fillna("") != ""]
    report = {}
    for (segment, tier), rows in replaced.groupby(["segment", "risk_tier"], sort=True):
        action: RetentionAction = config.actions[segment][tier]
        lacking = sorted({name for text in rows["action_premise_missing"] for name in str(text).split(",")})
        report[f"{segment}.{tier}"] = {
            "action": action.action, "needs": list(action.needs), "customers": len(rows),
            "given_instead": action.fallback.action if action.fallback else action.action,
            "why": "; ".join(f"{name}: these customers have no {PREMISES[name].meaning}; it comes from "
                             f"{PREMISES[name].source}" for name in lacking),
        }
    return report
