"""The scorecard of an earlier scoring run: how its probabilities did, once the data shows it.

A run scored customers as of a date; a later extract of the log says who churned in the label
window after it. Before the window closes, the figures are interim: a label read as of the end
of the data ("no purchase yet" counts as churn, as a window ending there would), with the share
of the window elapsed; they become the realised figures when the window closes. Beside them:
the label-free estimate written at scoring time (:mod:`churnlens.estimate`) and, for the
campaign, the treated against the control group (:mod:`churnlens.control`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnlens.config import FeaturesConfig, MonitorConfig

# The figures of a scorecard, as classification_metrics names them.
FIGURES = ("roc_auc", "pr_auc", "brier", "ece", "top_decile_lift", "churn_rate")


@dataclass(frozen=True)
class Window:
    """A run's label window against the data: how many of its days the data has seen."""

    start: pd.Timestamp  # the window is (start, end]
    end: pd.Timestamp
    elapsed_days: int
    horizon_days: int

    @property
    def share_elapsed(self) -> float:
        return self.elapsed_days / self.horizon_days

    @property
    def closed(self) -> bool:
        return self.elapsed_days >= self.horizon_days


def label_window(as_of: pd.Timestamp, config: FeaturesConfig, data_end: pd.Timestamp) -> Window:
    """The run's label window (as_of + lead, as_of + lead + horizon] and the whole days of it that
    data ending at ``data_end`` covers: the window is closed when its end is in the data, the rule
    training labels by (``features.label_complete``)."""
    start = as_of + pd.Timedelta(days=config.lead_days)
    end = start + pd.Timedelta(days=config.horizon_days)
    seen = (data_end - start) // pd.Timedelta(days=1)
    return Window(start, end, int(min(max(seen, 0), config.horizon_days)), config.horizon_days)


def labels_as_of_elapsed(config: FeaturesConfig, window: Window) -> FeaturesConfig:
    """The label rule with its window cut to the days seen: the interim label (``features.label``
    read over the elapsed days; the partial-churn spend compares like lengths, as the rule does)."""
    return config.model_copy(update={"horizon_days": window.elapsed_days})


def scorecard(scores: pd.DataFrame, churned: pd.Series, config: MonitorConfig, top_fraction: float,
              control_share: float) -> dict:
    """The run's figures (``churned`` aligned with ``scores``): overall, per segment and per risk
    tier as it happened (the treated included), and ``without_action``: the model's own figures,
    what it predicts, churn with no action. The treated are left out there and the control group,
    a random ``control_share`` of the campaign, stands for the whole campaign (weight
    1 / control_share), so the campaign's high-risk customers still count as often as they were
    scored. Without a control group a campaign's customers cannot be stood for: no such figures.
    A group smaller than ``min_group_customers`` or with one class gets counts only."""
    from churnlens import control, evaluate, portable

    y = churned.astype(int).to_numpy()
    probability = scores["churn_probability"].to_numpy(dtype=float)

    def figures(mask: np.ndarray, weight: np.ndarray | None = None) -> dict:
        n = int(mask.sum())
        w = None if weight is None else weight[mask]
        out = {"n": n, "churn_rate": float(np.average(y[mask], weights=w)) if n else None,
               "mean_probability": float(np.average(probability[mask], weights=w)) if n else None}
        if n >= config.min_group_customers and 0 < y[mask].sum() < n:
            metrics = evaluate.classification_metrics(y[mask], probability[mask], top_fraction, sample_weight=w)
            out.update({name: metrics[name] for name in FIGURES})
        # Six significant digits: the report is the same bytes whatever the machine's summation order.
        return {name: portable.significant(value, 6) if isinstance(value, float) else value
                for name, value in out.items()}

    everyone = np.ones(len(y), dtype=bool)
    arm = control.arms(scores).to_numpy()
    result = {"overall": figures(everyone)}
    if (arm == "treated").any() and control_share > 0 and (arm == "control").any():
        weight = np.where(arm == "control", 1.0 / control_share, 1.0)
        result["without_action"] = figures(arm != "treated", weight)
    elif not (arm == "treated").any():
        result["without_action"] = result["overall"]
    result.update({
        "per_segment": {str(s): figures((scores["segment"] == s).to_numpy()) for s in sorted(scores["segment"].unique())},
        "per_risk_tier": {str(t): figures((scores["risk_tier"] == t).to_numpy())
                          for t in sorted(scores["risk_tier"].unique())}})
    return result


