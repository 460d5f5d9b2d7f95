"""Portfolio margin per settlement currency against hand computations and Deribit's examples.

The hand computations below are scalar loops over the published recipe (Black-76 from
scipy's normal CDF, coin values as USD value / forward), written independently of
``monitor.quant.margin``'s vectorised code.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq

from monitor.config import load_config
from monitor.quant.margin import (
    CurrencyParams,
    LinearPositions,
    MarginSettings,
    distance_to_call,
    distance_to_call_model,
    params_from_model_params,
    portfolio_margin,
)
from monitor.quant.risk import OptionPositions
from monitor.settings import risk_settings

# -- the worked example: BTC 60,000, IV 60% -------------------------------------------------
S0 = 60_000.0
IV = 0.6
# (quantity BTC, strike, days, call): short 10 30-day 66,000 calls, long 5 7-day 60,000 puts
OPTIONS = [(-10.0, 66_000.0, 30.0, True), (5.0, 60_000.0, 7.0, False)]
PERP_USD = -100_000.0  # short 100,000 USD of BTC-PERPETUAL (inverse)


def ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def b76(f: float, k: float, t: float, sigma: float, call: bool) -> tuple[float, float]:
    """Black-76 price (USD) and delta, by hand."""
    sd = sigma * math.sqrt(t)
    d1 = (math.log(f / k) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    if call:
        return f * ncdf(d1) - k * ncdf(d2), ncdf(d1)
    return k * ncdf(-d2) - f * ncdf(-d1), ncdf(d1) - 1.0


def shocked(sigma: float, days: float, state: str) -> float:
    """Deribit's vol shock of an option ``days`` from expiry (BTC parameters)."""
    power = 0.3 if days < 30.0 else 0.13
    scale = math.pow(30.0 / max(days, 1.0), power)
    if state == "up":
        return max(sigma * (1.0 + 0.5 * scale), 0.5)
    if state == "down":
        return max(sigma * (1.0 - 0.25 * scale), 0.0)
    return sigma


def coin_pnl(move: float, state: str, s0: float = S0) -> float:
    """The book's P&L in BTC when BTC moves from ``s0`` by ``move`` and vol goes
    ``state``."""
    s1 = s0 * (1.0 + move)
    pnl = PERP_USD * (1.0 / s0 - 1.0 / s1)  # inverse perpetual: N (1/S0 - 1/S1)
    for q, k, days, call in OPTIONS:
        v0 = b76(s0, k, days / 365.0, IV, call)[0] / s0
        v1 = b76(s1, k, days / 365.0, shocked(IV, days, state), call)[0] / s1
        pnl += q * (v1 - v0)
    return pnl


def worked_example_by_hand(s0: float = S0) -> dict[str, float]:
    """Every component of the model, in BTC, with BTC (index and forwards) at ``s0``."""
    pr = 0.16
    vector: list[float] = []
    for j in range(-4, 5):
        for state in ("up", "same", "down"):
            vector.append(coin_pnl(pr * j / 4.0, state, s0))
    for m in (-0.66, -0.33, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0):
        side = math.copysign(1.0, m)
        weighted = coin_pnl(m, "up", s0) * pr / abs(m) * (1.0 + m) / (1.0 + side * pr)
        damp = (abs(m) / pr - 1.0) * 100_000.0 / ((1.0 + side * pr) * s0)
        vector.append(math.copysign(max(abs(weighted) - damp, 0.0), weighted))
    worst = max(0.0, -min(vector))
    # Roll shock: every expiry's net coin delta at max(1%, exp(7.5% d/365) - 1), the
    # perpetual at 1%. Coin delta of an inverse option: delta - value / forward.
    roll = 0.01 * abs(PERP_USD / s0)
    for q, k, days, call in OPTIONS:
        v, d = b76(s0, k, days / 365.0, IV, call)
        factor = max(0.01, math.exp(0.075 * days / 365.0) - 1.0)
        roll += factor * abs(q * (d - v / s0))
    rmm = worst + roll  # delta shock 0: 7 BTC of delta is far below 20M USD
    return {"worst_case": worst, "roll_shock": roll, "rmm": rmm, "mm": 0.8 * rmm}


