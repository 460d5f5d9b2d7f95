"""monitor.quant.hedging against finite differences of a revalued book.

The book's ``delta_usd``, ``gamma_usd`` and vega are taken here by central differences of
its full value (Black-76 prices of the options, linear positions, and the hedge's own
value: an inverse USD-sized perpetual of ``N`` USD is worth ``N (S/S0 - 1)`` in USD), not
from the analytic Greeks; the hedged book is then revalued the same way.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from monitor.quant.greeks import black76_price
from monitor.quant.hedging import delta_hedge, limit_target

FloatArray = npt.NDArray[np.float64]

F = np.array([60_000.0, 3_000.0])  # BTC, ETH forwards (= index), USD
# Options: underlying, strike, years, IV, call?, quantity (underlying units).
UND = np.array([0, 0, 1])
K = np.array([65_000.0, 55_000.0, 3_200.0])
T = np.array([30.0, 30.0, 60.0]) / 365.0
IV = np.array([0.6, 0.65, 0.7])
CALL = np.array([True, False, True])
Q = np.array([10.0, -5.0, -100.0])
SPOT = np.array([2.0, 0.0])  # underlying units held outright
# Hedge instruments: BTC inverse perpetual, 10 USD face; ETH linear perpetual, 1 ETH.
UPC = np.array([10.0, F[1]])


def value(moves: FloatArray, dvol: float = 0.0, hedge: FloatArray | None = None) -> float:
    """USD value of the book (and a hedge of ``hedge`` contracts) after relative moves."""
    f1 = F * (1.0 + moves)
    opt = black76_price(f1[UND], K, T, IV + dvol, CALL)
    v = float(Q @ opt) + float(SPOT @ f1)
    if hedge is not None:
        # inverse perp: N (S/S0 - 1) USD of P&L; linear perp: q (S - S0); both linear in m.
        v += float(hedge[0] * UPC[0] * moves[0] + hedge[1] * F[1] * moves[1])
    return v


def greeks(hedge: FloatArray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    delta, gamma = np.empty(2), np.empty(2)
    for i in range(2):
        e = np.zeros(2)
        e[i] = 1e-4
        up, mid, down = (
            value(e, hedge=hedge),
            value(np.zeros(2), hedge=hedge),
            value(-e, hedge=hedge),
        )
        delta[i] = (up - down) / 2e-4  # USD per unit proportional move
        gamma[i] = (up - 2 * mid + down) / 1e-8 / 100.0  # d delta_usd per 1% move
    vega = np.empty(2)
    for i in range(2):
        bump = np.where(np.equal(UND, i), 1e-4, 0.0)
        vu = float(Q @ black76_price(F[UND], K, T, IV + bump, CALL))
        vd = float(Q @ black76_price(F[UND], K, T, IV - bump, CALL))
        vega[i] = (vu - vd) / 2e-4 * 0.01  # USD per vol point
    return delta, gamma, vega


def test_hedge_to_zero_leaves_the_books_gamma_and_vega() -> None:
    delta, gamma, vega = greeks()
    assert np.abs(delta).min() > 1e4  # a real book to hedge
    h = delta_hedge(delta, UPC, gamma, vega)
    np.testing.assert_allclose(h.delta_after_usd, 0.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(h.trades.contracts, -delta / UPC, rtol=1e-15)
    d2, g2, v2 = greeks(h.trades.contracts)
    np.testing.assert_allclose(d2, 0.0, atol=1e-3)  # the revalued hedged book is flat
    np.testing.assert_allclose(h.residual_gamma_usd, g2, rtol=1e-6)
    np.testing.assert_allclose(h.residual_vega_usd, v2, rtol=1e-9)
    assert np.abs(g2).min() > 1.0  # there is residual risk to report


def test_hedge_back_to_the_limit_with_sign() -> None:
    delta = np.array([1.5e6, -2e5, -3e6, 4e5])
    limit = np.array([1e6, 5e5, 1e6, np.nan])
    target = limit_target(delta, limit)
    np.testing.assert_array_equal(target, [1e6, -2e5, -1e6, 4e5])
    upc = np.array([10.0, 3_000.0, 150.0, 0.1 * 60_000.0])
    h = delta_hedge(delta, upc, np.zeros(4), np.zeros(4), target_usd=target, lot=1.0)
    np.testing.assert_allclose(h.delta_after_usd, target, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(h.trades.contracts[[1, 3]], [0.0, 0.0])  # within limits
    np.testing.assert_allclose(h.trades.contracts[[0, 2]], [-5e4, 2e6 / 150.0], rtol=1e-15)
    # Lot-rounded: 13333.33 -> 13333 contracts of 150 USD.
    assert h.delta_after_rounded_usd[2] == pytest.approx(-3e6 + 13_333 * 150.0, abs=1e-6)


def test_underlying_without_instrument_is_left_as_is() -> None:
    h = delta_hedge(
        np.array([1e6, 2e6]), np.array([10.0, np.nan]), np.array([5.0, 7.0]), np.ones(2)
    )
    assert np.isnan(h.trades.contracts[1])
    np.testing.assert_allclose(h.delta_after_usd, [0.0, 2e6], atol=1e-9)
    np.testing.assert_array_equal(h.residual_gamma_usd, [5.0, 7.0])
