"""The features and the batch scoring job on Apache Spark, for data beyond one machine.

Same definitions, different engine: the features are the portable SQL of
:mod:`churnlens.sql` (generated from :func:`churnlens.features.feature_definitions`,
transpiled to Spark SQL by sqlglot); the driver loads the model from this project's registry
and the per-customer parts of scoring (probability, segments, risk tier, action, priority,
reasons) run the same pandas functions as the single-machine job inside ``mapInPandas``. Only
the campaign (a budget over the whole ranking) is a Spark window.

Spark itself is the user's: ``local[*]`` by default, any master URL, a Spark Connect server
(``sc://host:port``), or an existing session.
Paths are anything Spark reads and writes (local, HDFS, S3, DBFS).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pyspark import StorageLevel

from churnlens import tracking
from churnlens.config import EngineConfig, FeaturesConfig, Params
from churnlens.engines import Laps, Scored
from churnlens.schemas import CANONICAL_TABLES
from churnlens.features import FeaturePlan, definitions_for, fit_columns, plan_features, with_fitted_features
from churnlens.sql import snapshot_query, to_dialect

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from churnlens.score import ScoreJob

log = logging.getLogger(__name__)


def session_settings(master: str | None, driver_memory: str) -> dict[str, str]:
    """What churnlens sets on a session it starts itself, for ``master`` (None: the master of
    spark-submit). A session that already exists keeps its own settings (see :func:`session`)."""
    # Cutoffs and day windows are instants in UTC; a local time zone would shift day boundaries.
    settings = {"spark.sql.session.timeZone": "UTC"}
    if master is not None and master.startswith("sc://"):
        # A Connect client may change SQL settings only; memory and shuffle are the server's.
        return settings
    settings.update({
        # In local mode the driver's heap is the whole engine's memory: Spark's 1g default is too
        # small for the joins of a feature sweep.
        "spark.driver.memory": driver_memory,
        "spark.sql.execution.arrow.pyspark.enabled": "true",  # toPandas and createDataFrame via Arrow
        "spark.ui.showConsoleProgress": "false",
    })
    if master is None:
        return settings
    # The assembly joins a dozen relations in one stage: a sorter per join side, each taking a
    # whole memory page up front. Default pages (up to 64 MB) exhaust a task's share of execution
    # memory however small the data ("UNABLE_TO_ACQUIRE_MEMORY ... got 0").
    settings["spark.buffer.pageSize"] = "2m"
    # The families are cached hashed by customer; their results join back on (customer, cutoff).
    # By default Spark shuffles both sides again unless they are hashed on every join key (a guard
    # against a few hot keys); one customer's rows are a sliver of the data, so that guard cost a
    # shuffle per family and per 'last' feature for nothing.
    settings["spark.sql.requireAllClusterKeysForCoPartition"] = "false"
    if master.startswith("local"):
        # The default 200 shuffle partitions are sized for clusters; here most would be empty.
        settings["spark.sql.shuffle.partitions"] = str(8 * (os.cpu_count() or 1))
    return settings


def session(master: str | None = None, driver_memory: str = "4g") -> SparkSession:
    """The active Spark session, or a new one on ``master`` (default ``local[*]``; ``sc://host:port``
    for Spark Connect) with :func:`session_settings`."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        # Someone else's session (a notebook, Databricks, a test) keeps its memory, partitions and
        # pages. The time zone is the one setting the results depend on, so it is set to UTC.
        active.conf.set("spark.sql.session.timeZone", "UTC")
        return active
    # Workers must run this interpreter (the one with churnlens and pandas), not the system python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Under spark-submit the JVM already knows its master; only a session of our own needs one.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ and master is None
    master = None if submitted else (master or "local[*]")
    builder = SparkSession.builder
    if master is not None and master.startswith("sc://"):
        builder = builder.remote(master)
    else:
        builder = builder.appName("churnlens")
        if master is not None:
            builder = builder.master(master)
    for key, value in session_settings(master, driver_memory).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def read_tables(spark: SparkSession, paths: dict[str, str | None]) -> dict[str, DataFrame]:
    """Canonical Parquet tables (absent ones skipped) as Spark DataFrames."""
    return {name: spark.read.parquet(str(path)) for name, path in paths.items() if path is not None}


