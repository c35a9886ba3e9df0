"""Spark at scale on one machine: 10M (or 100M) transactions, features for 12 cutoffs and scoring.

    python benchmarks/spark_scale_benchmark.py --transactions 10000000 [--master local[2]]

Generates the simulated data set once into benchmarks/out/scale_<n>/, one chunk of 10k customers
at a time appended to Parquet (never the whole log in memory), then runs, each in its own process
and alternating engines:

* features, 12 monthly cutoffs with labels, by DuckDB then by Spark;
* the scoring job for one as-of date (the model of score_benchmark.py, trained if missing), by
  DuckDB then by Spark.

Spark runs on a local master with the settings churnlens sets for a session it starts (see
docs/spark.md): shuffle partitions a small multiple of the cores, as one sizes them on a cluster
(Spark's default 200 is sized for a cluster of many cores: at 300k transactions on 2 cores the
feature job ran 2,000 tasks and had not finished after 12 minutes). Reported per
run: wall time, CPU seconds of the process tree, the load average, peak RSS of the Python driver
and of the JVM (in local mode the JVM is driver and executors), and for Spark the shuffle bytes
written, the bytes spilled, the CPU time of the tasks and the time of each Spark action by the
line of churnlens that started it (the rest is driver-side Python: planning, the BTYD fits, model
loading, reports). ``--repeats 2`` runs the four jobs twice in turns and prints Spark / DuckDB as
a ratio of medians with the per-repeat range. ``--generate-only`` writes the log and stops.
On a shared machine compare CPU seconds: wall time mostly measures the other jobs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines_benchmark import cutoffs
from features_benchmark import OUT

TRANSACTIONS_PER_CUSTOMER = 55  # the default simulation: ~1.1M lines for 20k customers over two years
CHUNK_CUSTOMERS = 10_000


def data_dir(transactions: int) -> Path:
    return OUT / f"scale_{transactions}"


def generate(transactions: int) -> Path:
    """The canonical tables for about ``transactions`` lines, written chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from churnlens.config import SimulateConfig
    from churnlens.simulate import simulate_chunks

    folder = data_dir(transactions)
    done = folder / "counts.json"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = SimulateConfig(seed=1, n_customers=math.ceil(transactions / TRANSACTIONS_PER_CUSTOMER),
                            customers_per_chunk=CHUNK_CUSTOMERS)
    writers: dict[str, pq.ParquetWriter] = {}
    counts: dict[str, int] = defaultdict(int)
    try:
        for chunk in simulate_chunks(config):
            lines = chunk.transactions.assign(
                order_id=lambda f: "O" + f["order_id"].astype(str), is_return=lambda f: f["quantity"] < 0)
            for name, frame in (("transactions", lines), ("interactions", chunk.interactions),
                                ("customers", chunk.customers)):
                if name not in writers:
                    schema = pa.Schema.from_pandas(frame, preserve_index=False)
                    writers[name] = pq.ParquetWriter(folder / f"{name}.parquet", schema)
                writers[name].write_table(pa.Table.from_pandas(frame, schema=writers[name].schema,
                                                               preserve_index=False))
                counts[name] += len(frame)
    finally:
        for writer in writers.values():
            writer.close()
    done.write_text(json.dumps(counts))
    return folder


