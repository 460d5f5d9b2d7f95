"""What the evaluation no longer recomputes gives the figures it would compute.

- ``psd=True`` (a covariance the evaluator already repaired is not repaired again) gives
  the same figures, bit for bit, as the repair would, on repaired non-PSD covariances and
  their blocks; ``book_contributions`` is ``book_risk``'s contributions, bit for bit.
- The four regime baselines updated as one array operation equal four separate ones.
- The evaluator's memos (estimator figures once per sample, the flat book once per n,
  covariances known PSD) leave every report as a straightforward evaluation writes it:
  an evaluator whose memos are emptied and whose covariances are always repaired again
  writes the same reports, byte for byte, over replays with and without positions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from monitor.engine import valuation
from monitor.engine.actions import ActionSettings
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import Evaluator, RiskSettings
from monitor.engine.valuation import MarketArrays, build_book, value_book
from monitor.model.events import AccountEvent, PositionEvent, PriceEvent
from monitor.model.instruments import InstrumentRegistry
from monitor.model.snapshot import RiskSnapshot
from monitor.quant import margin
from monitor.quant.attribution import attribute_drift
from monitor.quant.budgeting import rebalance_target
from monitor.quant.estimator import RollingEstimator
from monitor.quant.margin import Stress, stress_pnl
from monitor.quant.regime import RegimeBaseline, RegimeBaselines, RegimeFigures
from monitor.quant.risk import (
    book_contributions,
    book_risk,
    contributions,
    normal_draws,
    psd_covariance,
    risk_shares,
    scenario_returns,
    var_delta_normal,
)
from monitor.quant.stress import stressed_var
from monitor.rules.config import DEFAULT_RULES
from monitor.rules.pack import rule_engine

FloatArray = npt.NDArray[np.float64]
T0 = 1_767_225_600_000


def repaired_cov(rng: np.random.Generator, n: int) -> tuple[FloatArray, bool]:
    """A covariance from pairwise correlations that need not agree (often not PSD),
    repaired: what the evaluator holds. Returns it and whether it needed the repair."""
    c = np.eye(n)
    iu = np.triu_indices(n, 1)
    c[iu] = rng.uniform(-0.99, 0.99, len(iu[0]))
    c = np.triu(c) + np.triu(c, 1).T
    sd = rng.uniform(0.2, 1.5, n)
    rep = psd_covariance(c * np.outer(sd, sd))
    return rep.cov, rep.repaired


def same(a: Any, b: Any) -> bool:
    """Bit for bit (NaN equal to NaN, -0.0 unequal to 0.0)."""
    x, y = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
    return x.shape == y.shape and x.tobytes() == y.tobytes()


def test_psd_flag_gives_the_repair_figures_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    repaired = 0
    for trial in range(200):
        n = int(rng.integers(2, 7))
        cov, was = repaired_cov(rng, n)
        repaired += was
        x = rng.normal(0.0, 1e6, n) * (rng.random(n) < 0.8)
        g = rng.normal(0.0, 1e5, n) * (rng.random(n) < 0.5)
        idx = np.flatnonzero(rng.random(n) < 0.7)
        sub = cov[np.ix_(idx, idx)]  # a block, as actions take them
        a, b = contributions(x[idx], sub), contributions(x[idx], sub, psd=True)
        for f in ("rc_usd", "share", "budget", "drift", "excluded"):
            assert same(getattr(a, f), getattr(b, f)), (trial, f)
        assert (a.sigma_usd, a.share_reason) == (b.sigma_usd, b.share_reason)
        xs, gs = np.vstack([x, -x, 0 * x]), np.vstack([g, g, g])
        ra = book_risk(xs, gs, cov, [None] * 3)
        rb = book_risk(xs, gs, cov, [None] * 3, psd=True)
        for p, q in zip(ra, rb, strict=True):
            assert same(p.contributions.share, q.contributions.share)
            assert p.delta_normal.var_usd == q.delta_normal.var_usd
            assert same(p.delta_gamma.var_usd, q.delta_gamma.var_usd)
        cov_ref, _ = repaired_cov(rng, n)
        if idx.size >= 2 and np.count_nonzero(x[idx]) == idx.size:
            da = attribute_drift(x[idx] * 0.7, cov_ref[np.ix_(idx, idx)], x[idx], sub)
            db = attribute_drift(x[idx] * 0.7, cov_ref[np.ix_(idx, idx)], x[idx], sub, psd=True)
            for f in ("share_now", "positions", "volatility", "correlation", "residual"):
                assert same(getattr(da, f), getattr(db, f)), (trial, f)
            ta = rebalance_target(x[idx], sub)
            tb = rebalance_target(x[idx], sub, psd=True)
            assert same(ta.exposure_usd, tb.exposure_usd)
            assert same(ta.sigma_usd, tb.sigma_usd)
    assert repaired > 50  # the repaired covariances are exercised, not only PSD ones


def test_psd_flag_skips_the_repair() -> None:
    """The flag is a promise: a non-PSD matrix passed with it is not repaired (so the
    evaluator must pass it only for its own repairs, fully known)."""
    bad = np.array([[1.0, 0.9, 0.9], [0.9, 1.0, -0.9], [0.9, -0.9, 1.0]])
    x = np.array([1.0, 1.0, -1.0])
    assert contributions(x, bad).non_psd
    fixed = psd_covariance(bad).cov
    assert same(stressed_var(x, bad).normal.var_usd, var_delta_normal(x, fixed).var_usd)
    assert not same(
        stressed_var(x, bad, psd=True).normal.var_usd, stressed_var(x, bad).normal.var_usd
    )
    assert not np.isclose(
        contributions(x, bad).sigma_usd, contributions(x, bad, psd=True).sigma_usd
    )


@pytest.mark.parametrize("with_gamma", [False, True])
def test_book_contributions_are_book_risks_bit_for_bit(with_gamma: bool) -> None:
    rng = np.random.default_rng(5)
    for _ in range(100):
        n = int(rng.integers(1, 6))
        cov, _ = repaired_cov(rng, n) if n > 1 else (np.array([[0.5]]), False)
        if rng.random() < 0.3:  # an asset the estimator has no covariance for yet
            cov = cov.copy()
            cov[-1, :] = cov[:, -1] = np.nan
        k = int(rng.integers(1, 4))
        x = rng.normal(0.0, 1e6, (k, n)) * (rng.random((k, n)) < 0.6)
        # Gamma where there is no delta: those assets are active in book_risk too.
        g = rng.normal(0.0, 1e5, (k, n)) * (x == 0.0) if with_gamma else np.zeros((k, n))
        budgets: list[FloatArray | None] = [
            None if rng.random() < 0.5 else rng.uniform(0.0, 1.0, n) for _ in range(k)
        ]
        for psd in (False, True):
            if psd and not np.isfinite(cov).all():
                continue
            want = [r.contributions for r in book_risk(x, g, cov, budgets, psd=psd)]
            got = book_contributions(x, cov, budgets, gamma_cash=g, psd=psd)
            for a, b in zip(want, got, strict=True):
                for f in ("rc_usd", "share", "budget", "drift", "excluded"):
                    assert same(getattr(a, f), getattr(b, f)), f
                assert same(a.sigma_usd, b.sigma_usd)
                assert same(a.half_l1, b.half_l1)
                assert (a.non_psd, a.share_reason) == (b.non_psd, b.share_reason)


def test_regime_baselines_together_equal_four_separate_ones() -> None:
    rng = np.random.default_rng(11)
    together = RegimeBaselines(3_600_000)
    parts = [RegimeBaseline(3_600_000) for _ in range(4)]
    ts = T0
    n = 2
    for step in range(300):
        if step == 150:
            n = 3  # a new underlying: the arrays grow (the separate path)
        ts += int(rng.integers(-500, 5_000))  # a clock stepped back counts as no time
        vals = rng.uniform(0.5, 2.0, (2, n))
        vals[rng.random((2, n)) < 0.2] = np.nan
        avg, ar = (float(v) if rng.random() < 0.8 else np.nan for v in rng.uniform(0, 1, 2))
        fig = RegimeFigures(vals[0], vals[1], avg, ar, np.ones(n, dtype=bool))
        got = together.update(fig, ts)
        want = [p.update(v, ts) for p, v in zip(parts, (vals[0], vals[1], avg, ar), strict=True)]
        assert same(got.vol_ratio, want[0])
        assert same(got.realised_to_implied, want[1])
        assert same(got.average_correlation, float(want[2]))
        assert same(got.absorption_ratio, float(want[3]))
    state = together.state()
    for key, p in zip(
        ("vol_ratio", "realised_to_implied", "average_correlation", "absorption_ratio"),
        parts,
        strict=True,
    ):
        assert msgspec.json.encode(state[key]) == msgspec.json.encode(p.state())


class Straightforward(Evaluator):
    """The evaluator with its memos emptied before every evaluation and its covariances
    never trusted as PSD: every figure computed from scratch."""

    def evaluate(self, *args: Any, **kwargs: Any) -> RiskSnapshot:
        self._figures_memo = None
        self._flat_memo = None
        self._regime_memo = None
        self._regime_last = None
        self._actions._attribution_memo.clear()
        self._actions._target_memo.clear()
        return super().evaluate(*args, **kwargs)

    def _covariances(self, est: Any, n: int) -> Any:
        out = super()._covariances(est, n)  # its memo stays: it counts repairs per sample
        self._psd_known = (False, False)
        return out


def engine(straightforward: bool) -> Engine:
    eng = Engine(
        EngineSettings(warmup_ms=20_000),
        risk=RiskSettings(
            scenario_interval_ms=5_000,
            actions=ActionSettings(refresh_ms=2_000, lookback_ms=96 * 5_000),
        ),
        rules=rule_engine(DEFAULT_RULES, {}),
    )
    if straightforward:
        eng._evaluator = Straightforward(eng._evaluator.settings)
    return eng


def reports(straightforward: bool, positions: bool) -> list[bytes]:
    """A replay of 3 underlyings at uneven times (several evaluations per estimator
    sample, some with none), an underlying appearing later, options, two accounts."""
    eng = engine(straightforward)
    rng = np.random.default_rng(17)
    level = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0}
    out: list[bytes] = []
    ts = T0
    for k in range(240):
        ts += int(rng.integers(100, 700))
        for u in level:
            if u == "SOL" and k < 60:
                continue  # SOL appears later: the figures grow a row
            if rng.random() < 0.7:
                level[u] *= float(np.exp(0.003 * rng.standard_normal()))
                eng.apply(PriceEvent(ts, u, level[u]), "t")
                eng.apply(PriceEvent(ts, f"{u}-PERPETUAL", level[u]), "t")
        if positions and k % 20 == 0:
            iv = float(rng.uniform(0.5, 0.7))  # the marked IV moves (regime memo)
            eng.apply(PriceEvent(ts, "BTC-27DEC26-60000-C", 0.05, iv, level["BTC"]), "t")
        if positions and k == 30:
            for account, name, qty in (
                ("desk", "BTC-PERPETUAL", 2.0),
                ("desk", "ETH-PERPETUAL", -30.0),
                ("desk", "BTC-27DEC26-60000-C", 5.0),
                ("hedge", "ETH-PERPETUAL", 10.0),
            ):
                eng.apply(PositionEvent(ts, account, name, qty), "t")
            eng.apply(AccountEvent(ts, "desk", 1e6, 2e5, 1e5), "t")
        if positions and k == 120:
            eng.apply(PositionEvent(ts, "hedge", "SOL-PERPETUAL", -500.0), "t")
        snap = eng.evaluate(ts)
        doc = snap.report()
        doc.pop("evaluation_seconds", None)
        out.append(msgspec.json.encode(doc))
    return out


@pytest.mark.parametrize("positions", [False, True])
def test_memoised_evaluations_write_the_straightforward_reports(positions: bool) -> None:
    got, want = reports(False, positions), reports(True, positions)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a == b, f"evaluation {k} differs"
    # The replay exercises what it should: risk shares, attribution and a grown registry.
    last = msgspec.json.decode(got[-1])
    assert last["correlation"]["assets"] == ["BTC", "ETH", "SOL"]
    assert all(v is not None for row in last["correlation"]["matrix"] for v in row)
    if positions:
        desk = last["accounts"]["desk"]
        assert desk["attribution"]["underlyings"]
        assert desk["suggestions"]["rebalance"]
        assert len(last["accounts"]["hedge"]["contributions"]) == 2


def test_covariances_are_trusted_as_psd_only_when_fully_known() -> None:
    est = RollingEstimator(1_000, 3_600_000, 300_000, 10_000, var_halflife_ms=3_600_000)
    ev = Evaluator()
    rng = np.random.default_rng(2)
    prices = np.array([100.0, 50.0])
    for _ in range(20):
        prices = prices * np.exp(0.01 * rng.standard_normal(2))
        est.sample(prices)
    ev._covariances(est, 2)
    assert ev._psd_known == (True, True)
    ev._covariances(est, 3)  # a third underlying the estimator has not seen: NaN padded
    assert ev._psd_known == (False, False)
    est.sample(np.append(prices, 7.0))  # seen, no return yet: NaN covariances
    ev._covariances(est, 3)
    assert ev._psd_known == (False, False)
    for _ in range(3):
        prices = prices * np.exp(0.01 * rng.standard_normal(2))
        est.sample(np.append(prices, 7.0 * np.exp(0.01 * rng.standard_normal())))
    ev._covariances(est, 3)
    assert ev._psd_known == (True, True)


def test_flat_book_risk_follows_the_registry() -> None:
    """Without positions the flat book's risk is reused, but per number of underlyings."""
    eng = engine(False)
    ts = T0
    shapes = []
    for k, names in enumerate((("BTC",), ("BTC", "ETH"), ("BTC", "ETH"), ("BTC", "ETH", "SOL"))):
        ts += 1_000
        for u in names:
            eng.apply(PriceEvent(ts, u, 100.0 + k), "t")
        risk = eng.evaluate(ts).total.risk
        assert risk is not None
        want = book_risk(
            np.zeros((1, len(names))), np.zeros((1, len(names))), np.eye(len(names)), [None]
        )[0]
        assert same(risk.contributions.share, want.contributions.share)
        assert same(risk.delta_normal.var_usd, want.delta_normal.var_usd)
        shapes.append(risk.contributions.share.shape)
    assert shapes == [(1,), (2,), (2,), (3,)]


