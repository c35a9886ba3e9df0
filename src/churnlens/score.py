"""Turn churn probabilities and segments into a ranked retention plan (pure functions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnlens.config import PERSONAS, ScoreConfig

SCORE_COLUMNS = [
    "customer_id", "as_of", "churn_probability", "risk_tier", "top_reasons", "segment", "segment_margin",
    "low_confidence", "segment_driver", "customer_value", "action", "action_cost", "action_success_rate", "priority", "in_campaign",
    "model_name", "model_version",
]


def risk_tiers(probability: pd.Series | np.ndarray, config: ScoreConfig) -> np.ndarray:
    """low below ``risk_tiers.medium``, high from ``risk_tiers.high``, medium between."""
    p = np.asarray(probability, dtype=float)
    return np.where(p >= config.risk_tiers["high"], "high", np.where(p >= config.risk_tiers["medium"], "medium", "low"))


def at_risk_reasons(pipeline: object, frame: pd.DataFrame, probability: np.ndarray, numeric: list[str],
                    categorical: list[str], config: ScoreConfig) -> pd.Series | None:
    """Top reasons of the medium/high-risk rows of ``frame`` (indexed like it), None if there are
    none. Reasons cost a TreeSHAP pass, so they are computed only where someone will act."""
    from churnlens import model

    at_risk = frame[risk_tiers(probability, config) != "low"]
    if not len(at_risk):
        return None
    return model.top_reasons(model.contributions(pipeline, at_risk, numeric, categorical,
                                                 approximate=config.reasons == "approximate"))


def customer_value(features: pd.DataFrame, config: ScoreConfig) -> pd.Series:
    """Value proxy: spend over the last year, scaled to ``value_horizon_days``; never negative."""
    yearly = features["spend_365d"].astype("float64").fillna(0.0).clip(lower=0.0)
    return yearly * config.value_horizon_days / 365.0


def plan_actions(scored: pd.DataFrame, config: ScoreConfig) -> pd.DataFrame:
    """Per customer: the playbook action for its segment and risk tier, and its expected value
    saved, priority = churn probability x customer value x action success rate - action cost.
    Row by row, so any batch (or Spark partition) gets the same answer."""
    out = scored.copy()
    playbook = {(segment, tier): action for segment, tiers in config.actions.items() for tier, action in tiers.items()}
    chosen = [playbook[(segment, tier)] for segment, tier in zip(out["segment"], out["risk_tier"], strict=True)]
    out["action"] = pd.array([a.action for a in chosen], dtype="string")
    out["action_cost"] = np.array([a.cost for a in chosen], dtype=float)
    out["action_success_rate"] = np.array([a.success_rate for a in chosen], dtype=float)
    out["priority"] = (out["churn_probability"] * out["customer_value"] * out["action_success_rate"]
                       - out["action_cost"])
    return out


def select_campaign(planned: pd.DataFrame, config: ScoreConfig) -> pd.DataFrame:
    """Rank by priority and take customers while it is positive and the summed action cost stays
    within ``campaign_budget``. Ties are broken by customer id so reruns rank identically."""
    out = planned.sort_values(["priority", "customer_id"], ascending=[False, True], kind="stable")
    out = out.reset_index(drop=True)
    worthwhile = (out["priority"] > 0) & (out["action_cost"] <= config.campaign_budget)
    spent = out["action_cost"].where(worthwhile, 0.0).cumsum()
    out["in_campaign"] = worthwhile & (spent <= config.campaign_budget)
    return out


def retention_plan(scored: pd.DataFrame, config: ScoreConfig) -> pd.DataFrame:
    """Add the playbook action, its priority and the budgeted campaign (see the two steps)."""
    return select_campaign(plan_actions(scored, config), config)


def build_scores(features: pd.DataFrame, probability: np.ndarray, segments: pd.DataFrame, config: ScoreConfig,
                 as_of: pd.Timestamp, model_name: str, model_version: str,
                 reasons: pd.Series | None = None) -> pd.DataFrame:
    """One row per active customer, ranked by expected value saved, with the budgeted campaign.

    ``reasons`` (aligned with ``features``) names what drives each customer's risk; empty where absent.
    """
    scored = score_rows(features, probability, segments, config, as_of, model_name, model_version, reasons)
    return select_campaign(scored, config)[SCORE_COLUMNS]


def score_rows(features: pd.DataFrame, probability: np.ndarray, segments: pd.DataFrame, config: ScoreConfig,
               as_of: pd.Timestamp, model_name: str, model_version: str,
               reasons: pd.Series | None = None) -> pd.DataFrame:
    """Everything of :func:`build_scores` that depends on one customer only (no campaign)."""
    if not features["customer_id"].reset_index(drop=True).equals(segments["customer_id"]):
        raise ValueError("score: segments and features must list the same customers in the same order")
    scored = pd.DataFrame({
        "customer_id": features["customer_id"].to_numpy(),
        "as_of": pd.Timestamp(as_of).as_unit("us"),
        "churn_probability": np.asarray(probability, dtype=float),
        "segment": segments["segment"].to_numpy(),
        "segment_margin": segments["segment_margin"].to_numpy(),
        "low_confidence": segments["low_confidence"].to_numpy(dtype=bool),
        "segment_driver": segments["segment_driver"].to_numpy(),
        "customer_value": customer_value(features, config).to_numpy(),
    })
    scored["risk_tier"] = risk_tiers(scored["churn_probability"], config)
    scored["top_reasons"] = (reasons.reindex(features.index).fillna("").to_numpy() if reasons is not None
                             else "")
    scored["top_reasons"] = scored["top_reasons"].astype("string")
    scored["model_name"] = model_name
    scored["model_version"] = str(model_version)
    return plan_actions(scored, config)


def segment_report(scores: pd.DataFrame, previous: pd.DataFrame | None = None) -> dict:
    """Shares, mean churn probability and value at risk per segment, and stability vs a previous run."""
    total = len(scores)
    value_at_risk = scores["churn_probability"] * scores["customer_value"]
    per_segment = {}
    for segment, rows in scores.groupby("segment"):
        per_segment[segment] = {
            "customers": len(rows),
            "share": float(len(rows) / total),
            "mean_churn_probability": float(rows["churn_probability"].mean()),
            "value_at_risk": float(value_at_risk.loc[rows.index].sum()),
            "in_campaign": int(rows["in_campaign"].sum()),
        }
        if "low_confidence" in rows:
            per_segment[segment]["low_confidence"] = int(rows["low_confidence"].sum())
    report = {"customers": total, "segments": per_segment,
              "campaign_customers": int(scores["in_campaign"].sum()),
              "campaign_cost": float(scores.loc[scores["in_campaign"], "action_cost"].sum()),
              "campaign_expected_value_saved": float(scores.loc[scores["in_campaign"], "priority"].sum())}
    if previous is not None:
        both = scores[["customer_id", "segment"]].merge(previous[["customer_id", "segment"]], on="customer_id",
                                                         suffixes=("", "_previous"))
        report["stability"] = {"customers_in_both_runs": len(both),
                               "changed_segment": int((both["segment"] != both["segment_previous"]).sum())}
    return report



def segment_headline(report: dict) -> dict[str, float]:
    """The scoring run's headline numbers: the share of scored customers placed in one of the
    three loyalty segments and, where personas are known (simulated data), the segments' macro-F1."""
    placed = sum(values["customers"] for segment, values in report["segments"].items()
                 if segment in PERSONAS)
    headline = {"segment_coverage": round(placed / report["customers"], 4) if report["customers"] else 0.0}
    if "macro_f1" in report.get("ground_truth", {}):
        headline["segment_macro_f1"] = round(float(report["ground_truth"]["macro_f1"]), 4)
    return headline
