"""Point-in-time behavioural features and churn labels: what they are, not how an engine computes them.

The point-in-time rule: a cutoff is an instant (a date means its midnight, UTC). An event at
time ``t`` is history for cutoff ``c`` when ``t <= c``; it can only count towards that cutoff's
label when ``c + lead < t <= c + lead + horizon``. Nothing later than ``c`` reaches a feature.

Every feature is defined once in :func:`feature_definitions` (name, family, kind, window, SQL,
description). The feature catalog and the model's feature list are generated from that one list;
:mod:`churnlens.sql` turns it into the portable SQL every engine shares, and
:mod:`churnlens.engines` computes it (DuckDB + numpy on one machine, Spark beyond).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from typing import Literal

import pandas as pd

from churnlens.config import FeaturesConfig

Family = Literal["purchase_frequency", "interaction", "emotional", "economic", "differentiation", "switching_cost"]
Kind = Literal["history", "window", "last", "distinct", "customers", "derived", "btyd"]
EventSource = Literal["orders", "lines", "interactions"]
FAMILIES: tuple[Family, ...] = (
    "purchase_frequency", "interaction", "emotional", "economic", "differentiation", "switching_cost",
)
DAY_SECONDS = 86400.0


@dataclass(frozen=True)
class Feature:
    """One feature, evaluated per (customer, cutoff). What ``expression`` means depends on ``kind``:

    * ``history``: SQL over the customer's running purchase statistics as of the last purchase at
      or before the cutoff (``n_orders``, ``first_ts``, ``last_ts``, ``gap_sum``, ``gap_sq_sum``);
    * ``window``: a per-event measure summed over ``source`` events with
      ``cutoff - offset - window < ts <= cutoff - offset`` (``1`` counts events);
    * ``last``: a value of the latest ``source`` event matching ``where`` within ``window`` days;
    * ``distinct``: a column whose distinct values are counted over the window (purchases only);
    * ``customers``: SQL over the customer's profile row and ``cutoff``;
    * ``derived``: SQL over other features' names;
    * ``btyd``: a BG/NBD quantity, from a model fitted on the cutoff's own rows (its customers'
      history statistics), by :func:`churnlens.bgnbd.with_btyd_features` on every engine.

    ``internal`` features are building blocks of derived ones: computed, never given to the model.
    ``for_model=False`` features are published (snapshots, catalog) for the loyalty segments but
    never given to the churn model.
    """

    name: str
    family: Family
    kind: Kind
    expression: str
    description: str
    source: EventSource | None = None
    window_days: int | None = None
    offset_days: int = 0
    where: str = "true"
    requires: tuple[str, ...] = ()  # canonical columns that must be present in the source table
    categorical: bool = False
    internal: bool = False
    for_model: bool = True
    seasonal: bool = False  # a model input only where the coming season was labelled a year earlier (seasonal_gap)


def _days(a: str, b: str) -> str:
    # Microseconds, not epoch(): seconds would drop sub-second parts on some engines.
    return f"(epoch_us({a}) - epoch_us({b})) / {DAY_SECONDS * 1e6}"


def _windowed(template: Feature, windows: tuple[int, ...]) -> list[Feature]:
    return [
        replace(template, name=template.name.format(w=w), window_days=w,
                description=template.description.format(w=w))
        for w in windows
    ]


def _count(name: str, family: Family, source: EventSource, condition: str, window: int, description: str = "",
           offset: int = 0, requires: tuple[str, ...] = (), internal: bool = False) -> Feature:
    return Feature(name, family, "window", f"CASE WHEN {condition} THEN 1 ELSE 0 END", description, source, window,
                   offset, requires=requires, internal=internal)


def _sum(name: str, family: Family, source: EventSource, measure: str, window: int, description: str = "",
         offset: int = 0, requires: tuple[str, ...] = (), internal: bool = False) -> Feature:
    return Feature(name, family, "window", measure, description, source, window, offset, requires=requires,
                   internal=internal)


def _derived(name: str, family: Family, expression: str, description: str, for_model: bool = True,
             seasonal: bool = False) -> Feature:
    return Feature(name, family, "derived", expression, description, for_model=for_model, seasonal=seasonal)


PURCHASED = "NOT is_return"
# Spend is read from the transactions' amount, which a log of customers and times lacks: the
# features that read it are left out there (plan_features), never computed from a made-up value.
SPEND = ("amount",)
USUAL_PRICE_MONTHS = 3
USUAL_PRICE_MIN_LINES = 3
BELOW_USUAL = 0.95  # paid at least 5% under the product's usual price: a price drop, not rounding
DISCOUNTED = "NOT is_return AND list_price > unit_price"


def definitions_for(config: FeaturesConfig) -> list[Feature]:
    """The catalogue a features config computes: its windows, and the seasonal features of its label window."""
    return feature_definitions(config.windows_days, SeasonWindow(config.horizon_days, config.lead_days))


@dataclass(frozen=True)
class SeasonWindow:
    """The label window after a cutoff, (cutoff + lead, cutoff + lead + horizon], in days."""

    horizon_days: int
    lead_days: int = 0

    @property
    def year_earlier_offset(self) -> int | None:
        """Days from the cutoff back to the end of the same window a year earlier; None where that
        window would end after the cutoff (lead + horizon over a year), which no feature may read."""
        offset = YEAR_DAYS - self.lead_days - self.horizon_days
        return offset if offset >= 0 else None


def feature_definitions(windows: tuple[int, ...] = (30, 90, 365), season: SeasonWindow | None = None) -> list[Feature]:
    """The full catalogue; ``windows`` expands the per-window templates, ``season`` adds the
    seasonal features of that label window."""
    long = max(windows)
    pf, it, em, ec, df_, sc = FAMILIES
    features: list[Feature] = [
        # ---- purchase frequency
        Feature("days_since_last_purchase", pf, "history", _days("cutoff", "last_ts"),
                "Recency: days from the last purchase to the cutoff."),
        Feature("days_since_first_purchase", pf, "history", _days("cutoff", "first_ts"),
                "Days from the first observed purchase to the cutoff."),
        Feature("purchases_lifetime", pf, "history", "n_orders",
                "Purchases (orders with at least one non-return line) up to the cutoff."),
        Feature("mean_purchase_gap_days", pf, "history", "gap_sum / nullif(n_orders - 1, 0)",
                "Mean days between consecutive purchases."),
        Feature("purchase_gap_std_days", pf, "history",
                "CASE WHEN n_orders > 1 THEN sqrt(greatest(gap_sq_sum / (n_orders - 1) "
                "- pow(gap_sum / (n_orders - 1), 2), 0)) END",
                "Standard deviation of the days between purchases (rhythm regularity)."),
        *_windowed(_sum("purchases_{w}d", pf, "orders", "1", 0, "Purchases in the {w} days up to the cutoff."),
                   windows),
        _sum("_purchases_recent_90d", pf, "orders", "1", 90, internal=True),
        _sum("_purchases_prior_90d", pf, "orders", "1", 90, offset=90, internal=True),
        _derived("purchase_trend_90d", pf, "ln((_purchases_recent_90d + 1) / (_purchases_prior_90d + 1))",
                 "log of (purchases in the last 90 days + 1) / (purchases in the 90 days before + 1)."),
        _count("_lines_365d", pf, "lines", "true", 365, internal=True),
        _count("_returned_lines_365d", pf, "lines", "is_return", 365, internal=True),
        _derived("return_rate_365d", pf, "_returned_lines_365d / nullif(_lines_365d, 0)",
                 "Share of transaction lines in the last 365 days that are returns or cancellations."),
        _derived("overdue_ratio", pf, "days_since_last_purchase / nullif(mean_purchase_gap_days, 0)",
                 "How overdue the customer is against their own rhythm (recency / mean gap)."),
        # ---- economic
        *_windowed(_sum("spend_{w}d", ec, "orders", "value", 0,
                        "Net spend of purchases in the {w} days up to the cutoff.", requires=SPEND), windows),
        _sum("_orders_365d", ec, "orders", "1", 365, internal=True),
        _sum("_spend_365d", ec, "orders", "value", 365, internal=True, requires=SPEND),
        _sum("_spend_squared_365d", ec, "orders", "value * value", 365, internal=True, requires=SPEND),
        _sum("_spend_recent_90d", ec, "orders", "greatest(value, 0)", 90, internal=True, requires=SPEND),
        _sum("_spend_prior_90d", ec, "orders", "greatest(value, 0)", 90, offset=90, internal=True, requires=SPEND),
        _derived("avg_order_value_365d", ec, "_spend_365d / nullif(_orders_365d, 0)",
                 "Mean purchase value over the last 365 days."),
        _derived("spend_trend_90d", ec, "ln((_spend_recent_90d + 1) / (_spend_prior_90d + 1))",
                 "log of (spend in the last 90 days + 1) / (spend in the 90 days before + 1)."),
        _derived("spend_volatility_365d", ec,
                 "CASE WHEN _orders_365d > 1 THEN sqrt(greatest((_spend_squared_365d - _spend_365d * _spend_365d "
                 "/ _orders_365d) / (_orders_365d - 1), 0)) / nullif(_spend_365d / _orders_365d, 0) END",
                 "Coefficient of variation of purchase values over 365 days."),
        _count("_purchased_lines_365d", ec, "lines", PURCHASED, 365, internal=True),
        _count("_discounted_lines_365d", ec, "lines", DISCOUNTED, 365, internal=True,
               requires=("list_price", "unit_price")),
        _sum("_discount_depth_sum_365d", ec, "lines",
             f"CASE WHEN {DISCOUNTED} THEN (list_price - unit_price) / list_price ELSE 0 END", 365, internal=True,
             requires=("list_price", "unit_price")),
        _derived("discount_share_365d", ec, "_discounted_lines_365d / nullif(_purchased_lines_365d, 0)",
                 "Share of purchased lines bought below list price (365 days)."),
        _derived("discount_depth_365d", ec, "_discount_depth_sum_365d / nullif(_discounted_lines_365d, 0)",
                 "Mean discount depth of discounted lines (365 days)."),
        _count("_priced_lines_365d", ec, "lines", f"{PURCHASED} AND price_ratio IS NOT NULL", 365, internal=True,
               requires=("unit_price", "category")),
        _sum("_price_ratio_sum_365d", ec, "lines", f"CASE WHEN {PURCHASED} THEN coalesce(price_ratio, 0) ELSE 0 END",
             365, internal=True, requires=("unit_price", "category")),
        _derived("price_vs_category_median_365d", ec, "_price_ratio_sum_365d / nullif(_priced_lines_365d, 0)",
                 "Mean of price paid / the category's median price in the calendar month before the purchase "
                 "(365 days)."),
        # ---- product differentiation
        Feature("distinct_categories_365d", df_, "distinct", "category",
                "Breadth: distinct categories bought in 365 days.", "lines", 365, requires=("category",)),
        Feature("distinct_products_365d", df_, "distinct", "product_id",
                "Distinct products bought in 365 days.", "lines", 365, requires=("product_id",)),
        _sum("_purchased_spend_365d", df_, "lines", f"CASE WHEN {PURCHASED} THEN amount ELSE 0 END", 365,
             internal=True, requires=SPEND),
        _sum("_premium_spend_365d", df_, "lines", f"CASE WHEN {PURCHASED} AND price_ratio > 1.5 THEN amount ELSE 0 END",
             365, internal=True, requires=("unit_price", "category", *SPEND)),
        _derived("premium_share_365d", df_, "_premium_spend_365d / nullif(_purchased_spend_365d, 0)",
                 "Share of spend on lines priced above 1.5x their category median (distinctive products)."),
        # ---- interaction
        *_windowed(_count("visits_{w}d", it, "interactions", "type = 'visit'", 0,
                          "Visits / logins in the {w} days up to the cutoff."), windows),
        _count("support_contacts_90d", it, "interactions", "type = 'support_contact'", 90,
               "Support contacts in 90 days."),
        _count("campaign_responses_365d", it, "interactions", "type = 'campaign_response'", 365,
               "Campaign responses in 365 days."),
        Feature("days_since_last_contact", it, "last", _days("cutoff", "ts"),
                f"Days since the last interaction of any type (null if none in {long} days).", "interactions", long),
        Feature("days_since_last_complaint", it, "last", _days("cutoff", "ts"),
                f"Days since the last complaint (null if none in {long} days).", "interactions", long,
                where="type = 'complaint'"),
        # ---- emotional
        Feature("last_nps", em, "last", "value", f"Latest NPS answer (0-10) within {long} days.", "interactions",
                long, where="type = 'survey' AND value IS NOT NULL"),
        _count("_surveys_365d", em, "interactions", "type = 'survey' AND value IS NOT NULL", 365, internal=True),
        _sum("_survey_sum_365d", em, "interactions", "CASE WHEN type = 'survey' THEN coalesce(value, 0) ELSE 0 END",
             365, internal=True),
        _derived("mean_nps_365d", em, "_survey_sum_365d / nullif(_surveys_365d, 0)", "Mean NPS answer over 365 days."),
        _count("complaints_365d", em, "interactions", "type = 'complaint'", 365, "Complaints in 365 days."),
        _count("complaints_90d", em, "interactions", "type = 'complaint'", 90, "Complaints in 90 days."),
        _count("praise_365d", em, "interactions", "type = 'praise'", 365, "Praise / compliments in 365 days."),
        _count("referrals_365d", em, "interactions", "type = 'referral'", 365, "Referrals made in 365 days."),
        _derived("praise_complaint_balance_365d", em,
                 "(praise_365d - complaints_365d) / (praise_365d + complaints_365d + 1.0)",
                 "(praise - complaints) / (praise + complaints + 1), in (-1, 1)."),
        # ---- switching cost
        Feature("tenure_days", sc, "customers", _days("cutoff", "signup_date"), "Days since signup.",
                requires=("signup_date",)),
        Feature("products_held", sc, "customers", "products_held", "Products / services held (profile attribute).",
                requires=("products_held",)),
        Feature("contract_type", sc, "customers", "coalesce(contract_type, 'unknown')", "Contract type (categorical).",
                requires=("contract_type",), categorical=True),
        Feature("days_to_contract_end", sc, "customers",
                f"CASE WHEN contract_term_months > 0 AND signup_date <= cutoff THEN "
                f"contract_term_months * 30.4375 - ({_days('cutoff', 'signup_date')}) % "
                f"(contract_term_months * 30.4375) END",
                "Days until the current contract term renews (terms repeat from signup).",
                requires=("contract_term_months", "signup_date")),
        Feature("autopay", sc, "customers", "CAST(autopay AS DOUBLE)",
                "1 if the customer pays by autopay / direct debit.", requires=("autopay",)),
        Feature("plan_price", sc, "customers", "plan_price", "Recurring plan price.", requires=("plan_price",)),
        *loyalty_features(),
    ]
    features += btyd_definitions()
    features += seasonal_definitions(season) if season else []
    names = [f.name for f in features]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f"feature names must be unique; duplicated: {sorted(duplicated)}")
    return features


BELOW_USUAL_LINE = f"{PURCHASED} AND usual_price_ratio < {BELOW_USUAL}"
USUAL_PRICED_LINE = f"{PURCHASED} AND usual_price_ratio IS NOT NULL"


def loyalty_features() -> list[Feature]:
    """Behavioural loyalty signals any purchase log supports (DOMAIN.md, "How the three attitudes
    can show in a bare purchase log"): price drops taken, repeat baskets, cadence regularity."""
    pf, _it, _em, ec, _df, _sc = FAMILIES
    priced = ("unit_price", "product_id")
    return [
        _count("_usual_priced_lines_365d", ec, "lines", USUAL_PRICED_LINE, 365, internal=True, requires=priced),
        _count("_below_usual_lines_365d", ec, "lines", BELOW_USUAL_LINE, 365, internal=True, requires=priced),
        _derived("below_usual_price_share_365d", ec, "_below_usual_lines_365d / nullif(_usual_priced_lines_365d, 0)",
                 f"Share of purchased lines (365 days) paid at least {round((1 - BELOW_USUAL) * 100)}% under the "
                 f"product's usual price: its median unit price in the {USUAL_PRICE_MONTHS} calendar months before "
                 f"the purchase month (lines of products with fewer than {USUAL_PRICE_MIN_LINES} sales then are "
                 "left out). Needs no list price."),
        _sum("_usual_priced_spend_365d", ec, "lines", f"CASE WHEN {USUAL_PRICED_LINE} THEN amount ELSE 0 END", 365,
             internal=True, requires=(*priced, *SPEND)),
        _sum("_below_usual_spend_365d", ec, "lines", f"CASE WHEN {BELOW_USUAL_LINE} THEN amount ELSE 0 END", 365,
             internal=True, requires=(*priced, *SPEND)),
        _derived("below_usual_spend_share_365d", ec,
                 "_below_usual_spend_365d / nullif(_usual_priced_spend_365d, 0)",
                 "Share of spend (365 days, lines with a usual price) bought in price drops, as in "
                 "`below_usual_price_share_365d`."),
        _count("_repeat_lines_365d", pf, "lines", f"{PURCHASED} AND repeat_line", 365, internal=True,
               requires=("product_id",)),
        _count("_product_lines_365d", pf, "lines", f"{PURCHASED} AND product_id IS NOT NULL", 365, internal=True,
               requires=("product_id",)),
        _derived("repeat_line_share_365d", pf, "_repeat_lines_365d / nullif(_product_lines_365d, 0)",
                 "Habit: share of purchased lines (365 days) on products this customer had bought before "
                 "(at an earlier instant, any time in their history)."),
        _count("_repeat_rated_lines_365d", pf, "lines", f"{PURCHASED} AND product_repeat_rate IS NOT NULL", 365,
               internal=True, requires=("product_id",)),
        _sum("_product_repeat_rate_sum_365d", pf, "lines",
             f"CASE WHEN {PURCHASED} THEN coalesce(product_repeat_rate, 0) ELSE 0 END", 365, internal=True,
             requires=("product_id",)),
        _derived("product_repeat_rate_365d", pf, "_product_repeat_rate_sum_365d / nullif(_repeat_rated_lines_365d, 0)",
                 "Staples vs one-off lines: mean, over purchased lines (365 days), of the product's repeat rate, the "
                 f"share of its lines in the {USUAL_PRICE_MONTHS} calendar months before the purchase month bought "
                 "by customers who had bought it before (products with fewer than "
                 f"{USUAL_PRICE_MIN_LINES} sales then are left out). The repeat-basket share such a basket usually "
                 "has: a habit signal even a single basket carries.",
                 # Segments only: the level is a statistic of the whole population's buying in the
                 # months before each purchase, so it moves with the calendar and the catalogue, and
                 # a model trained at earlier cutoffs reads that drift as a change in the customer
                 # (real retail log as of 2010-09-01: AUC .727 -> .736, ECE .046 -> .019 without it).
                 for_model=False),
        _derived("purchase_gap_cv", pf, "purchase_gap_std_days / nullif(mean_purchase_gap_days, 0)",
                 "Cadence irregularity: standard deviation / mean of the days between purchases "
                 "(0 = perfectly regular)."),
    ]


LIFETIME_DAYS = 36_500  # a 'distinct' window that holds every event of the data
YEAR_DAYS = 365
CALENDAR_SEASON = "season_month"
# A month is one level per season, learnt from the one year of labels a short log holds: where that
# year is the log's first, its level is the young log's as much as the season's.
CALENDAR_SEASON_OFF = ("features.calendar_season is false: on the shared two-year retail log the month carried "
                       "the first year's lower churn level into the second (with the trees' own probabilities, "
                       "ECE .051 -> .141 at 2011-06-01; benchmarks/realdata_benchmark.py); set it true for a log "
                       "whose years are alike")


def seasonal_definitions(season: SeasonWindow) -> list[Feature]:
    """What the same season a year earlier says about the window ahead (DOMAIN.md: a gift shop's
    autumn is not its summer). Given to the model only where the coming season's window a year
    before the scoring date is labelled (:func:`seasonal_gap`): in a shorter log no label shows
    that season, so a season input could only extrapolate."""
    pf = "purchase_frequency"
    offset = season.year_earlier_offset
    middle = season.lead_days + season.horizon_days // 2
    month = Feature(CALENDAR_SEASON, pf, "history", f"month(cutoff + INTERVAL {middle} DAY)",
                    f"Calendar month (1-12) of the middle of the label window after the cutoff ({middle} days after it): "
                    "the season the churn risk is about.", seasonal=True)
    if offset is None:
        return [month]
    return [
        _sum("_purchases_same_window_last_year", pf, "orders", "1", season.horizon_days, offset=offset, internal=True),
        _derived("purchases_same_season_last_year", pf,
                 f"CASE WHEN days_since_first_purchase >= {YEAR_DAYS - season.lead_days} "
                 "THEN _purchases_same_window_last_year END",
                 f"Purchases in the label window's days a year earlier ({season.horizon_days} days ending "
                 f"{offset} days before the cutoff); null unless the customer's first purchase is before that "
                 "window, so a customer the log did not yet show is never read as one who did not buy.",
                 seasonal=True),
        month,
    ]


def btyd_definitions() -> list[Feature]:
    """The buy-till-you-die signal: BG/NBD (Fader, Hardie & Lee 2005) fitted per cutoff on
    purchase-days up to the cutoff; its posterior quantities summarise recency and frequency the
    way a stationary buying process would, which trees struggle to learn from few customers."""
    pf = "purchase_frequency"
    return [
        Feature("purchase_days_lifetime", pf, "distinct", "purchase_day",
                "Distinct days (UTC) with a purchase up to the cutoff: BG/NBD's repeat transactions + 1.",
                "lines", LIFETIME_DAYS),
        Feature("btyd_p_alive", pf, "btyd", "probability_alive",
                "BG/NBD P(still active at the cutoff), from a fit on this cutoff's customers' purchase-days."),
        Feature("btyd_expected_purchases_horizon", pf, "btyd", "expected_purchases",
                "BG/NBD expected purchase-days in the label horizon after the cutoff (same per-cutoff fit)."),
        Feature("btyd_p_no_purchase_horizon", pf, "btyd", "probability_no_purchase",
                "BG/NBD P(no purchase in the label horizon after the cutoff) (same per-cutoff fit)."),
    ]


# --------------------------------------------------------------------------- catalogue
def feature_catalog_markdown(features: list[Feature]) -> str:
    lines = ["# Feature catalog", "",
             "Generated from `churnlens.features.feature_definitions`; do not edit by hand.", "",
             "Point-in-time rule: history is every event with timestamp <= cutoff.", ""]
    for family in FAMILIES:
        lines += [f"## {family.replace('_', ' ')}", "", "| feature | kind | window | meaning |", "|---|---|---|---|"]
        for f in (f for f in features if f.family == family and not f.internal):
            window = ("calendar" if f.kind == "history" and f.seasonal
                      else "all history" if f.kind in ("history", "btyd") or f.window_days == LIFETIME_DAYS
                      else f"{f.window_days} d" if f.window_days else "")
            meaning = (f.description + ("" if f.for_model else " *Segments only: not a churn-model input.*")
                       + (" *A churn-model input only where the coming season was labelled a year earlier.*"
                          if f.seasonal else ""))
            lines.append(f"| `{f.name}` | {f.kind} | {window} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class FeaturePlan:
    features: list[Feature]  # kept, internal ones included
    left_out: dict[str, str]  # public feature -> why

    @property
    def public(self) -> list[Feature]:
        return [f for f in self.features if not f.internal]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.public]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.public if f.categorical]

    @property
    def model_names(self) -> list[str]:
        """What the churn model can be given: the public features except the segments-only ones."""
        return [f.name for f in self.public if f.for_model]

    def model_inputs(self, seasonal_gap: str | None, calendar_season: bool = False) -> tuple[list[str], dict[str, str]]:
        """The churn model's inputs, and the model features left out of it with why: the seasonal
        ones where ``seasonal_gap`` (from :func:`seasonal_gap`) says the log is too short, and the
        calendar month unless ``calendar_season``."""
        left_out = {f.name: seasonal_gap for f in self.public if f.for_model and f.seasonal and seasonal_gap}
        if not calendar_season and CALENDAR_SEASON in self.model_names and CALENDAR_SEASON not in left_out:
            left_out[CALENDAR_SEASON] = CALENDAR_SEASON_OFF
        return [n for n in self.model_names if n not in left_out], left_out

    def families(self) -> dict[str, list[str]]:
        return {family: [f.name for f in self.public if f.family == family] for family in FAMILIES}