def test_valuation_of_a_kept_book_follows_positions_and_instrument_definitions() -> None:
    """``value_book`` reuses what no price moves per Book and registry version: a new Book,
    or an instrument redefined under the same Book, is valued afresh."""
    reg = InstrumentRegistry()
    names = ("BTC", "ETH", "BTC-PERPETUAL", "ETH-PERPETUAL", "BTC-27DEC26-60000-C")
    idx = [reg.index_of(n) for n in names]
    n = len(reg)
    price = np.full(n, np.nan)
    iv, fwd = np.full(n, np.nan), np.full(n, np.nan)
    for i, p in zip(idx, (60_000.0, 3_000.0, 60_010.0, 3_001.0, 0.05), strict=True):
        price[i] = p
    iv[idx[4]], fwd[idx[4]] = 0.6, 60_100.0
    market = MarketArrays(price, iv, fwd, np.full((n, 4), np.nan), np.zeros(n, dtype=np.int64))
    one = build_book({"a": {idx[2]: (2.0, T0), idx[4]: (3.0, T0)}}, reg)
    two = build_book({"a": {idx[2]: (2.0, T0)}, "b": {idx[3]: (-5.0, T0)}}, reg)

    def fresh(book: Any) -> Any:
        valuation._STATIC_MEMO.clear()
        return value_book(book, market, reg, T0)

    def check(book: Any) -> None:
        got = value_book(book, market, reg, T0)
        want = fresh(book)
        value_book(book, market, reg, T0)  # the memo holds this book again
        assert same(got.exposure, want.exposure)
        assert same(got.gamma_cash, want.gamma_cash)
        assert same(got.held, want.held)
        assert got.total.greeks == want.total.greeks

    for book in (one, two, one):
        check(book)
    before = value_book(one, market, reg, T0).exposure.copy()
    perp = reg.get("BTC-PERPETUAL")
    assert perp is not None
    reg.register(dataclasses.replace(perp, multiplier=10.0))  # same Book, redefined
    check(one)
    assert not same(value_book(one, market, reg, T0).exposure, before)


