"""Turn churn probabilities and segments into a ranked retention plan (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnlens import control, playbook
from churnlens.config import PERSONAS, Params, ScoreConfig
from churnlens.reasons import feature_phrases, plain_reasons

# No customer is certain to stay or to leave: a calibrator fitted on a finite validation set
# returns exactly 0 or 1 where a bin was pure, which a CRM reads as certainty (and a log loss
# cannot score). The scores file never carries those two values.
PROBABILITY_BOUNDS = (0.001, 0.999)


@dataclass(frozen=True)
class ScoreJob:
    """One batch scoring run: the data, the model, where the outputs go, and the optional inputs
    of its report. ``as_of`` None = ``features.as_of`` or the day after the last event; a None
    side path = beside a local output (else the working folder); ``outcomes`` (canonical
    transactions of a later extract) adds the segments' construct validity."""

    params: Params
    canonical_dir: Path | str
    model_uri: str
    output: Path | str
    report_path: Path | None = None
    as_of: pd.Timestamp | None = None
    csv_output: Path | str | None = None
    project_root: Path | None = None
    previous: pd.DataFrame | None = None
    manifest_path: Path | None = None
    truth: pd.DataFrame | None = None
    show_progress: bool = False
    headline_path: Path | None = None
    outcomes: Path | str | None = None
    archive_dir: Path | str | None = None  # keep the run (scores, manifest) there for `churnlens monitor`

    def beside(self, suffix: str) -> Path:
        """Where a side file goes unless told: next to a local output (so a run outside DVC never
        writes into the pipeline's tracked reports), else the working folder."""
        output = str(self.output)
        if "://" in output:
            return Path(f"scores.{suffix}")
        return Path(output).with_name(f"{Path(output).stem}.{suffix}")


@dataclass(frozen=True)
class ScoreColumn:
    name: str
    type: str
    meaning: str
    decimals: int | None = None  # rounding in the CSV for people; the Parquet keeps full precision