_SOURCE_TABLE = {"orders": "transactions", "lines": "transactions", "interactions": "interactions"}


def _table_of(feature: Feature) -> str:
    if feature.kind in ("history", "btyd"):
        return "transactions"
    if feature.kind == "customers":
        return "customers"
    return _SOURCE_TABLE[feature.source]


def _identifiers(expression: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"[a-z_][a-z0-9_]*", expression)))


def plan_features(features: list[Feature], available: dict[str, set[str]]) -> FeaturePlan:
    """Keep the features whose source table and columns exist; report the rest (never zero-fill)."""
    kept: list[Feature] = []
    left_out: dict[str, str] = {}
    why: dict[str, str] = {}
    all_names = {f.name for f in features}
    for feature in features:
        if feature.kind == "derived":
            missing = [n for n in _identifiers(feature.expression) if n in all_names and n not in {k.name for k in kept}]
            reason = f"needs {missing}: {why.get(missing[0], 'not computed')}" if missing else ""
        else:
            table = _table_of(feature)
            absent = [c for c in feature.requires if table in available and c not in available[table]]
            reason = (f"no {table} table" if table not in available
                      else f"{table} has no column {absent}" if absent else "")
        if reason:
            why[feature.name] = reason
            if not feature.internal:
                left_out[feature.name] = reason
        else:
            kept.append(feature)
    return FeaturePlan(kept, left_out)


