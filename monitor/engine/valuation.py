"""Position valuation: per-position figures and their sums per account (pure numpy).

Positions are flattened into a :class:`Book` (rebuilt only when positions or instrument
definitions change) sorted by account, so an account's positions are one contiguous slice
and per-account sums are one ``np.add.reduceat``. No Python loop runs per position.

Units: USD; ``delta`` underlying units (of the forward the instrument moves with);
``delta_usd`` is the first-order USD P&L of a proportional move of the underlying, per unit
of that move: ``delta * F`` where ``F`` is the price that moves with the index, the
forward for options (the venue's ``underlying_price``, else the index) and the future's
own mark for futures (else the index), and ``F = S``, the index, for spot and perpetuals.
It is the derivative of the same revaluation the scenarios use (``F -> F e^r``).
``gamma`` underlying units per 1 USD of ``F``; ``gamma_usd`` is the change of
``delta_usd`` for a 1% move from convexity, ``gamma * F**2 / 100``; ``vega`` USD per vol
point; ``theta`` USD per calendar day. Position figures include quantity and multiplier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from monitor.model.instruments import InstrumentRegistry
from monitor.model.snapshot import AccountFigures, PositionTable
from monitor.quant.greeks import black76, coin_delta
from monitor.quant.implied_vol import IVReason, implied_vol
from monitor.quant.risk import OptionPositions

__all__ = ["Book", "BookValues", "MarketArrays", "build_book", "value_book"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MS_PER_YEAR: Final = 365.0 * 86_400_000.0
_SPOT: Final = 1
_FUTURE: Final = 3
_OPTION: Final = 4
GREEK_KEYS: Final = ("delta_usd", "gamma_usd", "vega", "theta")


@dataclass(frozen=True, slots=True)
class Book:
    """All positions, flattened and sorted by account (arrays of length m).

    ``starts[k]:starts[k+1]`` is account ``accounts[k]``'s slice; ``account`` is each
    position's account index (what every evaluation would otherwise rebuild).
    """

    accounts: tuple[str, ...]
    starts: IntArray
    instrument: IntArray
    quantity: FloatArray
    instrument_names: tuple[str, ...]
    underlying_names: tuple[str, ...]
    underlying: IntArray
    account: IntArray
    opened_ms: IntArray

    @property
    def size(self) -> int:
        return len(self.instrument)


def build_book(
    positions: Mapping[str, Mapping[int, tuple[float, int]]], registry: InstrumentRegistry
) -> Book:
    """Flatten ``{account: {instrument index: (quantity, opened ms)}}``."""
    accounts = tuple(sorted(a for a, p in positions.items() if p))
    inst: list[int] = []
    qty: list[float] = []
    opened: list[int] = []
    starts = [0]
    for a in accounts:
        items = sorted(positions[a].items())
        inst.extend(i for i, _ in items)
        qty.extend(q for _, (q, _) in items)
        opened.extend(t for _, (_, t) in items)
        starts.append(len(inst))
    inst_arr = np.array(inst, dtype=np.int64)
    und_col = registry.column("underlying_idx")
    und = und_col[inst_arr].astype(np.int64) if inst else np.zeros(0, dtype=np.int64)
    names = tuple(registry.instruments[i].name for i in inst)
    return Book(
        accounts=accounts,
        starts=np.array(starts, dtype=np.int64),
        instrument=inst_arr,
        quantity=np.array(qty, dtype=np.float64),
        instrument_names=names,
        underlying_names=tuple(registry.underlyings[u] for u in und.tolist()),
        underlying=und,
        account=np.repeat(np.arange(len(accounts)), np.diff(starts)),
        opened_ms=np.array(opened, dtype=np.int64),
    )


@dataclass(frozen=True, slots=True)
class MarketArrays:
    """The engine's market state, one entry per registered instrument.

    ``price``: mark (USD per underlying unit; coin for inverse options), NaN before the
    first tick. ``iv``: annualised decimal, NaN when the venue sends none.
    ``forward``: the venue's ``underlying_price`` (USD), NaN when none.
    ``price_ts_ms``: event time of the last price, epoch ms (0 = never).
    ``venue_greeks``: ``(n, 4)`` delta, gamma, vega, theta per unit as the venue published
    them (``monitor.model.events.VenueGreeks`` units), NaN where it did not.
    """

    price: FloatArray
    iv: FloatArray
    forward: FloatArray
    venue_greeks: FloatArray
    price_ts_ms: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class BookValues:
    """The valued book: per-account figures plus the matrices the risk stage needs.

    Matrices have one row per account (``account_names`` order) and one column per
    registered underlying; unpriced positions contribute nothing to them.

    Attributes
    ----------
    exposure
        ``delta_usd`` summed per account and underlying (the exposure vector x), USD.
    gamma_cash
        ``gamma x F^2`` summed likewise: USD P&L per unit log-return squared (x 2).
    linear_usd
        ``delta_usd`` of spot, perpetuals and futures only (their full-revaluation value:
        ``q S`` or, for a future, ``q F``).
    held
        Whether the account holds anything on that underlying.
    options
        Priced option positions deduplicated per instrument, ``quantity`` of shape
        ``(instruments, accounts)`` in underlying units; ``None`` without options.
    marked_iv
        ``(underlyings,)``: |vega|-weighted IV of the book's priced options, the IV the book
        is marked at; NaN where it holds none.
    """

    accounts: dict[str, AccountFigures]
    total: AccountFigures
    account_names: tuple[str, ...]
    exposure: FloatArray
    gamma_cash: FloatArray
    linear_usd: FloatArray
    held: npt.NDArray[np.bool_]
    options: OptionPositions | None
    marked_iv: FloatArray


def value_book(
    book: Book,
    market: MarketArrays,
    registry: InstrumentRegistry,
    as_of_ms: int,
) -> BookValues:
    """Value every position and sum per account.

    Options without a venue IV get one solved from their mark; ``total.extra["iv_unsolved"]``
    counts positions whose IV could not be solved, by reason. Positions whose underlying has
    no index price (or whose option has no IV) have NaN figures; sums skip them and
    ``extra["unpriced_positions"]`` counts them, so missing data is visible, never zero. A
    sum with no priced position in it (an exposure, an account's Greeks) is NaN: unknown.
    """
    n_und = len(registry.underlyings)
    if book.size == 0:
        empty = AccountFigures(None, dict.fromkeys(GREEK_KEYS, 0.0), {})
        zeros = np.zeros((0, n_und))
        return BookValues(
            {}, empty, (), zeros, zeros, zeros, zeros.astype(bool), None, np.full(n_und, np.nan)
        )

    i = book.instrument
    st = _static(book, registry)
    kind, index_inst, collateral, q, is_opt = st.kind, st.index_inst, st.collateral, st.q, st.is_opt
    spot = market.price[index_inst]  # S: the underlying's index price, USD
    # Coin collateral is valued at its index (it has no mark of its own).
    price = np.where(collateral, spot, market.price[i])
    # F: the price each position moves with. Futures: their own mark (else the index).
    fwd_all = np.where((kind == _FUTURE) & np.isfinite(price) & np.isfinite(spot), price, spot)
    opt_inputs: tuple[npt.NDArray[Any], ...] | None = None
    iv_unsolved: dict[str, int] = {}
    unit_coin_delta = np.full_like(price, np.nan)
    venue_diff = np.full((len(price), 4), np.nan)  # ours - venue, per unit
    unit_value = price.copy()
    unit_delta = np.ones_like(price)
    # Inverse futures and perpetuals: q is the USD notional N (contracts x USD each); the
    # coin P&L N (1/S0 - 1/S) is, in USD, N per unit proportional move: delta N / F, value N.
    inverse_linear = st.inverse_linear
    if st.any_inverse_linear:
        unit_delta = np.where(inverse_linear, 1.0 / fwd_all, unit_delta)
        unit_value = np.where(inverse_linear, 1.0, unit_value)
    unit_gamma = np.zeros_like(price)
    unit_vega = np.zeros_like(price)
    unit_theta = np.zeros_like(price)
    iv = np.full_like(price, np.nan)
    if st.any_opt:
        o, oi = st.o, st.oi
        fwd = market.forward[oi]
        fwd = np.where(np.isfinite(fwd), fwd, spot[o])
        t = np.maximum(st.expiry - as_of_ms, 0.0) / MS_PER_YEAR
        strike, is_call = st.strike, st.is_call
        mark = price[o]
        mark_usd = np.where(st.inverse_opt, mark * fwd, mark)
        vol = market.iv[oi]
        need = np.isnan(vol) & np.isfinite(mark_usd)
        if need.any():
            # No venue IV: solve it from the mark (Black-76 on the forward). Unsolvable ones stay
            # NaN and are counted by reason (below intrinsic, no time value, ...).
            solved = implied_vol(mark_usd[need], fwd[need], strike[need], t[need], is_call[need])
            vol = vol.copy()
            vol[need] = solved.iv
            bad = solved.reason[solved.reason != IVReason.OK]
            for code, count in zip(*np.unique(bad, return_counts=True), strict=True):
                iv_unsolved[IVReason(int(code)).name.lower()] = int(count)
        g = black76(fwd, strike, t, vol, is_call)
        inverse = st.inverse_opt
        opt_inputs = (oi, fwd, strike, t, vol, is_call, inverse)
        if inverse.any():
            # What a coin-margined account carries: delta less the coin premium.
            unit_coin_delta[o] = np.where(inverse, coin_delta(g.delta, g.price, fwd), np.nan)
        venue = market.venue_greeks[oi]  # (options, 4)
        ours = np.column_stack([g.delta, g.gamma, g.vega, g.theta])
        venue_diff[o] = ours - venue
        unit_value[o] = np.where(np.isfinite(mark_usd), mark_usd, g.price)
        unit_delta[o] = g.delta
        unit_gamma[o] = g.gamma
        unit_vega[o] = g.vega
        unit_theta[o] = g.theta
        iv[o] = vol
        # Options move with their forward; a forward without an index is not a price.
        fwd_all[o] = np.where(np.isfinite(spot[o]), fwd, np.nan)

    delta = q * unit_delta
    delta_usd = delta * fwd_all
    gamma = q * unit_gamma
    table_all = {
        "value_usd": q * unit_value,
        "delta": delta,
        "delta_usd": delta_usd,
        "gamma": gamma,
        "gamma_usd": gamma * fwd_all * fwd_all / 100.0,
        "vega": q * unit_vega,
        "theta": q * unit_theta,
        "delta_coin": q * unit_coin_delta,
    }
    # Exposure needs only the index price (and, for options, the IV): a perpetual without
    # its own mark still carries known delta; its value_usd is null.
    unpriced = ~np.isfinite(delta_usd)
    if st.any_opt:
        unpriced |= is_opt & ~np.isfinite(table_all["vega"])

    sums = {
        k: _segment_sums(np.where(unpriced, 0.0, table_all[k]), book.starts) for k in GREEK_KEYS
    }
    clean_dusd = np.where(unpriced, 0.0, delta_usd)
    n_acc = len(book.accounts)
    acc_idx = book.account
    flat = st.flat
    shape = (n_acc, n_und)
    size = n_acc * n_und
    exposure = _weighted_counts(flat, clean_dusd, size).reshape(shape)
    held = st.held
    # A sum over nothing known is unknown, not 0: NaN (null) where no position is priced.
    priced = _weighted_counts(flat, (~unpriced).astype(np.float64), size).reshape(shape) > 0
    gamma_cash = _weighted_counts(flat, np.where(unpriced, 0.0, gamma * fwd_all * fwd_all), size)
    gamma_cash = gamma_cash.reshape(shape)
    linear_usd = _weighted_counts(flat, np.where(is_opt, 0.0, clean_dusd), size).reshape(shape)
    unpriced_count = _segment_sums(unpriced.astype(np.float64), book.starts)
    vs_venue = (
        _venue_differences(venue_diff, q, fwd_all, unpriced, book.starts)
        if opt_inputs is not None
        else [None] * len(book.accounts)
    )

    names = registry.underlyings
    priced_any: npt.NDArray[np.bool_] = np.any(priced, axis=0)
    exp_rows = np.where(priced, exposure, np.nan).tolist()
    held_rows = held.tolist()
    none_priced = unpriced_count == np.diff(book.starts)
    accounts: dict[str, AccountFigures] = {}
    for k, name in enumerate(book.accounts):
        s, e = int(book.starts[k]), int(book.starts[k + 1])
        table = PositionTable(
            instrument=book.instrument_names[s:e],
            underlying=book.underlying_names[s:e],
            quantity=book.quantity[s:e],
            price=price[s:e],
            price_ts_ms=market.price_ts_ms[i[s:e]],
            opened_ms=book.opened_ms[s:e],
            iv=iv[s:e],
            **{key: arr[s:e] for key, arr in table_all.items()},
        )
        exp = {u: x for u, x, h in zip(names, exp_rows[k], held_rows[k], strict=True) if h}
        extra: dict[str, Any] = {"unpriced_positions": int(unpriced_count[k])}
        if vs_venue[k] is not None:
            extra["greeks_vs_venue"] = vs_venue[k]
        accounts[name] = AccountFigures(
            positions=table,
            greeks={key: math.nan if none_priced[k] else float(sums[key][k]) for key in GREEK_KEYS},
            exposure_usd=exp,
            extra=extra,
        )
    options, marked_iv, iv_skipped = _option_book(
        opt_inputs,
        is_opt & ~unpriced,
        is_opt,
        acc_idx,
        book.underlying,
        q,
        table_all["vega"],
        n_acc,
        n_und,
        st.option_rows,
    )
    held_any: npt.NDArray[np.bool_] = np.any(held, axis=0)
    total = AccountFigures(
        positions=None,
        greeks={
            key: math.nan if none_priced.all() else float(sums[key].sum()) for key in GREEK_KEYS
        },
        exposure_usd={
            u: x
            for u, x, h in zip(
                names,
                np.where(priced_any, exposure.sum(axis=0), np.nan).tolist(),
                held_any.tolist(),
                strict=True,
            )
            if h
        },
        extra={
            "unpriced_positions": int(unpriced.sum()),
            "iv_unsolved": iv_unsolved,
            "marked_iv_skipped": iv_skipped,
        },
    )
    return BookValues(
        accounts, total, book.accounts, exposure, gamma_cash, linear_usd, held, options, marked_iv
    )


@dataclass(frozen=True, slots=True)
class _Static:
    """What :func:`value_book` reads of a book and the registry that no price moves: the
    engine keeps one :class:`Book` while no position changes (arrays read-only)."""

    kind: npt.NDArray[Any]
    index_inst: npt.NDArray[Any]
    collateral: npt.NDArray[np.bool_]
    q: FloatArray  # quantity x multiplier
    is_opt: npt.NDArray[np.bool_]
    any_opt: bool
    inverse_linear: npt.NDArray[np.bool_]
    any_inverse_linear: bool
    o: IntArray  # option rows
    oi: IntArray  # their instruments
    expiry: npt.NDArray[Any]
    strike: npt.NDArray[Any]
    is_call: npt.NDArray[Any]
    inverse_opt: npt.NDArray[Any]
    flat: IntArray  # account x underlying cell of each position
    held: npt.NDArray[np.bool_]  # (accounts, underlyings)
    #: ``_option_book``'s rows for the last set of priced options (one entry).
    option_rows: list[tuple[bytes, _OptionRows]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _OptionRows:
    """The priced options' rows and their per-instrument quantities (no price in them)."""

    keep: npt.NDArray[np.bool_]  # option rows (in option order) that are priced
    rows: IntArray  # positions that are priced options
    first: IntArray  # per instrument, its first row in ``keep``
    quantity: FloatArray  # (instruments, accounts), underlying units
    underlying: IntArray  # per instrument


#: (book, registry, its version, the book's static arrays): one entry, the current book.
_STATIC_MEMO: list[tuple[Book, InstrumentRegistry, int, _Static]] = []


def _static(book: Book, registry: InstrumentRegistry) -> _Static:
    """:class:`_Static` of ``book``, rebuilt when the book or the registry changes."""
    if _STATIC_MEMO:
        b, r, version, st = _STATIC_MEMO[0]
        if b is book and r is registry and version == registry.version:
            return st
    i = book.instrument
    kind = registry.column("kind_code")[i]
    is_opt = kind == _OPTION
    o = np.flatnonzero(is_opt)
    oi = i[o]
    n_und = len(registry.underlyings)
    flat = book.account * n_und + book.underlying
    size = len(book.accounts) * n_und
    inverse_linear = (
        np.asarray(registry.column("inverse")[i], dtype=bool) & ~is_opt & (kind != _SPOT)
    )
    st = _Static(
        kind=kind,
        index_inst=registry.column("index_instrument")[i],
        collateral=np.asarray(registry.column("collateral")[i], dtype=bool),
        q=book.quantity * np.asarray(registry.column("multiplier")[i], dtype=np.float64),
        is_opt=is_opt,
        any_opt=bool(is_opt.any()),
        inverse_linear=inverse_linear,
        any_inverse_linear=bool(inverse_linear.any()),
        o=o,
        oi=oi,
        expiry=registry.column("expiry_ms")[oi],
        strike=registry.column("strike")[oi],
        is_call=registry.column("is_call")[oi],
        inverse_opt=registry.column("inverse")[oi],
        flat=flat,
        held=np.bincount(flat, minlength=size).reshape(len(book.accounts), n_und) > 0,
    )
    for name in st.__slots__:
        value = getattr(st, name)
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    _STATIC_MEMO[:] = [(book, registry, registry.version, st)]
    return st


def _option_book(
    inputs: tuple[npt.NDArray[Any], ...] | None,
    priced: npt.NDArray[np.bool_],
    is_opt: npt.NDArray[np.bool_],
    acc_idx: IntArray,
    und: IntArray,
    q: FloatArray,
    vega: FloatArray,
    n_acc: int,
    n_und: int,
    memo: list[tuple[bytes, _OptionRows]] | None = None,
) -> tuple[OptionPositions | None, FloatArray, int]:
    """Priced options per instrument x account, the |vega|-weighted IV per underlying, and
    how many positions the IV mean left out.

    A position whose IV or vega is not finite (an expired option without a venue IV has
    vega 0 and no IV: 0 x NaN would blank its underlying's mean) is left out and counted.
    """
    marked = np.full(n_und, np.nan)
    if inputs is None or not priced.any():
        return None, marked, 0
    inst, fwd, strike, t, vol, is_call, inverse_opt = inputs
    # ``memo``: kept per Book (positions fixed), so the rows depend on ``priced`` alone.
    key = priced.tobytes()
    if memo and memo[0][0] == key:
        r = memo[0][1]
    else:
        keep = priced[is_opt]  # option rows (in ``inputs`` order) that are priced
        rows = np.flatnonzero(priced)
        uniq, first, inverse = np.unique(inst[keep], return_index=True, return_inverse=True)
        qty = np.zeros((len(uniq), n_acc))
        np.add.at(qty, (inverse, acc_idx[rows]), q[rows])
        r = _OptionRows(keep, rows, first, qty, und[rows][first])
        for a in (keep, rows, first, qty, r.underlying):
            a.flags.writeable = False
        if memo is not None:
            memo[:] = [(key, r)]
    keep, rows, first, qty = r.keep, r.rows, r.first, r.quantity
    options = OptionPositions(
        underlying=r.underlying,
        forward=fwd[keep][first],
        strike=strike[keep][first],
        t=t[keep][first],
        vol=vol[keep][first],
        is_call=is_call[keep][first],
        quantity=qty,
        inverse=inverse_opt[keep][first],
    )
    w = np.abs(vega[rows])
    v = vol[keep]
    good = np.isfinite(w) & np.isfinite(v)
    w, v = np.where(good, w, 0.0), np.where(good, v, 0.0)
    den = _weighted_counts(und[rows], w, n_und)
    num = _weighted_counts(und[rows], w * v, n_und)
    with np.errstate(invalid="ignore", divide="ignore"):
        marked = np.where(den > 0, num / den, np.nan)
    return options, marked, int((~good).sum())


def _venue_differences(
    diff: FloatArray,
    q: FloatArray,
    fwd: FloatArray,
    unpriced: npt.NDArray[np.bool_],
    starts: IntArray,
) -> list[dict[str, float] | None]:
    """Per account, our Greeks minus the venue's, summed over the positions it published.

    In position units: ``delta_usd`` (x F), ``gamma_usd`` (x F^2 / 100), ``vega``, ``theta``;
    each Greek over the positions the venue published it for. ``positions`` counts positions
    with at least one venue Greek. ``None`` where the venue sent no Greeks.
    """
    known = np.isfinite(diff) & ~unpriced[:, None]
    compared: npt.NDArray[np.bool_] = np.any(known, axis=1)
    scale = np.column_stack([q * fwd, q * fwd * fwd / 100.0, q, q])
    contrib = np.where(known, diff * scale, 0.0)
    out: list[dict[str, float] | None] = []
    for k in range(len(starts) - 1):
        s, e = int(starts[k]), int(starts[k + 1])
        n = int(compared[s:e].sum())
        if n == 0:
            out.append(None)
            continue
        d = contrib[s:e].sum(axis=0)
        out.append(
            {
                "delta_usd": float(d[0]),
                "gamma_usd": float(d[1]),
                "vega": float(d[2]),
                "theta": float(d[3]),
                "positions": n,
            }
        )
    return out


def _weighted_counts(index: IntArray, weights: FloatArray, size: int) -> FloatArray:
    """``sum(weights[index == j])`` for ``j < size`` (a float ``np.bincount``)."""
    out: FloatArray = np.bincount(index, weights=weights, minlength=size).astype(np.float64)
    return out


def _segment_sums(values: FloatArray, starts: IntArray) -> FloatArray:
    """Sum of ``values[starts[k]:starts[k+1]]`` for each k (segments are non-empty)."""
    out: FloatArray = np.add.reduceat(values, starts[:-1]) if len(values) else np.zeros(0)
    return out
