"""DuckDB vs Spark (local) on the same data: the feature sweep and the scoring job.

    python benchmarks/engines_benchmark.py [--customers 20000] [--master local[2]]

Simulates the default data set once (20k customers, two years, ~1M transactions) into
benchmarks/out/, then, each in its own process:

* features, 12 monthly cutoffs (labels included), written to Parquet, by each engine;
* the scoring job for one as-of date with the model of score_benchmark.py (trained there if
  missing), by each engine.

Spark runs on this machine (local master), so this measures overhead, not scale-out: Spark's
place is data that does not fit one machine. Peak RSS is the Python process only; Spark's JVM
is a separate process and is not included.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features_benchmark import OUT, simulate_once
from measure import measure, table


def prepare(customers: int) -> Path:
    return simulate_once(OUT / f"engines_{customers}", n_customers=customers)


def cutoffs(folder: Path) -> list[pd.Timestamp]:
    from churnlens.engines.duckdb import data_span

    _, end = data_span({"transactions": str(folder / "transactions.parquet")})
    last = end.normalize() - pd.Timedelta(days=91)
    return [last - pd.Timedelta(days=30 * k) for k in range(12)][::-1]


def run(kind: str, engine: str, folder: Path, master: str) -> None:
    from churnlens.config import load_params

    params = load_params(Path("params.yaml"))
    params = params.model_copy(update={"engine": params.engine.model_copy(update={"name": engine,
                                                                                  "spark_master": master})})
    tables = {n: str(folder / f"{n}.parquet") for n in ("transactions", "interactions", "customers")}
    target = OUT / f"engines_{kind}_{engine}"
    if kind == "features" and engine == "duckdb":
        from churnlens.engines.duckdb import write_snapshots

        write_snapshots(tables, cutoffs(folder), params.features, target.with_suffix(".parquet"))
    elif kind == "features":
        from churnlens.engines import spark

        session = spark.session(master)
        spark.write_snapshots(session, spark.read_tables(session, tables), cutoffs(folder), params.features,
                              str(target.with_suffix(".parquet")), None)
    else:
        from churnlens.score import ScoreJob
        from churnlens.stages import run_score

        model = OUT / "score_model"
        as_of = cutoffs(folder)[-1] + pd.Timedelta(days=91)
        run_score(ScoreJob(params, folder, str(model), target / "scores.parquet", target / "report.json", as_of=as_of))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = prepare(args.customers)
    if args.run:
        kind, engine = args.run.split(":")
        run(kind, engine, folder, args.master)
        return
    if not (OUT / "score_model" / "MLmodel").exists():
        raise SystemExit("run benchmarks/score_benchmark.py first: it trains the model scored here")
    common = [__file__, "--customers", str(args.customers), "--master", args.master, "--run"]
    rows = [measure(f"{kind}, {engine}", *common, f"{kind}:{engine}")
            for kind in ("features", "score") for engine in ("duckdb", "spark")]
    n_tx = len(pd.read_parquet(folder / "transactions.parquet", columns=["amount"]))
    print(f"\n{n_tx:,} transactions, {args.customers:,} customers, 12 cutoffs; Spark master {args.master}; "
          f"{os.cpu_count()} cores\n")
    print(table(rows[:2], "features, duckdb"))
    print()
    print(table(rows[2:], "score, duckdb"))


if __name__ == "__main__":
    main()