def test_risk_shares_and_delta_normal_psd_bit_for_bit() -> None:
    """``risk_shares`` (attribution's 8 corners) is ``contributions``' sigma and shares;
    ``var_delta_normal`` and ``stressed_var`` with ``psd`` give the repair's figures."""
    rng = np.random.default_rng(8)
    for trial in range(200):
        n = int(rng.integers(1, 6))
        cov, _ = repaired_cov(rng, n) if n > 1 else (np.array([[0.3]]), False)
        x = rng.normal(0.0, 1e6, n) * (rng.random(n) < 0.8)
        if trial % 7 == 0 and n > 1:
            x[1] = -x[0] * np.sqrt(cov[0, 0] / cov[1, 1])  # a near hedge
        c = cov.copy()
        if trial % 5 == 0 and n > 1:
            c[-1, :] = c[:, -1] = np.nan  # an excluded asset (no psd promise here)
        want = contributions(x, c)
        sigma, share = risk_shares(x, c)
        assert same(sigma, want.sigma_usd)
        assert same(share, want.share), trial
        dn, dp = var_delta_normal(x, cov), var_delta_normal(x, cov, psd=True)
        assert same(dn.var_usd, dp.var_usd)
        assert same(dn.component_var_usd, dp.component_var_usd)
        sn, sp = stressed_var(x, cov), stressed_var(x, cov, psd=True)
        assert same(sn.ratio, sp.ratio)
        assert same(sn.stressed.var_usd, sp.stressed.var_usd)