# --------------------------------------------------------------------------- cutoffs
def midnight(day: dt.date) -> pd.Timestamp:
    return pd.Timestamp(day)


def cutoff_grid(config: FeaturesConfig, data_start: pd.Timestamp, data_end: pd.Timestamp) -> list[pd.Timestamp]:
    """Cutoffs from params; null start/end are derived from the data's time span."""
    grid = config.cutoffs
    start = midnight(grid.start) if grid.start else (data_start + pd.Timedelta(days=grid.min_history_days)).normalize()
    end = midnight(grid.end) if grid.end else data_end.normalize()
    if start > end:
        raise ValueError(
            f"features.cutoffs: the first cutoff {start.date()} is after the last {end.date()}; the data spans "
            f"{data_start.date()} .. {data_end.date()}. Lower features.cutoffs.min_history_days or set start/end"
        )
    step = grid.every_days
    labelled_span = config.labels_complete_until(end) - start
    if grid.short_history_every_days and labelled_span < pd.Timedelta(days=365):
        # A young log has few labelled cutoffs: a denser grid gives the split enough of them
        # (training rows are weighted per customer, so repeated customers do not dominate).
        step = min(step, grid.short_history_every_days)
    return list(pd.date_range(start, end, freq=f"{step}D"))


def seasonal_gap(config: FeaturesConfig, cutoffs: list[pd.Timestamp], data_end: pd.Timestamp) -> str | None:
    """None where the coming season's label window a year earlier is labelled: a labelled cutoff of
    the grid lies at most one grid step after the scoring date's anniversary a year before (a
    grid that began a few days late still shows that season); else why the seasonal features
    stay out of the model. With the default 60 days of history before the first cutoff that takes
    about 14 months of log; a year plus the label window always suffices."""
    scoring = scoring_cutoff(config, data_end)
    anniversary = scoring - pd.Timedelta(days=YEAR_DAYS)
    labelled = [c for c in cutoffs if config.label_complete(c, data_end)]
    latest_start = anniversary + pd.Timedelta(days=config.cutoffs.every_days)
    if labelled and min(labelled) <= latest_start:
        return None
    first = f"the first labelled cutoff is {min(labelled).date()}" if labelled else "no cutoff is labelled"
    return (f"needs a labelled cutoff by {latest_start.date()}, a year (and one grid step) before the scoring date "
            f"{scoring.date()}, so the coming season's window a year earlier is labelled; {first}")


