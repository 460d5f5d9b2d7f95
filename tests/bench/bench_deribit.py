"""Benchmark: Deribit option ticker notifications -> ``PriceEvent`` (Greeks kept).

Prints figures; asserts nothing. Run:
``OPENBLAS_NUM_THREADS=1 python tests/bench/bench_deribit.py [--messages N]``.

The messages are Deribit's documented option ticker notification
(tests/fixtures/deribit_ticker_option.json, compact JSON as Deribit sends it, about 750
bytes) with the mark, IV and timestamp varied per message. Figures, over the same bytes:

  json.loads   the standard library, untyped (what a naive connector would do)
  floor        a bare typed msgspec decode of the whole notification (no conversion)
  parser       ``parse_frame`` + ``to_price_event``: riskmon's path, a ``PriceEvent`` with
               ``iv``, ``underlying_price`` and ``VenueGreeks``

and the CPU share (one core) the parser takes at 20,000 messages/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import msgspec
from benchtools import rate

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from connectors.deribit import parser
from connectors.deribit.messages import Ticker, TickerNotification
from monitor.engine.core import Engine
from monitor.model.events import InstrumentEvent

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "deribit_ticker_option.json"


def messages(n: int) -> list[bytes]:
    doc = json.loads(FIXTURE.read_text())
    doc.pop("_comment", None)
    data = doc["params"]["data"]
    out = []
    for i in range(n):
        data["mark_price"] = round(0.02059602 + (i % 997) * 1e-8, 8)
        data["mark_iv"] = round(54.37 + (i % 89) * 0.01, 2)
        data["timestamp"] = 1734686127123 + i
        out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    msgs = messages(args.messages)
    size = sum(map(len, msgs)) / len(msgs)
    floor_dec = msgspec.json.Decoder(TickerNotification)

    def full(m: bytes) -> object:
        t = parser.parse_frame(m)
        assert isinstance(t, Ticker)
        return parser.to_price_event(t)

    ev = full(msgs[0])
    assert getattr(ev, "greeks", None) is not None
    # Applied to engine state, as the daemon does: the instrument declared first (the
    # connector declares Deribit's inverse options), then every tick through Engine.apply.
    engine = Engine()
    first = parser.parse_frame(msgs[0])
    assert isinstance(first, Ticker)
    engine.apply(
        InstrumentEvent(
            instrument=first.instrument_name,
            kind="option",
            underlying="BTC",
            expiry="2099-12-27T08:00:00Z",
            strike=100_000.0,
            option_type="call",
            inverse=True,
        ),
        "bench",
    )

    clock = itertools.count(1_734_686_127_123)  # repeats replay the file: keep time moving

    def applied(m: bytes) -> None:
        t = parser.parse_frame(m)
        assert isinstance(t, Ticker)
        pe = parser.to_price_event(t)
        pe.ts = next(clock)
        engine.apply(pe, "deribit")

    print(f"messages: {len(msgs):,} x {size:.0f} bytes (best of {args.repeat})")
    figures = {
        "json.loads": rate(json.loads, msgs, args.repeat),
        "floor (typed msgspec decode)": rate(floor_dec.decode, msgs, args.repeat),
        "parser (-> PriceEvent + Greeks)": rate(full, msgs, args.repeat),
        "parsed and applied to engine state": rate(applied, msgs, args.repeat),
    }
    for name, r in figures.items():
        print(f"  {name:34s} {r:12,.0f} msg/s  {1e6 / r:6.2f} us/msg  {r * size / 1e6:7.1f} MB/s")
    p = figures["parsed and applied to engine state"]
    print(f"  parsed and applied, CPU share at 20,000 msg/s: {20_000 / p:.1%} of one core")


if __name__ == "__main__":
    main()
