"""One index per underlying: a second venue's index never mixes into the estimator.

Deribit's and Binance's BTC indices differ by a few basis points; interleaved in one series,
that basis would read as volatility. These tests drive the engine with the live daemon's
routing (``IndexSources``) and compare against a run without the second venue.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from connectors.replay import iter_batches
from monitor.config import load_config
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.record import Recorder
from monitor.engine.sources import IndexSources
from monitor.model.events import Event, InstrumentEvent, PositionEvent, PriceEvent
from monitor.model.instruments import InstrumentRegistry
from monitor.model.settings import ConfigError

T0 = 1_767_225_600_000
STEP = 1_000  # one tick a second per venue
N = 1_500


def settings() -> EngineSettings:
    return EngineSettings(
        sample_interval_ms=1_000,
        halflife_ms=600_000,
        fast_halflife_ms=60_000,
        warmup_ms=300_000,
    )


def deribit_path(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """BTC and ETH index paths, 60% and 80% vol, correlated 0.7."""
    rng = np.random.default_rng(seed)
    dt = 1.0 / (365 * 86_400)
    z = rng.standard_normal((N, 2))
    z[:, 1] = 0.7 * z[:, 0] + math.sqrt(1 - 0.7**2) * z[:, 1]
    btc = 90_000.0 * np.exp(np.cumsum(0.6 * math.sqrt(dt) * z[:, 0]))
    eth = 3_000.0 * np.exp(np.cumsum(0.8 * math.sqrt(dt) * z[:, 1]))
    return btc, eth


def stream(second_venue: str | None) -> list[tuple[Event, str]]:
    """Deribit's indices and a position; optionally another venue's BTC index as well."""
    btc, eth = deribit_path()
    rng = np.random.default_rng(99)
    out: list[tuple[Event, str]] = [
        (PositionEvent(ts=T0, account="main", instrument="BTC-PERPETUAL", quantity=2.0), "desk"),
        (PositionEvent(ts=T0, account="main", instrument="ETH-PERPETUAL", quantity=-30.0), "desk"),
    ]
    if second_venue == "binance":
        out.append(
            (InstrumentEvent(instrument="BTC.binance", kind="index", underlying="BTC"), "binance")
        )
    for k in range(N):
        ts = T0 + k * STEP + 100  # off the sample grid, as live ticks are
        out.append((PriceEvent(ts=ts, instrument="BTC", price=float(btc[k])), "deribit"))
        out.append((PriceEvent(ts=ts, instrument="ETH", price=float(eth[k])), "deribit"))
        other = float(btc[k]) * (1.0 + 3e-4 + 2e-4 * rng.standard_normal())  # basis noise
        later = ts + int(rng.integers(1, 800))  # the other venue ticks later in the second
        if second_venue == "binance":  # Binance's own index, venue-qualified
            out.append((PriceEvent(ts=later, instrument="BTC.binance", price=other), "binance"))
        elif second_venue == "desk":  # the desk's feed also sends a bare BTC index
            out.append((PriceEvent(ts=later, instrument="BTC", price=other), "desk"))
    return out


def run(
    events: list[tuple[Event, str]],
    configured: dict[str, str] | None = None,
    recorder: Recorder | None = None,
) -> Engine:
    eng = Engine(settings(), recorder=recorder)
    router = IndexSources(eng.registry, configured or {})
    for received, source in events:
        if received.ts is not None:
            eng.evaluate_due(received.ts)
        for ev in router.route(received, source):
            eng.apply(ev, source)
    return eng


def btc_figures(eng: Engine) -> tuple[float, float, float]:
    snap = eng.evaluate(T0 + N * STEP)
    a = snap.assets
    i, j = a.names.index("BTC"), a.names.index("ETH")
    return float(a.price[i]), float(a.volatility[i]), float(a.correlation[i, j])


@pytest.mark.parametrize("second", ["binance", "desk"])
def test_estimator_unchanged_when_a_second_venue_s_index_is_added(second: str) -> None:
    alone = btc_figures(run(stream(None)))
    both = run(stream(second))
    assert btc_figures(both) == alone  # bit for bit: the basis never reached BTC
    assert 0.4 < alone[1] < 0.8  # and the figure is the 60%-vol path's, not a degenerate one
    kept = "BTC.binance" if second == "binance" else "BTC.desk"
    i = both.registry.index_of(kept)
    assert both.registry.instruments[i].kind == "index"
    assert both.registry.instruments[i].underlying == "BTC"
    # Kept apart, not dropped: the other venue's last tick is there under its own name.
    assert both._price[i] == pytest.approx(alone[0] * 1.0003, rel=2e-3)


def test_interleaving_the_basis_would_have_read_as_volatility() -> None:
    """Why the rule exists: the same ticks, all applied to BTC, inflate BTC's volatility."""
    mixed = Engine(settings())
    for received, _ in stream("desk"):
        if received.ts is not None:
            mixed.evaluate_due(received.ts)
        mixed.apply(received, "any")
    assert btc_figures(mixed)[1] > 2 * btc_figures(run(stream(None)))[1]


def test_a_configured_source_wins_and_a_venue_index_alone_prices_the_underlying() -> None:
    # Binance alone: its BTC.binance feeds BTC, so BTC positions are priced.
    events = [(e, s) for e, s in stream("binance") if s != "deribit"]
    eng = run(events)
    btc = eng.registry.index_of("BTC")
    last = next(e for e, _ in reversed(events) if isinstance(e, PriceEvent))
    assert eng._price[btc] == last.price
    # Configured: the desk's bare BTC wins over Deribit's even though Deribit ticks first.
    eng = run(stream("desk"), configured={"BTC": "desk"})
    desk_last = next(
        e for e, s in reversed(stream("desk")) if s == "desk" and isinstance(e, PriceEvent)
    )
    assert eng._price[eng.registry.index_of("BTC")] == desk_last.price
    assert "BTC.deribit" in eng.registry  # Deribit's ticks kept apart
    assert eng._price[eng.registry.index_of("ETH")] > 0  # ETH: Deribit, the first source


def test_replay_of_the_recording_reproduces_the_live_figures(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    with Recorder(path) as rec:
        live = btc_figures(run(stream("desk"), recorder=rec))
    replayed = Engine(settings())
    for batch in iter_batches(path):
        assert replayed.replay(batch.events, "replay") == []
    assert btc_figures(replayed) == live


def test_non_index_events_pass_untouched() -> None:
    router = IndexSources(InstrumentRegistry(), {})
    ev = PriceEvent(ts=T0, instrument="BTC-PERPETUAL", price=90_000.0)
    pos = PositionEvent(ts=T0, account="a", instrument="BTC-PERPETUAL", quantity=1.0)
    assert list(router.route(ev, "x")) == [ev]
    assert list(router.route(pos, "y")) == [pos]
    assert router.claimed == {}


def test_index_sources_must_name_a_connector(tmp_path: Path) -> None:
    cfg = tmp_path / "riskmon.toml"
    cfg.write_text('[market]\nindex_sources = { BTC = "simulatd" }\n')
    with pytest.raises(
        ConfigError, match=r'market\.index_sources\.BTC: no connector named "simulatd"'
    ):
        load_config(cfg, env={})
