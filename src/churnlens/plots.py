"""PNG plots for people (MLflow artifacts, README); DVC reads the CSV plot data instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from churnlens.io import atomic_path


# Figures are drawn without pyplot: no global backend to set at import, no figure registry to close.
def _subplots(*grid: int, figsize: tuple[float, float]):
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid)


def _save(figure: Figure, target: Path) -> Path:
    figure.tight_layout()
    with atomic_path(target, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    return target


def evaluation_plots(curves: dict[str, pd.DataFrame], baselines: dict[str, dict[str, pd.DataFrame]],
                     holdout_label: str, out_dir: Path) -> list[Path]:
    """ROC, precision-recall, reliability and gains charts of the holdout."""
    written = []
    specs = {
        "roc": ("false_positive_rate", "true_positive_rate", "ROC curve", "False positive rate", "True positive rate"),
        "precision_recall": ("recall", "precision", "Precision-recall curve", "Recall (share of churners found)",
                             "Precision (share of flagged who churn)"),
        "gains": ("share_targeted", "share_of_churners", "Cumulative gains", "Share of customers targeted",
                  "Share of churners reached"),
        "profit": ("share_targeted", "expected_profit", "Expected campaign profit", "Share of customers contacted",
                   "Expected profit (currency of the amounts)"),
    }
    for name, (x, y, title, xlabel, ylabel) in specs.items():
        figure, axis = _subplots(figsize=(5.5, 4.5))
        axis.plot(curves[name][x], curves[name][y], label="churnlens model", linewidth=2)
        for baseline, baseline_curves in baselines.items():
            axis.plot(baseline_curves[name][x], baseline_curves[name][y], label=baseline, linestyle="--")
        if name in ("roc", "gains"):
            axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="random")
        axis.set(title=f"{title} (holdout {holdout_label})", xlabel=xlabel, ylabel=ylabel, xlim=(0, 1))
        if name != "profit":
            axis.set_ylim(0, 1.02)
        axis.legend(loc="best", fontsize=8)
        written.append(_save(figure, out_dir / f"{name}.png"))

    calibration = curves["calibration"]
    figure, axis = _subplots(figsize=(5.5, 4.5))
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="perfect calibration")
    axis.plot(calibration["predicted"], calibration["observed"], marker="o", label="churnlens model")
    axis.set(title=f"Reliability (holdout {holdout_label})", xlabel="Mean predicted churn probability",
             ylabel="Observed churn rate", xlim=(0, 1), ylim=(0, 1))
    axis.legend(loc="upper left", fontsize=8)
    written.append(_save(figure, out_dir / "calibration.png"))
    return written


def segment_plot(report: dict, target: Path) -> Path:
    segments = report["segments"]
    names = sorted(segments)
    figure, (left, right) = _subplots(1, 2, figsize=(10, 4))
    left.bar(names, [100 * segments[n]["share"] for n in names], color="#4C72B0")
    left.set(title="Segment mix", ylabel="Share of active customers (%)")
    right.bar(names, [segments[n]["value_at_risk"] for n in names], color="#C44E52")
    basis = report.get("customer_value_basis", "spend")
    unit = "currency" if basis == "spend" else basis  # a log without amounts values purchases
    right.set(title="Value at risk by segment", ylabel=f"Sum of P(churn) x customer value ({unit})")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=20)
    return _save(figure, target)


def importance_plot(importance: pd.DataFrame, target: Path, top: int = 20) -> Path:
    """Global importance: mean absolute SHAP value per feature (holdout sample)."""
    shown = importance.head(top).iloc[::-1]
    figure, axis = _subplots(figsize=(7, 0.3 * len(shown) + 1.5))
    axis.barh(shown["feature"], shown["mean_abs_shap"], color="#4C72B0")
    axis.set(title="What drives churn risk (holdout)", xlabel="Mean |SHAP value| (log-odds of churn)")
    return _save(figure, target)


def monitor_plot(cards: list[dict], target: Path) -> Path:
    """The model's ROC AUC and Brier score over scoring dates, with no action (the control group
    standing for the campaign): realised (closed windows), interim (open ones, hollow) and the
    label-free estimate written at scoring time, with its 5-95% spread."""
    from churnlens.monitor import model_figures

    figure, (left, right) = _subplots(1, 2, figsize=(11, 4))
    dates = [pd.Timestamp(card["as_of"]).tz_localize(None) for card in cards]
    shown_figures = [model_figures(card) for card in cards]

    def series(values: list) -> list[float]:
        return [float("nan") if value is None else value for value in values]

    for axis, name, title in ((left, "roc_auc", "ROC AUC"), (right, "brier", "Brier score (lower is better)")):
        estimated = np.array(series([estimate.get(name) for _, estimate in shown_figures]))
        # The spread of the label draws (5-95%); the Brier score's estimate is exact, it has none.
        low = np.array(series([estimate.get(f"{name}_p05", estimate.get(name)) for _, estimate in shown_figures]))
        high = np.array(series([estimate.get(f"{name}_p95", estimate.get(name)) for _, estimate in shown_figures]))
        axis.errorbar(dates, estimated, yerr=[estimated - low, high - estimated], color="grey", linestyle="--",
                      marker=".", capsize=3, label="estimated at scoring (CBPE, 5-95%)")
        for status, style in (("closed", {"marker": "o", "color": "#4C72B0", "label": "realised"}),
                              ("interim", {"marker": "o", "markerfacecolor": "none", "color": "#DD8452",
                                           "label": "interim (window open)"})):
            points = [(date, figures.get(name)) for date, card, (figures, _) in zip(dates, cards, shown_figures, strict=True)
                      if card["status"] == status and figures.get(name) is not None]
            if points:
                axis.plot(*zip(*points, strict=True), linestyle="-" if status == "closed" else "none", **style)
        axis.set(title=f"{title} with no action", xlabel="Scoring date")
        axis.tick_params(axis="x", labelrotation=30)
        axis.legend(loc="best", fontsize=8)
    return _save(figure, target)
