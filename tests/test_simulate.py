from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.simulate import simulate, worker_count
from conftest import tiny_config


@pytest.fixture(scope="module")
def data():
    return simulate(tiny_config(n_customers=1500, n_days=540, customers_per_chunk=500))


def test_same_seed_same_data_and_other_seed_differs() -> None:
    first, second = simulate(tiny_config(seed=3)), simulate(tiny_config(seed=3))
    for name in ("transactions", "interactions", "customers", "ground_truth"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    other = simulate(tiny_config(seed=4))
    assert not first.transactions["amount"].equals(other.transactions["amount"])


def test_chunks_in_worker_processes_give_the_same_data_as_in_one() -> None:
    config = tiny_config(n_customers=1500, n_days=540, customers_per_chunk=500)
    in_workers, in_one = simulate(config, workers=3), simulate(config)
    assert worker_count(config) == 1  # data this small is quicker in-process than a worker's start-up
    for name in ("transactions", "interactions", "customers", "ground_truth"):
        pd.testing.assert_frame_equal(getattr(in_workers, name), getattr(in_one, name))
    # Order ids continue from chunk to chunk: no order is shared by two customers.
    assert in_workers.transactions.groupby("order_id")["customer_id"].nunique().max() == 1


def test_persona_shares_follow_config(data) -> None:
    shares = data.ground_truth["persona"].value_counts(normalize=True)
    assert shares["brand_advocate"] == pytest.approx(0.25, abs=0.04)
    assert shares["brand_user"] == pytest.approx(0.30, abs=0.04)
    assert shares["brand_comparer"] == pytest.approx(0.45, abs=0.04)


def test_custom_shares_are_respected() -> None:
    truth = simulate(tiny_config(persona_shares={"brand_advocate": 0.0, "brand_user": 0.2,
                                                 "brand_comparer": 0.8})).ground_truth
    assert "brand_advocate" not in set(truth["persona"])
    assert truth["persona"].eq("brand_comparer").mean() == pytest.approx(0.8, abs=0.07)


def test_ground_truth_is_a_separate_table(data) -> None:
    assert "persona" not in data.customers and "churn_date" not in data.customers
    assert "persona" not in data.transactions and "persona" not in data.interactions


def test_nobody_buys_after_churning(data) -> None:
    last = data.transactions[~(data.transactions["quantity"] < 0)].groupby("customer_id")["timestamp"].max()
    churn = data.ground_truth.set_index("customer_id")["churn_date"].dropna()
    both = pd.concat([last, churn], axis=1, join="inner")
    assert len(both) > 100
    assert (both["timestamp"] < both["churn_date"]).all()


def _rates(events: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per churner: events per day in the latent period and in the 180 days before it."""
    merged = events.merge(truth.dropna(subset=["churn_date"]), on="customer_id")
    latent = merged["timestamp"].between(merged["latent_start_date"], merged["churn_date"])
    before = merged["timestamp"].between(merged["latent_start_date"] - pd.Timedelta(days=180),
                                         merged["latent_start_date"], inclusive="left")
    return pd.DataFrame({"latent": latent, "before": before, "customer_id": merged["customer_id"]})


def test_churners_go_through_a_latent_switching_period(data) -> None:
    truth = data.ground_truth.dropna(subset=["churn_date"]).merge(data.customers[["customer_id", "signup_date"]])
    start = data.transactions["timestamp"].min()
    # Churners who were customers, observed, for the whole 180 days before their latent period.
    window_start = truth["latent_start_date"] - pd.Timedelta(days=180)
    eligible = truth[(window_start >= start) & (window_start >= truth["signup_date"])].drop(columns="signup_date")
    days_latent = (eligible["churn_date"] - eligible["latent_start_date"]).dt.days.sum()
    days_before = 180 * len(eligible)
    assert len(eligible) > 50

    purchases = data.transactions[data.transactions["quantity"] > 0].drop_duplicates("order_id")
    flags = _rates(purchases[purchases["customer_id"].isin(eligible["customer_id"])], eligible)
    purchase_rate_latent, purchase_rate_before = flags["latent"].sum() / days_latent, flags["before"].sum() / days_before
    assert purchase_rate_latent < 0.75 * purchase_rate_before  # gaps lengthen

    complaints = data.interactions[data.interactions["type"] == "complaint"]
    flags = _rates(complaints[complaints["customer_id"].isin(eligible["customer_id"])], eligible)
    assert flags["latent"].sum() / days_latent > 1.5 * flags["before"].sum() / days_before  # complaints rise

    lines = data.transactions[data.transactions["quantity"] > 0]
    lines = lines.merge(eligible, on="customer_id")
    discounted = lines["unit_price"] < lines["list_price"]
    in_latent = lines["timestamp"] >= lines["latent_start_date"]
    assert discounted[in_latent].mean() > discounted[~in_latent].mean() + 0.05  # discount chasing rises


def test_brand_users_leave_mostly_at_contract_renewal(data) -> None:
    truth = data.ground_truth.merge(data.customers, on="customer_id")
    users = truth[(truth["persona"] == "brand_user") & (truth["contract_type"] == "annual")].dropna(
        subset=["churn_date"])
    days_after_signup = (users["churn_date"] - users["signup_date"]).dt.days
    at_renewal = (days_after_signup % 365 == 0).mean()
    assert len(users) > 20 and at_renewal > 0.6


def test_comparers_churn_most(data) -> None:
    churn_rate = data.ground_truth.assign(churned=lambda t: t["churn_date"].notna()).groupby("persona")["churned"].mean()
    assert churn_rate["brand_comparer"] > churn_rate["brand_user"] > churn_rate["brand_advocate"]


def test_returns_are_negative_lines_of_real_orders(data) -> None:
    returns = data.transactions[data.transactions["quantity"] < 0]
    assert len(returns) > 0 and (returns["amount"] < 0).all()
    assert returns["order_id"].isin(data.transactions.loc[data.transactions["quantity"] > 0, "order_id"]).all()
    assert np.isclose(data.transactions["amount"], data.transactions["quantity"] * data.transactions["unit_price"],
                      atol=0.011).all()