def scoring_cutoff(config: FeaturesConfig, data_end: pd.Timestamp) -> pd.Timestamp:
    """The as-of instant for scoring: params ``as_of`` or the midnight after the last event."""
    return midnight(config.as_of) if config.as_of else data_end.normalize() + pd.Timedelta(days=1)


def label_complete(cutoffs: list[pd.Timestamp], config: FeaturesConfig, data_end: pd.Timestamp) -> dict:
    """A cutoff's label is trustworthy only if its whole window lies inside the observed data."""
    return {c: config.label_complete(c, data_end) for c in cutoffs}


def with_fitted_features(frame: pd.DataFrame, plan: FeaturePlan, config: FeaturesConfig,
                         fits: dict | None = None) -> pd.DataFrame:
    """Append the features fitted per cutoff (BTYD) to finished snapshot rows; every engine ends
    with this one function, so they agree by construction."""
    from churnlens import bgnbd

    if not any(f.kind == "btyd" for f in plan.features):
        return frame
    return bgnbd.with_btyd_features(frame, config.horizon_days, fits)


def fit_columns(plan: FeaturePlan) -> list[str]:
    from churnlens import bgnbd

    return ["customer_id", "cutoff", *bgnbd.BTYD_INPUTS] if any(f.kind == "btyd" for f in plan.features) else []


