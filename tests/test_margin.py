"""monitor.quant.margin against a brute-force oracle written here.

The oracle is plain scalar Python: Black-76 with ``math.erfc``, the scenario list and vol
shocks rebuilt from Deribit's published description (not from the module), one loop over
scenarios and raw positions (not deduplicated), and for distance to call a fine scan plus
a scalar bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from monitor.quant.margin import (
    MarginSettings,
    Stress,
    distance_to_call,
    margin_scenarios,
    scenario_margin,
    shocked_vols,
    stress_pnl,
    vega_scale,
)
from monitor.quant.risk import OptionPositions, revalue

FloatArray = npt.NDArray[np.float64]
UNDS = ("BTC", "ETH", "SOL")
DAY = 1.0 / 365.0


# -- oracle ---------------------------------------------------------------------------------


def ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def b76(f: float, k: float, t: float, v: float, call: bool) -> float:
    w = 1.0 if call else -1.0
    sd = v * math.sqrt(max(t, 0.0))
    if sd <= 0.0:
        return max(w * (f - k), 0.0)
    d1 = math.log(f / k) / sd + 0.5 * sd
    d2 = d1 - sd
    return w * (f * ncdf(w * d1) - k * ncdf(w * d2))


@dataclass(frozen=True)
class Opt:
    """An option instrument; ``f`` its forward today (USD)."""

    und: int
    f: float
    k: float
    t: float
    v: float
    call: bool


@dataclass(frozen=True)
class Pos:
    """A raw position: an option (``opt``) or a linear one of ``usd`` value."""

    book: int
    und: int
    qty: float = 0.0
    opt: Opt | None = None
    usd: float = 0.0


def oracle_vol(v: float, t: float, state: str) -> float:
    """Deribit: IV x (1 +- range x (30 / days)^p), p 0.3 under 30 days else 0.13."""
    days = max(t * 365.0, 1.0)
    scale = math.pow(30.0 / days, 0.3 if days < 30.0 else 0.13)
    if state == "up":
        return max(v * (1.0 + 0.5 * scale), 0.5)
    if state == "down":
        return max(v * (1.0 - 0.25 * scale), 0.0)
    return v


def oracle_scenarios() -> list[tuple[float, str, float, str]]:
    """(move, vol state, weight, name): 9 moves x 3 vol states, then 8 extended."""
    out = []
    for j in range(-4, 5):
        m = 0.04 * j
        label = "0%" if j == 0 else f"{4 * j:+d}%"
        for state, word in (("up", "up"), ("same", "unchanged"), ("down", "down")):
            out.append((m, state, 1.0, f"{label} vol {word}"))
    for m, label in zip(
        (-0.66, -0.33, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0),
        ("-66%", "-33%", "+50%", "+100%", "+200%", "+300%", "+400%", "+500%"),
        strict=True,
    ):
        out.append((m, "up", 0.16 / abs(m), f"{label} vol up (extended)"))
    return out


def pos_pnl(p: Pos, move: float, state: str = "same", vol_factor: float = 1.0) -> float:
    if p.opt is None:
        return p.usd * move
    o = p.opt
    v = oracle_vol(o.v, o.t, state) * vol_factor
    return p.qty * (b76(o.f * (1.0 + move), o.k, o.t, v, o.call) - b76(o.f, o.k, o.t, o.v, o.call))


def worst(losses: list[float], sc: list[tuple[float, str, float, str]]) -> int:
    """The worst scenario; near-ties to a standard one, then to vol unchanged."""
    top = max(losses)
    near = [s for s in range(len(sc)) if losses[s] >= top - 1e-12 * abs(top)]
    return min(near, key=lambda s: ("extended" in sc[s][3], sc[s][1] != "same", s))


def oracle_margin(
    book: Sequence[Pos], joint: bool, n_und: int
) -> tuple[float, list[list[float]], list[str]]:
    """Margin, per-scenario-per-underlying P&L, and per-underlying worst names."""
    sc = oracle_scenarios()
    pnl = [
        [sum(pos_pnl(p, m, st) for p in book if p.und == u) for u in range(n_und)]
        for m, st, _, _ in sc
    ]
    if joint:
        losses = [-w * sum(row) for (_, _, w, _), row in zip(sc, pnl, strict=True)]
        j = worst(losses, sc)
        return max(max(losses), 0.0), pnl, [sc[j][3]]
    total = 0.0
    names = []
    for u in range(n_und):
        losses = [-w * row[u] for (_, _, w, _), row in zip(sc, pnl, strict=True)]
        j = worst(losses, sc)
        total += max(max(losses), 0.0)
        names.append(sc[j][3])
    return total, pnl, names


def oracle_distance(book: Sequence[Pos], headroom: float, sign: float) -> float:
    """First move (step 0.0005 scan, then bisection) at which headroom + P&L <= 0."""
    if headroom <= 0.0:
        return 0.0

    def g(s: float) -> float:
        return headroom + sum(pos_pnl(p, sign * s) for p in book)

    prev = 0.0
    for j in range(1, 1801):
        s = 0.0005 * j
        if g(s) <= 0.0:
            lo, hi = prev, s
            while hi - lo > 1e-13:
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if g(mid) > 0.0 else (lo, mid)
            return hi
        prev = s
    return math.nan


# -- building the module's inputs from raw positions ----------------------------------------


def arrays(
    positions: Sequence[Pos], n_books: int, n_und: int
) -> tuple[FloatArray, OptionPositions | None]:
    """``linear_usd`` (n, k) and options deduplicated per instrument, (i, k) quantities."""
    lin = np.zeros((n_und, n_books))
    rows: dict[Opt, int] = {}
    qty: list[list[float]] = []
    for p in positions:
        if p.opt is None:
            lin[p.und, p.book] += p.usd
            continue
        if p.opt not in rows:
            rows[p.opt] = len(qty)
            qty.append([0.0] * n_books)
        qty[rows[p.opt]][p.book] += p.qty
    if not rows:
        return lin, None
    opts = list(rows)
    return lin, OptionPositions(
        underlying=np.array([o.und for o in opts], dtype=np.int64),
        forward=np.array([o.f for o in opts]),
        strike=np.array([o.k for o in opts]),
        t=np.array([o.t for o in opts]),
        vol=np.array([o.v for o in opts]),
        is_call=np.array([o.call for o in opts]),
        quantity=np.array(qty),
    )


BTC_P = Opt(0, 60_000.0, 54_000.0, 20 * DAY, 0.55, False)
BTC_C = Opt(0, 60_000.0, 66_000.0, 45 * DAY, 0.50, True)
BTC_C_SHORT = Opt(0, 60_000.0, 61_000.0, 3 * DAY, 0.62, True)
ETH_C = Opt(1, 3_000.0, 3_000.0, 10 * DAY, 0.70, True)
ETH_P = Opt(1, 3_000.0, 3_000.0, 10 * DAY, 0.70, False)
SOL_P = Opt(2, 150.0, 100.0, 90 * DAY, 0.45, False)

# Book 0: one underlying, short puts, long call, short perp.
# Book 1: BTC and ETH: ETH short straddle, BTC long put and spot, shares BTC_P with book 0.
# Book 2: linear only over three underlyings (spot long, perps short).
# Book 3: three underlyings, far OTM short SOL puts (the extended table's case), mixed.
BOOKS: list[Pos] = [
    Pos(0, 0, -8.0, BTC_P),
    Pos(0, 0, 3.0, BTC_C),
    Pos(0, 0, -4.0, BTC_C_SHORT),
    Pos(0, 0, usd=-90_000.0),
    Pos(1, 0, 5.0, BTC_P),
    Pos(1, 0, usd=240_000.0),
    Pos(1, 1, -40.0, ETH_C),
    Pos(1, 1, -40.0, ETH_P),
    Pos(1, 1, usd=30_000.0),
    Pos(2, 0, usd=500_000.0),
    Pos(2, 1, usd=-200_000.0),
    Pos(2, 2, usd=-100_000.0),
    Pos(3, 2, -2_000.0, SOL_P),
    Pos(3, 0, -2.0, BTC_C),
    Pos(3, 1, 25.0, ETH_P),
    Pos(3, 1, usd=-20_000.0),
]
K = 4


def book(b: int) -> list[Pos]:
    return [p for p in BOOKS if p.book == b]


# -- scenarios and vol shocks ---------------------------------------------------------------


def test_scenario_list_is_deribits_35() -> None:
    sc = margin_scenarios()
    want = oracle_scenarios()
    assert sc.size == 35
    assert list(sc.names) == [w[3] for w in want]
    np.testing.assert_allclose(sc.moves, [w[0] for w in want], atol=1e-15)
    np.testing.assert_allclose(sc.weights, [w[2] for w in want], rtol=1e-15)
    states = {"up": 1, "same": 0, "down": -1}
    assert sc.vol_state.tolist() == [states[w[1]] for w in want]
    assert sc.extended.sum() == 8
    assert sc.moves[13] == 0.0  # the zero move exactly, so its P&L is exactly 0
    # A different grid: +-10% in 2 steps per side, no extended table: 5 x 3 scenarios.
    small = margin_scenarios(MarginSettings(price_range=0.1, price_steps=2, extended_moves=()))
    assert small.size == 15
    assert small.names[0] == "-10% vol up"
    assert small.names[-1] == "+10% vol down"


def test_vol_shock_scales_as_30_over_days_to_the_power() -> None:
    t = np.array([30.0, 15.0, 60.0, 365.0, 0.25, 0.0]) * DAY
    want = [1.0, 2.0**0.3, 0.5**0.13, (30.0 / 365.0) ** 0.13, 30.0**0.3, 30.0**0.3]
    np.testing.assert_allclose(vega_scale(t), want, rtol=1e-14)
    # Continuous at 30 days (both powers give 1).
    near = vega_scale(np.array([30.0 - 1e-9, 30.0 + 1e-9]) * DAY)
    np.testing.assert_allclose(near, [1.0, 1.0], atol=1e-10)
    v = shocked_vols(np.array([0.8, 0.8, 0.2]), np.array([15.0, 60.0, 60.0]) * DAY)
    np.testing.assert_allclose(
        v[:, 0], [0.8 * (1 + 0.5 * 2**0.3), 0.8, 0.8 * (1 - 0.25 * 2**0.3)], rtol=1e-14
    )
    np.testing.assert_allclose(
        v[:, 1], [0.8 * (1 + 0.5 * 0.5**0.13), 0.8, 0.8 * (1 - 0.25 * 0.5**0.13)], rtol=1e-14
    )
    assert v[0, 2] == 0.5  # min_vol_shock_up: 0.2 x 1.46 < 0.5
    # A down shock larger than the IV floors at 0.
    wild = shocked_vols(np.array([0.5]), np.array([1.0 * DAY]), MarginSettings(vol_range_down=1))
    assert wild[2, 0] == 0.0


# -- scenario margin ------------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", ["sum", "joint"])
def test_scenario_margin_matches_the_oracle(aggregation: str) -> None:
    lin, opts = arrays(BOOKS, K, 3)
    settings = MarginSettings(aggregation="joint" if aggregation == "joint" else "sum")
    res = scenario_margin(lin, opts, settings, UNDS)
    assert res.unpriced == 0
    assert res.pnl_usd.shape == (35, 3, K)
    for b in range(K):
        margin, pnl, names = oracle_margin(book(b), aggregation == "joint", 3)
        np.testing.assert_allclose(res.pnl_usd[:, :, b], pnl, rtol=1e-9, atol=1e-6)
        assert res.margin_usd[b] == pytest.approx(margin, rel=1e-9, abs=1e-6)
        assert margin > 0.0
        if aggregation == "joint":
            assert res.worst_scenario[b] == names[0]
    # The joint figure never exceeds the sum of per-underlying worst losses.
    assert (res.joint_loss_usd <= res.loss_by_underlying_usd.sum(axis=0) + 1e-9).all()


def test_sum_aggregation_names_the_worst_scenario_of_each_underlying() -> None:
    lin, opts = arrays(BOOKS, K, 3)
    res = scenario_margin(lin, opts, MarginSettings(), UNDS)
    _, _, names = oracle_margin(book(1), False, 3)
    loss = res.loss_by_underlying_usd[:, 1]
    order = [u for u in np.argsort(-loss) if loss[u] > 0]
    assert [int(u) for u in order] == [0, 1] or [int(u) for u in order] == [1, 0]
    assert res.worst_scenario[1] == " + ".join(f"{UNDS[u]} {names[u]}" for u in order)
    # Linear-only: the loss is the same whatever the vol, so no vol shock is named; long
    # BTC loses on the way down, short ETH and SOL on the way up.
    assert res.worst_scenario[2] == "BTC -16% vol unchanged + ETH +16% vol unchanged + " + (
        "SOL +16% vol unchanged"
    )
    assert res.margin_usd[2] == pytest.approx(0.16 * (500_000 + 200_000 + 100_000), rel=1e-14)


def test_extended_table_sets_the_margin_of_far_otm_short_puts() -> None:
    # 2,000 short SOL puts 33% out of the money: nothing within +-16%, a lot at -66%.
    lin, opts = arrays([Pos(0, 2, -2_000.0, SOL_P)], 1, 3)
    res = scenario_margin(lin, opts, MarginSettings(), UNDS)
    assert res.worst_scenario[0] in ("SOL -66% vol up (extended)", "SOL -33% vol up (extended)")
    margin, _, _ = oracle_margin([Pos(0, 2, -2_000.0, SOL_P)], False, 3)
    assert res.margin_usd[0] == pytest.approx(margin, rel=1e-12)
    # Twice the extended weight doubles a margin set by the extended table.
    twice = scenario_margin(lin, opts, MarginSettings(extended_weight=2.0), UNDS)
    assert twice.margin_usd[0] == pytest.approx(2.0 * margin, rel=1e-12)
    # Without the extended table only the standard grid counts, a much smaller loss.
    none = scenario_margin(lin, opts, MarginSettings(extended_moves=()), UNDS)
    assert none.margin_usd[0] < 0.5 * margin


def test_time_is_not_advanced_and_a_flat_scenario_is_zero() -> None:
    lin, opts = arrays(BOOKS, K, 3)
    res = scenario_margin(lin, opts, MarginSettings(), UNDS)
    zero = res.scenarios.names.index("0% vol unchanged")
    assert (res.pnl_usd[zero] == 0.0).all()
    # A book of long options only: its worst case is vol down at a zero-ish move, never a
    # loss beyond the premium.
    lin1, opts1 = arrays([Pos(0, 0, 1.0, BTC_C)], 1, 3)
    long_only = scenario_margin(lin1, opts1, MarginSettings(), UNDS)
    assert 0.0 < long_only.margin_usd[0] < b76(60_000.0, 66_000.0, 45 * DAY, 0.5, True)


def test_no_positions_and_unpriced_rows() -> None:
    res = scenario_margin(np.zeros((3, 2)), None, MarginSettings(), UNDS)
    assert (res.margin_usd == 0.0).all()
    assert res.worst_scenario == (None, None)
    _, opts = arrays(BOOKS, K, 3)
    assert opts is not None
    vol = opts.vol.copy()
    vol[0] = np.nan
    bad = OptionPositions(
        opts.underlying, opts.forward, opts.strike, opts.t, vol, opts.is_call, opts.quantity
    )
    out = scenario_margin(np.zeros((3, K)), bad, MarginSettings(), UNDS)
    assert out.unpriced == 1
    assert np.isfinite(out.pnl_usd).all()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="price_range"):
        MarginSettings(price_range=1.5)
    with pytest.raises(ValueError, match="aggregation"):
        MarginSettings(aggregation="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="extended"):
        MarginSettings(extended_moves=(-1.2,))
    with pytest.raises(ValueError, match="move of BTC"):
        Stress("crash", {"BTC": -1.0})
    with pytest.raises(ValueError, match="unique"):
        MarginSettings(stresses=(Stress("a"), Stress("a")))


# -- stresses -------------------------------------------------------------------------------


def test_stresses_match_the_oracle() -> None:
    lin, opts = arrays(BOOKS, K, 3)
    stresses = [
        Stress("BTC -20% vol +50%", {"BTC": -0.2}, vol_shift=0.5),
        Stress("everything +30%, vol -40%", default_move=0.3, vol_shift=-0.4),
        Stress("ETH -50%, others -10%", {"ETH": -0.5, "DOGE": 0.9}, default_move=-0.1),
        Stress("nothing"),
    ]
    res = stress_pnl(lin, opts, stresses, UNDS)
    assert res.names == tuple(s.name for s in stresses)
    assert res.pnl_usd.shape == (4, K)
    for j, st in enumerate(stresses):
        for b in range(K):
            want = sum(
                pos_pnl(p, st.moves.get(UNDS[p.und], st.default_move), "same", 1.0 + st.vol_shift)
                for p in book(b)
            )
            assert res.pnl_usd[j, b] == pytest.approx(want, rel=1e-9, abs=1e-6)
    assert (res.pnl_usd[3] == 0.0).all()


# -- distance to a margin call --------------------------------------------------------------

COV = np.array([[0.36, 0.30, 0.20], [0.30, 0.64, 0.25], [0.20, 0.25, 0.81]])


def exposure_of(positions: Sequence[Pos], k: int) -> FloatArray:
    """delta_usd per book and underlying (bump-and-reprice of the oracle, 1e-6 relative)."""
    x = np.zeros((k, 3))
    for p in positions:
        h = 1e-6
        x[p.book, p.und] += (pos_pnl(p, h) - pos_pnl(p, -h)) / (2.0 * h)
    return x


def test_distance_to_call_matches_the_oracle() -> None:
    lin, opts = arrays(BOOKS, K, 3)
    headroom = np.array([60_000.0, 90_000.0, 50_000.0, 40_000.0])
    mm = np.array([100_000.0, 50_000.0, 10_000.0, 0.0])
    x = exposure_of(BOOKS, K)
    d = distance_to_call(headroom + mm, mm, lin, opts, COV, x)
    assert d.valid.all()
    np.testing.assert_array_equal(d.headroom_usd, headroom)
    for b in range(K):
        down = oracle_distance(book(b), headroom[b], -1.0)
        up = oracle_distance(book(b), headroom[b], 1.0)
        for got, want, flag in (
            (d.down[b], down, d.reachable_down[b]),
            (d.up[b], up, d.reachable_up[b]),
        ):
            if math.isnan(want):
                assert math.isnan(got)
                assert not flag
            else:
                assert flag
                assert got == pytest.approx(want, abs=1e-6)
    # The books are built so that most directions can be called.
    assert int(d.reachable_down.sum() + d.reachable_up.sum()) >= 6
    # Sigmas: |ln(1 -+ m)| over the 1-day sd of the gross-exposure-weighted basket.
    for b in range(K):
        w = np.abs(x[b]) / np.abs(x[b]).sum()
        sig = math.sqrt(float(w @ COV @ w) / 365.0)
        assert d.sigma_1d[b] == pytest.approx(sig, rel=1e-12)
        if d.reachable_down[b]:
            assert d.sigmas_down[b] == pytest.approx(-math.log(1 - d.down[b]) / sig, rel=1e-12)
        if d.reachable_up[b]:
            assert d.sigmas_up[b] == pytest.approx(math.log(1 + d.up[b]) / sig, rel=1e-12)


def test_linear_book_distance_is_headroom_over_exposure() -> None:
    # Long 1M of BTC perps, 150k over maintenance: called at exactly -15%; never upward.
    lin = np.array([[1e6], [0.0], [0.0]])
    d = distance_to_call([250_000.0], [100_000.0], lin, None, COV, [[1e6, 0.0, 0.0]])
    assert d.down[0] == pytest.approx(0.15, abs=1e-9)
    assert d.reachable_down[0]
    assert not d.reachable_up[0]
    assert math.isnan(d.up[0])
    assert math.isnan(d.sigmas_up[0])
    assert d.sigmas_down[0] == pytest.approx(-math.log(0.85) / math.sqrt(0.36 / 365), rel=1e-9)


def test_a_book_already_below_maintenance_has_distance_zero() -> None:
    lin, opts = arrays(book(0), 1, 3)
    d = distance_to_call([90_000.0], [100_000.0], lin, opts, COV, exposure_of(book(0), 1))
    assert d.down[0] == 0.0
    assert d.up[0] == 0.0
    assert d.reachable_down[0]
    assert d.reachable_up[0]
    assert d.sigmas_down[0] == 0.0


def test_a_book_that_cannot_be_called_is_unreachable_with_nan() -> None:
    # Long calls and puts: the loss is bounded by the premium, far below the headroom.
    pos = [Pos(0, 0, 2.0, BTC_C), Pos(0, 1, 10.0, ETH_P)]
    lin, opts = arrays(pos, 1, 3)
    d = distance_to_call([1e6], [1e5], lin, opts, COV, exposure_of(pos, 1))
    assert not d.reachable_down[0]
    assert not d.reachable_up[0]
    for v in (d.down[0], d.up[0], d.sigmas_down[0], d.sigmas_up[0]):
        assert math.isnan(v)
    # Unknown maintenance margin: nothing is made up either.
    u = distance_to_call([1e6], [math.nan], lin, opts, COV, exposure_of(pos, 1))
    assert not u.valid[0]
    assert not u.reachable_down[0]
    assert math.isnan(u.down[0])
    # An empty book with headroom can never be called.
    e = distance_to_call([1.0], [0.0], np.zeros((3, 1)), None, COV, np.zeros((1, 3)))
    assert not e.reachable_down[0]
    assert math.isnan(e.sigma_1d[0])


def short_straddle_distance(iv: float, cov_scale: float = 1.0) -> tuple[float, float, float]:
    """Short 30 ETH straddles marked at ``iv``; equity = cash - their value at that IV."""
    c = Opt(1, 3_000.0, 3_000.0, 10 * DAY, iv, True)
    p = Opt(1, 3_000.0, 3_000.0, 10 * DAY, iv, False)
    pos = [Pos(0, 1, -30.0, c), Pos(0, 1, -30.0, p)]
    lin, opts = arrays(pos, 1, 3)
    value = -30.0 * (b76(3_000.0, 3_000.0, 10 * DAY, iv, True) + b76(3e3, 3e3, 10 * DAY, iv, False))
    equity = 52_000.0 + value
    d = distance_to_call([equity], [40_000.0], lin, opts, COV * cov_scale, [[0.0, 1.0, 0.0]])
    assert d.reachable_down[0]
    assert d.reachable_up[0]
    return float(d.down[0]), float(d.up[0]), float(d.sigmas_down[0])


def test_short_gamma_distance_shrinks_as_volatility_rises() -> None:
    # Implied vol up: the short options are worth more (equity falls) and stay dearer after
    # any move, so the call comes sooner in both directions.
    d0, u0, _ = short_straddle_distance(0.6)
    d1, u1, _ = short_straddle_distance(0.9)
    assert 0.0 < d1 < 0.8 * d0
    assert 0.0 < u1 < 0.8 * u0
    # Realised vol up (covariance x 2): the same move is fewer sigmas, by sqrt(2).
    _, _, s0 = short_straddle_distance(0.6)
    _, _, s1 = short_straddle_distance(0.6, cov_scale=2.0)
    assert s1 == pytest.approx(s0 / math.sqrt(2.0), rel=1e-12)


def test_a_delta_hedged_book_is_further_from_a_call() -> None:
    # 20 short BTC puts (long delta) vs the same with the delta sold in perpetuals.
    put = Opt(0, 60_000.0, 57_000.0, 20 * DAY, 0.55, False)
    naked = [Pos(0, 0, -20.0, put)]
    delta_usd = float(exposure_of(naked, 1)[0, 0])
    hedged = [*naked, Pos(0, 0, usd=-delta_usd)]
    out = []
    for pos in (naked, hedged):
        lin, opts = arrays(pos, 1, 3)
        d = distance_to_call([200_000.0], [100_000.0], lin, opts, COV, exposure_of(pos, 1))
        out.append(float(np.nanmin([d.down[0], d.up[0]])))
        assert d.down[0] == pytest.approx(oracle_distance(pos, 100_000.0, -1.0), abs=1e-6)
    assert out[1] > 1.5 * out[0]


# -- against monitor.quant.risk.revalue on a larger random book -----------------------------------


def random_book(
    n_inst: int, n_und: int, k: int, seed: int = 7
) -> tuple[FloatArray, OptionPositions]:
    rng = np.random.default_rng(seed)
    und = rng.integers(0, n_und, n_inst)
    spot = rng.uniform(50.0, 5_000.0, n_und)
    qty = np.where(rng.random((n_inst, k)) < 0.3, rng.integers(-20, 21, (n_inst, k)), 0)
    opts = OptionPositions(
        underlying=und.astype(np.int64),
        forward=spot[und] * rng.uniform(0.99, 1.02, n_inst),
        strike=spot[und] * rng.uniform(0.5, 1.6, n_inst),
        t=rng.choice([0.0, 0.5 * DAY, 3 * DAY, 29 * DAY, 31 * DAY, 200 * DAY], n_inst),
        vol=rng.uniform(0.0, 1.2, n_inst),
        is_call=rng.random(n_inst) < 0.5,
        quantity=qty.astype(np.float64),
    )
    lin = rng.normal(0.0, 2e5, (n_und, k))
    return lin, opts


def test_vol_unchanged_scenarios_agree_with_revalue_at_zero_horizon() -> None:
    # 5,000 instruments: several (scenarios x options) blocks, expired and zero-vol rows.
    n_und, k = 5, 4
    lin, opts = random_book(5_000, n_und, k)
    res = scenario_margin(lin, opts, MarginSettings(), [f"X{j}" for j in range(n_und)])
    same = np.flatnonzero(res.scenarios.vol_state == 0)
    moves = res.scenarios.moves[same]
    # One revalue scenario per (move, underlying), that underlying alone moving.
    r = np.zeros((moves.size * n_und, n_und))
    for j, m in enumerate(moves):
        for u in range(n_und):
            r[j * n_und + u, u] = math.log1p(m)
    ref = revalue(r, 0.0, linear_usd=lin, options=opts).pnl_usd.reshape(moves.size, n_und, k)
    np.testing.assert_allclose(res.pnl_usd[same], ref, rtol=1e-10, atol=1e-6)


def test_distance_is_a_root_of_equity_after_the_move() -> None:
    n_und, k = 5, 4
    lin, opts = random_book(5_000, n_und, k, seed=11)
    x0 = np.ones((k, n_und))
    # Headroom at 60% of the loss of a uniform 10% move (the worse direction).
    r = np.log1p(np.array([[-0.1] * n_und, [0.1] * n_und]))
    pnl = revalue(r, 0.0, linear_usd=lin, options=opts).pnl_usd  # (2, k)
    headroom = 0.6 * np.maximum(-pnl.min(axis=0), 1.0)
    d = distance_to_call(headroom + 1e5, np.full(k, 1e5), lin, opts, np.eye(n_und) * 0.5, x0)
    for side, dist, flag in ((-1.0, d.down, d.reachable_down), (1.0, d.up, d.reachable_up)):
        for b in np.flatnonzero(flag).tolist():
            rr = np.full((1, n_und), math.log1p(side * dist[b]))
            g = (
                headroom[b]
                + revalue(rr, 0.0, linear_usd=lin[:, b], options=column_of(opts, b)).pnl_usd[0]
            )
            assert abs(g) < 1e-4  # Newton lands on the root well inside the 1e-9 tolerance
    assert d.reachable_down.all()  # every book loses on the way down


def column_of(opts: OptionPositions, b: int) -> OptionPositions:
    return OptionPositions(
        opts.underlying,
        opts.forward,
        opts.strike,
        opts.t,
        opts.vol,
        opts.is_call,
        opts.quantity[:, b],
    )


@pytest.mark.parametrize("centre", [0.059, 0.0555, -0.047])
def test_distance_sees_a_short_dated_dip_between_scan_points(centre: float) -> None:
    """A short butterfly with 0.5% wings 30 minutes from expiry: its loss is a narrow dip
    around the body. The first call is where brute force finds it, not missed between
    scan points."""
    f = 60_000.0
    t = 30.0 / (365.0 * 1_440.0)
    body = f * (1.0 + centre)
    wings = (body * 0.995, body * 1.005)
    legs = [
        Pos(0, 0, -100.0, Opt(0, f, wings[0], t, 0.6, True)),
        Pos(0, 0, 200.0, Opt(0, f, body, t, 0.6, True)),
        Pos(0, 0, -100.0, Opt(0, f, wings[1], t, 0.6, True)),
    ]
    lin, opts = arrays(legs, 1, 3)
    headroom = 8_000.0  # the dip is about 12,700 USD deep at its body
    want = oracle_distance(legs, headroom, 1.0 if centre > 0 else -1.0)
    assert 0.03 < want < 0.07  # the dip reaches the call, near its body
    d = distance_to_call([headroom + 1_000.0], [1_000.0], lin, opts, COV, [[0.0, 0.0, 0.0]])
    got, flag = (d.up[0], d.reachable_up[0]) if centre > 0 else (d.down[0], d.reachable_down[0])
    assert flag
    assert got == pytest.approx(want, abs=1e-6)
