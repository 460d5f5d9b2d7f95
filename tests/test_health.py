"""Price lag timed at the sink (``monitor.model.health.SinkLag``) for connectors that do not
time their own ticks, against lags computed here from the stamps and a fake clock."""

from __future__ import annotations

import math

from monitor.model.events import AccountEvent, PositionEvent, PriceEvent
from monitor.model.health import LAG_BUCKETS, ConnectorStatus, LagHistogram, SinkLag

T0 = 1_767_225_600_000


def test_sink_times_the_price_ticks_of_connectors_that_do_not_time_their_own() -> None:
    own = LagHistogram()
    venue = ConnectorStatus("deribit", "deribit")
    mqtt = ConnectorStatus("desk", "mqtt", price_lag=own)
    now = [T0 / 1000.0]
    lag = SinkLag([venue, mqtt], clock=lambda: now[0])
    assert mqtt.price_lag is own  # left alone
    assert venue.price_lag is not None
    assert venue.price_lag.count == 0
    # receipt minus ts: ahead of our clock, 3 ms, 70 ms, 1.8 s, 2 min behind
    offsets_ms = [-40, 3, 70, 1_800, 120_000]
    for k, off in enumerate(offsets_ms):
        now[0] = (T0 + 10_000 * k) / 1000.0
        lag.note(PriceEvent(T0 + 10_000 * k - off, "BTC", 1.0), "deribit")
        lag.note(PriceEvent(T0 + 10_000 * k - off, "BTC", 1.0), "desk")  # times its own
        lag.note(PositionEvent(T0 - 999_000, "a", "BTC-PERPETUAL", 1.0), "deribit")
        lag.note(AccountEvent(T0 - 999_000, "a", 1.0), "deribit")
        lag.note(PriceEvent(T0 - 999_000, "BTC", 1.0), "unknown-source")
    hist = venue.price_lag
    expected = [0] * (len(LAG_BUCKETS) + 1)
    for off in offsets_ms:
        s = off / 1000.0
        expected[next(i for i, b in enumerate((*LAG_BUCKETS, math.inf)) if s <= b)] += 1
    assert hist.counts == expected
    assert hist.count == 5
    assert math.isclose(hist.total, sum(max(0, o) for o in offsets_ms) / 1000.0)
    assert own.count == 0
