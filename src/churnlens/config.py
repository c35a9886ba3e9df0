"""Typed, validated parameters: ``params.yaml`` -> config objects -> function arguments.

Every stage loads the file once through :func:`load_params` and passes the relevant section
to pure functions. Unknown keys, wrong types and impossible values fail here, with the key
path and the expected value in the message, instead of deep inside a stage.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator,
                      field_validator, model_validator)

PERSONAS = ("brand_advocate", "brand_user", "brand_comparer")
SEGMENTS = (*PERSONAS, "insufficient_history")
RISK_TIERS = ("low", "medium", "high")


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


class ConfigError(ValueError):
    """A parameter file is missing, malformed or holds an invalid value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, raw: object) -> object:
        # pydantic reads `true` as 1 for an int field; in a params file that is always a slip.
        if isinstance(raw, dict):
            for name, info in cls.model_fields.items():
                if isinstance(raw.get(name), bool) and _is_number(info.annotation):
                    raise ValueError(f"{name}: expected a number, got {raw[name]!r} (a boolean)")
        return raw


def _is_number(annotation: object) -> bool:
    return annotation in (int, float) or any(a in (int, float) for a in getattr(annotation, "__args__", ()))


# A DuckDB memory size, as DuckDB reads it: GB = 1000^3 bytes, GiB = 1024^3.
MEMORY_SIZE = r"^(\d+(?:\.\d+)?)\s*([KMGT])(i?)B$"


def memory_bytes(size: str) -> int:
    """A memory size that matched :data:`MEMORY_SIZE` ('1GB', '512 MiB') in bytes."""
    number, unit, binary = re.fullmatch(MEMORY_SIZE, size.strip()).groups()
    return int(float(number) * (1024 if binary else 1000) ** ("KMGT".index(unit) + 1))


# --------------------------------------------------------------------------- simulate
class PersonaShares(_Section):
    brand_advocate: float = Field(0.25, ge=0, le=1)
    brand_user: float = Field(0.30, ge=0, le=1)
    brand_comparer: float = Field(0.45, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> PersonaShares:
        total = self.brand_advocate + self.brand_user + self.brand_comparer
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"persona shares must sum to 1.0, got {total:.4f}")
        return self


class MonthlyChurnHazard(_Section):
    """Baseline probability per 30 days that a customer of each persona starts to leave."""

    brand_advocate: float = Field(0.006, ge=0, le=1)
    brand_user: float = Field(0.004, ge=0, le=1)
    brand_comparer: float = Field(0.025, ge=0, le=1)


class Seasonality(_Section):
    """When in the calendar year the simulated customers buy. The default is a gift shop's mild
    pre-Christmas peak; ``seasonal_shopper_share`` > 0 makes some customers buy mostly before it,
    so a label window's churn rate depends on its season (a test bed for the seasonal features)."""

    peak_day_of_year: int = Field(340, ge=0, le=364, description="the peak's day of the calendar year (0 = 1 Jan)")
    peak_width_days: float = Field(15.0, gt=0, description="width of everyone's peak (a Gaussian's scale)")
    peak_uplift: float = Field(0.35, ge=0, description="everyone's buying rate at the peak is 1 + this")
    seasonal_shopper_share: float = Field(0.0, ge=0, le=1, description="share of customers who buy mostly in "
                                          "the weeks before the peak, rarely at other times")
    seasonal_shopper_width_days: float = Field(45.0, gt=0, description="width of their buying season")
    seasonal_shopper_purchases_per_year: float = Field(4.0, gt=0, description="their mean purchases a year")
    seasonal_shopper_off_season: float = Field(0.1, ge=0, le=1, description="their buying rate off season, "
                                               "relative to in season")


