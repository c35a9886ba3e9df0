"""Construct validity of the loyalty segments on a real purchase log (no personas to compare with).

    .venv/bin/python benchmarks/segments_realdata.py [--as-of 2010-09-01]

As-of protocol: the pipeline's own commands (ingest, features, train, evaluate, score) run on the
shared retail log truncated at the as-of date, so they see nothing after it; then
`churnlens score --outcomes` reads the full log and reports, per segment, how its customers
behaved in the ``features.horizon_days`` after the as-of date: the share of lines bought below
the product's usual price, the share on products bought before, the churn rate and the spend
change. DOMAIN.md's hypotheses say comparers should buy the most below the usual price, users
should repeat most and advocates should churn least. Everything is written under
benchmarks/out/segments_realdata/ (its own MLflow store). The log: ../shared/data/README.md.

Result as of 2010-09-01 (3,323 scored customers; 1,353 have fewer than two purchases or under 60
days of history and get insufficient_history, so 59.3% get one of the three segments):

| segment | customers | lines below usual price | repeat-basket lines | churn rate | spend change |
|---|---|---|---|---|---|
| brand_advocate | 1474 | 2.8% | 42.0% | 31.3% | +25.6% |
| brand_comparer | 322 | 42.9% | 58.6% | 25.8% | +33.1% |
| brand_user | 174 | 2.7% | 65.4% | 20.1% | +24.3% |
| insufficient_history | 1353 | 2.6% | 21.5% | 60.2% | +61.3% |

Comparers buy most below the usual price and users repeat most; advocates do not churn least
(users do). Among customers with 8+ purchases by the as-of date advocates churn least (9.1%
vs 10.0% users, 11.1% comparers). On this wholesale log a lower unit price also comes with
larger quantities (tiered prices), so "below the usual price" mixes price drops with bulk buying.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# One way to run a pipeline command in its own process and MLflow store, shared with the
# real-data model benchmark (this folder is on sys.path when a script here runs).
from realdata_benchmark import run_command

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "segments_realdata"
OVERLAY = ROOT / "examples" / "online_retail_ii.yaml"


def truncate(source: Path, target: Path, as_of: str) -> None:
    """The canonical transactions strictly before the as-of date."""
    import duckdb

    target.mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT * FROM read_parquet('{source}') WHERE timestamp < TIMESTAMP '{as_of}') "
                    f"TO '{target / 'transactions.parquet'}' (FORMAT parquet)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", default="2010-09-01")
    args = parser.parse_args()
    from churnlens.config import load_params

    source = load_params(ROOT / "params.yaml", OVERLAY).ingest.transactions.path
    if not (ROOT / source).exists():
        raise SystemExit(f"{ROOT / source}: the shared retail log is absent; see ../shared/data/README.md")
    OUT.mkdir(parents=True, exist_ok=True)
    # Nine months before the default as-of date are too short to train a 90-day churn model on
    # nested label windows: the model trains on a 60-day horizon without backtest folds. It only
    # feeds the scores' probabilities, never the segments; scoring (and so the construct-validity
    # window) keeps the overlay's 90 days.
    short_history = OUT / "short_history.yaml"
    short_history.write_text("features:\n  horizon_days: 60\ntrain:\n  backtest_folds: 0\n", encoding="utf-8")
    params = [OVERLAY]  # after params.yaml, which run_command always passes first
    model_params = [*params, short_history]
    full, truncated = OUT / "full" / "canonical", OUT / "as_of" / "canonical"
    run_command(OUT, "ingest", "--base", str(ROOT), "--canonical-dir", str(full), "--quarantine-dir",
              str(OUT / "full" / "quarantine"), "--report", str(OUT / "ingest_report.json"), overlays=params)
    truncate(full / "transactions.parquet", truncated, args.as_of)
    snapshots = OUT / "snapshots.parquet"
    run_command(OUT, "features", "--canonical-dir", str(truncated), "--output", str(snapshots), "--report",
              str(OUT / "features.json"), overlays=model_params)
    run_command(OUT, "train", "--snapshots", str(snapshots), "--features-report", str(OUT / "features.json"),
              "--model-dir", str(OUT / "model"), "--report", str(OUT / "train.json"), overlays=model_params)
    run_command(OUT, "evaluate", "--snapshots", str(snapshots), "--model-dir", str(OUT / "model"), "--train-report",
              str(OUT / "train.json"), "--metrics", str(OUT / "metrics.json"), "--plots-dir", str(OUT / "plots"),
              overlays=model_params)
    report_path = OUT / "segment_report.json"
    # The model folder, promoted or not: the segments do not depend on it.
    run_command(OUT, "score", "--canonical-dir", str(truncated), "--model", str(OUT / "model"), "--as-of", args.as_of,
              "--output", str(OUT / "scores.parquet"), "--report", str(report_path), "--outcomes", str(full),
              overlays=params)

    report = json.loads(report_path.read_text(encoding="utf-8"))
    validity = report["construct_validity"]
    segmented = sum(v["customers"] for s, v in report["segments"].items() if s != "insufficient_history")
    print(f"\nScored as of {args.as_of}: {report['customers']} customers, {segmented} "
          f"({segmented / report['customers']:.1%}) in one of the three segments.")
    print(f"Behaviour in the {validity['horizon_days']} days after the as-of date (outcomes up to "
          f"{validity['outcomes_end'][:10]}):\n")
    print(validity["markdown"])
    print("\n" + "\n".join(f"- {name}: {'holds' if held else 'does NOT hold'}"
                           for name, held in validity["orderings_hold"].items()))
    established(truncated, full, args.as_of, validity["horizon_days"])


def established(truncated: Path, full: Path, as_of: str, horizon_days: int, min_purchases: int = 8) -> None:
    """The same table among customers with ``min_purchases`` or more purchases by the as-of date."""
    import duckdb
    import pandas as pd

    from churnlens import validity

    scores = pd.read_parquet(OUT / "scores.parquet", columns=["customer_id", "segment"])
    with duckdb.connect() as con:
        regulars = con.execute(
            "SELECT customer_id FROM read_parquet(?) WHERE NOT is_return GROUP BY customer_id "
            "HAVING count(DISTINCT order_id) >= ?", [str(truncated / "transactions.parquet"), min_purchases]
        ).df()["customer_id"]
    lines = validity.line_flags(validity.joined_log(str(truncated), str(full), pd.Timestamp(as_of)))
    table = validity.construct_validity(scores[scores["customer_id"].isin(regulars)], lines, pd.Timestamp(as_of),
                                        horizon_days)
    print(f"\nCustomers with {min_purchases}+ purchases by the as-of date:\n\n{validity.markdown(table)}")


if __name__ == "__main__":
    main()
