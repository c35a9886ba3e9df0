"""End to end on the real retail log, out of time: the pipeline's own commands on the log cut at C,
judged on what the customers did after C. Skips when the shared log is not beside the clone."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from conftest import PROJECT_ROOT
from test_reasons import assert_reads_like_crm_text

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
import realdata_benchmark as bench

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not bench.RETAIL_LOG.is_file(),
                       reason=f"the real retail log is not at {bench.RETAIL_LOG} (see ../shared/data/README.md)"),
]


def test_model_beats_recency_and_logistic_rfm_out_of_time_on_the_real_log(tmp_path) -> None:
    date = pd.Timestamp(bench.FIRST_YEAR_DATES[-1])
    case = bench.retail_case()
    scores = bench.run_pipeline(case, date, tmp_path)
    truth = bench.truth_at(bench.full_log(case, tmp_path / "full"), date)
    judged = scores[["customer_id", "churn_probability"]].merge(truth, on="customer_id")
    y = judged[bench.LABEL].to_numpy(dtype=int)
    probability = judged["churn_probability"].to_numpy(dtype=float)
    assert len(judged) > 2000 and 0.2 < y.mean() < 0.8
    assert np.all((probability > 0) & (probability < 1))  # never a certain 0 or 1
    baselines = bench.baseline_scores(case, date, tmp_path, judged["customer_id"])
    model = bench.scored_metrics(y, probability, True)
    for name in ("recency", "rfm_logistic"):
        assert model["roc_auc"] > bench.scored_metrics(y, baselines[name], name != "recency")["roc_auc"], name
    # What a CRM analyst reads on this real log: plain reasons (a sample of every risk tier) and no
    # action whose premise the log lacks (it has no customers table, hence no contracts, and no surveys).
    sample = pd.concat([rows.sample(min(len(rows), 300), random_state=0) for _, rows in scores.groupby("risk_tier")])
    for text in sample["top_reasons"]:
        assert_reads_like_crm_text(text)
    assert set(scores["segment_evidence"]) == {"lines"}
    params = bench.load_params(bench.ROOT / "params.yaml", *case.overlays)
    presuming = {cell.action for tiers in params.score.actions.values() for cell in tiers.values() if cell.needs}
    assert presuming and not set(scores["action"]) & presuming
    assert (scores.loc[scores["action_premise_missing"] != "", "segment"] != "insufficient_history").all()
