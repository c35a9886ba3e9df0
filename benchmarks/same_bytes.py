"""Do two revisions of churnlens write the same bytes? Snapshots (one date and 12 cutoffs) and scores.

    python benchmarks/same_bytes.py --baseline <git revision> [--customers 50000 --transactions 1000000]

Speed work must not change a single value: this checks out ``--baseline`` into a temporary git
worktree, then runs the same computations with its code and with this checkout's, each in its own
process with that code first on the path, on the log of features_benchmark.py (simulated once into
benchmarks/out/) and the model of score_benchmark.py, and compares the files' sha256:

* the 12-cutoff snapshots (the features stage's file) and the one-date snapshot (the scoring job's
  features), each with that revision's default ``features`` settings;
* `churnlens score` with each reason setting (``score.reasons_for`` campaign and at_risk, given
  explicitly, so a changed default does not count as a changed result): scores Parquet and CSV.

Exit status 1 when a file differs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features_benchmark import OUT, cutoffs, thinned_dir
from measure import log_size_args, log_size_parser, run_child

ROOT = Path(__file__).resolve().parent.parent
REASONS = ("campaign", "at_risk")


def snapshots(folder: Path, target: Path) -> None:
    """Run with the code under test first on sys.path: both snapshot files into ``target``."""
    from churnlens.config import FeaturesConfig
    from churnlens.engines.duckdb import write_snapshots
    from churnlens.single_date import compute_snapshot

    tables = {name: str(folder / f"{name}.parquet") for name in ("transactions", "interactions", "customers")}
    write_snapshots(tables, cutoffs(folder, 12), FeaturesConfig(), target / "snapshots_12.parquet")
    frame, _ = compute_snapshot(tables, cutoffs(folder, 1)[0], FeaturesConfig())
    frame.to_parquet(target / "snapshot_one_date.parquet")


def outputs_of(code: Path, folder: Path, target: Path) -> dict[str, str]:
    """Every compared file written by the churnlens of ``code`` (a checkout), by name: its sha256."""
    from score_benchmark import MODEL, as_of

    environment = {**os.environ, "PYTHONPATH": str(code / "src")}
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--snapshots", str(folder), str(target)], check=True, env=environment)
    for reasons in REASONS:
        overlay = target / f"{reasons}.yaml"
        overlay.write_text(f"score:\n  reasons_for: {reasons}\n")
        output = target / f"scores_{reasons}" / "scores.parquet"
        subprocess.run([sys.executable, "-m", "churnlens", "score", "--params", str(ROOT / "params.yaml"),
                        "--params", str(overlay), "--canonical-dir", str(folder), "--model", str(MODEL),
                        "--as-of", as_of(folder), "--output", str(output)],
                       check=True, env=environment, cwd=target, stdout=subprocess.DEVNULL)
    files = ["snapshots_12.parquet", "snapshot_one_date.parquet"]
    files += [f"scores_{r}/scores.{suffix}" for r in REASONS for suffix in ("parquet", "csv")]
    return {name: hashlib.sha256((target / name).read_bytes()).hexdigest() for name in files}


def main() -> None:
    parser = log_size_parser(__doc__)
    parser.set_defaults(customers=50_000, transactions=1_000_000)
    parser.add_argument("--baseline", help="git revision to compare with (e.g. a tag or commit)")
    parser.add_argument("--snapshots", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.snapshots:
        snapshots(Path(args.snapshots[0]), Path(args.snapshots[1]))
        return
    if not args.baseline:
        parser.error("--baseline is required")
    sizes = log_size_args(args)
    run_child(str(Path(__file__).with_name("score_benchmark.py")), *sizes, "--set-up")  # the log and the model
    folder = thinned_dir(args.customers, args.days, args.transactions)
    with tempfile.TemporaryDirectory(prefix="churnlens-baseline-") as scratch:
        baseline = Path(scratch) / "code"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(baseline), args.baseline],
                       check=True)
        try:
            before = outputs_of(baseline, folder, OUT / "same_bytes" / "baseline")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=True)
    after = outputs_of(ROOT, folder, OUT / "same_bytes" / "this_checkout")
    print(f"\n{args.transactions:,} transactions, {args.customers:,} customers: {args.baseline} against this checkout")
    differ = [name for name in before if before[name] != after[name]]
    for name in before:
        print(f"{'same' if name not in differ else 'DIFFERENT'}  {name}  {after[name][:16]}"
              + ("" if name not in differ else f" (baseline {before[name][:16]})"))
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
