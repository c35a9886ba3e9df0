"""A seeded simulator of a customer base that follows the domain model in DOMAIN.md.

Three personas (brand advocate, brand user, brand comparer) differ in purchase rhythm, spend,
discount use, interactions, product breadth and switching cost, and each leaves the transaction
signature DOMAIN.md describes: advocates explore new and distinctive lines at their usual price,
users repeat a personal basket on a steady cadence, comparers buy whatever is in a price drop,
at irregular times. Prices are per product (a list price with weekly promotions), so "paid below
the product's usual price" is observable without the list price. Churn is a process: a customer
who will leave first goes through a latent switching period in which purchase gaps lengthen,
spend drifts down, complaints and discount-chasing rise and NPS answers fall. Brand users leave
mostly at contract renewals, comparers after competitor price moves, advocates rarely.

The generator works on a (customers x days) grid in chunks of customers, so memory stays
bounded for tens of millions of transactions. Each chunk has its own child seed, so the output
depends only on the config (including the chunk size), never on timing or on how many worker
processes generate the chunks (order ids are numbered once they are back, in chunk order).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from churnlens.config import PERSONAS, Seasonality, SimulateConfig

CATEGORIES = (
    "signature", "premium_care", "limited_edition",  # distinctive lines advocates favour
    "home", "kitchen", "garden", "toys", "stationery", "apparel", "electronics", "party", "gifts",
)
CATEGORY_BASE_PRICE = np.array([38.0, 30.0, 55.0, 14.0, 12.0, 16.0, 10.0, 4.0, 22.0, 45.0, 6.0, 9.0])
PRODUCTS_PER_CATEGORY = 40


@dataclass(frozen=True)
class Persona:
    """Behavioural profile of one persona; rates are per day."""

    purchase_rate: float
    order_value: float  # mean quantity of a line, relative to the average persona
    spend_sigma: float
    price_drop_seeking: float  # chance a line is picked among the products in a price drop
    repeat_basket: float  # chance a (non-chasing) line repeats a product of the personal basket
    cadence_regularity: float  # share of purchases on the customer's own fixed cycle (rest at random)
    category_weights: tuple[float, ...]
    visit_rate: float
    support_rate: float
    complaint_rate: float
    praise_rate: float
    referral_rate: float
    campaign_response_rate: float
    nps_mean: float
    nps_sd: float
    annual_contract_share: float
    monthly_contract_share: float
    autopay_share: float
    products_held: tuple[int, int]
    return_probability: float


_DISTINCTIVE = (6.0, 4.0, 3.0)
PERSONA_PROFILES: dict[str, Persona] = {
    "brand_advocate": Persona(
        purchase_rate=1 / 11, order_value=1.15, spend_sigma=0.35, price_drop_seeking=0.03, repeat_basket=0.2,
        cadence_regularity=0.5,
        category_weights=_DISTINCTIVE + (1.0,) * 9, visit_rate=0.05, support_rate=0.004,
        complaint_rate=0.0006, praise_rate=0.006, referral_rate=0.004, campaign_response_rate=0.002,
        nps_mean=9.2, nps_sd=0.7, annual_contract_share=0.15, monthly_contract_share=0.25,
        autopay_share=0.35, products_held=(1, 3), return_probability=0.015,
    ),
    "brand_user": Persona(
        purchase_rate=1 / 14, order_value=1.0, spend_sigma=0.3, price_drop_seeking=0.08, repeat_basket=0.85,
        cadence_regularity=0.85,
        category_weights=(1.5, 1.5, 0.5, 1.5, 2.0, 1.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5),
        visit_rate=0.02, support_rate=0.012, complaint_rate=0.0015, praise_rate=0.0008,
        referral_rate=0.0003, campaign_response_rate=0.006, nps_mean=7.0, nps_sd=1.1,
        annual_contract_share=0.85, monthly_contract_share=0.1, autopay_share=0.8,
        products_held=(2, 6), return_probability=0.02,
    ),
    "brand_comparer": Persona(
        purchase_rate=1 / 16, order_value=0.85, spend_sigma=0.6, price_drop_seeking=0.6, repeat_basket=0.1,
        cadence_regularity=0.0,
        category_weights=(0.3, 0.3, 0.2) + (1.0,) * 9, visit_rate=0.04, support_rate=0.006,
        complaint_rate=0.002, praise_rate=0.0003, referral_rate=0.0001, campaign_response_rate=0.02,
        nps_mean=5.5, nps_sd=1.8, annual_contract_share=0.03, monthly_contract_share=0.15,
        autopay_share=0.1, products_held=(1, 2), return_probability=0.05,
    ),
}

SURVEY_RATE = 1 / 90
HISTORY_BEFORE_START_DAYS = 3 * 365
PROMOTION_WEEK_SHARE = 0.12  # share of (product, week) pairs in a price drop
PROMOTION_DEPTH = (0.1, 0.4)
BASKET_SIZE = 6
CHASE_CANDIDATES = 20  # products a price-drop seeker looks at before taking one


@dataclass(frozen=True)
class Promotions:
    """Weekly price drops per product (category x product number x week since the start)."""

    active: np.ndarray  # bool
    depth: np.ndarray  # fraction off the list price where active

    @classmethod
    def draw(cls, n_days: int, rng: np.random.Generator) -> Promotions:
        shape = (len(CATEGORIES), PRODUCTS_PER_CATEGORY, n_days // 7 + 1)
        return cls(rng.random(shape) < PROMOTION_WEEK_SHARE, rng.uniform(*PROMOTION_DEPTH, size=shape))


@dataclass(frozen=True)
class SimulatedData:
    transactions: pd.DataFrame
    interactions: pd.DataFrame
    customers: pd.DataFrame
    ground_truth: pd.DataFrame


def price_shock_days(config: SimulateConfig, rng: np.random.Generator) -> np.ndarray:
    """Days (from start) on which a competitor moves prices; comparers react to these."""
    expected = config.price_shocks_per_year * config.n_days / 365
    count = rng.poisson(expected)
    return np.sort(rng.integers(0, config.n_days, size=count))


def _customer_attributes(config: SimulateConfig, rng: np.random.Generator, first_index: int, size: int,
                         shocks: np.ndarray) -> pd.DataFrame:
    """Static attributes, persona and the (possibly never reached) churn day of each customer."""
    shares = config.persona_shares
    persona_index = rng.choice(3, size=size, p=[shares.brand_advocate, shares.brand_user, shares.brand_comparer])
    personas = np.array(PERSONAS)[persona_index]
    profile = [PERSONA_PROFILES[name] for name in PERSONAS]

    existing = rng.random(size) < 0.6
    signup_day = np.where(
        existing,
        rng.integers(-HISTORY_BEFORE_START_DAYS, 0, size=size),
        rng.integers(0, max(config.n_days - 60, 1), size=size),
    )
    annual_share = np.array([p.annual_contract_share for p in profile])[persona_index]
    monthly_share = np.array([p.monthly_contract_share for p in profile])[persona_index]
    draw = rng.random(size)
    contract_type = np.where(draw < annual_share, "annual",
                             np.where(draw < annual_share + monthly_share, "monthly", "none"))
    autopay = rng.random(size) < np.array([p.autopay_share for p in profile])[persona_index]
    low = np.array([p.products_held[0] for p in profile])[persona_index]
    high = np.array([p.products_held[1] for p in profile])[persona_index]
    products_held = rng.integers(low, high + 1)
    plan_price = np.where(contract_type == "none", np.nan, np.round(rng.uniform(5, 25, size) * products_held, 2))

    # Churn: baseline hazard for everyone, renewals for annual contracts, price shocks for comparers.
    observed_from = np.maximum(signup_day, 0)
    hazard = np.array([getattr(config.monthly_churn_hazard, name) for name in PERSONAS])[persona_index] / 30
    with np.errstate(divide="ignore"):
        baseline_churn = observed_from + rng.exponential(1 / np.maximum(hazard, 1e-12))
    churn_day = baseline_churn
    horizon = config.n_days + 400
    for renewal_year in range(1, (horizon + HISTORY_BEFORE_START_DAYS) // 365 + 1):
        renewal_day = signup_day + 365 * renewal_year
        at_risk = (contract_type == "annual") & (renewal_day > observed_from + 30)
        leaves = at_risk & (rng.random(size) < config.contract_end_churn_probability)
        churn_day = np.where(leaves & (renewal_day < churn_day), renewal_day, churn_day)
    is_comparer = personas == "brand_comparer"
    for shock in shocks:
        at_risk = is_comparer & (shock > observed_from + 30)
        reaction = shock + rng.integers(5, 30, size=size)
        leaves = at_risk & (rng.random(size) < config.price_shock_churn_probability)
        churn_day = np.where(leaves & (reaction < churn_day), reaction, churn_day)
    churn_day = np.floor(churn_day).astype(np.int64)
    latent_days = rng.integers(config.latent_period_days[0], config.latent_period_days[1] + 1, size=size)
    # A latent period cannot start before the customer exists.
    latent_start = np.maximum(churn_day - latent_days, observed_from)

    return pd.DataFrame({
        "customer_index": np.arange(first_index, first_index + size),
        "persona": personas,
        "persona_index": persona_index,
        "signup_day": signup_day,
        "observed_from": observed_from,
        "contract_type": contract_type,
        "autopay": autopay,
        "products_held": products_held,
        "plan_price": plan_price,
        "churn_day": churn_day,
        "latent_start": latent_start,
    })


def _latent_progress(attributes: pd.DataFrame, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """(alive, progress): alive[c, d] is the customer existing and not yet gone on day d;
    progress in [0, 1) measures how far into the latent switching period day d is."""
    days = np.arange(n_days)[None, :]
    churn = attributes["churn_day"].to_numpy()[:, None]
    latent = attributes["latent_start"].to_numpy()[:, None]
    alive = (days >= attributes["observed_from"].to_numpy()[:, None]) & (days < churn)
    span = np.maximum(churn - latent, 1)
    progress = np.clip((days - latent) / span, 0.0, 1.0) * alive
    return alive, progress.astype(np.float32)


def _events(rate: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw Poisson counts on the grid; return the (customer row, day) of every event."""
    counts = rng.poisson(rate)
    rows, days = np.nonzero(counts)
    repeats = counts[rows, days]
    return np.repeat(rows, repeats), np.repeat(days, repeats)


