"""A local Binance USD-M futures server for the connector's tests (127.0.0.1, a port it picks).

One aiohttp app serves both halves of the protocol the connector uses:

- REST: ``GET /fapi/v1/time``; ``POST``/``PUT /fapi/v1/listenKey`` (API key header);
  ``GET /fapi/v3/positionRisk`` and ``GET /fapi/v3/account``, signed: the HMAC-SHA256 of the
  query string is verified with the planted secret, and ``timestamp`` is checked against
  ``recvWindow`` on the server's clock (which a test may skew), answering -1021 as Binance
  does. Every answer carries ``X-MBX-USED-WEIGHT-1M``.
- Websockets, routed by path as Binance routes USD-M streams: ``/market/stream`` (combined:
  ``?streams=`` and ``SUBSCRIBE`` of ``<symbol>@markPrice@1s``, a mark frame per subscribed
  symbol every ``mark_interval_s``, wrapped in ``{"stream", "data"}``) and
  ``/private/ws?listenKey=<key>``
  (bare payloads: ``ACCOUNT_UPDATE`` of the changed leg only (:meth:`FakeBinance.change`),
  balance-only updates (:meth:`FakeBinance.funding_fee`), ``listenKeyExpired``
  (:meth:`expire_keys`)). The legacy ``/ws`` and ``/stream`` paths are not served.

Faults a test switches on: the 24-hour cut (:meth:`drop_all`), keys that vanish (a
keep-alive gets -1125), a clock skew, HTTP 429 and 418 with ``Retry-After`` (requests that
arrive during a ban are recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

API_KEY = "k3y-PLANTED-0a9b8c7d6e5f"
API_SECRET = "s3cr3t-PLANTED-binance-1f2e3d"
MARKS = {"BTCUSDT": (50_000.0, 49_990.0), "ETHUSDT": (2_500.0, 2_499.5)}


@dataclass
class Conn:
    ws: web.WebSocketResponse
    key: str | None  # the user data socket's listenKey; None: a market socket
    symbols: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class FakeBinance:
    def __init__(self) -> None:
        self.skew_ms = 0
        #: (symbol, side) -> (amount, updateTime): the truth.
        self.legs: dict[tuple[str, str], tuple[float, int]] = {}
        self.equity = 10_000.0
        self.initial_margin = 500.0
        self.maint_margin = 100.0
        self.keys: set[str] = set()
        self.keys_issued = 0
        self.issued: list[str] = []  # every listenKey handed out
        self.keepalives = 0
        self.conns: list[Conn] = []
        self.handshakes = 0  # market sockets opened (one per connector session)
        self.private_handshakes = 0
        self.snapshots = 0
        self.account_calls = 0
        self.requests: list[tuple[float, str, str, str]] = []  # monotonic, method, path, query
        self.timestamp_rejections = 0
        self.signature_rejections = 0
        self.mark_interval_s = 0.05
        self.rate_limit_next: float | None = None  # Retry-After of the next 429
        self.ban_next: float | None = None  # Retry-After of the next 418
        self.banned_until = 0.0
        self.ban_started = 0.0
        self.requests_during_ban = 0
        self.limited_at: float | None = None  # monotonic time of the last 429
        self.snapshot_delay_s = 0.0
        self.refuse_private = False  # HTTP 503 to user data socket handshakes
        self._weight = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port = 0

    # --- lifecycle --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeBinance]:
        app = web.Application()
        app.router.add_get("/fapi/v1/time", self._time)
        app.router.add_post("/fapi/v1/listenKey", self._listen_key_post)
        app.router.add_put("/fapi/v1/listenKey", self._listen_key_put)
        app.router.add_get("/fapi/v3/positionRisk", self._position_risk)
        app.router.add_get("/fapi/v3/account", self._account)
        app.router.add_get("/market/stream", self._market)
        app.router.add_get("/private/ws", self._private)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        addr = runner.addresses[0]
        self._port = int(addr[1])
        try:
            yield self
        finally:
            for c in list(self.conns):
                if c.task is not None:
                    c.task.cancel()
                with contextlib.suppress(Exception):
                    await c.ws.close()
            await runner.cleanup()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}"

    @property
    def live(self) -> list[Conn]:
        return [c for c in self.conns if not c.ws.closed]

    def now_ms(self) -> int:
        """The server's clock: ours plus the skew a test set."""
        return round(time.time() * 1000.0) + self.skew_ms

    # --- truth ------------------------------------------------------------------------------

    def truth(self) -> dict[str, float]:
        """Net amount per symbol held (coin)."""
        out: dict[str, float] = {}
        for (sym, _), (amt, _) in self.legs.items():
            out[sym] = out.get(sym, 0.0) + amt
        return {s: q for s, q in out.items() if q != 0.0}

    async def change(
        self, symbol: str, amount: float, *, side: str = "BOTH", notify: bool = True
    ) -> None:
        """Set one leg and push an ``ACCOUNT_UPDATE`` with that leg only."""
        t = self.now_ms()
        self.legs[(symbol, side)] = (amount, t)
        if notify:
            await self._push_user(
                {
                    "e": "ACCOUNT_UPDATE", "E": t + 3, "T": t,
                    "a": {"m": "ORDER",
                          "B": [{"a": "USDT", "wb": str(self.equity), "cw": str(self.equity),
                                 "bc": "0"}],
                          "P": [{"s": symbol, "pa": str(amount), "ep": "0.0", "cr": "0",
                                 "up": "0", "mt": "cross", "iw": "0", "ps": side}]},
                }
            )  # fmt: skip

    async def funding_fee(self, amount: float) -> None:
        """A crossed funding fee: balances only, no position (Binance's brief message)."""
        self.equity += amount
        t = self.now_ms()
        await self._push_user(
            {
                "e": "ACCOUNT_UPDATE", "E": t + 3, "T": t,
                "a": {"m": "FUNDING_FEE",
                      "B": [{"a": "USDT", "wb": str(self.equity), "cw": str(self.equity),
                             "bc": "0"}],
                      "P": []},
            }
        )  # fmt: skip

    async def _push_user(self, payload: dict[str, Any]) -> None:
        for c in self.live:
            if c.key is not None and c.key in self.keys:
                with contextlib.suppress(Exception):
                    await c.ws.send_str(json.dumps(payload))

    async def expire_keys(self) -> None:
        """Every key expires: ``listenKeyExpired`` on its streams; a PUT now gets -1125."""
        for c in self.live:
            if c.key is not None and c.key in self.keys:
                msg = {"e": "listenKeyExpired", "E": str(self.now_ms()), "listenKey": c.key}
                with contextlib.suppress(Exception):
                    await c.ws.send_str(json.dumps(msg))
        self.keys.clear()

    def forget_keys(self) -> None:
        """Keys vanish silently (the next keep-alive is answered -1125)."""
        self.keys.clear()

    async def drop_all(self, code: int = 1001) -> None:
        """Close every stream, as Binance does at a connection's 24-hour mark."""
        for c in self.live:
            await c.ws.close(code=code, message=b"24h")

    async def drop_private(self) -> None:
        """Close only the user data sockets."""
        for c in self.live:
            if c.key is not None:
                await c.ws.close(code=1001, message=b"going away")

    async def send_raw(self, frame: str, *, private: bool = False) -> None:
        """Send ``frame`` as is on every market socket (``private``: every user data one)."""
        for c in self.live:
            if (c.key is not None) == private:
                await c.ws.send_str(frame)

    def ban(self, retry_after: float) -> None:
        self.ban_next = retry_after

    # --- REST -------------------------------------------------------------------------------

    def _reply(self, status: int, payload: Any, **headers: str) -> web.Response:
        self._weight += 5
        hdrs = {"X-MBX-USED-WEIGHT-1M": str(self._weight), **headers}
        return web.json_response(payload, status=status, headers=hdrs)

    def _error(self, status: int, code: int, msg: str) -> web.Response:
        return self._reply(status, {"code": code, "msg": msg})

    def _gate(self, request: web.Request) -> web.Response | None:
        """Record the request; answer 418/429 when a ban or a limit holds."""
        now = time.monotonic()
        self.requests.append((now, request.method, request.path, request.query_string))
        if now < self.banned_until:
            self.requests_during_ban += 1
            left = max(1, round(self.banned_until - now))
            return self._reply(418, {"code": -1003, "msg": "banned"}, **{"Retry-After": str(left)})
        if self.ban_next is not None:
            wait, self.ban_next = self.ban_next, None
            self.ban_started = now
            self.banned_until = now + wait
            return self._reply(
                418,
                {"code": -1003, "msg": "Way too many requests; IP banned."},
                **{"Retry-After": f"{wait:g}"},
            )
        if self.rate_limit_next is not None:
            wait, self.rate_limit_next = self.rate_limit_next, None
            self.limited_at = now
            return self._reply(
                429, {"code": -1003, "msg": "Too many requests."}, **{"Retry-After": f"{wait:g}"}
            )
        return None

    def _keyed(self, request: web.Request) -> web.Response | None:
        if request.headers.get("X-MBX-APIKEY") != API_KEY:
            return self._error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        return None

    def _signed(self, request: web.Request) -> web.Response | None:
        refused = self._keyed(request)
        if refused is not None:
            return refused
        query = request.query_string
        payload, sep, signature = query.rpartition("&signature=")
        expected = hmac.new(API_SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not sep or not hmac.compare_digest(signature, expected):
            self.signature_rejections += 1
            return self._error(400, -1022, "Signature for this request is not valid.")
        params = dict(parse_qsl(payload))
        ts = int(params.get("timestamp", "0"))
        window = int(params.get("recvWindow", "5000"))
        now = self.now_ms()
        # Binance: timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow.
        if not (ts < now + 1000 and now - ts <= window):
            self.timestamp_rejections += 1
            return self._error(
                400, -1021, "Timestamp for this request is outside of the recvWindow."
            )
        return None

    async def _time(self, request: web.Request) -> web.Response:
        return self._gate(request) or self._reply(200, {"serverTime": self.now_ms()})

    async def _listen_key_post(self, request: web.Request) -> web.Response:
        refused = self._gate(request) or self._keyed(request)
        if refused is not None:
            return refused
        key = secrets.token_hex(32)
        self.keys = {key}  # one active key per account
        self.keys_issued += 1
        self.issued.append(key)
        return self._reply(200, {"listenKey": key})

    async def _listen_key_put(self, request: web.Request) -> web.Response:
        refused = self._gate(request) or self._keyed(request)
        if refused is not None:
            return refused
        if not self.keys:
            return self._error(400, -1125, "This listenKey does not exist.")
        self.keepalives += 1
        return self._reply(200, {"listenKey": next(iter(self.keys))})

    async def _position_risk(self, request: web.Request) -> web.Response:
        refused = self._gate(request) or self._signed(request)
        if refused is not None:
            return refused
        self.snapshots += 1
        body = [
            {"symbol": sym, "positionSide": side, "positionAmt": str(amt),
             "entryPrice": "0.0", "markPrice": str(MARKS.get(sym, (100.0, 0))[0]),
             "unRealizedProfit": "0", "notional": "0", "marginAsset": "USDT",
             "initialMargin": "0", "maintMargin": "0", "updateTime": t}
            for (sym, side), (amt, t) in sorted(self.legs.items())
            if amt != 0.0
        ]  # fmt: skip
        if self.snapshot_delay_s:
            await asyncio.sleep(self.snapshot_delay_s)
        return self._reply(200, body)

    async def _account(self, request: web.Request) -> web.Response:
        refused = self._gate(request) or self._signed(request)
        if refused is not None:
            return refused
        self.account_calls += 1
        return self._reply(
            200,
            {
                "totalInitialMargin": f"{self.initial_margin:.8f}",
                "totalMaintMargin": f"{self.maint_margin:.8f}",
                "totalWalletBalance": f"{self.equity:.8f}",
                "totalUnrealizedProfit": "0.00000000",
                "totalMarginBalance": f"{self.equity:.8f}",
                "availableBalance": f"{self.equity:.8f}",
                "assets": [],
                "positions": [],
            },
        )

    # --- websocket --------------------------------------------------------------------------

    async def _market(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.handshakes += 1
        conn = Conn(ws, None)
        for name in filter(None, request.query.get("streams", "").split("/")):
            conn.symbols.add(name.split("@", 1)[0].upper())
        self.conns.append(conn)
        conn.task = asyncio.create_task(self._marks(conn))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                req = json.loads(msg.data)
                if req.get("method") == "SUBSCRIBE" and all(
                    "@markPrice" in p for p in req["params"]
                ):
                    for p in req["params"]:
                        conn.symbols.add(p.split("@", 1)[0].upper())
                    await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
                else:
                    await ws.send_str(
                        json.dumps({"code": 2, "msg": "Invalid request", "id": req.get("id")})
                    )
        finally:
            conn.task.cancel()
        return ws

    async def _private(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_private:
            return web.Response(status=503, text="refusing")
        key = request.query.get("listenKey")
        if key is None or key not in self.keys:
            return web.Response(status=400, text="invalid listenKey")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.private_handshakes += 1
        conn = Conn(ws, key)
        self.conns.append(conn)
        async for _ in ws:  # nothing is expected from the client
            pass
        return ws

    async def _marks(self, conn: Conn) -> None:
        while not conn.ws.closed:
            await asyncio.sleep(self.mark_interval_s)
            for sym in sorted(conn.symbols):
                mark, index = MARKS.get(sym, (100.0, 99.9))
                data = {"e": "markPriceUpdate", "E": self.now_ms(), "s": sym,
                        "p": f"{mark:.8f}", "P": f"{mark:.8f}", "i": f"{index:.8f}",
                        "r": "0.00010000", "T": self.now_ms() + 3_600_000}  # fmt: skip
                with contextlib.suppress(Exception):
                    await conn.ws.send_str(
                        json.dumps({"stream": f"{sym.lower()}@markPrice@1s", "data": data})
                    )


__all__ = ["API_KEY", "API_SECRET", "MARKS", "FakeBinance"]
