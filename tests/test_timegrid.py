"""The as-of kernels against brute force: each cell is recomputed from its definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnlens.engines.timegrid import NO_TIME, EventsOnGrid, TimeGrid, distinct_in_window

events = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.floats(-5, 5, allow_nan=False)),
                  max_size=60)
instant_sets = st.lists(st.integers(-2, 45), min_size=1, max_size=8, unique=True)


def _arrays(rows):
    codes = np.array([r[0] for r in rows], dtype=np.int64)
    times = np.array([r[1] for r in rows], dtype=np.int64)
    values = np.array([r[2] for r in rows], dtype=np.float64)
    return codes, times, values


@settings(max_examples=150, deadline=None)
@given(events, instant_sets)
def test_running_sum_and_max_equal_their_definitions(rows, instants) -> None:
    codes, times, values = _arrays(rows)
    grid = TimeGrid.of(np.array(instants), 4)
    on_grid = EventsOnGrid(grid, codes, times)
    sums, counts, latest = on_grid.running_sum(values), on_grid.running_sum(), on_grid.running_max(times)
    for customer in range(4):
        for j, instant in enumerate(grid.instants):
            seen = (codes == customer) & (times <= instant)  # an event at the instant is included
            assert sums[customer, j] == pytest.approx(values[seen].sum())
            assert counts[customer, j] == seen.sum()
            assert latest[customer, j] == (times[seen].max() if seen.any() else NO_TIME)


@settings(max_examples=150, deadline=None)
@given(events, instant_sets)
def test_latest_is_the_newest_event_and_ties_take_the_largest_value(rows, instants) -> None:
    codes, times, values = _arrays(rows)
    values[::3] = np.nan  # missing values never win over present ones at the same instant
    grid = TimeGrid.of(np.array(instants), 4)
    when, what = EventsOnGrid(grid, codes, times).latest(times, values)
    for customer in range(4):
        for j, instant in enumerate(grid.instants):
            seen = (codes == customer) & (times <= instant)
            if not seen.any():
                assert when[customer, j] == NO_TIME and np.isnan(what[customer, j])
                continue
            newest = times[seen].max()
            candidates = values[seen & (times == newest)]
            assert when[customer, j] == newest
            if np.isnan(candidates).all():
                assert np.isnan(what[customer, j])
            else:
                assert what[customer, j] == np.nanmax(candidates)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 200)), max_size=50),
       st.lists(st.integers(0, 220), min_size=1, max_size=70, unique=True), st.integers(1, 60))
def test_distinct_in_window_equals_its_definition(rows, cutoffs, window) -> None:
    """Up to 70 cutoffs, so the 62-cutoff bit-mask chunks are crossed too."""
    codes = np.array([r[0] for r in rows], dtype=np.int64)
    keys = np.array([r[1] for r in rows], dtype=np.int64)
    times = np.array([r[2] for r in rows], dtype=np.int64)
    cutoffs = np.array(sorted(cutoffs), dtype=np.int64)
    counts = distinct_in_window(codes, keys, times, cutoffs, window, 3)
    for customer in range(3):
        for i, cutoff in enumerate(cutoffs):
            inside = (codes == customer) & (times <= cutoff) & (times > cutoff - window)
            assert counts[customer, i] == len(set(keys[inside]))


def test_reading_off_the_grid_is_refused() -> None:
    grid = TimeGrid.of(np.array([10, 20]), 1)
    assert list(grid.position(np.array([20, 10]))) == [1, 0]
    with pytest.raises(ValueError, match="not on the time grid"):
        grid.position(np.array([15]))
