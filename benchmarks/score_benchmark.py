"""Batch scoring throughput: the standalone `churnlens score` job on 500k customers / 10M transactions.

    python benchmarks/score_benchmark.py [--repeats 3]

Uses the data of features_benchmark.py (simulated once into benchmarks/out/). A model is
trained once on 50k customers' snapshots and saved as a local model folder (both in a child
process, which keeps this one's memory below the contenders'); then, each in its own process so
its peak RSS is its own, ``--repeats`` times taking turns:

* baseline: a plain DuckDB pass of 17 features on the same log (features_benchmark.py's);
* churnlens features alone for the as-of date (the job's first step);
* the job: `churnlens score` end to end: features, probabilities, segments, retention plan,
  reasons, Parquet and CSV output, segment report and manifest; with the default reasons (exact
  TreeSHAP for this run's campaign, path attributions for everyone else), with exact reasons for
  every medium/high-risk customer (`score.reasons_for: at_risk`, the earlier default), and with the
  fastest settings (exact reasons for the campaign, none for the rest: `score.other_reasons: none`).

Throughput is active customers scored per minute, features included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

from churnlens.stages import timings_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features_benchmark import OUT, cutoffs, prepare, thinned_dir
from measure import alternating, log_size_args, log_size_parser, median, ratio_line, run_child, table

MODEL = OUT / "score_model"


def tables(folder: Path, customers: int | None = None) -> dict:
    import duckdb

    if customers is None:
        return {name: str(folder / f"{name}.parquet") for name in ("transactions", "interactions", "customers")}
    sample = f"SELECT customer_id FROM '{folder}/customers.parquet' ORDER BY hash(customer_id) LIMIT {customers}"
    with duckdb.connect() as con:
        return {name: con.execute(f"SELECT * FROM '{folder}/{name}.parquet' WHERE customer_id IN ({sample})").df()
                for name in ("transactions", "interactions", "customers")}


def train_model(folder: Path) -> None:
    from churnlens import model, tracking
    from churnlens.config import FeaturesConfig, TrainConfig
    from churnlens.drift import drift_profile
    from churnlens.contract import ModelContract
    from churnlens.engines.duckdb import compute_snapshots
    from churnlens.stages import FeatureLists

    if (MODEL / "MLmodel").exists():
        return
    grid = cutoffs(folder, 8)[:5]  # the last 90 days hold the labels of the fifth cutoff
    snapshots, plan = compute_snapshots(tables(folder, 50_000), grid, FeaturesConfig())
    lists = FeatureLists.of(plan.model_names, plan.categorical)
    numeric, categorical = lists.numeric, lists.categorical
    train, validation = snapshots[snapshots["cutoff"] < grid[-1]], snapshots[snapshots["cutoff"] == grid[-1]]
    fitted = model.fit_with_early_stopping(train, validation, numeric, categorical, TrainConfig())
    contract = ModelContract(numeric, categorical, drift_profile=drift_profile(validation, numeric, categorical))
    tracking.save_model_dir(fitted.pipeline, model.model_input(train.head(50), numeric, categorical),
                            contract.to_metadata(), MODEL)


def as_of(folder: Path) -> str:
    return (cutoffs(folder, 1)[0] + pd.Timedelta(days=1)).date().isoformat()


def run_features(folder: Path) -> None:
    from churnlens.config import FeaturesConfig
    from churnlens.single_date import compute_snapshot

    frame, _ = compute_snapshot(tables(folder), pd.Timestamp(as_of(folder)), FeaturesConfig())
    (OUT / "features_only_rows.txt").write_text(str(len(frame)))


def main() -> None:
    parser = log_size_parser(__doc__)
    parser.add_argument("--run-features", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set-up", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = log_size_args(args)
    if args.set_up:
        train_model(prepare(args.customers, args.days, args.transactions))
        return
    folder = thinned_dir(args.customers, args.days, args.transactions)
    if args.run_features:
        run_features(folder)
        return
    run_child(__file__, *sizes, "--set-up")  # simulating and training here would become every child's peak RSS
    overlays = {"default reasons": "", "at-risk reasons": "score:\n  reasons_for: at_risk\n",
                "fastest reasons": "score:\n  reasons_for: campaign\n  other_reasons: none\n"}
    contenders = {"plain duckdb, 17 features": [str(Path(__file__).with_name("features_benchmark.py")), *sizes,
                                                "--run", "plain"],
                  "churnlens features, 1 date": [__file__, *sizes, "--run-features"]}
    outputs = {}
    for reasons, text in overlays.items():
        name = f"churnlens score, {reasons}"
        outputs[name] = OUT / f"scores_{reasons.split()[0]}" / "scores.parquet"
        overlay = OUT / f"{reasons.split()[0]}_reasons.yaml"
        overlay.write_text(text or "{}\n")
        # --previous is not given: the job is measured, not the stability comparison.
        contenders[name] = ["-m", "churnlens", "score", "--params", "params.yaml", "--params", str(overlay),
                            "--canonical-dir", str(folder), "--model", str(MODEL), "--as-of", as_of(folder),
                            "--output", str(outputs[name]), "--report",
                            str(outputs[name].with_name("segment_report.json"))]
    runs = dict(zip(contenders, alternating(contenders, args.repeats), strict=True))
    manifests = {name: json.loads(path.with_name("scores.manifest.json").read_text()) for name, path in outputs.items()}
    scored = next(iter(manifests.values()))["rows"]["customers_scored"]
    print(f"\n{scored:,} active customers scored as of {as_of(folder)}, {args.transactions:,} transactions, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, medians of {args.repeats} alternating runs\n")
    print(table([median(r) for r in runs.values()], "plain duckdb, 17 features",
                {name: scored for name in runs}, unit="customers"))
    for name in manifests:
        job = median(runs[name])
        print(f"\n{name}: {scored / job.seconds * 60:,.0f} customers per minute, "
              f"peak RSS {job.peak_text(1024, 2)} GB, {manifests[name]['rows']['with_reasons']:,} with reasons")
        print("  " + ratio_line(runs[name], runs["plain duckdb, 17 features"],
                                "target <= 3" if name.endswith("default reasons") else ""))
        timings = json.loads(timings_path(outputs[name].with_name("scores.manifest.json")).read_text())
        print("  timings of the last run (s):", json.dumps(timings))


if __name__ == "__main__":
    main()
