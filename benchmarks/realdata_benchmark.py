"""An honest out-of-time benchmark on a real purchase log (and on the default simulated data).

For each scoring date C the raw log is cut at C, the pipeline's own commands run on what is left
(ingest, features, train, evaluate, ``score --as-of C``), and the scores are judged against what
the customers did in (C, C + horizon], computed with the pipeline's own label rule from the full
log. The baselines see the same cut log: recency, logistic RFM and XGBoost on RFM are trained on
the snapshot at C - horizon (whose labels close by C) and score the snapshot at C; BG/NBD is fitted
on purchase-days up to C. Every score is judged on the same customers, with bootstrap 95% CIs.

    .venv/bin/python benchmarks/realdata_benchmark.py                       # the shared retail log
    .venv/bin/python benchmarks/realdata_benchmark.py --simulated           # the default simulated data
    .venv/bin/python benchmarks/realdata_benchmark.py --dates 2010-09-01 --bootstrap 200
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import yaml

from churnlens import evaluate as ev
from churnlens.bgnbd import DAYS_PER_UNIT, fit_bgnbd
from churnlens.config import load_params
from churnlens.engines.duckdb import compute_snapshots
from churnlens.model import LABEL

ROOT = Path(__file__).resolve().parent.parent
RETAIL_LOG = ROOT.parent / "shared" / "data" / "online_retail_ii" / "online_retail_II_2009_2010.parquet"
RETAIL_OVERLAY = ROOT / "examples" / "online_retail_ii.yaml"
RETAIL_DATES = ("2010-06-01", "2010-09-01")
SIMULATED_DATES = ("2024-10-01",)
METRICS = ("roc_auc", "pr_auc", "brier", "ece", "top_decile_lift")
RFM_EXTENDED = [*ev.RFM_FEATURES, "purchases_lifetime", "days_since_first_purchase"]


@dataclass(frozen=True)
class Case:
    """A raw data set and how to cut it at a date."""

    name: str
    overlays: list[Path]
    tables: dict[str, tuple[Path, str]]  # canonical table -> (raw file, timestamp column)
    text_timestamps: bool  # the raw timestamp is text in the source's local time


def retail_case(log: Path = RETAIL_LOG) -> Case:
    return Case("online_retail_ii", [RETAIL_OVERLAY], {"transactions": (log, "InvoiceDate")}, text_timestamps=True)


def simulated_case(workdir: Path) -> Case:
    raw = workdir / "simulated_raw"
    run_command(workdir, "simulate", "--raw-dir", str(raw), "--truth", str(workdir / "truth.parquet"))
    return Case("simulated", [], {name: (raw / f"{name}.parquet", "timestamp")
                                  for name in ("transactions", "interactions")}
                | {"customers": (raw / "customers.parquet", "")}, text_timestamps=False)


def run_command(workdir: Path, command: str, *args: str, overlays: list[Path] = ()) -> None:
    params = ["--params", str(ROOT / "params.yaml")]
    for overlay in overlays:
        params += ["--params", str(overlay)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "churnlens", command, *params, *args], cwd=workdir, env=env, check=True)


def cut_raw(case: Case, date: pd.Timestamp, target: Path) -> dict[str, Path]:
    """The raw tables as they were at ``date``: events before it, no cancellation on or after it."""
    target.mkdir(parents=True, exist_ok=True)
    paths = {}
    with duckdb.connect() as con:
        for name, (path, column) in case.tables.items():
            out = target / f"{name}.parquet"
            if not column:  # the customer table: hide cancellations that had not happened yet
                query = (f"SELECT * REPLACE (CASE WHEN cancellation_date < TIMESTAMP '{date}' THEN cancellation_date "
                         f"END AS cancellation_date) FROM read_parquet('{path}')")
            elif case.text_timestamps:
                query = f"SELECT * FROM read_parquet('{path}') WHERE \"{column}\" < '{date.date()}'"
            else:
                query = f"SELECT * FROM read_parquet('{path}') WHERE \"{column}\" < TIMESTAMP '{date}'"
            con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)")
            paths[name] = out
    return paths


def overlay_for(paths: dict[str, Path], workdir: Path, name: str) -> Path:
    ingest = {table: {"path": str(path)} for table, path in paths.items()}
    overlay = {"ingest": ingest, "train": {"experiment_name": f"benchmark-{name}", "registered_model_name": name},
               "score": {"model_uri": f"models:/{name}@champion"}}
    target = workdir / f"{name}.yaml"
    target.write_text(yaml.safe_dump(overlay), encoding="utf-8")
    return target


def run_pipeline(case: Case, date: pd.Timestamp, workdir: Path) -> pd.DataFrame:
    """The pipeline's own commands on the cut log; returns its scores as of ``date``."""
    overlays = [*case.overlays, overlay_for(cut_raw(case, date, workdir / "raw"), workdir, "benchmark")]
    run = lambda command, *args: run_command(workdir, command, *args, overlays=overlays)  # noqa: E731
    run("ingest", "--canonical-dir", "canonical", "--quarantine-dir", "quarantine", "--report", "ingest.json")
    run("features", "--canonical-dir", "canonical", "--output", "snapshots.parquet", "--report", "features.json")
    run("train", "--snapshots", "snapshots.parquet", "--features-report", "features.json", "--model-dir", "model",
        "--report", "train.json")
    run("evaluate", "--snapshots", "snapshots.parquet", "--model-dir", "model", "--train-report", "train.json",
        "--metrics", "metrics.json", "--plots-dir", "plots")
    # The deployed model scores, whether or not the gate promoted it: that is what is judged here.
    run("score", "--canonical-dir", "canonical", "--model", "model", "--as-of", str(date.date()), "--output",
        "scores.parquet", "--report", "segments.json", "--manifest", "manifest.json")
    return pd.read_parquet(workdir / "scores.parquet")


