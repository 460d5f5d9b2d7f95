"""Deribit-form instrument names and the registry."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from monitor.model.events import InstrumentEvent, Reason, Rejected
from monitor.model.instruments import Instrument, InstrumentRegistry, from_event, parse_name


def _ms(y: int, m: int, d: int, h: int = 8) -> int:
    return int(dt.datetime(y, m, d, h, tzinfo=dt.UTC).timestamp()) * 1000


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BTC", Instrument("BTC", "index", "BTC")),
        ("BTC_USDC", Instrument("BTC_USDC", "spot", "BTC")),
        ("BTC-PERPETUAL", Instrument("BTC-PERPETUAL", "perpetual", "BTC")),
        ("SOL_USDC-PERPETUAL", Instrument("SOL_USDC-PERPETUAL", "perpetual", "SOL")),
        ("BTC-27DEC26", Instrument("BTC-27DEC26", "future", "BTC", _ms(2026, 12, 27))),
        (
            "BTC-6AUG21-40000-C",
            Instrument("BTC-6AUG21-40000-C", "option", "BTC", _ms(2021, 8, 6), 40000.0, True),
        ),
        (
            "ETH-27DEC26-3500-P",
            Instrument("ETH-27DEC26-3500-P", "option", "ETH", _ms(2026, 12, 27), 3500.0, False),
        ),
        (
            "XRP_USDC-30MAY25-2d5-P",
            Instrument("XRP_USDC-30MAY25-2d5-P", "option", "XRP", _ms(2025, 5, 30), 2.5, False),
        ),
    ],
)
def test_parse_name(name: str, expected: Instrument) -> None:
    assert parse_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "btc",
        "BTC-31FEB26",
        "BTC-27XYZ26",
        "BTC-27DEC26-60000",
        "BTC-27DEC26-6e4-C",
        "BTC-27DEC26-60000-X",
        "BTC PERP",
        "BTC--PERPETUAL",
    ],
)
def test_unparseable_names(name: str) -> None:
    assert parse_name(name) is None


def test_registry_numbers_instruments_and_registers_underlying_index() -> None:
    reg = InstrumentRegistry()
    i = reg.index_of("ETH-27DEC26-3500-P")
    assert reg.instruments[i].name == "ETH-27DEC26-3500-P"
    assert "ETH" in reg  # the underlying's index came with it
    assert reg.index_of("ETH-27DEC26-3500-P") == i
    assert reg.underlyings == ["ETH"]
    j = reg.index_of("BTC-PERPETUAL")
    assert reg.underlyings == ["ETH", "BTC"]
    np.testing.assert_array_equal(reg.column("underlying_idx")[[i, j]], [0, 1])
    assert reg.column("index_instrument")[j] == reg.index_of("BTC")
    assert np.isnan(reg.column("strike")[j])
    assert reg.column("strike")[i] == 3500.0


def test_registry_rejects_unknown_names() -> None:
    with pytest.raises(Rejected) as info:
        InstrumentRegistry().index_of("NOT A NAME")
    assert info.value.reason is Reason.UNKNOWN_INSTRUMENT


def test_instrument_event_overrides_parsed_defaults_and_bumps_columns() -> None:
    reg = InstrumentRegistry()
    i = reg.index_of("BTC-27DEC26-60000-C")
    assert not reg.column("inverse")[i]
    ev = InstrumentEvent(
        "BTC-27DEC26-60000-C",
        "option",
        "BTC",
        "2026-12-27T08:00:00Z",
        60000.0,
        "call",
        1.0,
        True,
    )
    assert reg.register(from_event(ev)) == i
    assert reg.column("inverse")[i]
    assert reg.instruments[i].expiry_ms == _ms(2026, 12, 27)


def test_instrument_event_with_bad_expiry_is_rejected() -> None:
    ev = InstrumentEvent("X", "future", "BTC", expiry="27/12/2026")
    with pytest.raises(Rejected) as info:
        from_event(ev)
    assert info.value.reason is Reason.INVALID_VALUE