def worked_example_book(move: float = 0.0) -> tuple[LinearPositions, OptionPositions]:
    s = 1.0 + move
    options = OptionPositions(
        underlying=np.zeros(2, dtype=np.int64),
        forward=np.full(2, S0 * s),
        strike=np.array([k for _, k, _, _ in OPTIONS]),
        t=np.array([d / 365.0 for _, _, d, _ in OPTIONS]),
        vol=np.full(2, IV),
        is_call=np.array([c for _, _, _, c in OPTIONS]),
        quantity=np.array([[q] for q, _, _, _ in OPTIONS]),
        inverse=np.ones(2, dtype=bool),
    )
    linear = LinearPositions(
        underlying=np.zeros(1, dtype=np.int64),
        quantity=np.array([[PERP_USD / (S0 * s)]]),
        t=np.array([math.nan]),
        inverse=np.ones(1, dtype=bool),
        rolls=np.ones(1, dtype=bool),
    )
    return linear, options


def test_worked_example_component_by_component() -> None:
    hand = worked_example_by_hand()
    linear, options = worked_example_book()
    pm = portfolio_margin(linear, options, np.array([S0]), ["BTC"])
    (btc,) = pm.currencies
    assert btc.currency == "BTC"
    assert btc.usd_per_unit == S0
    assert btc.worst_case[0] == pytest.approx(hand["worst_case"], rel=1e-6)
    assert btc.roll_shock[0] == pytest.approx(hand["roll_shock"], rel=1e-6)
    assert btc.delta_shock[0] == 0.0
    assert btc.risk_matrix_margin[0] == pytest.approx(hand["rmm"], rel=1e-6)
    assert btc.maintenance_margin[0] == pytest.approx(hand["mm"], rel=1e-6)
    assert pm.maintenance_margin_usd[0] == pytest.approx(hand["mm"] * S0, rel=1e-6)
    # The worst case is on the standard grid (the extended moves are dampened to 0), and
    # the maintenance margin is "about 65,500 USD".
    assert btc.worst_scenario == ("+16% vol up",)
    assert 65_000.0 < pm.maintenance_margin_usd[0] < 66_000.0
    assert pm.parameters_source == "defaults"


def test_dampener_switch_changes_only_the_extended_scenarios() -> None:
    linear, options = worked_example_book()
    off = portfolio_margin(
        linear, options, np.array([S0]), ["BTC"], MarginSettings(dampener=False)
    ).currencies[0]
    # Without the dampener the +500% extended move is the worst: by hand, weighted only.
    m, pr = 5.0, 0.16
    by_hand = -coin_pnl(m, "up") * pr / m * (1.0 + m) / (1.0 + pr)
    assert off.worst_case[0] == pytest.approx(by_hand, rel=1e-6)
    assert off.worst_scenario == ("+500% vol up (extended)",)


# -- Deribit's private/pme/simulate examples -----------------------------------------------
# The API reference's example (BTC, model_params timestamp 1718619740501): positions in
# base currency, BTC-PERPETUAL 0.314538364 and BTC-28JUN24 -0.001187534, index 65,666.19.
BTC_EXAMPLE_TS = 1_718_619_740_501
BTC_MODEL_PARAMS = {
    "currency_pair": {
        "btc_usd": {
            "extended_table_factor": 1,
            "m_inc": 0.00005,
            "min_volatility_for_shock_up": 0.5,
            "max_delta_shock": 0.1,
            "delta_total_liq_shock_threshold": 20000000,
            "volatility_range_down": 0.25,
            "volatility_range_up": 0.5,
            "long_term_vega_power": 0.13,
            "short_term_vega_power": 0.3,
            "price_range": 0.16,
        }
    },
    "currency": {
        "usd": {
            "max_offsetable_pnl": 0,
            "annualised_move_risk": 0.1,
            "extended_dampener": 25000,
            "min_annualised_move": 0.01,
            "haircut": 0,
            "equity_side_impact": "none",
            "pnl_offset": 0,
            "correlation_set": False,
        },
        "btc": {
            "max_offsetable_pnl": 0,
            "annualised_move_risk": 0.075,
            "extended_dampener": 100000,
            "min_annualised_move": 0.01,
            "haircut": 0,
            "equity_side_impact": "both",
            "pnl_offset": 0,
            "correlation_set": False,
        },
    },
    "general": {"mm_factor": 0.8, "buckets_count": 4, "vol_scenarios_count": 3},
}


