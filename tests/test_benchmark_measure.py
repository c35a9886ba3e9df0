"""The benchmarks' peak-RSS figures: a child's figure counts only where the launcher's own peak
cannot be hiding it (Linux starts a spawned child's ru_maxrss at the launcher's high-water mark)."""

from __future__ import annotations

import sys

from conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
import measure


def test_a_child_smaller_than_the_launcher_reports_a_bound_not_its_own_peak() -> None:
    # This test process has imported pandas, pytest and more: far above a bare interpreter.
    tiny = measure.measure("bare interpreter", "-c", "pass")

    assert tiny.peak_is_bound
    assert tiny.peak_text().startswith("<= ")


def test_a_child_larger_than_the_launcher_reports_its_own_peak() -> None:
    extra_mb = 300
    target_mb = measure.own_peak_mb() + extra_mb
    code = f"block = bytearray({int(target_mb * 2**20)}); block[::4096] = b'x' * len(block[::4096])"

    big = measure.measure("allocates", "-c", code)

    assert not big.peak_is_bound
    assert big.peak_rss_mb >= target_mb
    assert not big.peak_text().startswith("<=")


def test_the_median_of_runs_takes_the_largest_peak_and_whether_it_was_a_bound() -> None:
    bound_on_top = [measure.Measurement("job", 2.0, 900.0), measure.Measurement("job", 1.0, 1200.0, peak_is_bound=True),
                    measure.Measurement("job", 3.0, 800.0)]
    own_on_top = [measure.Measurement("job", 2.0, 1500.0), measure.Measurement("job", 1.0, 1200.0, peak_is_bound=True),
                  measure.Measurement("job", 3.0, 800.0)]

    assert measure.median(bound_on_top) == measure.Measurement("job", 2.0, 1200.0, peak_is_bound=True)
    assert measure.median(own_on_top) == measure.Measurement("job", 2.0, 1500.0, peak_is_bound=False)
