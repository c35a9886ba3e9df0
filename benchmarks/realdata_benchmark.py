"""An honest out-of-time benchmark on a real purchase log (and on the default simulated data).

For each scoring date C the raw log (every export of it) is cut at C, the pipeline's own commands run on what is left
(ingest, features, train, evaluate, ``score --as-of C``), and the scores are judged against what
the customers did in (C, C + horizon], computed with the pipeline's own label rule from the full
log. The baselines see the same cut log: recency, logistic RFM and XGBoost on RFM are trained on
the snapshot at C - horizon (whose labels close by C) and score the snapshot at C; BG/NBD is fitted
on purchase-days up to C. Every score is judged on the same customers, with bootstrap 95% CIs; the differences to the best
baseline get paired intervals (the same resampled customers for both scores).

The default is the shared retail shop's two years, read as its two exports with the project's own
overlay (examples/online_retail.yaml), at every two months from 2010-06-01 and at 2011-09-01. The
last lines are one table over all dates and the points won / tied / lost on AUC and on Brier.

    .venv/bin/python benchmarks/realdata_benchmark.py                       # two years, nine dates
    .venv/bin/python benchmarks/realdata_benchmark.py --first-year          # the first export alone
    .venv/bin/python benchmarks/realdata_benchmark.py --simulated           # the default simulated data
    .venv/bin/python benchmarks/realdata_benchmark.py --dates 2011-06-01 --bootstrap 200
    .venv/bin/python benchmarks/realdata_benchmark.py --params my_overlay.yaml   # other params, same dates
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
SHARED = ROOT.parent / "shared" / "data"
RETAIL_LOG = SHARED / "online_retail_ii" / "online_retail_II_2009_2010.parquet"
RETAIL_SECOND_YEAR = SHARED / "online_retail" / "online_retail_2010_2011.parquet"
RETAIL_OVERLAY = ROOT / "examples" / "online_retail_ii.yaml"
TWO_YEAR_OVERLAY = ROOT / "examples" / "online_retail.yaml"
FIRST_YEAR_DATES = ("2010-06-01", "2010-09-01")
# Every two months through the shop's second year, and the last date whose 90 days the log holds.
TWO_YEAR_DATES = ("2010-06-01", "2010-08-01", "2010-10-01", "2010-12-01", "2011-02-01", "2011-04-01",
                  "2011-06-01", "2011-08-01", "2011-09-01")
SIMULATED_DATES = ("2024-10-01",)
YEAR = pd.Timedelta(days=365)
QUARANTINE_SHARE_OF_CUT_LOGS = 0.4
METRICS = ("roc_auc", "pr_auc", "brier", "ece", "top_decile_lift")
RFM_EXTENDED = [*ev.RFM_FEATURES, "purchases_lifetime", "days_since_first_purchase"]


@dataclass(frozen=True)
class Source:
    """One raw file and how to cut it at a date."""

    path: Path
    timestamp: str  # the event-time column; "" for the customer table (cut on its cancellation date)
    text_timestamps: bool = False  # the timestamp is text in the source's local time


@dataclass(frozen=True)
class Case:
    """A raw data set: its overlays and, per canonical table, its exports in the overlay's order."""

    name: str
    overlays: list[Path]
    tables: dict[str, list[Source]]


def retail_case(log: Path = RETAIL_LOG) -> Case:
    return Case("online_retail_ii", [RETAIL_OVERLAY], {"transactions": [Source(log, "InvoiceDate", True)]})


def two_year_retail_case(first: Path = RETAIL_LOG, second: Path = RETAIL_SECOND_YEAR) -> Case:
    """The shop's two exports as a user with both would give them (examples/online_retail.yaml)."""
    return Case("online_retail_two_years", [TWO_YEAR_OVERLAY],
                {"transactions": [Source(first, "InvoiceDate", True), Source(second, "InvoiceDate")]})