def recommendation(realised: dict, holdout: float | None, config: MonitorConfig, closed: bool) -> dict:
    """Retrain when a closed window's figure is below the version's holdout figure by more than
    the tolerance; interim figures and an unknown holdout figure recommend nothing."""
    metric = config.metric
    value = realised.get(metric)
    base = {"metric": metric, "tolerance": config.retrain_tolerance, "holdout": holdout, "realised": value}
    if not closed:
        return {**base, "retrain": False, "why": "the label window has not closed: interim figures decide nothing"}
    if holdout is None or value is None:
        return {**base, "retrain": False,
                "why": "no holdout figure on record for this version" if holdout is None else f"no realised {metric}"}
    shortfall = holdout - value
    retrain = shortfall > config.retrain_tolerance
    return {**base, "retrain": bool(retrain), "shortfall": shortfall,
            "why": (f"realised {metric} {value:.3f} is {shortfall:.3f} below the holdout's {holdout:.3f}, more than "
                    f"the tolerance {config.retrain_tolerance}: retrain on the newer data") if retrain else
                   f"realised {metric} {value:.3f} against the holdout's {holdout:.3f}: within the tolerance"}


def estimate_beside_realised(estimate: dict, realised: dict) -> dict:
    """Each estimated figure, the realised one, and the gap (realised - estimated)."""
    return {name: {"estimated": estimate[name], "realised": realised.get(name),
                   "gap": None if realised.get(name) is None else realised[name] - estimate[name]}
            for name in FIGURES if name in estimate}


def model_figures(card: dict) -> tuple[dict, dict]:
    """A scorecard's figures of the model itself (churn with no action: :func:`scorecard`'s
    ``without_action``) and the label-free estimate the run wrote when it scored."""
    return card.get("figures", {}).get("without_action") or {}, card.get("estimate") or {}


def step_of(as_of: pd.Timestamp) -> int:
    """A scoring date as an MLflow step: days since 1970-01-01, so steps are spaced like the dates."""
    return int((pd.Timestamp(as_of).tz_localize(None).normalize() - pd.Timestamp(0)).days)


# MLflow draws one chart section per key prefix (up to the last "/"), sorted by name: one section for
# each kind of figure, named to follow the training run's holdout, baseline and backtest sections.
SCORECARD_SECTIONS = {"closed": "scorecard", "interim": "scorecard_interim", "estimated": "scorecard_estimated",
                      "campaign": "scorecard_campaign"}


def mlflow_points(card: dict) -> list[tuple[str, float, int, int]]:
    """A scorecard as MLflow points (key, value, step, timestamp ms): the scoring date is the
    step; realised figures at the scoring date's time, interim ones at the window's elapsed day."""
    step = step_of(pd.Timestamp(card["as_of"]))
    as_of_ms = int(pd.Timestamp(card["as_of"]).timestamp() * 1000)
    section = SCORECARD_SECTIONS[card["status"]]
    # Interim figures change as the window fills: each elapsed day is its own point.
    stamp = as_of_ms if card["status"] == "closed" else as_of_ms + card["window"]["elapsed_days"] * 86_400_000
    groups = [("", card["figures"]["overall"]), ("without_action.", card["figures"].get("without_action", {}))]
    for kind in ("segment", "risk_tier"):
        groups += [(f"{kind}.{name}.", figures) for name, figures in card["figures"][f"per_{kind}"].items()]
    points = [(f"{section}/{prefix}{name}", value, step, stamp) for prefix, figures in groups
              for name, value in figures.items() if name in FIGURES and value is not None]
    points.append((f"{section}/window_elapsed", card["window"]["share_elapsed"], step, stamp))
    estimated = SCORECARD_SECTIONS["estimated"]
    points += [(f"{estimated}/{name}", value, step, as_of_ms) for name, value in card["estimate"].items()
               if name in FIGURES]
    for effect in card.get("campaign", []):
        if effect.get("success_rate") is not None:
            points.append((f"{SCORECARD_SECTIONS['campaign']}/{effect['segment']}.{effect['action']}.success_rate",
                           effect["success_rate"], step, as_of_ms))
    return points


