"""Per-customer running aggregates of events, read at a fixed set of instants, in numpy.

This is the engine room of the feature sweep. Every windowed feature of every cutoff is a
difference of two running totals ("everything up to ``c``" minus "everything up to ``c - w``"),
so the only primitive needed is *the running total of a measure per customer as of an instant*,
for a few dozen instants at once. With the instants sorted, an event at time ``t`` lands in the
first instant ``>= t``; a scatter-add (``bincount``) into a dense customers x instants array and
one cumulative sum along the instants give every running total. The work is one pass over the
events plus customers x instants, however many cutoffs there are, and no sort of the events.

Times are int64 microseconds since the epoch; customers are dense integer codes ``0..n-1``.
The boundary rule matches :mod:`churnlens.features`: an event at exactly an instant counts as
up to (and including) that instant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_TIME = np.iinfo(np.int64).min  # "no event yet" in a running maximum of times


@dataclass(frozen=True)
class TimeGrid:
    """Sorted, distinct instants at which running aggregates are read, for ``n_customers``."""

    instants: np.ndarray  # int64 microseconds, strictly increasing
    n_customers: int

    @classmethod
    def of(cls, instants: np.ndarray, n_customers: int) -> TimeGrid:
        return cls(np.unique(np.asarray(instants, dtype=np.int64)), int(n_customers))

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_customers, len(self.instants)

    def position(self, instants: np.ndarray) -> np.ndarray:
        """Index of each of ``instants`` in the grid (they must be grid instants)."""
        at = np.searchsorted(self.instants, instants)
        if np.any(at >= len(self.instants)) or np.any(self.instants[np.minimum(at, len(self.instants) - 1)]
                                                        != instants):
            raise ValueError("internal: an instant was read that is not on the time grid")
        return at

    def cells(self, codes: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat cell of each event (customer x first instant at or after it) and which events
        land on the grid at all: events after the last instant are never read."""
        slot = np.searchsorted(self.instants, times, side="left")
        on_grid = slot < len(self.instants)
        flat = codes[on_grid].astype(np.int64) * len(self.instants) + slot[on_grid]
        return flat, on_grid


class EventsOnGrid:
    """One table of events (customer code, time) placed on a :class:`TimeGrid` once, then any
    number of measures of those events aggregated as running totals / maxima / latest values."""

    def __init__(self, grid: TimeGrid, codes: np.ndarray, times: np.ndarray):
        self.grid = grid
        self.flat, self.on_grid = grid.cells(np.asarray(codes), np.asarray(times, dtype=np.int64))

    def running_sum(self, values: np.ndarray | None = None) -> np.ndarray:
        """customers x instants: sum of ``values`` (1 per event if None) over events <= instant.
        Missing values (NaN) count as 0, like SQL's sum."""
        weights = None if values is None else np.nan_to_num(np.asarray(values, dtype=np.float64)[self.on_grid])
        dense = np.bincount(self.flat, weights=weights, minlength=self.grid.shape[0] * self.grid.shape[1])
        dense = dense.astype(np.float64, copy=False).reshape(self.grid.shape)
        return np.cumsum(dense, axis=1, out=dense)

    def running_max(self, values: np.ndarray) -> np.ndarray:
        """customers x instants: maximum of int64 ``values`` over events <= instant (NO_TIME if none)."""
        dense = np.full(self.grid.shape[0] * self.grid.shape[1], NO_TIME, dtype=np.int64)
        np.maximum.at(dense, self.flat, np.asarray(values, dtype=np.int64)[self.on_grid])
        dense = dense.reshape(self.grid.shape)
        return np.maximum.accumulate(dense, axis=1, out=dense)

    def latest(self, times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """customers x instants: time and value of the latest event <= instant (NO_TIME / NaN if
        none). Events at the same instant resolve to the largest value, so the result never
        depends on row order."""
        times = np.asarray(times, dtype=np.int64)[self.on_grid]
        values = np.asarray(values, dtype=np.float64)[self.on_grid]
        size = self.grid.shape[0] * self.grid.shape[1]
        cell_time = np.full(size, NO_TIME, dtype=np.int64)
        np.maximum.at(cell_time, self.flat, times)
        latest_in_cell = times == cell_time[self.flat]
        cell_value = np.full(size, np.nan)
        np.fmax.at(cell_value, self.flat[latest_in_cell], values[latest_in_cell])  # fmax skips NaN
        cell_time, cell_value = cell_time.reshape(self.grid.shape), cell_value.reshape(self.grid.shape)
        # Carry the last filled cell forward along the instants: each cell reads the latest one <= it.
        filled = np.where(cell_time != NO_TIME, np.arange(self.grid.shape[1]), 0)
        source = np.maximum.accumulate(filled, axis=1)
        rows = np.arange(self.grid.shape[0])[:, None]
        return cell_time[rows, source], cell_value[rows, source]


def distinct_in_window(codes: np.ndarray, keys: np.ndarray, times: np.ndarray, cutoffs: np.ndarray,
                       window_us: int, n_customers: int) -> np.ndarray:
    """customers x cutoffs: how many distinct ``keys`` each customer has events of in
    ``(cutoff - window, cutoff]``.

    An event at ``t`` is inside the window of every cutoff ``c`` with ``t <= c < t + window``: a
    contiguous run of cutoff indices. Each (customer, key) pair ORs the runs of its events into a
    bit mask, and the count at a cutoff is the number of pairs with that bit set. Cutoffs are
    processed 62 at a time so the masks fit in an int64.
    """
    cutoffs = np.asarray(cutoffs, dtype=np.int64)
    times = np.asarray(times, dtype=np.int64)
    counts = np.zeros((n_customers, len(cutoffs)))
    if len(times) == 0:
        return counts
    pairs, pair_of_event = np.unique(np.asarray(codes, dtype=np.int64) * (int(keys.max()) + 1) + keys,
                                     return_inverse=True)
    pair_customer = pairs // (int(keys.max()) + 1)
    for start in range(0, len(cutoffs), 62):
        chunk = cutoffs[start:start + 62]
        first = np.searchsorted(chunk, times, side="left")  # first cutoff >= t
        last = np.searchsorted(chunk, times + window_us, side="left") - 1  # last cutoff < t + window
        covered = last >= first
        runs = np.zeros(len(times), dtype=np.int64)
        runs[covered] = ((np.int64(1) << (last[covered] + 1)) - (np.int64(1) << first[covered]))
        masks = np.zeros(len(pairs), dtype=np.int64)
        np.bitwise_or.at(masks, pair_of_event, runs)
        for bit in range(len(chunk)):
            counts[:, start + bit] = np.bincount(pair_customer, weights=(masks >> bit) & 1, minlength=n_customers)
    return counts