def spark_stats(session, ui_path: Path) -> dict:
    """Shuffle and spill bytes, and job time grouped by call site, from Spark's monitoring API;
    the raw records of every stage and SQL execution (with plans) go to ``ui_path``."""
    app = f"{session.sparkContext.uiWebUrl}/api/v1/applications/{session.sparkContext.applicationId}"

    def get(path: str) -> list[dict]:
        with urllib.request.urlopen(f"{app}/{path}", timeout=60) as response:
            return json.load(response)

    stages = get("stages?status=complete")
    # The raw per-stage and per-query records (plans included), to see which exchange shuffles what.
    ui_path.write_text(
        json.dumps({"stages": stages, "sql": get("sql?details=true&planDescription=true")}, indent=1))
    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for job in get("jobs"):
        if "completionTime" in job:
            start, end = (pd.Timestamp(job[k].replace("GMT", "Z")).timestamp()
                          for k in ("submissionTime", "completionTime"))
            intervals[call_site(job["name"])].append((start, end))
    busy = {site: covered_seconds(spans) for site, spans in intervals.items()}
    # A SQL execution gathers the jobs adaptive execution starts for one action (their own
    # names point into Spark, not at churnlens), so its description says which action it was.
    queries: dict[str, float] = defaultdict(float)
    for query in get("sql?details=false"):
        queries[call_site(query["description"])] += query["duration"] / 1000
    return {"seconds_by_action": dict(sorted(queries.items(), key=lambda kv: -kv[1])),
            "shuffle_write_bytes": sum(s["shuffleWriteBytes"] for s in stages),
            # CPU time of the tasks: what a shared machine's load inflates least
            "task_cpu_seconds": sum(s["executorCpuTime"] for s in stages) / 1e9,
            "spilled_disk_bytes": sum(s["diskBytesSpilled"] for s in stages),
            "spilled_memory_bytes": sum(s["memoryBytesSpilled"] for s in stages),
            "spark_busy_seconds": covered_seconds([span for spans in intervals.values() for span in spans]),
            "job_seconds_by_call_site": dict(sorted(busy.items(), key=lambda kv: -kv[1]))}


def call_site(job_name: str) -> str:
    """``toPandas at /somewhere/churnlens/spark.py:170`` as ``toPandas at spark.py:170``."""
    action, _, where = job_name.partition(" at ")
    return f"{action} at {Path(where).name}" if where else action


def covered_seconds(spans: list[tuple[float, float]]) -> float:
    """Wall time covered by possibly overlapping intervals (adaptive execution runs jobs at once)."""
    total, reached = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total


def run(kind: str, engine: str, folder: Path, master: str, driver_memory: str, stats_path: Path) -> None:
    from churnlens.config import load_params

    params = load_params(Path("params.yaml"))
    params = params.model_copy(update={"engine": params.engine.model_copy(
        update={"name": engine, "spark_master": master, "spark_driver_memory": driver_memory})})
    tables = {n: str(folder / f"{n}.parquet") for n in ("transactions", "interactions", "customers")}
    target = OUT / f"scale_{kind}_{engine}"
    session = None
    if engine == "spark":
        from churnlens.engines import spark

        session = spark.session(master, driver_memory)
    started = time.perf_counter()
    if kind == "features" and engine == "duckdb":
        from churnlens.engines.duckdb import write_snapshots

        write_snapshots(tables, cutoffs(folder), params.features, target.with_suffix(".parquet"))
    elif kind == "features":
        spark.write_snapshots(session, spark.read_tables(session, tables), cutoffs(folder), params.features,
                              str(target.with_suffix(".parquet")), None)
    else:
        from score_benchmark import MODEL

        from churnlens.score import ScoreJob
        from churnlens.stages import run_score

        as_of = cutoffs(folder)[-1] + pd.Timedelta(days=91)
        run_score(ScoreJob(params, folder, str(MODEL), target / "scores.parquet", target / "report.json", as_of=as_of))
    stats = {"seconds_in_job": time.perf_counter() - started}
    if session is not None:
        stats.update(spark_stats(session, stats_path.with_name(f"{stats_path.stem}_ui.json")))
        session.stop()
    stats_path.write_text(json.dumps(stats, indent=1))