def simulated_case(workdir: Path) -> Case:
    raw = workdir / "simulated_raw"
    run_command(workdir, "simulate", "--raw-dir", str(raw), "--truth", str(workdir / "truth.parquet"))
    return Case("simulated", [], {name: [Source(raw / f"{name}.parquet", "timestamp")]
                                  for name in ("transactions", "interactions")}
                | {"customers": [Source(raw / "customers.parquet", "")]})


def run_command(workdir: Path, command: str, *args: str, overlays: list[Path] = (), store: Path | None = None
                ) -> None:
    """A churnlens command in ``workdir``, with MLflow's store there unless ``store`` names one."""
    params = ["--params", str(ROOT / "params.yaml")]
    for overlay in overlays:
        params += ["--params", str(overlay)]
    store = store or workdir / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "churnlens", command, *params, *args], cwd=workdir, env=env, check=True)


def cut_raw(case: Case, date: pd.Timestamp, target: Path) -> dict[str, list[Path]]:
    """The raw tables as they were at ``date``: events before it, no cancellation on or after it.
    An export that starts after ``date`` is kept, empty: the overlay still names it."""
    target.mkdir(parents=True, exist_ok=True)
    paths: dict[str, list[Path]] = {}
    with duckdb.connect() as con:
        for name, sources in case.tables.items():
            for index, source in enumerate(sources):
                out = target / f"{name}_{index}.parquet"
                column, path = source.timestamp, source.path
                if not column:  # the customer table: hide cancellations that had not happened yet
                    query = (f"SELECT * REPLACE (CASE WHEN cancellation_date < TIMESTAMP '{date}' "
                             f"THEN cancellation_date END AS cancellation_date) FROM read_parquet('{path}')")
                elif source.text_timestamps:
                    query = f"SELECT * FROM read_parquet('{path}') WHERE \"{column}\" < '{date.date()}'"
                else:
                    query = f"SELECT * FROM read_parquet('{path}') WHERE \"{column}\" < TIMESTAMP '{date}'"
                con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)")
                paths.setdefault(name, []).append(out)
    return paths


def overlay_for(case: Case, paths: dict[str, list[Path]], workdir: Path, name: str, model_name: str | None = None
                ) -> Path:
    """An overlay ``workdir/<name>.yaml`` pointing every table (each export of it) at ``paths``, the
    rest as the case has it; the model registered as ``model_name`` (default: ``name``)."""
    model_name = model_name or name
    params = load_params(ROOT / "params.yaml", *case.overlays)
    ingest = {}
    for table, files in paths.items():
        given = getattr(params.ingest, table)
        if hasattr(given, "sources"):  # several exports: each keeps its own mapping, with the new path
            ingest[table] = {"sources": [{**source.model_dump(mode="json", exclude_unset=True), "path": str(path)}
                                         for source, path in zip(given.sources, files, strict=True)]}
        else:
            ingest[table] = {"path": str(files[0])}
    # A cut export can have more lines without a customer id than the whole one: 37.2% of the second
    # export's lines before 2011-02-01 (its first two months) have none, against 24.9% of all of them.
    overlay = {"ingest": {**ingest, "max_quarantine_share": QUARANTINE_SHARE_OF_CUT_LOGS},
               "train": {"experiment_name": f"benchmark-{model_name}", "registered_model_name": model_name},
               "score": {"model_uri": f"models:/{model_name}@champion"}}
    target = workdir / f"{name}.yaml"
    target.write_text(yaml.safe_dump(overlay), encoding="utf-8")
    return target


@dataclass(frozen=True)
class Monitoring:
    """Every date's scoring run kept in ``runs`` and its model registered in one MLflow ``store``,
    so `churnlens monitor` can judge them all against the full log at the end."""

    runs: Path
    store: Path