SCORE_COLUMN_DEFINITIONS = (
    ScoreColumn("customer_id", "text", "Customer key, as in the canonical transactions."),
    ScoreColumn("as_of", "timestamp (UTC)", "The scoring instant: features use every event up to and including it."),
    ScoreColumn("churn_probability", "float in (0, 1)",
                "Calibrated probability that the customer churns in the label window after `as_of` "
                "(`features.lead_days` .. `lead_days + horizon_days`, by `features.label`), kept within "
                "[`train.probability_floor`, 1 - floor] by the model (0.005 by default) and never outside "
                f"[{PROBABILITY_BOUNDS[0]}, {PROBABILITY_BOUNDS[1]}].", 4),
    ScoreColumn("risk_tier", "low / medium / high",
                "`churn_probability` against `score.risk_tiers`: high from `high`, medium from `medium`."),
    ScoreColumn("top_reasons", "text",
                "Up to three features that push this customer's risk up the most, in plain words with the "
                "customer's own values and units, each marked (raises the risk), e.g. \"no purchase for 84 days, "
                "3.0x their usual gap (raises the risk)\"; with nothing pushing up, what keeps the risk low, each "
                "marked (lowers the risk). A value that explains nothing (a purchase gap of a customer with one "
                "purchase, a missing value unless its absence is the news, as no complaint on record) is skipped "
                "for the next feature. Worded by `churnlens.reasons`, one phrase per model feature. From the "
                "model's SHAP contributions: exact TreeSHAP or path attributions, by "
                "`score.reasons_for` (`score.reasons` for this run's campaign by default, or for every "
                "medium/high-risk customer; `score.other_reasons` for the rest); empty for the rest when "
                "`score.other_reasons` is `none`."),
    ScoreColumn("segment", "text",
                "Loyalty segment: brand_advocate, brand_user, brand_comparer, or insufficient_history "
                "(fewer than two loyalty indices observable, or no index reaching `score.segments.min_index`; "
                "a single basket shows too little for most of them)."),
    ScoreColumn("segment_margin", "float",
                "Lead of the winning loyalty index over the runner-up (indices in [0, 1]); below "
                "`score.segments.min_margin` the segment is a close call. Empty when not comparable.", 3),
    ScoreColumn("low_confidence", "true / false",
                "True when `segment_margin` is below `score.segments.min_margin` (the segment is a close call "
                "between two loyalty indices) and for every segment read from a short history (fewer than "
                "`score.segments.min_orders` purchases or `min_tenure_days` of history: typically one basket), "
                "and for a segment read without product lines (`segment_evidence` purchases or dates) whose "
                "winning index rests on a single observed measure. False for insufficient_history."),
    ScoreColumn("segment_driver", "text",
                "The component of the winning loyalty index with the strongest value (e.g. `referrals`, "
                "`contract`, `discount_share`), or why the customer has no segment."),
    ScoreColumn("segment_evidence", "lines / purchases / dates",
                "The level of detail the segment was read from: product lines (a product id, prices where "
                "present), purchases with amounts but no products, or purchase dates only. The coarser the "
                "level, the fewer signals a segment rests on (churnlens.segments)."),
    ScoreColumn("customer_value", "currency",
                "Net spend over the last 365 days, scaled to `score.value_horizon_days`; never negative. A log "
                "without amounts: purchases in the last 365 days x `score.value_per_purchase` (1 when unset: a "
                "count, not money), as `customer_value_basis` says.", 2),
    ScoreColumn("customer_value_basis", "text",
                "What `customer_value` is: `spend`, or `purchases x <value per purchase>` for a log without "
                "amounts."),
    ScoreColumn("action", "text",
                "The playbook action for this segment and risk tier (`score.actions`), or the cell's `fallback` "
                "where the action presumes data this customer's record lacks (`action_premise_missing`)."),
    ScoreColumn("action_premise_missing", "text",
                "The premises of the cell's action (`needs`: contract, survey) that this customer's data does "
                "not show, so the fallback was given; empty otherwise."),
    ScoreColumn("action_cost", "currency", "Cost of the action per customer (`score.actions`).", 2),
    ScoreColumn("action_success_rate", "float in [0, 1]",
                "Assumed share of churners the action keeps (`score.actions`).", 4),
    ScoreColumn("priority", "currency",
                "Expected value saved by acting: churn_probability x customer_value x action_success_rate "
                "- action_cost. Rows are sorted by it, highest first.", 2),
    ScoreColumn("in_campaign", "true / false",
                "Chosen for this run's campaign: positive priority, taken in priority order while the summed "
                "action cost stays within `score.campaign_budget`."),
    ScoreColumn("control_group", "true / false",
                "Held out of the campaign: in_campaign, but not to be treated, so `churnlens monitor` can measure what "
                "the actions do (treated against control, once the label window closes). A `score.control_share` "
                "of the customers, drawn from the customer id and `score.control_seed`: the same customers in "
                "every run (so no later campaign treats a control customer inside an earlier run's window). "
                "Treat the rows with in_campaign true and control_group false."),
    ScoreColumn("model_name", "text", "Registered model that produced the probability."),
    ScoreColumn("model_version", "text", "Its registry version (`local` for a model folder outside the registry)."),
)
SCORE_COLUMNS = [column.name for column in SCORE_COLUMN_DEFINITIONS]
CSV_DECIMALS = {column.name: column.decimals for column in SCORE_COLUMN_DEFINITIONS if column.decimals is not None}


def scores_dictionary_markdown() -> str:
    """``docs/scores.md``: every column of the scores file, from its single definition above."""
    lines = ["# Scores file", "",
             "Generated from `churnlens.score.SCORE_COLUMN_DEFINITIONS` (`churnlens catalog`); do not edit by hand.",
             "", "`churnlens score` writes one row per active customer to a Parquet file and the same rows to a "
             "CSV beside it (`scores.csv`), rounded for reading (decimals below). Rows are ranked by `priority`.",
             "", "In the CSV written by the DuckDB engine the header and every text value are quoted, a missing "
             "value is an empty field, true / false are lower case, timestamps are ISO 8601 in UTC "
             "(`2024-12-31 00:00:00.000000Z`) and a whole number is written without its `.0` (the Spark engine writes Spark's own CSV).",
             "", "| column | type | CSV decimals | meaning |", "|---|---|---|---|"]
    for column in SCORE_COLUMN_DEFINITIONS:
        decimals = "" if column.decimals is None else str(column.decimals)
        lines.append(f"| `{column.name}` | {column.type} | {decimals} | {column.meaning} |")
    return "\n".join([*lines, ""])


def require_model_inputs(model: object, columns: object) -> None:
    """A model (a loaded model: name, version, contract) can score only rows holding its inputs."""
    missing = model.contract.missing_from(columns)
    if missing:
        raise ValueError(f"score: model {model.name} v{model.version} needs features {missing} that the data "
                         "does not provide; retrain on this data or supply the missing tables")