def test_stress_moves_follow_the_stresses_and_the_names() -> None:
    """``stress_pnl`` keeps the configuration's matrices per stresses object and names."""
    a = (Stress("BTC -20%", {"BTC": -0.2}), Stress("all -10%", default_move=-0.1))
    b = (Stress("ETH +30%", {"ETH": 0.3}, vol_shift=0.5),)
    lin = np.array([[1e6, 2e5], [-3e5, 4e5], [5e4, 0.0]])

    def fresh(stresses: Any, names: tuple[str, ...]) -> FloatArray:
        margin._STRESS_MEMO.clear()
        return stress_pnl(lin[: len(names)], None, stresses, names).pnl_usd

    for stresses, names in (
        (a, ("BTC", "ETH")),
        (a, ("BTC", "ETH")),
        (b, ("BTC", "ETH")),
        (a, ("ETH", "BTC")),
        (a, ("BTC", "ETH", "SOL")),
    ):
        got = stress_pnl(lin[: len(names)], None, stresses, names).pnl_usd
        assert same(got, fresh(stresses, names))
        stress_pnl(lin[: len(names)], None, stresses, names)  # memo holds these again


def test_next_expiry_follows_a_redefined_instrument() -> None:
    """An idle evaluation never crosses a held instrument's expiry: the expiries are kept
    per Book and registry version, so a redefined expiry is seen."""
    eng = engine(False)
    ts = T0
    for u in ("BTC", "ETH"):
        eng.apply(PriceEvent(ts, u, 100.0), "t")
    eng.apply(PositionEvent(ts, "a", "BTC-27DEC26", 1.0), "t")
    eng.apply(PriceEvent(ts, "BTC-27DEC26", 101.0), "t")
    eng.evaluate(ts)
    ev = eng._evaluator
    assert ev._last_full is not None
    first = ev._last_full.next_expiry_ms
    inst = eng.registry.get("BTC-27DEC26")
    assert inst is not None
    soon = ts + 3_600_000
    eng.registry.register(dataclasses.replace(inst, expiry_ms=soon))
    eng.apply(PriceEvent(ts + 1_000, "BTC", 100.5), "t")
    eng.evaluate(ts + 1_000)
    assert first != soon
    assert ev._last_full.next_expiry_ms == soon


