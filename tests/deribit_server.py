"""A local Deribit-protocol server for the connector's tests (127.0.0.1, a port it picks).

It speaks the JSON-RPC v2 the connector uses: ``public/set_heartbeat`` (then a heartbeat
and a ``test_request`` every interval; an unanswered ``test_request`` closes the session,
as Deribit does), ``public/test``, ``public/auth`` (``client_credentials`` and
``refresh_token``), ``public/subscribe``, ``private/subscribe``, ``public/get_instruments``,
``private/get_positions``, ``private/get_account_summary``. Its truth (``positions``:
instrument -> Deribit ``size``) changes during a test through :meth:`FakeDeribit.change`,
which also sends ``user.changes`` to the sessions subscribed to them.

Faults a test switches on: refuse handshakes (HTTP 503), stall (send nothing, answer
nothing), close in the middle of a burst, garbage frames, 10028 on the next private call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

CLIENT_ID = "riskmon-test"
CLIENT_SECRET = "s3cr3t-PLANTED-9f2c"
MARKS = {"BTC": 50_000.0, "ETH": 2_500.0}


@dataclass
class Conn:
    ws: ServerConnection
    authed: bool = False
    channels: set[str] = field(default_factory=set)
    stalled: bool = False
    test_answered: bool = True
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def instrument(name: str, expiry_ms: int = 1_893_484_800_000) -> dict[str, Any]:
    """A ``get_instruments`` item in Deribit's documented shape."""
    base = name.split("-")[0].split("_")[0]
    if name.endswith(("-C", "-P")):
        strike = float(name.split("-")[2])
        return {
            "instrument_name": name, "kind": "option", "base_currency": base,
            "quote_currency": base, "settlement_currency": base, "counter_currency": "USD",
            "price_index": f"{base.lower()}_usd", "contract_size": 1,
            "expiration_timestamp": expiry_ms, "strike": strike,
            "option_type": "call" if name.endswith("-C") else "put", "is_active": True,
        }  # fmt: skip
    return {
        "instrument_name": name, "kind": "future", "base_currency": base,
        "quote_currency": "USD", "settlement_currency": base, "counter_currency": "USD",
        "price_index": f"{base.lower()}_usd", "contract_size": 10,
        "instrument_type": "reversed", "is_active": True,
        "settlement_period": "perpetual" if name.endswith("PERPETUAL") else "month",
        "expiration_timestamp": 32_503_680_000_000 if name.endswith("PERPETUAL") else expiry_ms,
    }  # fmt: skip


def position(name: str, size: float) -> dict[str, Any]:
    """A ``get_positions`` / ``user.changes`` position in Deribit's documented shape."""
    base = name.split("-")[0]
    mark = MARKS.get(base, 100.0)
    kind = "option" if name.endswith(("-C", "-P")) else "future"
    out: dict[str, Any] = {
        "instrument_name": name, "kind": kind, "size": size,
        "direction": "buy" if size > 0 else ("sell" if size < 0 else "zero"),
        "average_price": mark, "index_price": mark,
    }  # fmt: skip
    if kind == "future":
        out["mark_price"] = mark
        out["size_currency"] = size / mark
    else:
        out["mark_price"] = 0.05
    return out


def expected_quantity(name: str, size: float) -> float:
    """What riskmon should hold: Deribit's ``size`` (coin for options, USD for inverse
    futures, which riskmon declares inverse)."""
    return size