def _timestamps(start: dt.date, days: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    seconds = rng.integers(7 * 3600, 22 * 3600, size=days.size)
    base = np.datetime64(start, "s")
    return base + days.astype("timedelta64[D]") + seconds.astype("timedelta64[s]")


def _profile_array(attributes: pd.DataFrame, field: str) -> np.ndarray:
    values = np.array([getattr(PERSONA_PROFILES[name], field) for name in PERSONAS])
    return values[attributes["persona_index"].to_numpy()]


def _purchase_days(config: SimulateConfig, attributes: pd.DataFrame, alive: np.ndarray, progress: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(customer row, day) of every order: a share ``cadence_regularity`` of a customer's
    purchases fall on their own fixed cycle, the rest at random (Poisson) times."""
    size = len(attributes)
    # Individual rhythm: each customer's own rate around the persona's mean.
    base_rate = _profile_array(attributes, "purchase_rate") * rng.gamma(4.0, 1 / 4.0, size=size)
    regular = _profile_array(attributes, "cadence_regularity")
    seasonality = config.seasonality
    day_of_year = (np.arange(config.n_days) + config.start_date.timetuple().tm_yday) % 365
    to_peak = (day_of_year - seasonality.peak_day_of_year) / seasonality.peak_width_days
    season = 1.0 + seasonality.peak_uplift * np.exp(-(to_peak ** 2))
    staying = alive * (1.0 - 0.8 * progress)
    rate = ((1.0 - regular) * base_rate)[:, None] * season[None, :] * staying
    if seasonality.seasonal_shopper_share > 0:  # drawn only when asked: the default data stays as it was
        rate, regular = _with_seasonal_shoppers(seasonality, day_of_year, staying, rate, regular, rng)
    rows, days = _events(rate.astype(np.float32), rng)
    cycle = np.maximum(np.round(1.0 / base_rate), 3).astype(np.int64)
    phase = rng.integers(0, cycle)
    on_cycle = (np.arange(config.n_days)[None, :] - phase[:, None]) % cycle[:, None] == 0
    # On a cycle day a purchase happens with chance ``regular``: the same mean rate as at random.
    scheduled = on_cycle & (rng.random(on_cycle.shape) < regular[:, None] * staying)
    cycle_rows, cycle_days = np.nonzero(scheduled)
    rows, days = np.concatenate([rows, cycle_rows]), np.concatenate([days, cycle_days])
    order = np.lexsort((days, rows))
    return rows[order], days[order]


def _with_seasonal_shoppers(seasonality: Seasonality, day_of_year: np.ndarray, staying: np.ndarray,
                            rate: np.ndarray, regular: np.ndarray, rng: np.random.Generator
                            ) -> tuple[np.ndarray, np.ndarray]:
    """A share of the customers buy at random times, mostly in the weeks up to the peak (gifts bought
    before it, not after: the season ends at the peak's day in the calendar year) and at
    ``seasonal_shopper_off_season`` of that rate otherwise, ``seasonal_shopper_purchases_per_year``
    on average."""
    shopper = rng.random(len(regular)) < seasonality.seasonal_shopper_share
    to_peak = (day_of_year - seasonality.peak_day_of_year) / seasonality.seasonal_shopper_width_days
    in_season = np.where(to_peak <= 0, np.exp(-(to_peak ** 2)), 0.0)
    profile = seasonality.seasonal_shopper_off_season + (1 - seasonality.seasonal_shopper_off_season) * in_season
    daily = seasonality.seasonal_shopper_purchases_per_year / 365 * profile / profile.mean()
    rate = rate.copy()
    rate[shopper] = daily[None, :] * staying[shopper]
    return rate, np.where(shopper, 0.0, regular)


def _products(attributes: pd.DataFrame, line_rows: np.ndarray, line_weeks: np.ndarray, line_progress: np.ndarray,
              promotions: Promotions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(category index, product number) of every line: a price-drop seeker takes the first of a
    few products that is on promotion that week; otherwise a line repeats the personal basket or
    explores a product picked by the persona's category taste."""
    persona_index = attributes["persona_index"].to_numpy()
    weights = np.array([PERSONA_PROFILES[name].category_weights for name in PERSONAS])
    cumulative = (weights / weights.sum(axis=1, keepdims=True)).cumsum(axis=1)

    def categories(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        draw = rng.random(shape)
        taste = cumulative[persona_index[rows]]
        if draw.ndim == 2:
            return (draw[:, :, None] > taste[:, None, :]).sum(axis=2).clip(0, len(CATEGORIES) - 1)
        return (draw[:, None] > taste).sum(axis=1).clip(0, len(CATEGORIES) - 1)

    customers = np.arange(len(attributes))
    basket_category = categories(customers, (len(attributes), BASKET_SIZE))
    basket_product = rng.integers(0, PRODUCTS_PER_CATEGORY, size=(len(attributes), BASKET_SIZE))
    n = line_rows.size
    # Price-drop seeking rises and basket loyalty falls in the latent switching period.
    seeking = np.clip(_profile_array(attributes, "price_drop_seeking")[line_rows] + 0.35 * line_progress, 0, 0.95)
    repeating = np.clip(_profile_array(attributes, "repeat_basket")[line_rows] - 0.3 * line_progress, 0, 1)
    draw = rng.random(n)
    chases = draw < seeking
    repeats = ~chases & (rng.random(n) < repeating)

    category = categories(line_rows, (n,))
    product = rng.integers(0, PRODUCTS_PER_CATEGORY, size=n)
    slot = rng.integers(0, BASKET_SIZE, size=n)
    category = np.where(repeats, basket_category[line_rows, slot], category)
    product = np.where(repeats, basket_product[line_rows, slot], product)
    candidates = rng.integers(0, PRODUCTS_PER_CATEGORY, size=(n, CHASE_CANDIDATES))
    on_promotion = promotions.active[category[:, None], candidates, line_weeks[:, None]]
    first_on_promotion = candidates[np.arange(n), np.argmax(on_promotion, axis=1)]
    product = np.where(chases, first_on_promotion, product)
    return category, product


def _transactions(config: SimulateConfig, attributes: pd.DataFrame, alive: np.ndarray, progress: np.ndarray,
                  customer_ids: np.ndarray, rng: np.random.Generator, promotions: Promotions) -> pd.DataFrame:
    rows, days = _purchase_days(config, attributes, alive, progress, rng)
    n_orders = rows.size
    order_ids = np.arange(n_orders)  # numbered across chunks by _numbered_orders
    order_ts = _timestamps(config.start_date, days, rng)
    order_progress = progress[rows, days]

    lines_per_order = 1 + rng.poisson(0.6, size=n_orders)
    line_order = np.repeat(np.arange(n_orders), lines_per_order)
    n_lines = line_order.size
    line_rows = rows[line_order]
    week = days[line_order] // 7
    category_index, product_number = _products(attributes, line_rows, week, order_progress[line_order], promotions,
                                               rng)
    # One list price per product (products within a category differ); promotions lower it for a week.
    list_price = np.round(CATEGORY_BASE_PRICE[category_index] * (0.6 + 0.02 * product_number), 2)
    depth = np.where(promotions.active[category_index, product_number, week],
                     promotions.depth[category_index, product_number, week], 0.0)
    unit_price = np.round(list_price * (1 - depth), 2)
    # Spend level and volatility show in quantities.
    sigma = _profile_array(attributes, "spend_sigma")[line_rows]
    level = _profile_array(attributes, "order_value")[line_rows] * rng.lognormal(-0.5 * sigma**2, sigma)
    quantity = 1 + rng.poisson(0.6 * level * (1.0 - 0.6 * order_progress[line_order]))
    channel = np.where(rng.random(n_lines) < 0.7, "online", "store")

    lines = pd.DataFrame({
        "order_id": order_ids[line_order],
        "customer_id": customer_ids[line_rows],
        "timestamp": order_ts[line_order],
        "product_id": np.char.add(np.array(CATEGORIES)[category_index].astype(str),
                                  np.char.zfill(product_number.astype(str), 3)),
        "category": np.array(CATEGORIES)[category_index],
        "quantity": quantity.astype(np.int64),
        "unit_price": unit_price,
        "list_price": list_price,
        "channel": channel,
    })

    # Returns: a later negative line for the same order, kept as a return, not a purchase.
    returned = rng.random(n_lines) < _profile_array(attributes, "return_probability")[line_rows]
    returns = lines.loc[returned].copy()
    returns["timestamp"] = returns["timestamp"] + pd.to_timedelta(rng.integers(2, 20, size=len(returns)), unit="D")
    returns["quantity"] = -returns["quantity"]
    end = np.datetime64(config.start_date, "s") + np.timedelta64(config.n_days, "D")
    returns = returns[returns["timestamp"].to_numpy() < end]
    lines = pd.concat([lines, returns], ignore_index=True)
    lines["amount"] = np.round(lines["quantity"] * lines["unit_price"], 2)
    return lines


def _interactions(config: SimulateConfig, attributes: pd.DataFrame, alive: np.ndarray, progress: np.ndarray,
                  customer_ids: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    frames = []
    # (type, base rate field, multiplier as the latent switching period progresses)
    effects = {
        "visit": ("visit_rate", lambda x: 1 - 0.7 * x),
        "support_contact": ("support_rate", lambda x: 1 + 2.0 * x),
        "complaint": ("complaint_rate", lambda x: 1 + 8.0 * x),
        "praise": ("praise_rate", lambda x: 1 - 0.9 * x),
        "referral": ("referral_rate", lambda x: 1 - 0.9 * x),
        "campaign_response": ("campaign_response_rate", lambda x: 1 + 1.5 * x),
    }
    for kind, (field, effect) in effects.items():
        rate = _profile_array(attributes, field)[:, None] * alive * effect(progress)
        rows, days = _events(rate.astype(np.float32), rng)
        frames.append(pd.DataFrame({"rows": rows, "days": days, "type": kind, "value": np.nan}))

    rows, days = _events((SURVEY_RATE * alive).astype(np.float32), rng)
    mean = _profile_array(attributes, "nps_mean")[rows] - 4.0 * progress[rows, days]
    score = np.clip(np.round(rng.normal(mean, _profile_array(attributes, "nps_sd")[rows])), 0, 10)
    frames.append(pd.DataFrame({"rows": rows, "days": days, "type": "survey", "value": score}))

    events = pd.concat(frames, ignore_index=True)
    return pd.DataFrame({
        "customer_id": customer_ids[events["rows"].to_numpy()],
        "timestamp": _timestamps(config.start_date, events["days"].to_numpy(), rng),
        "type": events["type"].to_numpy(),
        "value": events["value"].to_numpy(),
    })


def _customers_table(config: SimulateConfig, attributes: pd.DataFrame, customer_ids: np.ndarray) -> pd.DataFrame:
    start = np.datetime64(config.start_date, "D")
    churn_day = attributes["churn_day"].to_numpy()
    contractual = attributes["contract_type"].to_numpy() != "none"
    cancelled = contractual & (churn_day < config.n_days)
    cancellation = np.where(cancelled, start + churn_day.astype("timedelta64[D]"), np.datetime64("NaT"))
    term = attributes["contract_type"].map({"annual": 12, "monthly": 1}).astype("Int64")
    return pd.DataFrame({
        "customer_id": customer_ids,
        "signup_date": start + attributes["signup_day"].to_numpy().astype("timedelta64[D]"),
        "contract_type": attributes["contract_type"].to_numpy(),
        "contract_term_months": term.array,
        "autopay": attributes["autopay"].to_numpy(),
        "products_held": attributes["products_held"].to_numpy().astype(np.int64),
        "plan_price": attributes["plan_price"].to_numpy(),
        "cancellation_date": cancellation.astype("datetime64[s]"),
    })


def _ground_truth(config: SimulateConfig, attributes: pd.DataFrame, customer_ids: np.ndarray) -> pd.DataFrame:
    start = np.datetime64(config.start_date, "D")
    churn_day = attributes["churn_day"].to_numpy()
    observed = churn_day < config.n_days
    to_date = lambda day: np.where(observed, start + day.astype("timedelta64[D]"), np.datetime64("NaT"))  # noqa: E731
    return pd.DataFrame({
        "customer_id": customer_ids,
        "persona": attributes["persona"].to_numpy(),
        "churn_date": to_date(churn_day).astype("datetime64[s]"),
        "latent_start_date": to_date(attributes["latent_start"].to_numpy()).astype("datetime64[s]"),
    })


def customer_id_for(index: np.ndarray) -> np.ndarray:
    return np.char.add("C", np.char.zfill(index.astype(str), 8))


@dataclass(frozen=True)
class _Chunk:
    """What one chunk of customers is simulated from: the shared market and its own seed."""
    config: SimulateConfig
    shocks: np.ndarray  # competitor price moves (days), shared by every chunk
    promotions: Promotions  # shared by every chunk
    first: int  # the chunk's first customer index
    seed: np.random.SeedSequence


def _chunk_count(config: SimulateConfig) -> int:
    return -(-config.n_customers // config.customers_per_chunk)


def _chunk_plan(config: SimulateConfig) -> list[_Chunk]:
    """Every chunk's inputs: the market is drawn from the root seed's first child, each chunk
    from its own child seed."""
    market_seed, *chunk_seeds = np.random.SeedSequence(config.seed).spawn(1 + _chunk_count(config))
    market = np.random.default_rng(market_seed)
    shocks = price_shock_days(config, market)
    promotions = Promotions.draw(config.n_days, market)
    return [_Chunk(config, shocks, promotions, chunk * config.customers_per_chunk, seed)
            for chunk, seed in enumerate(chunk_seeds)]


def _simulate_chunk(chunk: _Chunk) -> SimulatedData:
    """One chunk of customers, its order ids numbered from 0 (:func:`_numbered_orders` shifts them)."""
    config, first, shocks, promotions = chunk.config, chunk.first, chunk.shocks, chunk.promotions
    rng = np.random.default_rng(chunk.seed)
    size = min(config.customers_per_chunk, config.n_customers - first)
    attributes = _customer_attributes(config, rng, first, size, shocks)
    customer_ids = customer_id_for(attributes["customer_index"].to_numpy() + 1)
    alive, progress = _latent_progress(attributes, config.n_days)
    return SimulatedData(
        transactions=_transactions(config, attributes, alive, progress, customer_ids, rng, promotions),
        interactions=_interactions(config, attributes, alive, progress, customer_ids, rng),
        customers=_customers_table(config, attributes, customer_ids),
        ground_truth=_ground_truth(config, attributes, customer_ids),
    )


def _numbered_orders(chunks: Iterable[SimulatedData]) -> Iterator[SimulatedData]:
    """Chunks in order, their order ids continuing the previous chunk's (the first order is 1)."""
    order_offset = 1
    for chunk in chunks:
        transactions = chunk.transactions.assign(order_id=chunk.transactions["order_id"] + order_offset)
        order_offset = int(transactions["order_id"].max()) + 1 if len(transactions) else order_offset
        yield replace(chunk, transactions=transactions)


def simulate_chunks(config: SimulateConfig) -> Iterator[SimulatedData]:
    """The simulated tables one chunk of customers at a time (each chunk's rows unsorted, order ids
    still integers), so data larger than memory can be written as it is generated."""
    return _numbered_orders(map(_simulate_chunk, _chunk_plan(config)))


# Below about this many customer-days a worker process's start-up (~0.6 s: numpy, pandas) costs
# more than its chunks take (900 customers x 540 days: 0.4 s in-process, 2.2 s with workers).
PARALLEL_MIN_CUSTOMER_DAYS = 2_000_000


def worker_count(config: SimulateConfig) -> int:
    """Worker processes worth starting for ``config``: one per core this process may run on, at
    most one per chunk, none for small data."""
    if config.n_customers * config.n_days < PARALLEL_MIN_CUSTOMER_DAYS:
        return 1
    return min(len(os.sched_getaffinity(0)), _chunk_count(config))


def simulate(config: SimulateConfig, workers: int = 1) -> SimulatedData:
    """Generate transactions, interactions, customers and the hidden ground truth; with
    ``workers`` > 1 the chunks run in that many worker processes (the same bytes either way, as
    each chunk has its own seed and order ids are numbered once the chunks are back). A script
    that passes ``workers`` > 1 needs the ``if __name__ == "__main__":`` guard of spawned processes."""
    if workers > 1:
        # Spawned, not forked: a forked pyarrow thread pool can deadlock the child.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            chunks = list(_numbered_orders(pool.map(_simulate_chunk, _chunk_plan(config))))
    else:
        chunks = list(simulate_chunks(config))

    def combine(frames: list[pd.DataFrame], order: list[str]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True).sort_values(order, kind="stable").reset_index(drop=True)

    transactions = combine([c.transactions for c in chunks], ["customer_id", "timestamp", "order_id"])
    transactions.insert(0, "transaction_id", np.arange(1, len(transactions) + 1))
    transactions["order_id"] = np.char.add("O", transactions["order_id"].to_numpy().astype(str))
    return SimulatedData(
        transactions=transactions,
        interactions=combine([c.interactions for c in chunks], ["customer_id", "timestamp", "type"]),
        customers=combine([c.customers for c in chunks], ["customer_id"]),
        ground_truth=combine([c.ground_truth for c in chunks], ["customer_id"]),
    )


def with_campaign(data: SimulatedData, treated: Iterable[str], as_of: pd.Timestamp, config: SimulateConfig,
                  lead_days: int, horizon_days: int) -> SimulatedData:
    """The same world after a retention campaign at ``as_of`` that treated ``treated``: each
    treated customer who would have churned in the label window (as_of + lead, + horizon] (no
    purchase in it, or a cancellation in or after it) is kept with the chance
    ``config.campaign_effects`` gives their persona: a copy of their last order before ``as_of``
    falls on a random day of the window, and the cancellation is withdrawn. Nothing up to
    ``as_of`` changes, so a run scored then stands; the untreated (the control group, everyone
    not selected) are untouched. The ground truth records who was treated, who would have churned
    and who was kept, so a test knows the campaign's true effect."""
    as_of = pd.Timestamp(as_of).tz_localize(None)  # the simulated tables are naive UTC
    start, end = as_of + pd.Timedelta(days=lead_days), as_of + pd.Timedelta(days=lead_days + horizon_days)
    tx, truth = data.transactions, data.ground_truth
    treated_ids = np.array(sorted(set(treated)), dtype=object)
    purchase = tx["quantity"] > 0
    bought_in_window = set(tx.loc[purchase & (tx["timestamp"] > start) & (tx["timestamp"] <= end), "customer_id"])
    cancellation = data.customers.set_index("customer_id")["cancellation_date"] if len(data.customers) else None
    cancels = (set(cancellation.index[(cancellation > start) & (cancellation <= end)]) if cancellation is not None
               else set())
    persona = truth.set_index("customer_id")["persona"]
    rng = np.random.default_rng([config.seed, int((as_of - pd.Timestamp(0)).days)])
    would_churn = np.array([c not in bought_in_window or c in cancels for c in treated_ids], dtype=bool)
    effect = persona.reindex(treated_ids).map(config.campaign_effects).fillna(0.0).to_numpy(dtype=float)
    kept = would_churn & (rng.random(len(treated_ids)) < effect)
    kept_ids = treated_ids[kept]
    before = tx[purchase & (tx["timestamp"] <= as_of) & tx["customer_id"].isin(kept_ids)]
    last_order = before.sort_values(["timestamp", "order_id"]).groupby("customer_id")["order_id"].last()
    copies = before[before["order_id"].isin(last_order.to_numpy())].copy()
    day = pd.Series(rng.integers(0, horizon_days, size=len(kept_ids)), index=kept_ids)
    copies["timestamp"] = (start + pd.to_timedelta(day.reindex(copies["customer_id"]).to_numpy(), unit="D")
                           + pd.Timedelta(hours=11)).astype(tx["timestamp"].dtype)
    order_number = tx["order_id"].str[1:].astype(np.int64).max() + 1
    new_orders = {old: f"O{order_number + k}" for k, old in enumerate(sorted(copies["order_id"].unique()))}
    copies["order_id"] = copies["order_id"].map(new_orders)
    copies["transaction_id"] = np.arange(len(copies)) + tx["transaction_id"].max() + 1
    transactions = pd.concat([tx, copies], ignore_index=True).sort_values(
        ["customer_id", "timestamp", "order_id"], kind="stable").reset_index(drop=True)
    customers = data.customers
    if cancellation is not None:
        withdrawn = customers["customer_id"].isin(kept_ids) & (customers["cancellation_date"] > start)
        customers = customers.assign(cancellation_date=customers["cancellation_date"].mask(withdrawn))
    outcome = pd.DataFrame({"customer_id": treated_ids, "campaign_would_churn": would_churn, "campaign_kept": kept})
    truth = truth.merge(outcome, on="customer_id", how="left")
    truth["campaign_as_of"] = as_of.to_datetime64()
    truth["campaign_treated"] = truth["customer_id"].isin(treated_ids)
    truth[["campaign_would_churn", "campaign_kept"]] = truth[["campaign_would_churn", "campaign_kept"]].fillna(False)
    return replace(data, transactions=transactions, customers=customers, ground_truth=truth)


def extract_until(data: SimulatedData, until: pd.Timestamp) -> SimulatedData:
    """The tables as an extract taken at ``until`` holds them: the events up to it (a run scored
    as of ``until`` reads the same), the customers signed up by then, and no cancellation not yet
    made (the ground truth stays whole)."""
    until = pd.Timestamp(until)
    customers = data.customers[data.customers["signup_date"] <= until]
    return replace(
        data,
        transactions=data.transactions[data.transactions["timestamp"] <= until].reset_index(drop=True),
        interactions=data.interactions[data.interactions["timestamp"] <= until].reset_index(drop=True),
        customers=customers.assign(cancellation_date=customers["cancellation_date"].where(
            customers["cancellation_date"] <= until)).reset_index(drop=True))