def canonical_tables(spark: SparkSession, canonical_dir: str) -> dict[str, DataFrame]:
    """``<canonical_dir>/<table>.parquet`` on any file system Spark reads; optional tables may be absent."""
    from pyspark.errors import AnalysisException

    tables = {}
    for name in CANONICAL_TABLES:
        path = f"{canonical_dir.rstrip('/')}/{name}.parquet"
        try:
            tables[name] = spark.read.parquet(path)
        except AnalysisException as exc:
            if name == "transactions":
                raise FileNotFoundError(f"{path}: no canonical transactions ({exc.getMessage().splitlines()[0]}); "
                                        "run `churnlens ingest` first or point --canonical-dir at them") from None
    return tables


def data_span(tables: dict[str, DataFrame]) -> tuple[pd.Timestamp, pd.Timestamp]:
    from pyspark.sql import functions as F

    first, last = tables["transactions"].agg(F.min("timestamp"), F.max("timestamp")).first()
    if first is None:
        raise ValueError("features: the transactions table is empty")
    return pd.Timestamp(first), pd.Timestamp(last)


def _register(spark: SparkSession, tables: dict[str, DataFrame], cutoffs: list[pd.Timestamp]) -> dict[str, set[str]]:
    if "transactions" not in tables:
        raise ValueError("features: a transactions table is required")
    for name, frame in tables.items():
        frame.createOrReplaceTempView(f"src_{name}")
    spark.sql(cutoffs_sql(cutoffs)).createOrReplaceTempView("cutoffs")
    return {name: set(frame.columns) for name, frame in tables.items()}


def cutoffs_sql(cutoffs: list[pd.Timestamp]) -> str:
    """The cutoffs as literal rows (UTC instants), so the planner knows the relation is a dozen rows.
    A DataFrame made from Python rows is an RDD of unknown size to it: at 10M transactions the
    history step became a cartesian product of every order with the cutoffs instead of a broadcast
    of the cutoffs, and lost the orders' partitioning by customer."""
    from churnlens.score import utc

    instants = sorted({utc(c).tz_localize(None) for c in cutoffs})
    if not instants:
        return "SELECT CAST(NULL AS TIMESTAMP) AS cutoff WHERE false"
    values = ", ".join(f"(TIMESTAMP '{c:%Y-%m-%d %H:%M:%S.%f}')" for c in instants)
    return f"SELECT cutoff FROM VALUES {values} AS c(cutoff)"


def compute_snapshots(spark: SparkSession, tables: dict[str, DataFrame], cutoffs: list[pd.Timestamp],
                      config: FeaturesConfig, with_labels: bool = True) -> tuple[DataFrame, FeaturePlan]:
    """Features (and labels) for every active customer at every cutoff, as a Spark DataFrame
    with the columns, types and order of :func:`churnlens.engines.duckdb.compute_snapshots`."""
    assembled, plan = assembled_snapshot(spark, tables, cutoffs, config, with_labels)
    return _with_fitted_features(assembled, plan, config), plan


def assembled_snapshot(spark: SparkSession, tables: dict[str, DataFrame], cutoffs: list[pd.Timestamp],
                       config: FeaturesConfig, with_labels: bool) -> tuple[DataFrame, FeaturePlan]:
    """The snapshot query's result before the per-cutoff BTYD fits (its reused steps cached)."""
    available = _register(spark, tables, cutoffs)
    plan = plan_features(definitions_for(config), available)
    query = snapshot_query(plan, config, available, with_labels)
    # The views below replace those of any earlier computation: drop its cached steps too, or
    # they would pin storage memory that Spark never evicts for execution.
    release()
    partitions = shuffle_partitions(spark)
    for name, body in query.steps:
        step = spark.sql(to_dialect(body, "spark"))
        if name in REUSED_STEPS:
            # Spark inlines views: without a cache the population (a join of every order to every
            # cutoff) would be recomputed by each feature family that reads it. Cached hashed by
            # customer, the families' joins and groupings (all keyed by customer) find both sides
            # already partitioned: the events cross the shuffle once, not once per family. The
            # planner sees a cache's partitioning only once it is filled, hence the count here,
            # before the steps that read it are planned.
            step = step.repartition(*partitions, "customer_id").persist(StorageLevel.MEMORY_AND_DISK)
            _cached.append(step)
            step.count()
        step.createOrReplaceTempView(name)
    return spark.sql(to_dialect(query.final, "spark")), plan


