"""The CSV copies people import (scores for a CRM, the evaluation curves): every value read back as
written, text with commas, quotes and line breaks included; the same bytes each time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnlens import io


def awkward_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": pd.array(["C1", "C,2", 'C"3', None], dtype="string"),
        "as_of": pd.to_datetime(["2024-12-31 00:00:00", "2024-12-31 00:00:00", "2025-01-01 12:30:15.250",
                                 "2024-06-30 23:59:59"], format="ISO8601").tz_localize("UTC"),
        "churn_probability": [0.9872, 1e-7, 123456789.125, np.nan],
        "top_reasons": pd.array(["no purchase for 63 days, 12.0x their usual gap", "said \"too dear\"\non the phone",
                                 "", None], dtype="string"),
        "in_campaign": [True, False, True, False],
        "action_cost": [30.0, 0.0, -2.5, 7.0],
        "orders": [1, 2, 3, 4],
    })


def test_the_csv_reads_back_as_the_frame_that_was_written(tmp_path) -> None:
    frame = awkward_frame()

    io.write_csv(frame, tmp_path / "scores.csv")
    back = pd.read_csv(tmp_path / "scores.csv", dtype={"customer_id": "string", "top_reasons": "string"},
                       keep_default_na=False, na_values={"churn_probability": [""], "customer_id": [""]})

    assert list(back.columns) == list(frame.columns)
    assert back["customer_id"].tolist()[:3] == ["C1", "C,2", 'C"3'] and back["customer_id"].isna().iloc[3]
    # Missing text and empty text are both an empty field in CSV: the reasons read back as "".
    assert back["top_reasons"].tolist() == [*frame["top_reasons"].tolist()[:3], ""]
    assert back["churn_probability"].tolist()[:3] == frame["churn_probability"].tolist()[:3]  # exact, not rounded
    assert back["churn_probability"].isna().iloc[3]
    pd.testing.assert_series_equal(pd.to_datetime(back["as_of"], format="ISO8601"), frame["as_of"], check_dtype=False)
    assert back["in_campaign"].tolist() == frame["in_campaign"].tolist()
    assert back["action_cost"].tolist() == frame["action_cost"].tolist()
    assert back["orders"].tolist() == frame["orders"].tolist()


def test_the_same_frame_gives_the_same_bytes(tmp_path) -> None:
    io.write_csv(awkward_frame(), tmp_path / "a.csv")
    io.write_csv(awkward_frame(), tmp_path / "b.csv")

    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