def runs_markdown(cards: list[dict]) -> str:
    """One line per run: its window, the ROC AUC as it happened, the model's own realised (or
    interim) figures with no action (:func:`scorecard`) and the estimate beside them."""
    lines = ["| scored as of | model | customers | window | ROC AUC as it happened | with no action: ROC AUC | "
             "est. AUC | PR AUC | Brier | est. Brier | ECE | lift | retrain |", "|---" * 13 + "|"]

    def shown(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "–"

    for card in cards:
        figures, estimate = model_figures(card)
        window = (f"interim {100 * card['window']['share_elapsed']:.0f}%" if card["status"] == "interim"
                  else card["status"])
        retrain = {True: "yes", False: "no"}[bool(card["recommendation"].get("retrain"))]
        lines.append(f"| {card['as_of'][:10]} | {card['model_name']} v{card['model_version']} | {card['customers']} | "
                     f"{window} | {shown(card.get('figures', {}).get('overall', {}).get('roc_auc'))} | "
                     f"{shown(figures.get('roc_auc'))} | {shown(estimate.get('roc_auc'))} | "
                     f"{shown(figures.get('pr_auc'))} | {shown(figures.get('brier'))} | "
                     f"{shown(estimate.get('brier'))} | {shown(figures.get('ece'))} | "
                     f"{shown(figures.get('top_decile_lift'))} | {retrain} |")
    return "\n".join(lines)


def campaign_markdown(cards: list[dict]) -> str:
    """Per closed run, segment and action: treated against control, the measured success rate
    beside the playbook's assumed one."""
    lines = ["| scored as of | segment | action | treated | control | churn treated | churn control | "
             "difference [interval] | success rate measured [interval] | assumed |", "|---" * 10 + "|"]

    def rate(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    for card in cards:
        for row in card.get("campaign", []):
            if "difference" not in row:
                lines.append(f"| {card['as_of'][:10]} | {row['segment']} | {row['action']} | {row['treated']} | "
                             f"{row['control']} | – | – | {row['note']} | – | {rate(row['assumed_success_rate'])} |")
                continue
            low, high = row["difference_interval"]
            measured = ("–" if row["success_rate"] is None else f"{row['success_rate']:.3f} "
                        f"[{row['success_rate_interval'][0]:.3f}, {row['success_rate_interval'][1]:.3f}]")
            lines.append(f"| {card['as_of'][:10]} | {row['segment']} | {row['action']} | {row['treated']} | "
                         f"{row['control']} | {row['churn_rate_treated']:.3f} | {row['churn_rate_control']:.3f} | "
                         f"{row['difference']:+.3f} [{low:+.3f}, {high:+.3f}] | {measured} | "
                         f"{rate(row['assumed_success_rate'])} |")
    return "\n".join(lines)


def headline(cards: list[dict]) -> dict:
    """The DVC metrics of monitoring, a few numbers: how many runs have a closed window and, for
    the newest, the model's realised ROC AUC and how far the label-free estimate was from it."""
    closed = [card for card in cards if card["status"] == "closed"]
    numbers: dict = {"closed_runs": len(closed)}
    if closed:
        figures, estimate = model_figures(closed[-1])
        if figures.get("roc_auc") is not None:
            numbers["newest_closed_roc_auc"] = round(figures["roc_auc"], 4)
            if "roc_auc" in estimate:
                numbers["newest_closed_estimate_gap"] = round(figures["roc_auc"] - estimate["roc_auc"], 4)
    return numbers