def test_held_expiries_per_book_and_registry_version() -> None:
    reg = InstrumentRegistry()
    fut, opt = reg.index_of("BTC-27DEC26"), reg.index_of("BTC-25SEP26-60000-C")
    perp = reg.index_of("BTC-PERPETUAL")
    one = build_book({"a": {fut: (1.0, T0), perp: (2.0, T0)}}, reg)
    two = build_book({"a": {opt: (1.0, T0)}}, reg)
    ev = Evaluator()

    def want(book: Any) -> FloatArray:
        out: FloatArray = np.asarray(reg.column("expiry_ms"), dtype=np.float64)[book.instrument]
        return out

    for book in (one, two, one):
        assert same(ev._held_expiries(book, reg), want(book))
    inst = reg.get("BTC-27DEC26")
    assert inst is not None
    reg.register(dataclasses.replace(inst, expiry_ms=T0 + 1_000))  # same Book, redefined
    assert same(ev._held_expiries(one, reg), want(one))
    assert ev._held_expiries(one, reg)[0] == T0 + 1_000


def test_option_rows_follow_which_options_are_priced() -> None:
    """The priced options' per-instrument quantities are kept per Book and priced set."""
    reg = InstrumentRegistry()
    names = ("BTC", "BTC-27DEC26-60000-C", "BTC-27DEC26-70000-P", "BTC-PERPETUAL")
    idx = [reg.index_of(n) for n in names]
    n = len(reg)
    book = build_book(
        {
            "a": {idx[1]: (3.0, T0), idx[2]: (-1.0, T0), idx[3]: (1.0, T0)},
            "b": {idx[1]: (2.0, T0)},
        },
        reg,
    )

    def market(priced: tuple[bool, bool]) -> MarketArrays:
        price, iv, fwd = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        price[idx[0]], price[idx[3]] = 60_000.0, 60_010.0
        for k, on in zip((1, 2), priced, strict=True):
            if on:
                price[idx[k]], iv[idx[k]], fwd[idx[k]] = 0.05 * k, 0.5 + 0.1 * k, 60_100.0
        return MarketArrays(price, iv, fwd, np.full((n, 4), np.nan), np.zeros(n, dtype=np.int64))

    for priced in ((True, False), (True, True), (False, True), (True, True), (False, False)):
        m = market(priced)
        got = value_book(book, m, reg, T0)
        valuation._STATIC_MEMO.clear()
        want = value_book(book, m, reg, T0)
        assert (got.options is None) == (want.options is None)
        if got.options is not None and want.options is not None:
            assert same(got.options.quantity, want.options.quantity)
            assert same(got.options.underlying, want.options.underlying)
            assert same(got.options.vol, want.options.vol)
        assert same(got.marked_iv, want.marked_iv)


def test_scenario_draws_are_shared_per_size_and_seed() -> None:
    """``scenario_returns`` reuses its draws per (scenarios, assets, seed): the same
    returns as with draws made afresh, whatever order the sizes and seeds come in."""
    rng = np.random.default_rng(4)
    for m, n, seed in ((200, 2, 0), (200, 3, 0), (200, 3, 1), (400, 3, 0), (200, 2, 0)):
        cov, _ = repaired_cov(rng, n)
        got = scenario_returns(cov, 1 / 365, m, seed=seed).returns
        lam, q = np.linalg.eigh(0.5 * (cov / 365 + (cov / 365).T))
        want = normal_draws(m, n, seed) @ (q * np.sqrt(np.maximum(lam, 0.0))).T
        assert same(got, want)