def canonical_tables(folder: Path) -> dict[str, str | None]:
    return {name: str(folder / f"{name}.parquet") if (folder / f"{name}.parquet").is_file() else None
            for name in ("transactions", "interactions", "customers")}


def truth_at(case: Case, date: pd.Timestamp, workdir: Path) -> pd.DataFrame:
    """The pipeline's own label at ``date``, computed from the full log."""
    overlays = [*case.overlays, overlay_for({n: p for n, (p, _) in case.tables.items()}, workdir, "truth")]
    run_command(workdir, "ingest", "--canonical-dir", "full_canonical", "--quarantine-dir", "full_quarantine",
                "--report", "full_ingest.json", overlays=overlays)
    params = load_params(ROOT / "params.yaml", *overlays)
    frame, _ = compute_snapshots(canonical_tables(workdir / "full_canonical"), [date], params.features)
    return frame[["customer_id", LABEL]]


def purchase_days(transactions: str, date: pd.Timestamp) -> pd.DataFrame:
    """BG/NBD inputs on purchase-days before ``date``: repeat days x, t_x and T, in weeks."""
    with duckdb.connect() as con:
        return con.execute(f"""
            SELECT customer_id, count(*) - 1 AS x,
                   date_diff('day', min(day), max(day)) / {DAYS_PER_UNIT} AS t_x,
                   date_diff('day', min(day), DATE '{date.date()}') / {DAYS_PER_UNIT} AS t
            FROM (SELECT DISTINCT customer_id, CAST(timestamp AS DATE) AS day FROM read_parquet('{transactions}')
                  WHERE NOT is_return AND timestamp < TIMESTAMP '{date}')
            GROUP BY customer_id""").df()


def baseline_scores(case: Case, date: pd.Timestamp, workdir: Path, customers: pd.Series) -> dict[str, np.ndarray]:
    """Each baseline's churn score for ``customers`` at ``date``, from the cut log only."""
    from xgboost import XGBClassifier

    overlays = [*case.overlays, workdir / "benchmark.yaml"]
    params = load_params(ROOT / "params.yaml", *overlays)
    tables = canonical_tables(workdir / "canonical")
    horizon = params.features.horizon_days
    earlier, _ = compute_snapshots(tables, [date - pd.Timedelta(days=horizon)], params.features)
    now, _ = compute_snapshots(tables, [date], params.features, with_labels=False)
    now = now.set_index("customer_id").loc[customers].reset_index()
    days = purchase_days(tables["transactions"], date)
    model = fit_bgnbd(days["x"], days["t_x"], days["t"])
    days = days.set_index("customer_id").loc[customers]
    booster = XGBClassifier(n_estimators=200, max_depth=3, learning_rate=0.05, random_state=0, n_jobs=2)
    booster.fit(earlier[RFM_EXTENDED].to_numpy(dtype=float), earlier[LABEL].astype(int))
    print(f"  BG/NBD at {date.date()}: r={model.r:.3f} alpha={model.alpha:.3f} a={model.a:.3f} b={model.b:.3f}")
    return {
        "recency": ev.recency_baseline(now),
        "rfm_logistic": ev.rfm_logistic_baseline(earlier, now, seed=0),
        "bgnbd_p_no_purchase": model.probability_no_purchase(horizon / DAYS_PER_UNIT, days["x"], days["t_x"],
                                                             days["t"]),
        "xgboost_rfm": booster.predict_proba(now[RFM_EXTENDED].to_numpy(dtype=float))[:, 1],
    }


def scored_metrics(y: np.ndarray, score: np.ndarray, is_probability: bool) -> dict[str, float]:
    metrics = ev.classification_metrics(y, score, 0.1, is_probability)
    return {name: metrics.get(name, float("nan")) for name in METRICS}


