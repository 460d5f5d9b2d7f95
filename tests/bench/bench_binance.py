"""Benchmark: Binance ``markPriceUpdate`` frames -> ``PriceEvent`` s (contract + index).

Prints figures; asserts nothing. Run:
``OPENBLAS_NUM_THREADS=1 python tests/bench/bench_binance.py [--messages N]``.

The messages are Binance's documented USD-M ``<symbol>@markPrice@1s`` payload
(tests/fixtures/binance/mark_price_update.json) wrapped as the combined stream sends it
(``{"stream": ..., "data": ...}``, compact JSON, about 190 bytes), with the mark, index and
event time varied per message. Figures, over the same bytes:

  json.loads   the standard library, untyped (what a naive connector would do)
  floor        a bare typed msgspec decode of the whole frame (decimal strings -> float,
               no conversion to events)
  parser       ``parse_frame`` + ``price_events``: riskmon's path, the contract's
               ``PriceEvent`` and the index's (``BTC.binance``)

and the CPU share (one core) the parser takes at 20,000 messages/s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec
from benchtools import rate

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from connectors.binance import parser
from connectors.binance.messages import MarkPriceFrame, MarkPriceUpdate
from monitor.model.events import PriceEvent

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "binance" / "mark_price_update.json"


def messages(n: int) -> list[bytes]:
    data = json.loads(FIXTURE.read_text())["message"]
    out = []
    for i in range(n):
        data["p"] = f"{11794.15 + (i % 997) * 0.01:.8f}"
        data["i"] = f"{11784.62659091 + (i % 991) * 0.01:.8f}"
        data["E"] = 1562305380000 + i
        frame = {"stream": "btcusdt@markPrice@1s", "data": data}
        out.append(json.dumps(frame, separators=(",", ":")).encode())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    msgs = messages(args.messages)
    size = sum(map(len, msgs)) / len(msgs)
    floor_dec = msgspec.json.Decoder(MarkPriceFrame, strict=False)

    def full(m: bytes) -> tuple[PriceEvent, PriceEvent]:
        msg = parser.parse_frame(m)
        assert type(msg) is MarkPriceUpdate
        return parser.price_events(msg)

    perp, index = full(msgs[0])
    assert (perp.instrument, index.instrument) == ("BTC_USDT-PERPETUAL", "BTC.binance")
    print(f"messages: {len(msgs):,} x {size:.0f} bytes (best of {args.repeat})")
    figures = {
        "json.loads": rate(json.loads, msgs, args.repeat),
        "floor (typed msgspec decode)": rate(floor_dec.decode, msgs, args.repeat),
        "parser (-> 2 PriceEvents)": rate(full, msgs, args.repeat),
    }
    for name, r in figures.items():
        print(f"  {name:34s} {r:12,.0f} msg/s  {1e6 / r:6.2f} us/msg  {r * size / 1e6:7.1f} MB/s")
    p = figures["parser (-> 2 PriceEvents)"]
    print(f"  parser CPU share at 20,000 msg/s: {20_000 / p:.1%} of one core")


if __name__ == "__main__":
    main()