def shuffle_partitions(spark: SparkSession) -> tuple[int, ...]:
    """The session's shuffle partition count, to hash the cached steps into exactly as many
    partitions as the joins that read them expect (a fixed count, so adaptive execution keeps it);
    none when the session leaves it to the platform (e.g. ``auto``)."""
    value = spark.conf.get("spark.sql.shuffle.partitions")
    return (int(value),) if value is not None and value.isdigit() else ()


def _with_fitted_features(frame: DataFrame, plan: FeaturePlan, config: FeaturesConfig) -> DataFrame:
    """The per-cutoff BTYD features: fitted on the driver from the few input columns, then
    appended to every partition by the same function the DuckDB engine uses."""
    from pyspark.sql import types as T

    from churnlens import bgnbd

    columns = fit_columns(plan)
    if not columns:
        return frame
    # The fit reads a few columns, but the assembly's outer joins cannot be pruned: without a
    # cache every family would run again for the rows written or scored afterwards.
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    _cached.append(frame)
    inputs = frame.select(*columns).toPandas()
    inputs["cutoff"] = inputs["cutoff"].astype("datetime64[us]")
    fits = bgnbd.fits_per_cutoff(inputs)
    schema = T.StructType([*frame.schema.fields, *(T.StructField(n, T.DoubleType()) for n in bgnbd.BTYD_FEATURES)])

    def append(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            keyed = batch.assign(cutoff=batch["cutoff"].astype("datetime64[us]"))
            fitted = with_fitted_features(keyed, plan, config, fits)
            yield batch.assign(**{n: fitted[n].to_numpy() for n in bgnbd.BTYD_FEATURES})

    return frame.mapInPandas(append, schema)


REUSED_STEPS = {"lines", "orders", "interactions", "population"}
_cached: list[DataFrame] = []


def release() -> None:
    """Drop the cached steps of earlier computations (call once their results are written)."""
    while _cached:
        _cached.pop().unpersist()


def write_parquet(frame: DataFrame, target: str) -> str:
    """Write a Spark DataFrame as a Parquet dataset (a folder of part files). On a local path it
    is written beside the target and renamed into place, so a failed job leaves the old output."""
    import shutil
    import uuid

    local = "://" not in target or target.startswith("file://")
    if not local:
        frame.write.mode("overwrite").parquet(target)  # the cluster's committer makes this atomic
        return target
    path = Path(target.removeprefix("file://"))
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    frame.write.parquet(str(staging))
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    staging.rename(path)
    return str(path)


def write_snapshots(spark: SparkSession, tables: dict[str, DataFrame], cutoffs: list[pd.Timestamp],
                    config: FeaturesConfig, target: str, label_complete_until: pd.Timestamp | None) -> FeaturePlan:
    from pyspark.sql import functions as F

    snapshots, plan = compute_snapshots(spark, tables, cutoffs, config, with_labels=True)
    if label_complete_until is None:
        complete = F.lit(False)
    else:
        last = config.labels_complete_until(pd.Timestamp(label_complete_until))
        complete = F.col("cutoff") <= F.lit(last.to_pydatetime())
    write_parquet(snapshots.withColumn("label_complete", complete), target)
    release()
    return plan


def _score_partitions(batches: Iterator[pd.DataFrame], pipeline: object, params: Params, as_of: str,
                      name: str, version: str, numeric: list[str], categorical: list[str]) -> Iterator[pd.DataFrame]:
    """Per Spark partition: the single-machine scoring (probability, reasons, segments, plan) on
    each Arrow batch, with the pipeline the driver loaded. It travels inside this function's
    closure, so executors never resolve registry URIs nor read the driver's files, and no
    ``sparkContext`` is needed (Spark Connect has none; classic Spark broadcasts a large closure)."""
    from churnlens import control, model, score, segments

    config = params.score
    for batch in batches:
        batch = batch.reset_index(drop=True)
        probability = model.churn_probability(pipeline, batch, numeric, categorical)
        if config.reasons_for == "campaign":  # the campaign is not chosen yet: its rows are redone later
            methods = np.full(len(batch), config.other_reasons)
        else:
            methods = score.reason_methods(probability, config)
        reasons = score.customer_reasons_by_method(pipeline, batch, methods, numeric, categorical,
                                                   params.features.windows_days)
        assigned = segments.assign_segments(batch, config.segments)
        rows = score.score_rows(batch, probability, assigned, config, pd.Timestamp(as_of), name, version, reasons)
        # Held out if selected: the draw is the customer's own, so any partition draws the same.
        rows["_held_out"] = control.held_out(rows["customer_id"], config.control_share, config.control_seed)
        yield rows


def score(spark: SparkSession, tables: dict[str, DataFrame], as_of: pd.Timestamp, params: Params,
          resolved: tracking.ResolvedModel) -> tuple[DataFrame, DataFrame, tracking.LoadedModel]:
    """The batch scoring job on Spark: one row per active customer, the columns of
    :data:`churnlens.score.SCORE_COLUMNS`, ranked by priority, with the budgeted campaign.
    Also returns the feature snapshot it scored (for drift checks) and the model it used."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from churnlens import score as single_machine

    loaded = tracking.load_resolved(resolved)
    numeric, categorical = loaded.contract.numeric_features, loaded.contract.categorical_features
    snapshot, _ = compute_snapshots(spark, tables, [as_of], params.features, with_labels=False)
    snapshot = snapshot.persist(StorageLevel.MEMORY_AND_DISK)  # scored, then sampled for the drift check
    _cached.append(snapshot)
    single_machine.require_model_inputs(loaded, snapshot.columns)
    rows_schema = T.StructType([
        T.StructField("customer_id", T.StringType()), T.StructField("as_of", T.TimestampType()),
        T.StructField("churn_probability", T.DoubleType()), T.StructField("segment", T.StringType()),
        T.StructField("segment_margin", T.DoubleType()), T.StructField("low_confidence", T.BooleanType()),
        T.StructField("segment_driver", T.StringType()), T.StructField("segment_evidence", T.StringType()),
        T.StructField("customer_value", T.DoubleType()), T.StructField("customer_value_basis", T.StringType()),
        T.StructField("risk_tier", T.StringType()),
        T.StructField("top_reasons", T.StringType()), T.StructField("model_name", T.StringType()),
        T.StructField("model_version", T.StringType()), T.StructField("action", T.StringType()),
        T.StructField("action_cost", T.DoubleType()), T.StructField("action_success_rate", T.DoubleType()),
        T.StructField("action_premise_missing", T.StringType()), T.StructField("priority", T.DoubleType()),
        T.StructField("_held_out", T.BooleanType()),
    ])
    # The validated params travel pickled with the function: no partition parses them again.
    arguments = (loaded.pipeline, params, pd.Timestamp(as_of).isoformat(),
                 loaded.name, loaded.version, numeric, categorical)
    rows = snapshot.mapInPandas(lambda batches: _score_partitions(batches, *arguments), rows_schema)
    # The campaign: by priority (ties by customer id), while worthwhile and within the budget.
    budget = params.score.campaign_budget
    ranking = Window.orderBy(F.col("priority").desc(), F.col("customer_id").asc()).rowsBetween(
        Window.unboundedPreceding, Window.currentRow)
    worthwhile = (F.col("priority") > 0) & (F.col("action_cost") <= budget)
    ranked = (rows.withColumn("_worthwhile", worthwhile)
              .withColumn("_spent", F.sum(F.when(F.col("_worthwhile"), F.col("action_cost")).otherwise(0.0))
                          .over(ranking))
              .withColumn("in_campaign", F.col("_worthwhile") & (F.col("_spent") <= budget))
              .withColumn("control_group", F.col("in_campaign") & F.col("_held_out")))
    if params.score.reasons_for == "campaign" and params.score.reasons != params.score.other_reasons:
        ranked = _with_campaign_reasons(ranked, snapshot, arguments)
    scores = ranked.select(*single_machine.SCORE_COLUMNS).orderBy(F.col("priority").desc(), F.col("customer_id"))
    return scores, snapshot, loaded


def _campaign_reason_partitions(batches: Iterator[pd.DataFrame], pipeline: object, params: Params,
                                numeric: list[str], categorical: list[str]) -> Iterator[pd.DataFrame]:
    """Per Spark partition of the campaign's feature rows: their ``score.reasons`` (the method for
    the rows someone acts on), as the single-machine job computes them for its campaign."""
    from churnlens import score

    for batch in batches:
        batch = batch.reset_index(drop=True)
        methods = np.full(len(batch), params.score.reasons)
        reasons = score.customer_reasons_by_method(pipeline, batch, methods, numeric, categorical,
                                                   params.features.windows_days)
        yield pd.DataFrame({"customer_id": batch["customer_id"], "_campaign_reasons": reasons.to_numpy()})


def _with_campaign_reasons(ranked: DataFrame, snapshot: DataFrame, arguments: tuple) -> DataFrame:
    """``score.reasons_for: campaign`` on Spark: the partitions gave everyone ``other_reasons``
    (the campaign is a ranking of every row, chosen after them); the campaign's rows, a few
    hundred, get ``score.reasons`` here, from their feature rows."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    pipeline, params, _, _, _, numeric, categorical = arguments
    # Read twice (the campaign's ids, then every row): kept, so the model runs over the base once.
    ranked = ranked.persist(StorageLevel.MEMORY_AND_DISK)
    _cached.append(ranked)
    chosen = ranked.filter(F.col("in_campaign")).select("customer_id")
    schema = T.StructType([T.StructField("customer_id", T.StringType()),
                           T.StructField("_campaign_reasons", T.StringType())])
    explained = snapshot.join(chosen, "customer_id").mapInPandas(
        lambda batches: _campaign_reason_partitions(batches, pipeline, params, numeric, categorical), schema)
    return (ranked.join(explained, "customer_id", "left")
            .withColumn("top_reasons", F.coalesce(F.col("_campaign_reasons"), F.col("top_reasons"))))