class FakeDeribit:
    def __init__(self, currencies: tuple[str, ...] = ("BTC", "ETH")) -> None:
        self.currencies = currencies
        self.positions: dict[str, float] = {}
        self.listed: list[str] = ["BTC-PERPETUAL", "ETH-PERPETUAL", "BTC-27DEC30-60000-C"]
        self.conns: list[Conn] = []
        self.refusing = False
        self.stall_all = False
        self.rate_limit_next = False
        self.expires_in = 900
        self.tokens_issued = 0
        self.refreshes = 0
        self.test_requests_answered = 0
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.auth_params_seen: list[dict[str, Any]] = []
        self.handshakes = 0
        self._server: Server | None = None
        self._ids = itertools.count(1)
        self.changed = asyncio.Condition()
        #: Run once, between computing a get_positions answer and sending it.
        self.race_during_snapshot: Callable[[], Awaitable[None]] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeDeribit]:
        async with serve(
            self._handler, "127.0.0.1", 0, process_request=self._process_request
        ) as server:
            self._server = server
            try:
                yield self
            finally:
                for c in list(self.conns):
                    for t in c.tasks:
                        t.cancel()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}/ws/api/v2"

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.refusing:
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refusing\n")
        return None

    @property
    def live(self) -> list[Conn]:
        return [c for c in self.conns if c.ws.state.name == "OPEN"]

    # --- truth ------------------------------------------------------------------------------

    async def change(self, name: str, size: float, *, notify: bool = True) -> None:
        """Set the truth for ``name`` and send ``user.changes`` to subscribed sessions."""
        if size == 0.0:
            self.positions.pop(name, None)
        else:
            self.positions[name] = size
        if not notify:
            return
        kind = "option" if name.endswith(("-C", "-P")) else "future"
        cur = name.split("-")[0]
        channel = f"user.changes.{kind}.{cur}.raw"
        data = {
            "instrument_name": name,
            "positions": [position(name, size)],
            "trades": [],
            "orders": [],
        }
        for c in self.live:
            if channel in c.channels and not c.stalled:
                await self._notify(c, channel, data)

    async def send_raw(self, frame: str) -> None:
        for c in self.live:
            await c.ws.send(frame)

    async def drop_all(self) -> None:
        for c in self.live:
            await c.ws.close(1011, "server going away")

    def stall(self) -> None:
        for c in self.live:
            c.stalled = True

    async def push_ticker(
        self, name: str, mark: float, ts: int, extra: dict[str, Any] | None = None
    ) -> None:
        """A ticker notification; ``extra`` adds fields (``mark_iv``, ``greeks``, ...)."""
        for c in self.live:
            ch = next((x for x in c.channels if x.startswith(f"ticker.{name}.")), None)
            if ch is not None and not c.stalled:
                data = {"instrument_name": name, "mark_price": mark, "timestamp": ts,
                        "index_price": mark, "state": "open", **(extra or {})}  # fmt: skip
                await self._notify(c, ch, data)

    async def push_index(self, index: str, price: float, ts: int) -> None:
        for c in self.live:
            ch = f"deribit_price_index.{index}"
            if ch in c.channels and not c.stalled:
                await self._notify(c, ch, {"index_name": index, "price": price, "timestamp": ts})

    # --- protocol ---------------------------------------------------------------------------

    async def _notify(self, c: Conn, channel: str, data: Any) -> None:
        msg = {
            "jsonrpc": "2.0",
            "method": "subscription",
            "params": {"channel": channel, "data": data},
        }
        with contextlib.suppress(Exception):
            await c.ws.send(json.dumps(msg))

    async def _handler(self, ws: ServerConnection) -> None:
        c = Conn(ws, stalled=self.stall_all)
        self.conns.append(c)
        self.handshakes += 1
        try:
            async for raw in ws:
                if c.stalled:
                    continue
                req = json.loads(raw)
                await self._request(c, req)
        except Exception:
            pass
        finally:
            for t in c.tasks:
                t.cancel()

    async def _answer(self, c: Conn, rid: int, result: Any) -> None:
        await c.ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}))

    async def _error(self, c: Conn, rid: int, code: int, message: str) -> None:
        err = {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
        await c.ws.send(json.dumps(err))

    async def _heartbeats(self, c: Conn, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if c.stalled:
                continue
            if not c.test_answered:
                await c.ws.close(1000, "test_request not answered")
                return
            c.test_answered = False
            msg = {"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}}
            await c.ws.send(json.dumps(msg))

    async def _request(self, c: Conn, req: dict[str, Any]) -> None:
        rid, method, params = req["id"], req["method"], req.get("params", {})
        self.requests.append((method, params))
        if method == "public/set_heartbeat":
            c.tasks.append(asyncio.create_task(self._heartbeats(c, float(params["interval"]))))
            await self._answer(c, rid, "ok")
        elif method == "public/test":
            c.test_answered = True
            self.test_requests_answered += 1
            await self._answer(c, rid, {"version": "2.1.1"})
        elif method == "public/auth":
            self.auth_params_seen.append(dict(params))
            grant = params.get("grant_type")
            ok = (
                grant == "client_credentials"
                and params.get("client_id") == CLIENT_ID
                and params.get("client_secret") == CLIENT_SECRET
            ) or (
                grant == "refresh_token" and str(params.get("refresh_token", "")).startswith("rt-")
            )
            if not ok:
                await self._error(c, rid, 13004, "invalid_credentials")
                return
            if grant == "refresh_token":
                self.refreshes += 1
            self.tokens_issued += 1
            n = self.tokens_issued
            c.authed = True
            await self._answer(c, rid, {
                "access_token": f"at-{n}-TOKENVALUE", "refresh_token": f"rt-{n}-REFRESHVALUE",
                "expires_in": self.expires_in, "scope": "session:x trade:read",
                "token_type": "bearer",
            })  # fmt: skip
        elif method in ("public/subscribe", "private/subscribe"):
            chans = list(params["channels"])
            if method == "private/subscribe" and not c.authed:
                await self._error(c, rid, 13009, "unauthorized")
                return
            c.channels.update(chans)
            await self._answer(c, rid, chans)
        elif method == "public/get_instruments":
            cur = params["currency"]
            await self._answer(c, rid, [instrument(n) for n in self.listed if n.startswith(cur)])
        elif method.startswith("private/"):
            if not c.authed:
                await self._error(c, rid, 13009, "unauthorized")
                return
            if self.rate_limit_next:
                self.rate_limit_next = False
                await self._error(c, rid, 10028, "too_many_requests")
                await c.ws.close(1000, "too many requests")
                return
            if method == "private/get_positions":
                cur, kind = params["currency"], params["kind"]
                out = [
                    position(n, s)
                    for n, s in sorted(self.positions.items())
                    if n.startswith(cur + "-")
                    and ("option" if n.endswith(("-C", "-P")) else "future") == kind
                ]
                race = self.race_during_snapshot
                if race is not None:  # a change lands while this (now stale) answer travels
                    self.race_during_snapshot = None
                    await race()
                await self._answer(c, rid, out)
            elif method == "private/get_account_summary":
                cur = params["currency"]
                await self._answer(c, rid, {
                    "currency": cur, "equity": 10.0, "balance": 10.0,
                    "initial_margin": 1.0, "maintenance_margin": 0.5, "margin_balance": 10.0,
                })  # fmt: skip
            else:
                await self._error(c, rid, 10004, "not_found")
        else:
            await self._error(c, rid, 10004, "not_found")


__all__ = ["CLIENT_ID", "CLIENT_SECRET", "FakeDeribit", "Headers", "expected_quantity"]