def run_pipeline(case: Case, date: pd.Timestamp, workdir: Path, monitoring: Monitoring | None = None
                 ) -> pd.DataFrame:
    """The pipeline's own commands on the cut log; returns its scores as of ``date``."""
    # Models of all dates share the monitoring store: each date registers a model of its own.
    model_name = f"benchmark_{date:%Y%m%d}" if monitoring else "benchmark"
    overlays = [*case.overlays, overlay_for(case, cut_raw(case, date, workdir / "raw"), workdir, "benchmark",
                                            model_name)]
    store = monitoring.store if monitoring else None
    run = lambda command, *args: run_command(workdir, command, *args, overlays=overlays, store=store)  # noqa: E731
    run("ingest", "--canonical-dir", "canonical", "--quarantine-dir", "quarantine", "--report", "ingest.json")
    run("features", "--canonical-dir", "canonical", "--output", "snapshots.parquet", "--report", "features.json")
    run("train", "--snapshots", "snapshots.parquet", "--features-report", "features.json", "--model-dir", "model",
        "--report", "train.json")
    run("evaluate", "--snapshots", "snapshots.parquet", "--model-dir", "model", "--train-report", "train.json",
        "--metrics", "metrics.json", "--plots-dir", "plots")
    # The deployed model scores, whether or not the gate promoted it: that is what is judged here.
    archive = ["--archive-dir", str(monitoring.runs)] if monitoring else []
    run("score", "--canonical-dir", "canonical", "--model", "model", "--as-of", str(date.date()), "--output",
        "scores.parquet", "--report", "segments.json", "--manifest", "manifest.json", *archive)
    return pd.read_parquet(workdir / "scores.parquet")


def canonical_tables(folder: Path) -> dict[str, str | None]:
    return {name: str(folder / f"{name}.parquet") if (folder / f"{name}.parquet").is_file() else None
            for name in ("transactions", "interactions", "customers")}


def full_log(case: Case, workdir: Path) -> tuple[dict[str, str | None], list[Path]]:
    """The whole log ingested once (the truth's source for every date), and its overlays."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlays = [*case.overlays, overlay_for(case, {n: [s.path for s in sources] for n, sources in case.tables.items()},
                                            workdir, "truth")]
    run_command(workdir, "ingest", "--canonical-dir", "full_canonical", "--quarantine-dir", "full_quarantine",
                "--report", "full_ingest.json", overlays=overlays)
    return canonical_tables(workdir / "full_canonical"), overlays


def truth_at(full: tuple[dict[str, str | None], list[Path]], date: pd.Timestamp) -> pd.DataFrame:
    """The pipeline's own label at ``date``, computed from the full log."""
    tables, overlays = full
    params = load_params(ROOT / "params.yaml", *overlays)
    frame, _ = compute_snapshots(tables, [date], params.features)
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


Draws = dict[str, dict[str, np.ndarray]]  # score -> metric -> one value per bootstrap round


