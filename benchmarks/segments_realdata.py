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

Result as of 2010-09-01 (3,323 scored customers; 2,887, 86.9%, get one of the three segments,
92.7% of the 2,037 with two or more purchases; 1,286 scored customers, 38.7%, have one purchase,
and 998 of them get a low-confidence segment from their one basket; 42.8% of the segmented are
low-confidence). Load average 17-19 on 2 cores while measured; the pipeline took 4 min 38 s.

| segment | customers | lines below usual price | repeat-basket lines | churn rate | spend change |
|---|---|---|---|---|---|
| brand_advocate | 564 | 2.4% | 42.2% | 23.8% | -11.1% |
| brand_comparer | 900 | 20.0% | 37.5% | 41.7% | +55.9% |
| brand_user | 1423 | 3.7% | 47.8% | 43.9% | +37.0% |
| insufficient_history | 436 | 1.7% | 22.7% | 59.9% | +21.7% |

All three orderings hold. Before advocacy needed exploring while spend holds (advocacy was the
mean of 1 - repeat share and spend that holds, and one basket was a segment only when bought
largely in price drops): 64.0% coverage; advocates 1,355 (2.9%, 41.4%, churn 30.8%), comparers
531 (36.2%, 51.6%, 37.1%), users 242 (2.3%, 62.9%, 24.4%): advocates did not churn least.

But one basket churns about 60% whatever it shows, and 839 of the 1,423 users are one-basket
customers whose products are usually re-bought (staples): part of "advocates churn least" is
that mix. Among customers with 2+ purchases only, comparers still buy most below the usual
price (20.8%) and users repeat most (59.3%), but users churn least (21.9%, advocates 23.8%,
comparers 37.8%). Within purchase bands (churn rate, customers):

| purchases | brand_advocate | brand_user | brand_comparer |
|---|---|---|---|
| 1 | n/a | 59.1% (839) | 59.7% (159) |
| 2 | 43.6% (94) | 38.5% (104) | 46.2% (364) |
| 3-4 | 28.9% (225) | 26.8% (205) | 37.7% (207) |
| 5-7 | 13.9% (158) | 14.7% (136) | 25.0% (92) |
| 8+ | 6.9% (87) | 9.4% (139) | 14.1% (78) |

On this wholesale log a lower unit price also comes with larger quantities (tiered prices), so
"below the usual price" mixes price drops with bulk buying.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# One way to run a pipeline command in its own process and MLflow store, shared with the
# real-data model benchmark (this folder is on sys.path when a script here runs).
import pandas as pd
from realdata_benchmark import run_command

from churnlens import validity
from churnlens.config import PERSONAS

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
    outcome = report["construct_validity"]
    segmented = sum(v["customers"] for s, v in report["segments"].items() if s != "insufficient_history")
    print(f"\nScored as of {args.as_of}: {report['customers']} customers, {segmented} "
          f"({segmented / report['customers']:.1%}) in one of the three segments.")
    print(f"Behaviour in the {outcome['horizon_days']} days after the as-of date (outcomes up to "
          f"{outcome['outcomes_end'][:10]}):\n")
    print(outcome["markdown"])
    print("\n" + "\n".join(f"- {name}: {'holds' if held else 'does NOT hold'}"
                           for name, held in outcome["orderings_hold"].items()))
    purchases = purchase_counts(truncated)
    scores = pd.read_parquet(OUT / "scores.parquet", columns=["customer_id", "segment", "low_confidence"])
    placed = scores["segment"].isin(PERSONAS)
    repeat_buyers = scores["customer_id"].map(purchases).fillna(0).to_numpy() >= 2
    print(f"\nCoverage: {placed.mean():.1%} of scored customers (target 80%), {placed[repeat_buyers].mean():.1%} "
          f"of the {repeat_buyers.sum()} with 2+ purchases; {(~repeat_buyers).sum()} scored customers "
          f"({(~repeat_buyers).mean():.1%}) have one purchase; {scores.loc[placed, 'low_confidence'].mean():.1%} of "
          "the segmented are low-confidence.")
    lines = validity.line_flags(validity.joined_log(str(truncated), str(full), pd.Timestamp(args.as_of)))
    repeat_table = validity.construct_validity(scores[repeat_buyers], lines, pd.Timestamp(args.as_of),
                                               outcome["horizon_days"])
    print("\nThe same, customers with 2+ purchases only (one basket churns far more, whatever it shows):\n")
    print(validity.markdown(repeat_table))
    print("\n" + "\n".join(f"- {name}: {'holds' if held else 'does NOT hold'}"
                           for name, held in validity.orderings(repeat_table).items()))
    by_purchases(scores, purchases, lines, pd.Timestamp(args.as_of), outcome["horizon_days"])


def purchase_counts(truncated: Path) -> pd.Series:
    """Purchases (orders with a non-return line) per customer by the as-of date."""
    import duckdb

    with duckdb.connect() as con:
        counts = con.execute(
            "SELECT customer_id, count(DISTINCT order_id) AS n FROM read_parquet(?) WHERE NOT is_return "
            "GROUP BY customer_id", [str(truncated / "transactions.parquet")]).df()
    return counts.set_index("customer_id")["n"]


def by_purchases(scores: pd.DataFrame, purchases: pd.Series, lines: pd.DataFrame, as_of: pd.Timestamp,
                 horizon_days: int) -> None:
    """Churn rate per segment among customers with a similar number of purchases by the as-of
    date: churn falls steeply with purchases, so a segment's overall rate mixes its attitude with
    how established its customers are."""
    bands = {"1": (0, 1), "2": (2, 2), "3-4": (3, 4), "5-7": (5, 7), "8+": (8, 10**9)}
    counts = scores["customer_id"].map(purchases).fillna(0)
    print("\nChurn rate (customers) per segment, by purchases before the as-of date:\n")
    print("| purchases | " + " | ".join(PERSONAS) + " |\n|---|" + "---|" * len(PERSONAS))
    for name, (low, high) in bands.items():
        members = scores[counts.between(low, high).to_numpy()]
        table = validity.construct_validity(members, lines, as_of, horizon_days).set_index("segment")
        cells = [f"{table.loc[s, 'churn_rate']:.1%} ({table.loc[s, 'customers']})" if s in table.index else "n/a"
                 for s in PERSONAS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
