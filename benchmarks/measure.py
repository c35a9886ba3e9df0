"""Run a command in a child process and report its wall time and peak resident memory."""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    name: str
    seconds: float
    peak_rss_mb: float
    # True when the child's own peak is hidden: the figure is this process's own peak, an upper bound.
    peak_is_bound: bool = False

    def peak_text(self, unit_mb: float = 1.0, digits: int = 0) -> str:
        return f"{'<= ' if self.peak_is_bound else ''}{self.peak_rss_mb / unit_mb:,.{digits}f}"


def own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def measure(name: str, *args: str) -> Measurement:
    """``python -c``-free: runs ``sys.executable <args>`` and waits with wait4 for its own rusage.

    Linux starts a child's ru_maxrss at the memory high-water mark of the process that launched
    it (subprocess spawns with vfork + exec, and exec keeps the old address space's peak), so a
    child's figure is its own only where it exceeds this process's peak. Keep this process lean
    (heavy set-up in a child: :func:`run_child`); a figure at or below its peak is marked as a bound."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *args])
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed with exit code {os.waitstatus_to_exitcode(status)}")
    peak = usage.ru_maxrss / 1024
    # This process's peak only grows, so read after the child it covers the mark the child started from.
    return Measurement(name, seconds, peak, peak_is_bound=peak <= own_peak_mb())


def run_child(*args: str) -> None:
    """``sys.executable <args>`` for set-up work (simulating, training), so its memory never
    becomes this process's peak and with it every measured child's (see :func:`measure`)."""
    if subprocess.run([sys.executable, *args]).returncode != 0:
        raise SystemExit(f"set-up step {' '.join(args)} failed")


def table(rows: list[Measurement], baseline: str, work: dict[str, float] | None = None, unit: str = "rows") -> str:
    base = next(r for r in rows if r.name == baseline)
    lines = [f"| run | seconds | x faster than {baseline} | peak RSS (MB) | {unit}/s |", "|---|---|---|---|---|"]
    for r in rows:
        rate = f"{(work or {}).get(r.name, 0) / r.seconds:,.0f}" if work and r.name in work else ""
        lines.append(f"| {r.name} | {r.seconds:.1f} | {base.seconds / r.seconds:.2f} | {r.peak_text()} | {rate} |")
    return "\n".join(lines)


def alternating(contenders: dict[str, list[str]], repeats: int) -> list[list[Measurement]]:
    """Each contender ``repeats`` times, taking turns (A, B, C, A, B, C, ...), so a shared
    machine's load drifts over all of them alike. Returns the runs per contender, in order."""
    runs: dict[str, list[Measurement]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, args in contenders.items():
            runs[name].append(measure(name, *args))
    return list(runs.values())


def median(runs: list[Measurement]) -> Measurement:
    """The median wall time of one contender's runs, with the largest peak RSS among them (a bound
    if that run's figure was one)."""
    seconds = sorted(r.seconds for r in runs)[len(runs) // 2]
    top = max(runs, key=lambda r: (r.peak_rss_mb, r.peak_is_bound))
    return Measurement(runs[0].name, seconds, top.peak_rss_mb, top.peak_is_bound)


def ratio_line(slow: list[Measurement], fast: list[Measurement], target: str = "") -> str:
    """``slow / fast`` as the ratio of medians and the range of per-repeat ratios (the runs were
    alternated, so repeat k of each ran under about the same load)."""
    pairs = [s.seconds / f.seconds for s, f in zip(slow, fast, strict=True)]
    return (f"{slow[0].name} / {fast[0].name}: {median(slow).seconds / median(fast).seconds:.2f}x "
            f"(per repeat {min(pairs):.2f}..{max(pairs):.2f}){'; ' + target if target else ''}")


def log_size_parser(description: str | None) -> argparse.ArgumentParser:
    """The options both the features and the score benchmark take: the size of the generated log and
    how many alternating repeats to run."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def log_size_args(args: argparse.Namespace) -> list[str]:
    """The log-size options of :func:`log_size_parser` as given, for a child run on the same log."""
    return ["--customers", str(args.customers), "--days", str(args.days), "--transactions", str(args.transactions)]
