"""Batch scoring throughput: the standalone `churnlens score` job on 500k customers / 10M transactions.

    python benchmarks/score_benchmark.py

Uses the data of features_benchmark.py (simulated once into benchmarks/out/). A model is
trained once on 50k customers' snapshots and saved as a local model folder; then, each in its
own process so its peak RSS is its own:

* baseline: features only (the same as-of date, every customer), the floor the job cannot beat;
* the job: `churnlens score` end to end: features, probabilities, reasons for the at-risk,
  segments, retention plan, Parquet output, segment report and manifest; once with exact
  TreeSHAP reasons (the default) and once with `score.reasons: approximate`.

Throughput is active customers scored per minute, features included (target >= 1M on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features_benchmark import OUT, cutoffs, prepare
from measure import measure, table

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

    if (MODEL / "MLmodel").exists():
        return
    grid = cutoffs(folder, 8)[:5]  # the last 90 days hold the labels of the fifth cutoff
    snapshots, plan = compute_snapshots(tables(folder, 50_000), grid, FeaturesConfig())
    numeric = [n for n in plan.names if n not in plan.categorical]
    train, validation = snapshots[snapshots["cutoff"] < grid[-1]], snapshots[snapshots["cutoff"] == grid[-1]]
    fitted = model.fit_with_early_stopping(train, validation, numeric, plan.categorical, TrainConfig())
    contract = ModelContract(numeric, plan.categorical,
                             drift_profile=drift_profile(validation, numeric, plan.categorical))
    tracking.save_model_dir(fitted.pipeline, model.model_input(train.head(50), numeric, plan.categorical),
                            contract.to_metadata(), MODEL)


def as_of(folder: Path) -> str:
    return (cutoffs(folder, 1)[0] + pd.Timedelta(days=1)).date().isoformat()


def run_features(folder: Path) -> None:
    from churnlens.config import FeaturesConfig
    from churnlens.engines.duckdb import compute_snapshots

    frame, _ = compute_snapshots(tables(folder), [pd.Timestamp(as_of(folder))], FeaturesConfig(), with_labels=False)
    (OUT / "features_only_rows.txt").write_text(str(len(frame)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--run-features", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = prepare(args.customers, args.days, args.transactions)
    if args.run_features:
        run_features(folder)
        return
    train_model(folder)
    approximate = OUT / "approximate_reasons.yaml"
    approximate.write_text("score:\n  reasons: approximate\n")
    common = [__file__, "--customers", str(args.customers), "--days", str(args.days),
              "--transactions", str(args.transactions)]
    rows, manifests = [measure("features only (1 as-of date)", *common, "--run-features")], {}
    for reasons, overlay in (("exact", []), ("approximate", ["--params", str(approximate)])):
        output = OUT / f"scores_{reasons}" / "scores.parquet"
        output.unlink(missing_ok=True)  # no previous run: measure the job, not the stability comparison
        name = f"churnlens score, {reasons} reasons"
        rows.append(measure(name, "-m", "churnlens", "score", "--params", "params.yaml", *overlay,
                            "--canonical-dir", str(folder), "--model", str(MODEL), "--as-of", as_of(folder),
                            "--output", str(output), "--report", str(output.with_name("segment_report.json"))))
        manifests[name] = json.loads(output.with_name("scores.manifest.json").read_text())
    scored = next(iter(manifests.values()))["rows"]["customers_scored"]
    print(f"\n{scored:,} active customers scored as of {as_of(folder)}, {args.transactions:,} transactions, "
          f"{os.cpu_count()} cores\n")
    print(table(rows, "features only (1 as-of date)", {r.name: scored for r in rows}, unit="customers"))
    for job in rows[1:]:
        print(f"\n{job.name}: {scored / job.seconds * 60:,.0f} customers per minute (target >= 1,000,000), "
              f"peak RSS {job.peak_rss_mb / 1024:.2f} GB, "
              f"{manifests[job.name]['rows']['with_reasons']:,} customers with reasons")
        print("  timings (s):", json.dumps(manifests[job.name]["timings_seconds"]))


if __name__ == "__main__":
    main()