def scores_for_csv(scores: pd.DataFrame) -> pd.DataFrame:
    """The scores rounded for people (a CRM import, a spreadsheet); the Parquet keeps full precision."""
    return scores.round({name: decimals for name, decimals in CSV_DECIMALS.items() if name in scores})


def risk_tiers(probability: pd.Series | np.ndarray, config: ScoreConfig) -> np.ndarray:
    """low below ``risk_tiers.medium``, high from ``risk_tiers.high``, medium between."""
    p = np.asarray(probability, dtype=float)
    return np.where(p >= config.risk_tiers["high"], "high", np.where(p >= config.risk_tiers["medium"], "medium", "low"))


def reason_methods(probability: np.ndarray, config: ScoreConfig, in_campaign: np.ndarray | None = None
                   ) -> np.ndarray:
    """Per row, how its reasons are computed: ``config.reasons`` for the rows someone will act on
    (``config.reasons_for``: the medium/high-risk rows, or this run's campaign), ``config.other_reasons``
    for the rest. With at_risk a row's method depends on its own probability only, so any batch (or
    Spark partition) gets the same answer; campaign needs ``in_campaign``, known once every row is ranked."""
    if config.reasons_for == "campaign":
        if in_campaign is None:
            raise ValueError("score.reasons_for: campaign: the campaign must be chosen before the reasons")
        acted_on = np.asarray(in_campaign, dtype=bool)
    else:
        acted_on = risk_tiers(probability, config) != "low"
    return np.where(acted_on, config.reasons, config.other_reasons)


def customer_reasons_by_method(pipeline: object, frame: pd.DataFrame, methods: np.ndarray, numeric: list[str],
                               categorical: list[str], windows_days: tuple[int, ...]) -> pd.Series:
    """Every row's top reasons in plain words (indexed like ``frame``), each row by its method
    (:func:`reason_methods`): exact TreeSHAP, the ~50x cheaper path attributions (enough to name
    what matters), or none (an empty text). A row's text depends on its own features and method
    only, so any batch or partition gives the same answer."""
    from churnlens import model

    parts = [model.contributions(pipeline, frame[methods == method], numeric, categorical,
                                 approximate=method == "approximate")
             for method in ("exact", "approximate") if (methods == method).any()]
    if not parts:
        return pd.Series("", index=frame.index, dtype="string")
    contribution = pd.concat(parts)
    texts = plain_reasons(contribution, frame.loc[contribution.index], feature_phrases(windows_days))
    return texts.reindex(frame.index).fillna("")


def customer_value_basis(features: pd.DataFrame, value_per_purchase: float | None) -> str:
    """What the customer value is measured in: spend where the log has amounts, else purchases
    valued at ``score.value_per_purchase`` (1 when unset: a count, stated as such)."""
    if "spend_365d" in features:
        return "spend"
    return f"purchases x {value_per_purchase or 1.0:g}"


def customer_value(features: pd.DataFrame, value_horizon_days: int, value_per_purchase: float | None) -> pd.Series:
    """Value proxy: spend over the last year (or, without amounts, purchases in it valued at
    ``score.value_per_purchase``, 1 when unset), scaled to ``value_horizon_days``; never negative."""
    if "spend_365d" in features:
        yearly = features["spend_365d"].astype("float64").fillna(0.0).clip(lower=0.0)
    else:
        yearly = features["purchases_365d"].astype("float64").fillna(0.0) * (value_per_purchase or 1.0)
    return yearly * value_horizon_days / 365.0