def bootstrap(y: np.ndarray, scores: dict[str, tuple[np.ndarray, bool]], rounds: int, seed: int = 0
              ) -> dict[str, dict[str, tuple[float, float]]]:
    """95% percentile intervals of every metric, customers resampled with replacement (paired)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, dict[str, list[float]]] = {name: {m: [] for m in METRICS} for name in scores}
    for _ in range(rounds):
        index = rng.integers(0, len(y), len(y))
        if len(np.unique(y[index])) < 2:
            continue
        for name, (values, is_probability) in scores.items():
            for metric, value in scored_metrics(y[index], values[index], is_probability).items():
                draws[name][metric].append(value)
    return {name: {m: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))) if v else (np.nan, np.nan)
                   for m, v in per.items()} for name, per in draws.items()}


def benchmark(case: Case, date: pd.Timestamp, workdir: Path, rounds: int) -> str:
    scores = run_pipeline(case, date, workdir)
    truth = truth_at(case, date, workdir)
    judged = scores[["customer_id", "churn_probability"]].merge(truth, on="customer_id", how="inner")
    y = judged[LABEL].to_numpy(dtype=int)
    probability = judged["churn_probability"].to_numpy(dtype=float)
    all_scores = {"churnlens": (probability, True)}
    for name, values in baseline_scores(case, date, workdir, judged["customer_id"]).items():
        all_scores[name] = (np.asarray(values, dtype=float), name != "recency")
    intervals = bootstrap(y, all_scores, rounds)
    exact = int(np.sum((probability <= 0) | (probability >= 1)))
    lines = [f"### {case.name}, scored as of {date.date()}: {len(y)} customers, churn rate {y.mean():.3f}, "
             f"mean p {probability.mean():.3f}, exact 0/1 probabilities: {exact}", "",
             "| score | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    points = {}
    for name, (values, is_probability) in all_scores.items():
        point = points[name] = scored_metrics(y, values, is_probability)
        cells = [f"{point[m]:.3f} [{intervals[name][m][0]:.3f}, {intervals[name][m][1]:.3f}]"
                 if np.isfinite(point[m]) else "n/a" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", targets_line(points, exact)])


def targets_line(points: dict[str, dict[str, float]], exact: int) -> str:
    """The as-of targets, to four decimals: AUC >= best baseline + 0.01, Brier <= the best
    baseline's, ECE <= 0.03, no exact 0/1 probabilities."""
    ours, baselines = points["churnlens"], {k: v for k, v in points.items() if k != "churnlens"}
    best_auc = max(baselines, key=lambda k: baselines[k]["roc_auc"])
    best_brier = min((k for k in baselines if np.isfinite(baselines[k]["brier"])), key=lambda k: baselines[k]["brier"])
    margin = ours["roc_auc"] - baselines[best_auc]["roc_auc"]
    brier_gap = ours["brier"] - baselines[best_brier]["brier"]
    verdict = {"AUC": margin >= 0.01, "Brier": brier_gap <= 0, "ECE": ours["ece"] <= 0.03, "0/1": exact == 0}
    return (f"Targets: AUC {ours['roc_auc']:.4f} - {best_auc} {baselines[best_auc]['roc_auc']:.4f} = {margin:+.4f} "
            f"(>= +0.01); Brier {ours['brier']:.4f} - {best_brier} {baselines[best_brier]['brier']:.4f} = "
            f"{brier_gap:+.4f} (<= 0); ECE {ours['ece']:.4f} (<= 0.03); exact 0/1: {exact}. "
            f"Met: {', '.join(k for k, ok in verdict.items() if ok) or 'none'}; "
            f"not met: {', '.join(k for k, ok in verdict.items() if not ok) or 'none'}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulated", action="store_true", help="the default simulated data instead of the log")
    parser.add_argument("--dates", nargs="+", help="scoring dates (default: 2010-06-01 2010-09-01 for the log)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap rounds for the intervals")
    parser.add_argument("--log", type=Path, default=RETAIL_LOG, help="the Online Retail II Parquet file")
    args = parser.parse_args()
    if not args.simulated and not args.log.is_file():
        raise SystemExit(f"{args.log}: not found; pass --log or use --simulated")
    tables = []
    for date in args.dates or (SIMULATED_DATES if args.simulated else RETAIL_DATES):
        with tempfile.TemporaryDirectory(prefix="churnlens-benchmark-") as folder:
            workdir = Path(folder)
            case = simulated_case(workdir) if args.simulated else retail_case(args.log)
            tables.append(benchmark(case, pd.Timestamp(date), workdir, args.bootstrap))
            print(tables[-1], flush=True)
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