def measure_tree(name: str, args: list[str]) -> dict:
    """Wall time and peak RSS of a child process and of the JVM it starts, sampled every 0.2 s."""
    import psutil

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    child = subprocess.Popen([sys.executable, *args])
    parent = psutil.Process(child.pid)
    peak = {"python_mb": 0.0, "jvm_mb": 0.0, "tree_mb": 0.0}
    cpu: dict[int, float] = {}  # CPU seconds per process of the tree, as last seen
    while child.poll() is None:
        try:
            processes = [parent, *parent.children(recursive=True)]
            rss = {p.pid: p.memory_info().rss / 2**20 for p in processes}
            names = {p.pid: p.name() for p in processes}
            cpu.update({p.pid: sum(p.cpu_times()[:2]) for p in processes})
        except psutil.Error:
            continue
        peak["python_mb"] = max(peak["python_mb"], rss.get(child.pid, 0.0))
        peak["jvm_mb"] = max(peak["jvm_mb"], sum(v for pid, v in rss.items() if names[pid] == "java"))
        peak["tree_mb"] = max(peak["tree_mb"], sum(rss.values()))
        time.sleep(0.2)
    if child.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {child.returncode}")
    return {"name": name, "seconds": time.perf_counter() - started, **peak, "cpu_seconds": sum(cpu.values()),
            "load": f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"}


def spark_to_duckdb(rows: list[dict]) -> list[str]:
    """Spark / DuckDB per job, from runs that alternated engines (repeat k of each ran under
    about the same load)."""
    from measure import Measurement, ratio_line

    lines = []
    for kind in ("features", "score"):
        spark, duckdb = ([Measurement(r["name"], r["seconds"], r["python_mb"]) for r in rows
                          if r["name"] == f"{kind}, {engine}"] for engine in ("spark", "duckdb"))
        if spark and len(spark) == len(duckdb):
            lines.append(ratio_line(spark, duckdb))
    return lines


def report(rows: list[dict], counts: dict, master: str) -> str:
    lines = [f"{counts['transactions']:,} transactions, {counts['customers']:,} customers, 12 cutoffs; "
             f"Spark master {master}; {os.cpu_count()} cores; load average (1 min) at the start and end of each run", "",
             "| run | seconds | peak RSS Python driver (MB) | peak RSS JVM (MB) | shuffle written (MB) | spilled to disk (MB) "
             "| CPU s | load |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        stats = row.get("stats", {})
        shuffle = f"{stats['shuffle_write_bytes'] / 2**20:,.0f}" if "shuffle_write_bytes" in stats else ""
        spill = f"{stats['spilled_disk_bytes'] / 2**20:,.0f}" if "spilled_disk_bytes" in stats else ""
        lines.append(f"| {row['name']} | {row['seconds']:.1f} | {row['python_mb']:,.0f} | {row['jvm_mb']:,.0f} | "
                     f"{shuffle} | {spill} | {row['cpu_seconds']:,.0f} | {row['load']} |")
    for row in rows:
        actions = row.get("stats", {}).get("seconds_by_action")
        if not actions:
            continue
        lines += ["", f"{row['name']}: {row['stats']['seconds_in_job']:.1f} s in the job, of which Spark jobs ran "
                  f"{row['stats']['spark_busy_seconds']:.1f} s; the rest is driver-side Python", "",
                  "| Spark action (SQL execution) started at | seconds |", "|---|---|"]
        lines += [f"| {site} | {seconds:.1f} |" for site, seconds in actions.items()]
    return "\n".join([*lines, "", *spark_to_duckdb(rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--only", help="comma-separated runs, e.g. features:spark (default: all four)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the runs, taking turns")
    parser.add_argument("--generate-only", action="store_true", help="write the log and stop")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = generate(args.transactions)
    if args.generate_only:
        return
    if args.run:
        kind, engine = args.run.split(":")
        run(kind, engine, folder, args.master, args.driver_memory, OUT / f"scale_stats_{kind}_{engine}.json")
        return
    from score_benchmark import MODEL, train_model

    train_model(folder)
    assert (MODEL / "MLmodel").exists()
    runs = (args.only or "features:duckdb,features:spark,score:duckdb,score:spark").split(",")
    rows = []
    for name in runs * args.repeats:
        kind, engine = name.split(":")
        row = measure_tree(f"{kind}, {engine}", [__file__, "--transactions", str(args.transactions), "--master",
                                                 args.master, "--driver-memory", args.driver_memory, "--run", name])
        row["stats"] = json.loads((OUT / f"scale_stats_{kind}_{engine}.json").read_text())
        rows.append(row)
        print(json.dumps(row), flush=True)
    text = report(rows, json.loads((folder / "counts.json").read_text()), args.master)
    (OUT / f"spark_scale_{args.transactions}.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