class SimulateConfig(_Section):
    seed: int = Field(42, ge=0)
    n_customers: int = Field(20_000, ge=10)
    start_date: dt.date = dt.date(2023, 1, 1)
    n_days: int = Field(730, ge=120, description="length of the observed period in days")
    persona_shares: PersonaShares = PersonaShares()
    monthly_churn_hazard: MonthlyChurnHazard = MonthlyChurnHazard()
    contract_end_churn_probability: float = Field(
        0.30, ge=0, le=1, description="chance a brand user leaves at a contract renewal"
    )
    price_shocks_per_year: float = Field(3.0, ge=0, description="competitor price moves comparers react to")
    price_shock_churn_probability: float = Field(0.08, ge=0, le=1)
    latent_period_days: tuple[int, int] = (30, 120)
    seasonality: Seasonality = Seasonality()
    customers_per_chunk: int = Field(5_000, ge=100, description="memory bound of the generator")
    tables: tuple[Literal["transactions", "interactions", "customers"], ...] = Field(
        ("transactions", "interactions", "customers"),
        description="tables written; a bare purchase log is [transactions] (set ingest.<table>: null for the rest)")
    campaign_effects: dict[Literal["brand_advocate", "brand_user", "brand_comparer"],
                           Annotated[float, Field(ge=0, le=1)]] = Field(
        {"brand_advocate": 0.3, "brand_user": 0.45, "brand_comparer": 0.15},
        description="simulate.with_campaign: per persona, the share of treated customers who would have churned "
        "in the label window that the action keeps (they buy in it), the playbook's success rate")

    @field_validator("tables")
    @classmethod
    def _with_transactions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "transactions" not in value or len(set(value)) != len(value):
            raise ValueError(f"expected distinct table names including transactions, got {list(value)}")
        return value

    @field_validator("latent_period_days")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low <= high:
            raise ValueError(f"expected [min, max] with 1 <= min <= max, got {list(value)}")
        return value


