"""The equality checks every Spark engine test makes against the single-machine engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def assert_same_frames(duckdb_frame: pd.DataFrame, spark_frame: pd.DataFrame, key: list[str]) -> None:
    """Every column of every row equal, floats within a relative 1e-9 (summation order differs)."""
    left = duckdb_frame.sort_values(key).reset_index(drop=True)
    right = spark_frame.sort_values(key).reset_index(drop=True)
    assert list(left.columns) == list(right.columns)
    assert len(left) == len(right) > 0
    for column in left.columns:
        if pd.api.types.is_float_dtype(left[column]):
            a, b = left[column].to_numpy(float), right[column].to_numpy(float)
            assert np.array_equal(np.isnan(a), np.isnan(b)), column
            assert np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True), column
        else:
            same = left[column].astype("string").fillna("<NA>") == right[column].astype("string").fillna("<NA>")
            assert same.all(), f"{column}: {left.loc[~same, column].head(3).tolist()} != " \
                               f"{right.loc[~same, column].head(3).tolist()}"


def assert_same_scores(single: pd.DataFrame, spark_output: Path) -> None:
    """The scores Spark wrote (a Parquet folder) equal the single-machine job's, column by column."""
    on_spark = pd.read_parquet(spark_output)
    # Spark writes a TIMESTAMP (an instant, in its UTC session) that pandas reads back naive.
    as_of = on_spark["as_of"]
    if as_of.dt.tz is None:
        as_of = as_of.dt.tz_localize("UTC")
    on_spark["as_of"] = as_of.astype(single["as_of"].dtype)
    assert_same_frames(single, on_spark[single.columns], ["customer_id"])
