"""The playbook fitted to the data: no action whose premise the customer's data lacks, a fallback
for every cell that presumes something, and config errors that say how to fix the playbook."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.config import PREMISE_NAMES, RISK_TIERS, ConfigError, parse_params
from churnlens.engines.duckdb import compute_snapshots
from churnlens.features import scoring_cutoff
from churnlens.playbook import PREMISES, actions_replaced, premises_shown
from churnlens.score import plan_actions, risk_tiers
from churnlens.segments import assign_segments
from churnlens.simulate import simulate
from conftest import small_params_dict


def _playbook(**cell: object) -> dict:
    raw = small_params_dict()
    raw["score"]["actions"]["brand_user"]["high"] = cell
    return raw


def test_an_action_with_a_premise_needs_a_fallback() -> None:
    raw = _playbook(action="renewal_concession", cost=30.0, success_rate=0.3, needs=["contract"])
    with pytest.raises(ConfigError, match=r"brand_user.*high.*'renewal_concession' needs \['contract'\] but has no "
                                          r"fallback: add fallback"):
        parse_params(raw)


def test_a_fallback_without_a_premise_is_refused_as_never_given() -> None:
    raw = _playbook(action="reward", cost=5.0, success_rate=0.1,
                    fallback={"action": "other", "cost": 1.0, "success_rate": 0.1})
    with pytest.raises(ConfigError, match=r"'reward' has a fallback but no `needs`"):
        parse_params(raw)


def test_a_fallback_presumes_nothing_and_premises_are_known_names() -> None:
    fallback_with_premise = _playbook(action="renewal", cost=30.0, success_rate=0.3, needs=["contract"],
                                      fallback={"action": "reward", "cost": 5.0, "success_rate": 0.1,
                                                "needs": ["survey"]})
    with pytest.raises(ConfigError, match=r"fallback\.needs"):
        parse_params(fallback_with_premise)
    with pytest.raises(ConfigError, match=r"needs"):
        parse_params(_playbook(action="renewal", cost=30.0, success_rate=0.3, needs=["loyalty_card"],
                               fallback={"action": "reward", "cost": 5.0, "success_rate": 0.1}))


def test_the_config_names_exactly_the_premises_the_playbook_can_read() -> None:
    assert set(PREMISES) == set(PREMISE_NAMES)


def test_premises_are_read_per_customer_from_their_features() -> None:
    features = pd.DataFrame({"days_to_contract_end": [12.0, np.nan, np.nan], "last_nps": [np.nan, 9.0, np.nan],
                             "mean_nps_365d": [np.nan, np.nan, 7.0]})
    shown = premises_shown(features)
    assert shown["contract"].tolist() == [True, False, False]
    assert shown["survey"].tolist() == [False, True, True]  # either survey feature shows an answer
    # A log without those tables has no such features: nothing holds.
    assert not premises_shown(pd.DataFrame(index=range(2))).to_numpy().any()


@pytest.fixture(scope="module")
def simulated():
    params = parse_params(small_params_dict(simulate={"n_customers": 500}))
    data = simulate(params.simulate)
    return params, data, scoring_cutoff(params.features, data.transactions["timestamp"].max())


@pytest.mark.parametrize("tables", [["transactions"], ["transactions", "interactions"],
                                    ["transactions", "customers"], ["transactions", "interactions", "customers"]],
                         ids=lambda tables: "+".join(tables))
def test_no_action_is_assigned_whose_premise_the_data_lacks(simulated, tables) -> None:
    params, data, cutoff = simulated
    frame, _ = compute_snapshots({name: getattr(data, name) for name in tables}, [cutoff], params.features,
                                 with_labels=False)
    assigned = assign_segments(frame, params.score.segments)
    # Every risk tier for every customer: each cell of the playbook is reached.
    rows = pd.concat([assigned.assign(risk_tier=tier) for tier in RISK_TIERS], ignore_index=True)
    features = pd.concat([frame] * len(RISK_TIERS), ignore_index=True)
    shown = premises_shown(features)
    plan = plan_actions(rows.assign(churn_probability=0.5, customer_value=100.0), params.score, shown)
    needs = {cell.action: cell.needs for tiers in params.score.actions.values() for cell in tiers.values()}
    for premise in PREMISES:
        presuming = plan["action"].map(lambda action, p=premise: p in needs.get(action, ())).to_numpy(dtype=bool)
        assert shown.loc[presuming, premise].all(), f"{premise} actions given to customers without {premise} data"
        source = {"contract": "customers", "survey": "interactions"}[premise]
        if source in tables:
            assert presuming.any(), f"with the {premise} data present some customer must get its action"
        else:
            assert not presuming.any()
    assert plan["action"].notna().all() and (plan["action"] != "").all()
    # Those sent to a fallback say which premise was missing, and the report counts them.
    fell_back = plan["action_premise_missing"] != ""
    report = actions_replaced(plan, params.score)
    assert sum(cell["customers"] for cell in report.values()) == fell_back.sum()
    if "customers" not in tables:
        assert report["brand_user.high"]["given_instead"] == "loyalty_concession_on_next_purchase"
        assert "customers table" in report["brand_user.high"]["why"]


def test_the_fallback_carries_its_own_cost_and_success_rate(simulated) -> None:
    params, _, _ = simulated
    rows = pd.DataFrame({"customer_id": ["with", "without"], "segment": ["brand_user"] * 2,
                         "risk_tier": ["high"] * 2, "churn_probability": [0.8, 0.8], "customer_value": [500.0] * 2})
    plan = plan_actions(rows, params.score, pd.DataFrame({"contract": [True, False], "survey": [False, False]}))
    cell = params.score.actions["brand_user"]["high"]
    assert plan["action"].tolist() == [cell.action, cell.fallback.action]
    assert plan["action_cost"].tolist() == [cell.cost, cell.fallback.cost]
    assert plan["priority"].tolist() == pytest.approx([0.8 * 500 * cell.success_rate - cell.cost,
                                                       0.8 * 500 * cell.fallback.success_rate - cell.fallback.cost])
    assert plan["action_premise_missing"].tolist() == ["", "contract"]
    assert risk_tiers([0.8], params.score).tolist() == ["high"]