def plan_actions(scored: pd.DataFrame, config: ScoreConfig, premises: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per customer: the playbook action for its segment and risk tier (the cell's fallback where
    the customer's data does not show a premise of the action: ``premises``, from
    :func:`churnlens.playbook.premises_shown`, aligned with the rows; None = none shows), and its
    expected value saved, priority = churn probability x customer value x action success rate -
    action cost. Row by row, so any batch (or Spark partition) gets the same answer."""
    out = scored.copy()
    actions = playbook.assign_actions(out["segment"], out["risk_tier"], premises, config)
    for column in actions.columns:
        out[column] = actions[column].to_numpy()
    out["action"] = out["action"].astype("string")
    out["action_premise_missing"] = out["action_premise_missing"].astype("string")
    out["priority"] = (out["churn_probability"] * out["customer_value"] * out["action_success_rate"]
                       - out["action_cost"])
    return out


def select_campaign(planned: pd.DataFrame, config: ScoreConfig) -> pd.DataFrame:
    """Rank by priority and take customers while it is positive and the summed action cost stays
    within ``campaign_budget``, then hold out ``control_share`` of them (:mod:`churnlens.control`).
    Ties are broken by customer id so reruns rank identically."""
    out = planned.sort_values(["priority", "customer_id"], ascending=[False, True], kind="stable")
    out = out.reset_index(drop=True)
    worthwhile = (out["priority"] > 0) & (out["action_cost"] <= config.campaign_budget)
    spent = out["action_cost"].where(worthwhile, 0.0).cumsum()
    out["in_campaign"] = worthwhile & (spent <= config.campaign_budget)
    out["control_group"] = out["in_campaign"] & control.held_out(out["customer_id"], config.control_share,
                                                                 config.control_seed)
    return out


def retention_plan(scored: pd.DataFrame, config: ScoreConfig, premises: pd.DataFrame | None = None) -> pd.DataFrame:
    """Add the playbook action, its priority and the budgeted campaign (see the two steps)."""
    return select_campaign(plan_actions(scored, config, premises), config)


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
        "as_of": utc(as_of).as_unit("us"),
        "churn_probability": np.clip(np.asarray(probability, dtype=float), *PROBABILITY_BOUNDS),
        "segment": segments["segment"].to_numpy(),
        "segment_margin": segments["segment_margin"].to_numpy(),
        "low_confidence": segments["low_confidence"].to_numpy(dtype=bool),
        "segment_driver": segments["segment_driver"].to_numpy(),
        "segment_evidence": segments["segment_evidence"].to_numpy(),
        "customer_value": customer_value(features, config.value_horizon_days, config.value_per_purchase).to_numpy(),
        "customer_value_basis": customer_value_basis(features, config.value_per_purchase),
    })
    scored["risk_tier"] = risk_tiers(scored["churn_probability"], config)
    scored["top_reasons"] = (reasons.reindex(features.index).fillna("").to_numpy() if reasons is not None
                             else "")
    scored["top_reasons"] = scored["top_reasons"].astype("string")
    scored["model_name"] = model_name
    scored["model_version"] = str(model_version)
    return plan_actions(scored, config, playbook.premises_shown(features.reset_index(drop=True)))


def utc(instant: pd.Timestamp | str) -> pd.Timestamp:
    """The instant in UTC; a naive one already means UTC (the point-in-time rule)."""
    stamp = pd.Timestamp(instant)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


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
              **({"segment_evidence": {str(level): int(n) for level, n in
                                       scores["segment_evidence"].value_counts().sort_index().items()}}
                 if "segment_evidence" in scores else {}),
              **({"customer_value_basis": str(scores["customer_value_basis"].iloc[0])}
                 if "customer_value_basis" in scores and total else {}),
              "campaign_customers": int(scores["in_campaign"].sum()),
              **campaign_figures(scores)}
    if previous is not None:
        both = scores[["customer_id", "segment"]].merge(previous[["customer_id", "segment"]], on="customer_id",
                                                         suffixes=("", "_previous"))
        report["stability"] = {"customers_in_both_runs": len(both),
                               "changed_segment": int((both["segment"] != both["segment_previous"]).sum())}
    return report



def campaign_figures(scores: pd.DataFrame) -> dict:
    """The campaign's control group, and its cost and expected value saved: the treated rows only,
    as the control group is neither contacted nor kept by an action."""
    arm = control.arms(scores)
    treated = arm == "treated"
    return {"campaign_control_customers": int((arm == "control").sum()),
            "campaign_cost": float(scores.loc[treated, "action_cost"].sum()),
            "campaign_expected_value_saved": float(scores.loc[treated, "priority"].sum())}


def segment_headline(report: dict) -> dict[str, float]:
    """The scoring run's headline numbers: the share of scored customers placed in one of the
    three loyalty segments and, where personas are known (simulated data), the segments' macro-F1."""
    placed = sum(values["customers"] for segment, values in report["segments"].items()
                 if segment in PERSONAS)
    headline = {"segment_coverage": round(placed / report["customers"], 4) if report["customers"] else 0.0}
    if "macro_f1" in report.get("ground_truth", {}):
        headline["segment_macro_f1"] = round(float(report["ground_truth"]["macro_f1"]), 4)
    return headline