def bootstrap(y: np.ndarray, scores: dict[str, tuple[np.ndarray, bool]], rounds: int, seed: int = 0) -> Draws:
    """Every metric of every score on ``rounds`` resamples of the customers (with replacement), the
    same resample for all scores in a round, so differences between scores are paired."""
    rng = np.random.default_rng(seed)
    draws: dict[str, dict[str, list[float]]] = {name: {m: [] for m in METRICS} for name in scores}
    for _ in range(rounds):
        index = rng.integers(0, len(y), len(y))
        if len(np.unique(y[index])) < 2:
            continue
        for name, (values, is_probability) in scores.items():
            for metric, value in scored_metrics(y[index], values[index], is_probability).items():
                draws[name][metric].append(value)
    return {name: {m: np.asarray(v, dtype=float) for m, v in per.items()} for name, per in draws.items()}


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap draws."""
    if not len(values) or not np.isfinite(values).any():
        return (np.nan, np.nan)
    return float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))


@dataclass(frozen=True)
class Comparison:
    """churnlens against the best baseline on one metric: the point difference and its paired interval."""

    baseline: str
    baseline_value: float
    ours: float
    difference: float
    low: float
    high: float

    @classmethod
    def of(cls, metric: str, points: dict[str, dict[str, float]], draws: Draws, higher_is_better: bool
           ) -> Comparison:
        finite = [k for k in points if k != "churnlens" and np.isfinite(points[k][metric])]
        pick = max if higher_is_better else min
        best = pick(finite, key=lambda k: points[k][metric])
        ours = points["churnlens"][metric]
        low, high = interval(draws["churnlens"][metric] - draws[best][metric])
        return cls(best, points[best][metric], ours, ours - points[best][metric], low, high)

    def outcome(self, higher_is_better: bool) -> str:
        """won / lost: the whole interval of the difference on the good / bad side of 0; else tied."""
        better, worse = (self.low > 0, self.high < 0) if higher_is_better else (self.high < 0, self.low > 0)
        return "won" if better else "lost" if worse else "tied"


@dataclass(frozen=True)
class DateResult:
    date: pd.Timestamp
    history_days: int  # from the log's first event to the scoring date
    seasonal: bool  # the log holds a year plus the horizon before the date
    customers: int
    churn_rate: float
    mean_probability: float
    exact: int  # probabilities of exactly 0 or 1
    auc: Comparison
    brier: Comparison
    ece: float
    table: str  # every score's metrics with intervals

    @property
    def ece_target(self) -> float:
        return 0.03 if self.seasonal else 0.05

    def targets(self) -> dict[str, bool]:
        return {"AUC not below": self.auc.high >= 0, "AUC +.01": self.auc.difference >= 0.01,
                "Brier": self.brier.difference <= 0, "ECE": self.ece <= self.ece_target, "0/1": self.exact == 0}


def benchmark(case: Case, date: pd.Timestamp, workdir: Path, full: tuple[dict, list[Path]], rounds: int,
              horizon_days: int, monitoring: Monitoring | None = None) -> DateResult:
    scores = run_pipeline(case, date, workdir, monitoring)
    truth = truth_at(full, date)
    judged = scores[["customer_id", "churn_probability"]].merge(truth, on="customer_id", how="inner")
    y = judged[LABEL].to_numpy(dtype=int)
    probability = judged["churn_probability"].to_numpy(dtype=float)
    all_scores = {"churnlens": (probability, True)}
    for name, values in baseline_scores(case, date, workdir, judged["customer_id"]).items():
        all_scores[name] = (np.asarray(values, dtype=float), name != "recency")
    draws = bootstrap(y, all_scores, rounds)
    exact = int(np.sum((probability <= 0) | (probability >= 1)))
    first_event = pd.Timestamp(json.loads((workdir / "features.json").read_text())["data_start"])
    history = date - first_event.tz_localize(None).normalize()
    lines = [f"### {case.name}, scored as of {date.date()}: {len(y)} customers, churn rate {y.mean():.3f}, "
             f"mean p {probability.mean():.3f}, exact 0/1 probabilities: {exact}, {history.days} days of history", "",
             "| score | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    points = {}
    for name, (values, is_probability) in all_scores.items():
        point = points[name] = scored_metrics(y, values, is_probability)
        cells = [f"{point[m]:.3f} [{interval(draws[name][m])[0]:.3f}, {interval(draws[name][m])[1]:.3f}]"
                 if np.isfinite(point[m]) else "n/a" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return DateResult(date, history.days, history >= YEAR + pd.Timedelta(days=horizon_days), len(y),
                      float(y.mean()), float(probability.mean()), exact,
                      Comparison.of("roc_auc", points, draws, higher_is_better=True),
                      Comparison.of("brier", points, draws, higher_is_better=False),
                      points["churnlens"]["ece"], "\n".join(lines))


def targets_line(result: DateResult) -> str:
    """One date's targets, to four decimals: AUC's paired interval not entirely below the best
    baseline's and +0.01 or more, Brier at most the best baseline's, ECE within its target (0.03
    with a year plus the horizon of history, else 0.05), no exact 0/1 probabilities."""
    auc, brier, verdict = result.auc, result.brier, result.targets()
    return (f"Targets: AUC {auc.ours:.4f} - {auc.baseline} {auc.baseline_value:.4f} = {auc.difference:+.4f} "
            f"[{auc.low:+.4f}, {auc.high:+.4f}] (not below 0; >= +0.01); Brier {brier.ours:.4f} - {brier.baseline} "
            f"{brier.baseline_value:.4f} = {brier.difference:+.4f} [{brier.low:+.4f}, {brier.high:+.4f}] (<= 0); "
            f"ECE {result.ece:.4f} (<= {result.ece_target}); exact 0/1: {result.exact}. "
            f"Met: {', '.join(k for k, ok in verdict.items() if ok) or 'none'}; "
            f"not met: {', '.join(k for k, ok in verdict.items() if not ok) or 'none'}.")


def summary(results: list[DateResult]) -> str:
    """One table over all dates, and the points won / tied / lost on AUC and on Brier."""
    lines = ["| as of | history (days) | customers | churn rate | mean p | AUC | best baseline AUC | "
             "AUC difference [95%] | AUC | Brier | best baseline Brier | Brier difference [95%] | Brier | ECE "
             "(target) | exact 0/1 |", "|---" * 15 + "|"]
    for r in results:
        lines.append(
            f"| {r.date.date()} | {r.history_days} | {r.customers} | {r.churn_rate:.3f} | {r.mean_probability:.3f} | "
            f"{r.auc.ours:.4f} | {r.auc.baseline_value:.4f} ({r.auc.baseline}) | {r.auc.difference:+.4f} "
            f"[{r.auc.low:+.4f}, {r.auc.high:+.4f}] | {r.auc.outcome(True)} | {r.brier.ours:.4f} | "
            f"{r.brier.baseline_value:.4f} ({r.brier.baseline}) | {r.brier.difference:+.4f} "
            f"[{r.brier.low:+.4f}, {r.brier.high:+.4f}] | {r.brier.outcome(False)} | {r.ece:.4f} (<= {r.ece_target}) "
            f"| {r.exact} |")
    count = lambda outcomes: "{} won / {} tied / {} lost".format(*(outcomes.count(o) for o in ("won", "tied", "lost")))  # noqa: E731
    plus = sum(r.auc.difference >= 0.01 for r in results)
    never_below = sum(r.auc.high >= 0 for r in results)
    brier_ok = sum(r.brier.difference <= 0 for r in results)
    ece_ok = sum(r.ece <= r.ece_target for r in results)
    lines += ["", f"Points ({len(results)} dates): AUC {count([r.auc.outcome(True) for r in results])}; "
              f"Brier {count([r.brier.outcome(False) for r in results])}. AUC interval not entirely below the best "
              f"baseline at {never_below}/{len(results)}, +0.01 or more at {plus}/{len(results)}; Brier at most the "
              f"best baseline's at {brier_ok}/{len(results)}; ECE within target at {ece_ok}/{len(results)} ("
              + ", ".join(f"{r.date.date()} {r.ece:.3f}" for r in results) + ")."]
    return "\n".join(lines)


def monitored_runs(full: tuple[dict, list[Path]], monitoring: Monitoring) -> str:
    """`churnlens monitor` over every kept run against the full log, as a user would run it after
    ingesting the later extract; its table of runs and its campaign tables, in Markdown."""
    tables, overlays = full
    folder = monitoring.runs.parent
    run_command(folder, "monitor", "--runs", str(monitoring.runs), "--canonical-dir",
                str(Path(tables["transactions"]).parent), "--report", "monitor.json", "--plot", "monitor.png",
                overlays=overlays, store=monitoring.store)
    report = json.loads((folder / "monitor.json").read_text())
    lines = ["## Scorecards of every date's run (`churnlens monitor` against the full log)", "", report["markdown"], "",
             "Treated against control, the campaign as a whole (no action was taken on this log: an A/A check)", "",
             "| scored as of | treated | control | churn treated | churn control | difference [95%] |", "|---" * 6 + "|"]
    for card in report["runs"]:
        whole = next((row for row in card.get("campaign", []) if row["segment"] == "all"), None)
        if whole and "difference" in whole:
            low, high = whole["difference_interval"]
            lines.append(f"| {card['as_of'][:10]} | {whole['treated']} | {whole['control']} | "
                         f"{whole['churn_rate_treated']:.3f} | {whole['churn_rate_control']:.3f} | "
                         f"{whole['difference']:+.3f} [{low:+.3f}, {high:+.3f}] |")
        elif whole:
            lines.append(f"| {card['as_of'][:10]} | {whole['treated']} | {whole['control']} | – | – | {whole['note']} |")
    lines.append(f"\nMLflow store: {monitoring.store}; plot: {folder / 'monitor.png'}")
    return "\n".join(lines)


@contextmanager
def workspace(keep: Path | None, date: str) -> Iterator[Path]:
    """A fresh folder for one date's run: KEEP/<date> (emptied first) or a temporary one."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="churnlens-benchmark-") as folder:
            yield Path(folder)
        return
    folder = keep.resolve() / date
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulated", action="store_true", help="the default simulated data instead of the log")
    parser.add_argument("--first-year", action="store_true", help="the first export alone (one year of the shop)")
    parser.add_argument("--dates", nargs="+", help="scoring dates (default: every two months of the two-year log)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap rounds for the intervals")
    parser.add_argument("--log", type=Path, default=RETAIL_LOG, help="the first export (Online Retail II, Parquet)")
    parser.add_argument("--params", type=Path, nargs="+", default=[],
                        help="overlays on the case's params, e.g. to judge another train.selection")
    parser.add_argument("--keep", type=Path, help="keep each date's pipeline outputs in KEEP/<date> (default: discarded)")
    parser.add_argument("--second-log", type=Path, default=RETAIL_SECOND_YEAR,
                        help="the second export (Online Retail, Parquet)")
    parser.add_argument("--monitor", type=Path,
                        help="keep every date's scoring run and model (one MLflow store) in MONITOR, then run "
                             "`churnlens monitor` over them against the full log: MONITOR/monitor.json and .png")
    args = parser.parse_args()
    needed = [] if args.simulated else [args.log] if args.first_year else [args.log, args.second_log]
    for path in needed:
        if not path.is_file():
            raise SystemExit(f"{path}: not found; pass --log / --second-log, or use --simulated")
    default_dates = SIMULATED_DATES if args.simulated else FIRST_YEAR_DATES if args.first_year else TWO_YEAR_DATES
    results = []
    monitoring = None
    if args.monitor is not None:
        shutil.rmtree(args.monitor, ignore_errors=True)
        args.monitor.mkdir(parents=True)
        monitoring = Monitoring(args.monitor.resolve() / "runs", args.monitor.resolve() / "mlflow.db")
    with tempfile.TemporaryDirectory(prefix="churnlens-benchmark-truth-") as truth_folder:
        full, case = None, None
        for date in args.dates or default_dates:
            with workspace(args.keep, date) as workdir:
                case = (simulated_case(workdir) if args.simulated else retail_case(args.log) if args.first_year
                        else two_year_retail_case(args.log, args.second_log))
                case = replace(case, overlays=[*case.overlays, *(path.resolve() for path in args.params)])
                if full is None or args.simulated:  # the simulator writes its raw data into each workdir
                    full = full_log(case, workdir if args.simulated else Path(truth_folder))
                horizon = load_params(ROOT / "params.yaml", *case.overlays).features.horizon_days
                results.append(benchmark(case, pd.Timestamp(date), workdir, full, args.bootstrap, horizon, monitoring))
                print(results[-1].table, "", targets_line(results[-1]), sep="\n", flush=True)
        if monitoring is not None:
            print(monitored_runs(full, monitoring))
    print("\n\n".join(f"{r.table}\n\n{targets_line(r)}" for r in results))
    print(f"\n## {case.name}: all dates\n")
    print(summary(results))


if __name__ == "__main__":
    main()