def _inverse_linear(qty: list[float], t: list[float]) -> LinearPositions:
    j = len(qty)
    return LinearPositions(
        underlying=np.zeros(j, dtype=np.int64),
        quantity=np.array(qty).reshape(j, 1),
        t=np.array(t),
        inverse=np.ones(j, dtype=bool),
        rolls=np.ones(j, dtype=bool),
    )


def test_simulate_example_btc_reproduced() -> None:
    expiry = dt.datetime(2024, 6, 28, 8, tzinfo=dt.UTC).timestamp() * 1000.0
    t = (expiry - BTC_EXAMPLE_TS) / (365.0 * 86_400_000.0)
    settings = params_from_model_params(BTC_MODEL_PARAMS, MarginSettings())
    assert settings.parameters_source == "venue"
    linear = _inverse_linear([0.314538364, -0.001187534], [math.nan, t])
    (btc,) = portfolio_margin(linear, None, np.array([65_666.19]), ["BTC"], settings).currencies
    # The venue's printed figures.
    assert btc.worst_case[0] == pytest.approx(0.05968587238095239, rel=1e-12)
    assert btc.worst_scenario == ("-16% vol unchanged",)  # bucket 1, left, standard
    assert btc.roll_shock[0] == pytest.approx(0.00315725898, abs=5e-12)
    assert btc.delta_shock[0] == 0.0
    # The venue rounds the worst case to 1e-9 BTC before adding the shocks (both published
    # examples add up only so); riskmon does not round, so its risk-matrix margin is
    # 3.8e-10 BTC above the printed 0.06284313098, and its MM 3.0e-10 above 0.050274504784.
    assert round(btc.worst_case[0], 9) + btc.roll_shock[0] == pytest.approx(
        0.06284313098, abs=5e-12
    )
    assert btc.risk_matrix_margin[0] == pytest.approx(0.06284313098, abs=5e-10)
    assert btc.maintenance_margin[0] == pytest.approx(0.050274504784, abs=5e-10)
    assert 0.8 * (round(btc.worst_case[0], 9) + btc.roll_shock[0]) == pytest.approx(
        0.050274504784, abs=5e-12
    )


def test_simulate_example_eth_reproduced() -> None:
    """A captured ETH response: ETH-PERPETUAL -0.999487053, index 1,949.34, ETH's
    parameters (price range 0.18, vol up 0.4, min roll 0.005)."""
    settings = MarginSettings()  # the built-in defaults carry ETH's published values
    linear = _inverse_linear([-0.999487053], [math.nan])
    (eth,) = portfolio_margin(linear, None, np.array([1_949.34]), ["ETH"], settings).currencies
    assert eth.worst_case[0] == pytest.approx(0.15246412672881357, rel=1e-12)
    assert eth.worst_scenario == ("+18% vol unchanged",)
    assert eth.roll_shock[0] == pytest.approx(0.004997435265, abs=5e-13)
    assert round(eth.worst_case[0], 9) + eth.roll_shock[0] == pytest.approx(
        0.157461562265, abs=5e-13
    )
    assert 0.8 * (round(eth.worst_case[0], 9) + eth.roll_shock[0]) == pytest.approx(
        0.125969249812, abs=5e-13
    )