# --------------------------------------------------------------------------- ingest
class TableSource(_Section):
    """Where one raw table lives and how its columns map onto the canonical schema."""

    path: str = Field(description="file, directory or glob of CSV/Parquet files")
    format: Literal["auto", "csv", "parquet"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict, description="canonical name -> source column")
    csv: dict[str, str | int | bool] = Field(
        default_factory=dict, description="extra DuckDB read_csv options (delim, header, encoding, ...)"
    )
    timestamp_formats: tuple[str, ...] = Field(
        (), description="strptime formats tried in order; empty = ISO 8601 (with or without offset)"
    )
    decimal: Literal[".", ","] = "."
    source_timezone: str = Field("UTC", description="time zone of naive timestamps; output is UTC")
    return_order_prefix: str | None = Field(None, description="order ids starting with this mark a return")
    type_map: dict[str, str] = Field(default_factory=dict, description="raw interaction type -> canonical type")
    type_constant: str | None = Field(None, description="canonical type for every row (single-type sources)")
    true_values: tuple[str, ...] = Field(("true", "t", "yes", "y", "1"), description="text read as true (any case)")
    false_values: tuple[str, ...] = Field(("false", "f", "no", "n", "0"), description="text read as false")
    id_format: Literal["text", "integer_like"] = Field(
        "text", description="integer_like: '13000.0' -> '13000' (float exports); other non-integers are quarantined"
    )
    null_ids: tuple[str, ...] = Field(
        ("nan", "null", "none", "na", "n/a", "<na>", "nat", "-"),
        description="id texts meaning 'no id' (any case): quarantined as missing_customer_id",
    )
    deduplicate: Literal["auto", "rows", "none"] = Field(
        "auto", description="auto: drop exact duplicate rows only when an order id (transactions) or the "
        "customer id (customers) makes them the same record; rows: always; none: never"
    )

    @field_validator("source_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in _time_zones():
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'")
        return value


class TableSources(_Section):
    """Several exports of one table (e.g. one per year, with different headers): each is read and
    mapped with its own settings; a row of a later source identical in every canonical column to a
    row of an earlier one is the same record exported twice and is removed (docs/ingest.md)."""

    sources: tuple[TableSource, ...] = Field(description="the exports, earliest first; each a full TableSource")

    @model_validator(mode="before")
    @classmethod
    def _settings_inside_sources(cls, raw: object) -> object:
        beside = sorted(set(raw) & set(TableSource.model_fields)) if isinstance(raw, dict) else []
        if beside:
            raise ValueError(f"{beside} given beside `sources`: with several sources every setting belongs to "
                             "one source; move it into each source that needs it")
        return raw

    @field_validator("sources")
    @classmethod
    def _some_distinct_sources(cls, value: tuple[TableSource, ...]) -> tuple[TableSource, ...]:
        if not value:
            raise ValueError("an empty list of sources has no file to read; give at least one source "
                             "({path: ..., columns: ...}), or set an optional table to null")
        seen: dict[str, int] = {}
        for index, source in enumerate(value):
            if source.path in seen:
                # The second listing would be removed entirely as overlap: always a slip.
                raise ValueError(f"sources {seen[source.path]} and {index} have the same path {source.path!r}; "
                                 "list each export once")
            seen[source.path] = index
        return value


def _one_or_several(value: object, handler: ValidatorFunctionWrapHandler) -> TableSource | TableSources:
    # Chosen by shape, not tried in turn: a union would report every problem twice (once per
    # shape) under a key path that is not in the file.
    if isinstance(value, TableSources) or (isinstance(value, dict) and "sources" in value):
        return TableSources.model_validate(value)
    return TableSource.model_validate(value)


TableInput = Annotated[TableSource | TableSources, WrapValidator(_one_or_several)]


class IngestConfig(_Section):
    transactions: TableInput
    interactions: TableInput | None = None
    customers: TableInput | None = None
    max_quarantine_share: float = Field(0.2, ge=0, le=1)
    earliest_plausible_date: dt.date = dt.date(1990, 1, 1)
    latest_plausible_date: dt.date | None = Field(
        None, description="later timestamps are quarantined as 'in the future'; null = today (UTC)"
    )
    max_abs_amount: float = Field(1_000_000.0, gt=0)
    memory_limit: str = Field("2GB", pattern=MEMORY_SIZE, description="DuckDB memory cap; spills beyond")

    @model_validator(mode="after")
    def _plausible_range(self) -> IngestConfig:
        if self.latest_plausible_date is not None and self.latest_plausible_date <= self.earliest_plausible_date:
            raise ValueError(
                f"latest_plausible_date ({self.latest_plausible_date}) must be after earliest_plausible_date "
                f"({self.earliest_plausible_date}); every row would be quarantined"
            )
        return self


# --------------------------------------------------------------------------- features
class CutoffGrid(_Section):
    start: dt.date | None = Field(None, description="first cutoff; null = data start + min_history_days")
    end: dt.date | None = Field(None, description="last cutoff; null = data end")
    every_days: int = Field(30, ge=1)
    min_history_days: int = Field(180, ge=0)
    short_history_every_days: int | None = Field(
        None, ge=1, description="grid step while under a year of cutoffs can be labelled; null = every_days always"
    )


class FeaturesConfig(_Section):
    cutoffs: CutoffGrid = CutoffGrid()
    as_of: dt.date | None = Field(None, description="scoring date; null = the day after the last event")
    horizon_days: int = Field(90, ge=1, description="label window length after a cutoff")
    lead_days: int = Field(0, ge=0, description="purge gap between cutoff and label window")
    label: Literal["no_purchase", "cancellation", "no_purchase_or_cancellation"] = "no_purchase_or_cancellation"
    partial_churn_below: float | None = Field(
        None, gt=0, lt=1, description="also churned if window spend < this x spend in the horizon before the cutoff"
    )
    active_lookback_days: int = Field(
        365, ge=1, description="a customer with no purchase in this many days is already lost"
    )
    windows_days: tuple[int, ...] = (30, 90, 365)
    calendar_season: bool = Field(False, description="give the model the label window's calendar month (where "
                                  "the coming season was labelled a year earlier)")
    # 2GB, not 1GB: at 10M lines one date took 18.5 s at 1GB (1.30 GB peak RSS) and 14.8 s at 2GB
    # (1.56 GB), 12 cutoffs 49.3 s and 43.0 s (2.15 and 2.37 GB): less spilling, same bytes.
    memory_limit: str = Field("2GB", pattern=MEMORY_SIZE, description="DuckDB memory cap; spills beyond")

    @field_validator("windows_days")
    @classmethod
    def _sorted_unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or list(value) != sorted(set(value)) or value[0] < 1:
            raise ValueError(f"expected a strictly increasing list of positive day counts, got {list(value)}")
        return value

    @property
    def label_end(self) -> dt.timedelta:
        """From a cutoff to the end of its label window (``lead_days + horizon_days``): the one
        definition of how far a cutoff's label reaches."""
        return dt.timedelta(days=self.lead_days + self.horizon_days)

    def labels_complete_until(self, data_end: dt.datetime) -> dt.datetime:
        """The last cutoff whose whole label window lies inside data ending at ``data_end``: a
        label is trustworthy only then."""
        return data_end - self.label_end

    def label_complete(self, cutoff: dt.datetime, data_end: dt.datetime) -> bool:
        return cutoff <= self.labels_complete_until(data_end)


# --------------------------------------------------------------------------- train / evaluate
class XGBoostParams(_Section):
    n_estimators: int = Field(400, ge=1)
    max_depth: int = Field(5, ge=1, le=16)
    learning_rate: float = Field(0.05, gt=0, le=1)
    subsample: float = Field(0.9, gt=0, le=1)
    colsample_bytree: float = Field(0.9, gt=0, le=1)
    min_child_weight: float = Field(1.0, ge=0)
    reg_lambda: float = Field(1.0, ge=0)
    early_stopping_rounds: int = Field(30, ge=1)
    n_jobs: int = Field(2, ge=1)


class TuningConfig(_Section):
    """Random search over XGBoost parameters, judged by validation log loss; 0 trials = off."""

    n_trials: int = Field(4, ge=0)
    space: dict[Literal["max_depth", "learning_rate", "min_child_weight", "subsample", "colsample_bytree",
                        "reg_lambda"], list[float]] = {
        "max_depth": [3, 4, 5, 6], "learning_rate": [0.03, 0.05, 0.1], "min_child_weight": [1, 5, 20],
        "subsample": [0.7, 0.9, 1.0], "colsample_bytree": [0.6, 0.8, 1.0],
    }


Calibration = Literal["trees", "auto", "isotonic", "sigmoid", "none"]


class SelectionConfig(_Section):
    """How the trees' scores become the deployed probability, chosen out of time (churnlens.selection):
    every calibration x every weight of the model in a pool with BG/NBD, judged on out-of-time cutoffs."""

    calibrations: tuple[Calibration, ...] = Field(("trees", "sigmoid"), min_length=1)
    btyd_weights: tuple[float, ...] = Field(
        (1.0, 0.75, 0.5, 0.25, 0.0), min_length=1,
        description="the model's weight w in p = w * model + (1 - w) * BG/NBD's P(no purchase); 1 = the model alone")

    @field_validator("btyd_weights")
    @classmethod
    def _weights(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= w <= 1 for w in value) or len(set(value)) != len(value):
            raise ValueError(f"expected distinct weights in [0, 1], got {list(value)}")
        return value


class TrainConfig(_Section):
    seed: int = Field(7, ge=0)
    experiment_name: str = "churnlens"
    registered_model_name: str = "churnlens"
    validation_cutoffs: int = Field(
        1, ge=1, description="latest training cutoffs held back for early stopping"
    )
    backtest_folds: int = Field(3, ge=0, description="expanding-window folds before the holdout (0 = none)")
    xgboost: XGBoostParams = XGBoostParams()
    tuning: TuningConfig = TuningConfig()
    calibration: Calibration = Field(
        "trees", description="where no backtest fold can choose (selection): trees = the trees' own probabilities "
        "within the floor; the others are fitted out of time, on cutoffs whose rows never trained the trees: auto = "
        "isotonic from 1000 calibration rows, sigmoid below; none = raw trees, no floor"
    )
    selection: SelectionConfig = SelectionConfig()
    class_weight: Literal["none", "balanced"] = Field(
        "none", description="balanced = weight churners by negatives/positives (scale_pos_weight)"
    )
    probability_floor: float = Field(
        0.005, gt=0, lt=0.5, description="calibrated probabilities stay within [floor, 1 - floor]"
    )
    equal_customer_weight: bool = Field(
        True, description="weight rows 1 / (customer's rows), so dense grids do not favour long-tenured customers"
    )


class EvaluateConfig(_Section):
    promotion_metric: Literal["roc_auc", "pr_auc", "neg_log_loss", "neg_brier"] = "roc_auc"
    min_improvement: float = Field(0.0, ge=0, description="challenger must beat champion by this much")
    top_fraction: float = Field(0.1, gt=0, le=1, description="share of customers for the lift metric")
    calibration_bins: int = Field(10, ge=2)
    contact_cost: float = Field(1.0, ge=0, description="cost of contacting one customer")
    incentive_cost: float = Field(10.0, ge=0, description="cost of the incentive, paid when accepted")
    acceptance_rate: float = Field(0.3, ge=0, le=1, description="share of contacted churners who stay")


# --------------------------------------------------------------------------- score
class SegmentRules(_Section):
    """Fixed transforms and thresholds; see docs in segments.py for the indices."""

    min_orders: int = Field(2, ge=1, description="fewer orders than this -> insufficient_history")
    min_tenure_days: int = Field(60, ge=0)
    min_margin: float = Field(0.0, ge=0, le=1, description="margin under which the segment is flagged low-confidence")
    contract_lock_in: dict[str, float] = Field(
        {"annual": 1.0, "monthly": 0.35, "none": 0.0},
        description="switching-cost component per contract type, in [0, 1]; unmapped types are reported")
    price_drop_share_full: float = Field(
        0.4, gt=0, le=1, description="share of lines (and of spend) below the usual price that counts as fully price-driven")
    repeat_share_full: float = Field(
        0.5, gt=0, le=1, description="share of lines on products bought before that counts as a fully habitual basket")
    min_orders_for_cadence: int = Field(4, ge=3, description="purchases needed before gap regularity counts")
    min_index: float = Field(
        0.2, ge=0, le=1, description="a winning index below this is no evidence -> insufficient_history")

    @field_validator("contract_lock_in")
    @classmethod
    def _lock_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        outside = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if outside:
            raise ValueError(f"lock-in values must be in [0, 1], got {outside}")
        return value


# What a playbook action may presume about a customer (churnlens.playbook.PREMISES says how each
# is read from the features): contract = a contract term that renews; survey = an NPS answer.
PREMISE_NAMES = ("contract", "survey")


class FallbackAction(_Section):
    """The action given where the cell's action presumes data the customer's record lacks."""

    action: str
    cost: float = Field(ge=0)
    success_rate: float = Field(ge=0, le=1)


class RetentionAction(FallbackAction):
    needs: tuple[Literal[PREMISE_NAMES], ...] = Field(
        (), description="premises the action presumes (contract, survey); where one does not hold for a "
        "customer, `fallback` is assigned instead")
    fallback: FallbackAction | None = Field(None, description="the action where a premise in `needs` fails")

    @model_validator(mode="after")
    def _fallback_for_every_premise(self) -> RetentionAction:
        # Every cell must resolve to an action for every customer: one that presumes data needs a
        # fallback that presumes nothing (FallbackAction has no `needs`).
        if self.needs and self.fallback is None:
            raise ValueError(f"action {self.action!r} needs {list(self.needs)} but has no fallback: add "
                             "fallback: {action: ..., cost: ..., success_rate: ...} for customers whose data "
                             "does not show it")
        if self.fallback is not None and not self.needs:
            raise ValueError(f"action {self.action!r} has a fallback but no `needs`, so the fallback is never "
                             "given: name the premise it stands in for (needs: [contract] or [survey]) or drop it")
        return self


class ScoreConfig(_Section):
    model_uri: str = "models:/churnlens@champion"
    risk_tiers: dict[Literal["medium", "high"], float] = {"medium": 0.3, "high": 0.6}
    segments: SegmentRules = SegmentRules()
    value_horizon_days: int = Field(
        365, ge=1, description="customer value proxy = spend (or purchases x value_per_purchase) over this period")
    value_per_purchase: float | None = Field(
        None, gt=0, description="a log without amounts: customer value = purchases in the last 365 days x this, "
        "scaled to value_horizon_days (the scores' customer_value_basis says so); null = 1 per purchase, a "
        "count rather than money, also labelled")
    campaign_budget: float = Field(5_000.0, ge=0)
    actions: dict[str, dict[str, RetentionAction]]
    chunk_rows: int = Field(100_000, ge=1_000, description="customers scored per chunk (bounds memory)")
    reasons: Literal["exact", "approximate"] = Field(
        "exact", description="reasons of the customers someone acts on (`reasons_for`): exact TreeSHAP, or "
        "Saabas path attributions (~50x faster, top reason agrees ~3 in 4)"
    )
    other_reasons: Literal["approximate", "exact", "none"] = Field(
        "approximate", description="reasons of everyone else: Saabas path attributions, exact TreeSHAP, or "
        "none (an empty top_reasons for them: the fastest job)"
    )
    reasons_for: Literal["at_risk", "campaign"] = Field(
        "campaign", description="who gets `reasons` (everyone else gets `other_reasons`): campaign = the customers "
        "in this run's campaign, the rows someone acts on today (exact TreeSHAP for a few hundred rows); at_risk = "
        "every customer in the medium/high risk tiers (several times the job's time on a large base)"
    )
    drift_warning_psi: float = Field(
        0.25, gt=0, description="warn when a feature's population stability index vs training exceeds this"
    )
    control_share: float = Field(
        0.1, ge=0, lt=1, description="share of the campaign held out untreated (control_group in the scores), "
        "so `churnlens monitor` can measure what the actions did; 0 = no control group")
    control_seed: int = Field(0, ge=0, description="seed of the control-group draw (with the customer id: the "
                              "same customers are held out in every run until it changes)")

    @model_validator(mode="after")
    def _complete_playbook(self) -> ScoreConfig:
        if not 0 < self.risk_tiers["medium"] < self.risk_tiers["high"] < 1:
            raise ValueError(
                f"risk_tiers must satisfy 0 < medium < high < 1, got {dict(self.risk_tiers)}"
            )
        missing = [
            f"{segment}.{tier}"
            for segment in SEGMENTS
            for tier in RISK_TIERS
            if tier not in self.actions.get(segment, {})
        ]
        unknown = sorted(set(self.actions) - set(SEGMENTS))
        if missing or unknown:
            raise ValueError(
                f"actions must name one action per segment and risk tier; missing {missing}, "
                f"unknown segments {unknown}; expected segments {list(SEGMENTS)} x tiers {list(RISK_TIERS)}"
            )
        return self


class EngineConfig(_Section):
    """What computes features and scores: DuckDB on this machine, or an Apache Spark cluster."""

    name: Literal["duckdb", "spark"] = "duckdb"
    spark_master: str | None = Field(
        None, description="Spark master URL; null = spark-submit's master, else local[*]"
    )
    spark_driver_memory: str = Field(
        "4g", pattern=r"^\d+([kKmMgGtTpP][bB]?|[bB])?$",
        description="driver heap of a session churnlens starts itself, a JVM size such as 4g or 512m",
    )


class MonitorConfig(_Section):
    """How `churnlens monitor` judges earlier scoring runs against what happened after them."""

    metric: Literal["roc_auc", "pr_auc"] = Field(
        "roc_auc", description="the figure the retrain recommendation compares with the version's holdout figure")
    retrain_tolerance: float = Field(
        0.05, ge=0, le=1, description="recommend retraining when a closed window's realised figure is below the "
        "version's holdout figure by more than this")
    min_group_customers: int = Field(
        30, ge=1, description="a segment, risk tier or campaign arm with fewer customers gets counts, no figures")
    estimate_draws: int = Field(
        200, ge=10, description="label sets drawn from the probabilities for the label-free estimate (CBPE)")
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the treated-vs-control intervals")


class Params(_Section):
    engine: EngineConfig = EngineConfig()
    simulate: SimulateConfig = SimulateConfig()
    ingest: IngestConfig
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    score: ScoreConfig
    monitor: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _yearly_window_for_value_and_baselines(self) -> Params:
        # The RFM baselines and the customer value proxy read the 365-day window (purchases_365d, and
        # spend_365d where transactions have an amount): a pipeline without it would fail later with
        # a bare missing-column error. A log without amounts still needs it for purchases_365d.
        if 365 not in self.features.windows_days:
            raise ValueError(f"features.windows_days must include 365 (got {list(self.features.windows_days)}): "
                             "the customer value and the RFM baselines read the 365-day window (purchases_365d, "
                             "and spend_365d where transactions have an amount)")
        return self


def _describe(error: dict) -> str:
    if not error["loc"]:  # a rule across sections: its message names the keys itself
        return f"  {error['msg'].removeprefix('Value error, ')}"
    key = ".".join(str(part) for part in error["loc"])
    received = error.get("input")
    shown = repr(received) if not isinstance(received, dict) else "a mapping"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see params.yaml for the accepted keys)"
    return f"  {key}: {message} (received {shown})"


def parse_params(raw: object, source: str = "params") -> Params:
    """Validate a parsed parameter mapping; raise :class:`ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with one section per stage, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(_describe(error) for error in exc.errors())
        raise ConfigError(f"{source}: {exc.error_count()} invalid parameter(s):\n{lines}") from None


def _deep_merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        # A table of several sources and a single-source table are different shapes: the overlay's
        # replaces the base's instead of mixing keys of both (params.yaml's `path` beside `sources`).
        if (isinstance(value, dict) and isinstance(merged.get(key), dict)
                and ("sources" in value) == ("sources" in merged[key])):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (plain YAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (the earlier value would be silently ignored); keep one",
                key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found; run from the project root or pass --params")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with one section per stage, got {type(raw).__name__}")
    return raw


def load_params(path: str | Path = "params.yaml", *overlays: str | Path) -> Params:
    """Read and validate ``params.yaml`` once per stage.

    ``overlays`` are merged on top, key by key (e.g. a data set's ingest mapping over the defaults).
    """
    paths = [Path(path), *map(Path, overlays)]
    raw: dict = {}
    for file in paths:
        raw = _deep_merge(raw, _read_yaml(file))
    return parse_params(raw, source=" + ".join(map(str, paths)))