class SparkEngine:
    """The engine interface (:mod:`churnlens.engines`) on Spark: the configured session, paths
    anything Spark reads and writes; the report reads a few columns of the written scores back."""

    name = "spark"

    def __init__(self, config: EngineConfig) -> None:
        self.session = session(config.spark_master, config.spark_driver_memory)

    def tables(self, canonical_dir: str) -> dict[str, DataFrame]:
        return canonical_tables(self.session, canonical_dir)

    def data_span(self, tables: dict[str, DataFrame]) -> tuple[pd.Timestamp, pd.Timestamp]:
        return data_span(tables)

    def write_snapshots(self, tables: dict[str, DataFrame], cutoffs: list[pd.Timestamp], config: FeaturesConfig,
                        target: str, label_complete_until: pd.Timestamp | None) -> tuple[FeaturePlan, list[tuple]]:
        from pyspark.sql import functions as F

        plan = write_snapshots(self.session, tables, cutoffs, config, target, label_complete_until)
        per_cutoff = (self.session.read.parquet(target).groupBy("cutoff")
                      .agg(F.count("*"), F.avg(F.col("churned").cast("double"))).orderBy("cutoff").collect())
        return plan, [tuple(row) for row in per_cutoff]

    def score(self, tables: dict[str, DataFrame], instant: pd.Timestamp, model: tracking.ResolvedModel,
              job: ScoreJob, laps: Laps) -> Scored:
        import hashlib

        output = str(job.output)
        scores, snapshot, loaded = score(self.session, tables, instant, job.params, model)
        write_parquet(scores, output)
        if job.csv_output is not None:
            scores.coalesce(1).write.mode("overwrite").option("header", True).csv(str(job.csv_output))
        laps.lap("features_score_and_write")
        # Everything the segment report, the manifest and the kept run read (score.segment_report,
        # playbook.actions_replaced, stages.MONITORED_COLUMNS).
        needed = ["customer_id", "segment", "low_confidence", "segment_evidence", "churn_probability", "risk_tier",
                  "customer_value", "customer_value_basis", "in_campaign", "control_group", "action_cost", "action_premise_missing",
                  "priority", "top_reasons", "action", "action_success_rate"]
        local_scores = self.session.read.parquet(output).select(*needed).toPandas()
        total = len(local_scores)
        sample = snapshot.sample(fraction=min(1.0, 100_000 / max(total, 1)), seed=0).toPandas()  # drift on a sample
        release()
        laps.lap("read_back")
        files = sorted(tables["transactions"].inputFiles())
        fingerprint = "files:" + hashlib.sha256("\n".join(files).encode()).hexdigest()
        return Scored(local_scores, sample, loaded, fingerprint, output,
                      str(job.csv_output) if job.csv_output is not None else None)

    def close(self) -> None:
        release()

    def __enter__(self) -> SparkEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