def test_inverse_risk_vector_matches_the_published_vector() -> None:
    """The example's BTC-PERPETUAL vector: P&L of ``q (1 - 1/(1+m))`` at each bucket; the
    worst case is minus the smallest entry of the summed vector."""
    q = 0.314538364
    moves = [0.16 * j / 4.0 for j in range(-4, 5)]
    by_hand = [q * (1.0 - 1.0 / (1.0 + m)) for m in moves]
    published = [
        -0.05991206933333334,
        -0.04289159509090909,
        -0.027351162086956524,
        -0.013105765166666668,
        0.0,
        0.012097629384615385,
        0.023299138074074074,
        0.033700538999999995,
        0.043384601931034494,
    ]
    assert by_hand == pytest.approx(published, rel=1e-14, abs=1e-18)
    (btc,) = portfolio_margin(
        _inverse_linear([q], [math.nan]), None, np.array([65_666.19]), ["BTC"]
    ).currencies
    assert btc.worst_case[0] == pytest.approx(-min(published), rel=1e-14)


# -- grouping and shocks ---------------------------------------------------------------------


def test_usd_settled_and_coin_settled_are_separate_currencies() -> None:
    """A linear (USD-settled) perpetual and an inverse one on the same underlying: two
    currencies, each with its own worst case and roll parameters."""
    linear = LinearPositions(
        underlying=np.zeros(2, dtype=np.int64),
        quantity=np.array([[2.0], [-1.0]]),
        t=np.array([math.nan, math.nan]),
        inverse=np.array([False, True]),
        rolls=np.ones(2, dtype=bool),
    )
    pm = portfolio_margin(linear, None, np.array([50_000.0]), ["BTC"])
    by = {c.currency: c for c in pm.currencies}
    assert set(by) == {"BTC", "USD"}
    # USD: 2 BTC long, worst -16%: 2 x 50,000 x 0.16; roll 1% (USD's min) of 100,000 USD.
    assert by["USD"].worst_case[0] == pytest.approx(16_000.0, rel=1e-12)
    assert by["USD"].roll_shock[0] == pytest.approx(1_000.0, rel=1e-12)
    assert by["USD"].worst_scenario == ("BTC -16% vol unchanged",)
    # BTC: 1 BTC short inverse, worst +16%: 0.16 / 1.16 BTC; roll 1% of 1 BTC.
    assert by["BTC"].worst_case[0] == pytest.approx(0.16 / 1.16, rel=1e-12)
    assert by["BTC"].roll_shock[0] == pytest.approx(0.01, rel=1e-12)
    usd = 0.8 * (16_000.0 + 1_000.0) + 0.8 * (0.16 / 1.16 + 0.01) * 50_000.0
    assert pm.maintenance_margin_usd[0] == pytest.approx(usd, rel=1e-12)


def test_delta_shock_beyond_the_threshold() -> None:
    """1,000 BTC of inverse perpetual at 50,000 (50M USD, 30M beyond 20M): the shock is
    |delta| x min(slope x (|delta| - 20M / S), cap), by hand."""
    s = 50_000.0
    d = 1_000.0
    linear = _inverse_linear([d], [math.nan])
    (btc,) = portfolio_margin(linear, None, np.array([s]), ["BTC"]).currencies
    assert btc.delta_shock[0] == pytest.approx(d * min(0.00005 * (d - 20e6 / s), 0.1), rel=1e-12)
    big = _inverse_linear([10_000.0], [math.nan])
    (btc,) = portfolio_margin(big, None, np.array([s]), ["BTC"]).currencies
    assert btc.delta_shock[0] == pytest.approx(10_000.0 * 0.1, rel=1e-12)  # capped


def test_roll_shock_of_a_long_dated_future_uses_the_annualised_move() -> None:
    t = 0.5
    linear = _inverse_linear([3.0], [t])
    settings = MarginSettings(currencies={"BTC": CurrencyParams(0.01, 0.075, 100_000.0)})
    (btc,) = portfolio_margin(linear, None, np.array([40_000.0]), ["BTC"], settings).currencies
    assert btc.roll_shock[0] == pytest.approx(3.0 * (math.exp(0.075 * t) - 1.0), rel=1e-12)


