"""The campaign's control group: who is held out untreated, and what the hold-out measures.

A share of the customers a scoring run selects (``score.control_share``) is marked
``control_group`` in the scores: chosen like the rest, not to be treated. Once the label window
has closed, the churn of the treated against the control, per segment and action, measures what
the actions did: the playbook's success rate ("the share of churners the action keeps") becomes
1 - churn(treated) / churn(control), a figure instead of an assumption.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

# A draw is a customer's own: the same customer and seed give the same draw on any machine, in any
# batch or Spark partition, and in every run. Keyed by the run, a customer held out on one date could
# be treated by the next run inside the first one's label window (monthly runs, 90-day windows),
# which pulls the measured effect towards zero; so the control group persists across runs until
# score.control_seed changes.
_DRAW_BITS = 53


def control_draw(customer_ids: pd.Series | np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per customer, from a hash of (seed, customer id)."""
    draws = [int.from_bytes(hashlib.blake2b(f"{seed}|{customer}".encode(), digest_size=8).digest(), "big")
             >> (64 - _DRAW_BITS) for customer in np.asarray(customer_ids, dtype=object)]
    return np.asarray(draws, dtype=np.float64) / float(2 ** _DRAW_BITS)


def held_out(customer_ids: pd.Series | np.ndarray, share: float, seed: int) -> np.ndarray:
    """Per customer: is it in the control group whenever a campaign selects it."""
    if share <= 0:
        return np.zeros(len(customer_ids), dtype=bool)
    return control_draw(customer_ids, seed) < share


def arms(scores: pd.DataFrame) -> pd.Series:
    """Per scored customer: treated, control, or none (not selected for the campaign). Scores
    written before control groups existed have no control_group column: everyone selected was treated."""
    control = scores["control_group"] if "control_group" in scores else pd.Series(False, index=scores.index)
    selected = scores["in_campaign"].astype(bool)
    return pd.Series(np.where(~selected, "none", np.where(control.astype(bool), "control", "treated")),
                     index=scores.index)


def treatment_effect(churned_treated: int, treated: int, churned_control: int, control: int,
                     confidence: float) -> dict:
    """Treated against control: each arm's churn rate, the difference (treated - control) with a
    Newcombe interval, and the success rate 1 - churn(treated)/churn(control) with the score
    interval of the risk ratio (it holds a rate of 0 or 1, where a log interval does not);
    statsmodels' two-sample proportion intervals."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    alpha = 1 - confidence
    result = {"treated": int(treated), "control": int(control),
              "churn_rate_treated": churned_treated / treated, "churn_rate_control": churned_control / control,
              "difference": churned_treated / treated - churned_control / control}
    low, high = confint_proportions_2indep(churned_treated, treated, churned_control, control, method="newcomb",
                                           compare="diff", alpha=alpha)
    result["difference_interval"] = [float(low), float(high)]
    if churned_control == 0:
        result.update(success_rate=None, success_rate_interval=None,
                      success_rate_note="no churner in the control group: nothing for an action to keep")
        return result
    low, high = np.real(confint_proportions_2indep(churned_treated, treated, churned_control, control,
                                                   method="score", compare="ratio", alpha=alpha))
    result["success_rate"] = 1 - result["churn_rate_treated"] / result["churn_rate_control"]
    result["success_rate_interval"] = [float(1 - high), float(1 - low)]
    return result


def campaign_effects(scores: pd.DataFrame, churned: pd.Series, min_customers: int, confidence: float) -> list[dict]:
    """Per segment and action of the campaign (and the campaign as a whole): treated against
    control, with the playbook's assumed success rate beside the measured one. ``churned`` is
    aligned with ``scores``; an arm smaller than ``min_customers`` gets counts, no figures."""
    arm = arms(scores)
    selected = scores.assign(_arm=arm, _churned=churned.astype(bool).to_numpy())[arm != "none"]
    groups = [("all", "all", selected)]
    groups += [(str(segment), str(action), rows) for (segment, action), rows in
               selected.groupby(["segment", "action"], sort=True)]
    table = []
    for segment, action, rows in groups:
        treated, control = rows[rows["_arm"] == "treated"], rows[rows["_arm"] == "control"]
        entry = {"segment": segment, "action": action,
                 "assumed_success_rate": _assumed(rows)}
        if min(len(treated), len(control)) < min_customers:
            entry.update(treated=len(treated), control=len(control),
                         note=f"fewer than {min_customers} customers in an arm: no figures")
        else:
            entry.update(treatment_effect(int(treated["_churned"].sum()), len(treated), int(control["_churned"].sum()),
                                          len(control), confidence))
        table.append(entry)
    return table


def _assumed(rows: pd.DataFrame) -> float | None:
    """The playbook's success rate of a group's action (None for a mix of actions)."""
    rates = rows["action_success_rate"].unique()
    return float(rates[0]) if len(rates) == 1 else None