def test_distance_with_recomputed_maintenance_margin_matches_brute_force() -> None:
    """Worked example with 150,000 USD equity: the call upward with the model's MM
    recomputed at each moved price, against a fine scan and Brent's root of the hand
    computation; holding today's MM instead puts the call further away."""
    equity = 150_000.0

    def usd_pnl(m: float) -> float:
        pnl = PERP_USD * m
        for q, k, days, call in OPTIONS:
            t = days / 365.0
            pnl += q * (b76(S0 * (1.0 + m), k, t, IV, call)[0] - b76(S0, k, t, IV, call)[0])
        return pnl

    def g(m: float) -> float:
        s1 = S0 * (1.0 + m)
        return equity + usd_pnl(m) - worked_example_by_hand(s1)["mm"] * s1

    def first_root(sign: float) -> float:
        prev = 0.0
        for j in range(1, 601):
            x = 0.0005 * j
            if g(sign * x) <= 0.0:
                return float(brentq(lambda y: g(sign * y), prev, x, xtol=1e-12))
            prev = x
        return math.nan

    up = first_root(1.0)
    down = first_root(-1.0)
    linear, options = worked_example_book()
    lin_usd = np.array([[PERP_USD]])
    d = distance_to_call_model([equity], lin_usd, options, linear, [S0], ["BTC"])
    assert d.maintenance_margin_usd[0] == pytest.approx(worked_example_by_hand()["mm"] * S0)
    assert d.reachable_up[0]
    assert d.up[0] == pytest.approx(up, abs=1e-6)
    if math.isnan(down):
        assert not d.reachable_down[0]
        assert math.isnan(d.down[0])
    else:
        assert d.down[0] == pytest.approx(down, abs=1e-6)
    held = distance_to_call(
        [equity], d.maintenance_margin_usd, lin_usd, options, np.array([[0.36]]), [[1.0]]
    )
    assert held.up[0] > d.up[0] + 0.01  # short gamma: holding MM overstates the distance


def test_config_overrides_merge_over_the_published_defaults(tmp_path: Path) -> None:
    path = tmp_path / "riskmon.toml"
    path.write_text(
        "[margin]\nmm_factor = 0.75\n"
        "[margin.currencies.BTC]\nextended_dampener = 50000.0\n"
        "[margin.underlyings.ETH]\nprice_range = 0.2\n",
        encoding="utf-8",
    )
    m = risk_settings(load_config(path, env={})).margin
    assert m.mm_factor == 0.75
    assert m.currencies["BTC"] == CurrencyParams(0.01, 0.075, 50_000.0)
    assert m.currencies["ETH"] == CurrencyParams(0.005, 0.05, 200_000.0)  # kept
    assert m.currencies["USD"] == CurrencyParams(0.01, 0.1, 25_000.0)
    assert m.underlyings["ETH"].price_range == 0.2
    assert m.underlyings["ETH"].vol_range_up == 0.4  # the built-in ETH value stays
    assert m.aggregation == "per_currency"


def test_an_underlying_without_a_price_that_no_book_holds_changes_nothing() -> None:
    """ETH registered but never priced (NaN index) and not held: BTC's figures and the
    recomputed distance are those of the BTC book alone."""
    linear, options = worked_example_book()
    two_lin = replace(linear, quantity=linear.quantity)
    alone = portfolio_margin(linear, options, np.array([S0]), ["BTC"])
    both = portfolio_margin(two_lin, options, np.array([S0, math.nan]), ["BTC", "ETH"])
    assert [c.currency for c in both.currencies] == ["BTC"]
    assert both.maintenance_margin_usd[0] == pytest.approx(alone.maintenance_margin_usd[0])
    d1 = distance_to_call_model([150_000.0], [[PERP_USD]], options, linear, [S0], ["BTC"])
    d2 = distance_to_call_model(
        [150_000.0], [[PERP_USD], [0.0]], options, linear, [S0, math.nan], ["BTC", "ETH"]
    )
    assert d2.up[0] == pytest.approx(d1.up[0], abs=1e-9)
