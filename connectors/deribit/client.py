"""The Deribit connector: JSON-RPC over :class:`connectors.ws.WebSocketRunner`.

Per session (every connect and reconnect), in order:

1. ``public/set_heartbeat``; the liveness budget becomes 2.5 heartbeats (a heartbeat or a
   ``test_request`` arrives every interval even when every channel is quiet).
   Every ``test_request`` is answered with ``public/test`` at once (Deribit closes a
   session that misses one).
2. With credentials: ``public/auth`` (``client_credentials``); a session task refreshes the
   token with ``refresh_token`` at 80% of ``expires_in``. Tokens and the secret are never
   logged, never in ``status.last_error`` (scrubbed) and never in a repr.
3. ``public/get_instruments`` per currency: instrument events for the options riskmon will
   see (inverse flag, exact expiry); refreshed hourly and just after each expiry.
4. Private subscriptions (``user.changes.{future,option}.{cur}.raw``,
   ``user.portfolio.{cur}``), *then* the snapshot: ``private/get_positions`` per currency
   and kind and ``private/get_account_summary`` per currency. The snapshot replaces the
   account's positions: a position event for every instrument held now, quantity 0 for
   every instrument held before and absent now. An instrument whose ``user.changes``
   arrived while the snapshot was in flight keeps the change (it is at least as new).
5. Public subscriptions: tickers (held + ``instruments``, or every listed instrument with
   ``subscribe = "all"``), the indices they price against, ``platform_state``.

Errors by name: 10028 ``too_many_requests`` ends the session (Deribit ends it too) and the
next connection waits at least ``rate_limit_delay_s``; 13009 ``invalid_token`` / 13010
``token_revoked`` on a private call: authenticate again once, else end the session.

Units: :mod:`connectors.deribit.parser`'s docstring. Account summaries are coin; the
account event is USD at the index price this connector holds (``coin_summaries`` keeps the
coin figures for the coin-collateral schema to come; ``usd_sizes`` the USD size of inverse
futures).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from connectors.base import EventSink
from connectors.deribit import parser
from connectors.deribit.messages import AccountSummary, AuthResult, Instrument, RpcError, Ticker
from connectors.ws import FatalConnectorError, Session, SessionEnded, WebSocketRunner, WsSettings
from monitor.model.backoff import Backoff
from monitor.model.events import PositionEvent, Reason, Rejected
from monitor.model.health import ConnectorStatus
from monitor.model.instruments import DOLLAR_COINS

__all__ = ["DeribitError", "DeribitMarket", "DeribitSettings", "RpcFailure"]

log = logging.getLogger("riskmon.connectors.deribit")

_KINDS: Final = ("future", "option")
_SUBSCRIBE_CHUNK: Final = 200
_INSTRUMENT_REFRESH_S: Final = 3600.0


class DeribitError(enum.IntEnum):
    """Deribit JSON-RPC error codes this connector acts on."""

    TOO_MANY_REQUESTS = 10028
    INVALID_TOKEN = 13009
    TOKEN_REVOKED = 13010
    INVALID_CREDENTIALS = 13004


class RpcFailure(Exception):
    """A JSON-RPC error answer (code and Deribit's short message, never the request)."""

    def __init__(self, method: str, error: RpcError) -> None:
        super().__init__(f"{method}: error {error.code} {error.message}")
        self.code = error.code
        self.method = method


@dataclass(frozen=True, slots=True)
class DeribitSettings:
    """Everything the connector needs (built from the config entry by ``build_deribit``).

    ``heartbeat_s`` is >= 10 from the user config; tests pass smaller values directly.
    """

    name: str = "deribit"
    url: str = "wss://www.deribit.com/ws/api/v2"
    currencies: tuple[str, ...] = ("BTC", "ETH")
    subscribe: Literal["held", "all"] = "held"
    ticker_interval: str = "100ms"
    heartbeat_s: float = 10.0
    instruments: tuple[str, ...] = ()
    client_id: str = ""
    request_timeout_s: float = 10.0
    rate_limit_delay_s: float = 10.0
    backoff: Backoff | None = None


class _Rpc:
    """JSON-RPC request ids and pending answers of one session."""

    def __init__(self, session: Session, timeout_s: float) -> None:
        self._session = session
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[msgspec.Raw]]] = {}
        self._timeout_s = timeout_s

    async def call(self, method: str, params: dict[str, Any]) -> msgspec.Raw:
        rid = next(self._ids)
        fut: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (method, fut)
        try:
            await self._session.send(
                _encode({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            )
            async with asyncio.timeout(self._timeout_s):
                return await fut
        except TimeoutError:
            raise SessionEnded(f"{method}: no answer in {self._timeout_s:g}s") from None
        finally:
            self._pending.pop(rid, None)

    async def send(self, method: str, params: dict[str, Any]) -> None:
        """A request whose answer nobody waits for (``public/test``)."""
        await self._session.send(
            _encode({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})
        )

    def resolve(self, resp: parser.Response) -> None:
        entry = self._pending.pop(resp.id, None)
        if entry is None or entry[1].done():
            return
        method, fut = entry
        if resp.error is not None:
            fut.set_exception(RpcFailure(method, resp.error))
        else:
            fut.set_result(resp.result if resp.result is not None else msgspec.Raw(b"null"))

    def close(self) -> None:
        for method, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(SessionEnded(f"{method}: session closed"))
        self._pending.clear()


_encoder = msgspec.json.Encoder()


def _encode(obj: dict[str, Any]) -> bytes:
    return _encoder.encode(obj)


_auth_decoder = msgspec.json.Decoder(AuthResult)


class DeribitMarket:
    """Deribit prices, positions and account (implements ``connectors.base.Connector``).

    Parameters
    ----------
    settings
        See :class:`DeribitSettings`.
    secret
        Returns the client secret (read at each authentication, so a rotated
        ``client_secret_file`` is picked up); None = public only.
    clock
        Wall clock, epoch seconds: event ``ts`` of snapshots and account events.
    """

    def __init__(
        self,
        settings: DeribitSettings,
        *,
        secret: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._secret = secret if settings.client_id else None
        self._clock = clock
        self._status = ConnectorStatus(name=settings.name, kind="deribit")
        hb = settings.heartbeat_s
        self._runner = WebSocketRunner(
            WsSettings(
                url=settings.url,
                liveness_s=max(3.0 * hb, 5.0),  # until set_heartbeat answers
                handshake_timeout_s=max(6.0 * settings.request_timeout_s, 30.0),
                backoff=settings.backoff or Backoff(initial=0.5, cap=30.0),
            ),
            self,
            self._status,
            scrub=self._scrub,
            clock=clock,
        )
        self._sink: EventSink | None = None
        self._rpc: _Rpc | None = None
        self._tokens: list[str] = []
        self._retry_floor_s = 0.0
        # What this connector has told the engine, across sessions.
        self.held: dict[str, float] = {}
        self.usd_sizes: dict[str, float] = {}
        self.coin_summaries: dict[str, AccountSummary] = {}
        self.index_usd: dict[str, float] = {}
        self.funding: dict[str, tuple[float, float]] = {}
        self.locked_indices: set[str] = set()
        self.maintenance = False
        self.instruments: dict[str, Instrument] = {}
        self._declared: set[str] = set()
        self._subscribed: set[str] = set()
        self._in_flight = False
        self._touched: set[str] = set()
        self._account_pending = False

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    @property
    def authenticated(self) -> bool:
        return self._secret is not None

    async def run(self, sink: EventSink) -> None:
        self._sink = sink
        await self._runner.run()

    # --- SessionHandler -------------------------------------------------------------------

    def retry_floor_s(self) -> float:
        floor, self._retry_floor_s = self._retry_floor_s, 0.0
        return floor

    def on_close(self) -> None:
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None
        self._subscribed.clear()
        self._in_flight = False
        self._touched.clear()

    async def on_open(self, session: Session) -> None:
        s = self.settings
        rpc = self._rpc = _Rpc(session, s.request_timeout_s)
        try:
            await rpc.call("public/set_heartbeat", {"interval": s.heartbeat_s})
            session.liveness_s = 2.5 * s.heartbeat_s
            if self._secret is not None:
                auth = await self._authenticate(rpc, refresh=None)
                session.spawn(self._refresh_loop(session, rpc, auth.expires_in), "token_refresh")
            await self._load_instruments(rpc)
            if self._secret is not None:
                await self._subscribe(
                    rpc,
                    [f"user.changes.{k}.{c}.raw" for c in s.currencies for k in _KINDS]
                    + [f"user.portfolio.{c.lower()}" for c in s.currencies],
                    private=True,
                )
                await self._snapshot(rpc)
            await self._subscribe_market(rpc, self._wanted())
            await self._subscribe(rpc, ["platform_state"], private=False)
        except RpcFailure as exc:
            self._on_failure(session, exc)
            raise
        session.spawn(self._instrument_loop(session, rpc), "instruments")

    async def on_frame(self, session: Session, frame: bytes) -> None:
        sink = self._sink
        assert sink is not None
        name = self.settings.name
        try:
            msg = parser.parse_frame(frame)
            if type(msg) is Ticker:
                await sink.put(parser.to_price_event(msg), name)
                if msg.funding_8h is not None:
                    f = parser.funding(msg)
                    if f is not None:
                        self.funding[msg.instrument_name] = f
            elif type(msg) is parser.Heartbeat:
                if msg.test_request and self._rpc is not None:
                    await self._rpc.send("public/test", {})
            elif type(msg) is parser.Response:
                if self._rpc is not None:
                    self._rpc.resolve(msg)
            elif type(msg) is parser.Notification:
                await self._notification(session, msg)
        except Rejected as rej:
            sink.reject(name, rej)
        except (SessionEnded, asyncio.CancelledError):
            raise
        except Exception:  # a bug costs one frame, never the session
            log.exception("deribit frame handling failed", extra={"connector": name})
            sink.reject(name, Rejected(Reason.INTERNAL_ERROR, "deribit frame handling failed"))

    # --- notifications --------------------------------------------------------------------

    async def _notification(self, session: Session, msg: parser.Notification) -> None:
        sink = self._sink
        assert sink is not None
        name = self.settings.name
        ch = msg.channel
        if ch.startswith("deribit_price_index."):
            ev = parser.index_to_price_event(msg.data)
            self.index_usd[ev.instrument] = ev.price
            await sink.put(ev, name)
            if self._account_pending:
                await self._emit_account()
        elif ch.startswith("user.changes."):
            changes = parser.decode_changes(msg.data)
            events = parser.changes_positions(changes, name, self._now_ms())
            for pos, pev in zip(changes.positions, events, strict=True):
                if self._in_flight:
                    self._touched.add(pev.instrument)
                await self._emit_position(pev, pos.size)
            new = [e.instrument for e in events if e.quantity != 0.0]
            if any(n not in self._subscribed for n in new):
                session.spawn(self._follow(new), "follow")
        elif ch.startswith("user.portfolio."):
            summary = parser.decode_summary(msg.data)
            self.coin_summaries[summary.currency.upper()] = summary
            await self._emit_account()
        elif ch == "platform_state":
            state = parser.decode_platform_state(msg.data)
            if state.price_index is not None and state.locked is not None:
                (self.locked_indices.add if state.locked else self.locked_indices.discard)(
                    state.price_index
                )
            if state.maintenance is not None:
                self.maintenance = state.maintenance
            if state.maintenance or state.locked:
                log.warning(
                    "deribit platform state: %s",
                    "maintenance" if state.maintenance else f"index {state.price_index} locked",
                    extra={"connector": name},
                )
        else:
            raise Rejected(Reason.UNKNOWN_TYPE, f"channel {ch!r}")

    async def _emit_position(self, ev: PositionEvent, size: float) -> None:
        assert self._sink is not None
        if ev.quantity == 0.0:
            self.held.pop(ev.instrument, None)
            self.usd_sizes.pop(ev.instrument, None)
        else:
            self.held[ev.instrument] = ev.quantity
            # A future or perpetual (one dash), USD-sized: keep the USD size.
            if parser.is_inverse_future(ev.instrument) and ev.instrument.count("-") == 1:
                self.usd_sizes[ev.instrument] = size
        await self._declare([ev.instrument])
        await self._sink.put(ev, self.settings.name)

    async def _emit_account(self) -> None:
        assert self._sink is not None
        ev = parser.account_event(
            self._now_ms(), self.settings.name, self.coin_summaries, self.index_usd
        )
        self._account_pending = ev is None
        if ev is not None:
            await self._sink.put(ev, self.settings.name)

    # --- session steps --------------------------------------------------------------------

    async def _authenticate(self, rpc: _Rpc, refresh: str | None) -> AuthResult:
        assert self._secret is not None
        if refresh is not None:
            params = {"grant_type": "refresh_token", "refresh_token": refresh}
        else:
            params = {
                "grant_type": "client_credentials",
                "client_id": self.settings.client_id,
                "client_secret": self._secret(),
            }
        try:
            auth = _auth_decoder.decode(await rpc.call("public/auth", params))
        except msgspec.MsgspecError:
            raise SessionEnded("public/auth: unreadable answer") from None
        except RpcFailure as exc:
            if exc.code == DeribitError.INVALID_CREDENTIALS:
                raise FatalConnectorError("public/auth: invalid credentials") from None
            raise
        self._tokens = [auth.access_token, auth.refresh_token]
        return auth

    async def _refresh_loop(self, session: Session, rpc: _Rpc, expires_in: float) -> None:
        """Refresh the token at 80% of its lifetime; a refused refresh token (13009/13010)
        falls back to the client credentials."""
        while True:
            await asyncio.sleep(max(0.8 * expires_in, 0.05))
            try:
                auth = await self._authenticate(rpc, refresh=self._tokens[1])
            except RpcFailure as exc:
                if exc.code not in (DeribitError.INVALID_TOKEN, DeribitError.TOKEN_REVOKED):
                    self._on_failure(session, exc)
                    raise
                auth = await self._authenticate(rpc, refresh=None)
            expires_in = auth.expires_in

    async def _private(self, rpc: _Rpc, method: str, params: dict[str, Any]) -> msgspec.Raw:
        """A private call; on 13009/13010 authenticate again once and retry."""
        try:
            return await rpc.call(method, params)
        except RpcFailure as exc:
            if exc.code not in (DeribitError.INVALID_TOKEN, DeribitError.TOKEN_REVOKED):
                raise
        await self._authenticate(rpc, refresh=None)
        return await rpc.call(method, params)

    async def _snapshot(self, rpc: _Rpc) -> None:
        """Replace the account's positions and equity (module docstring, step 4)."""
        s = self.settings
        self._in_flight = True
        self._touched.clear()
        try:
            positions: dict[str, tuple[float, float]] = {}
            for cur in s.currencies:
                for kind in _KINDS:
                    raw = await self._private(
                        rpc, "private/get_positions", {"currency": cur, "kind": kind}
                    )
                    for p in parser.decode_positions(raw):
                        if p.size != 0.0:
                            positions[p.instrument_name] = (parser.position_quantity(p), p.size)
            summaries = {}
            for cur in s.currencies:
                raw = await self._private(rpc, "private/get_account_summary", {"currency": cur})
                summaries[cur] = parser.decode_summary(raw)
            ts = self._now_ms()
            name = self.settings.name
            for inst in sorted(set(positions) | set(self.held)):
                if inst in self._touched:
                    continue
                qty, size = positions.get(inst, (0.0, 0.0))
                await self._emit_position(
                    PositionEvent(ts=ts, account=name, instrument=inst, quantity=qty), size
                )
            self.coin_summaries.update(summaries)
            await self._emit_account()
        finally:
            self._in_flight = False
            self._touched.clear()

    async def _load_instruments(self, rpc: _Rpc) -> None:
        for cur in self.settings.currencies:
            raw = await rpc.call("public/get_instruments", {"currency": cur, "expired": False})
            try:
                items = parser.decode_instruments(raw)
            except Rejected as rej:
                assert self._sink is not None
                self._sink.reject(self.settings.name, rej)
                continue
            for inst in items:
                self.instruments[inst.instrument_name] = inst

    def _wanted(self) -> list[str]:
        if self.settings.subscribe == "all":
            names = [n for n, i in self.instruments.items() if i.is_active]
        else:
            names = []
        return sorted({*names, *self.settings.instruments, *self.held})

    async def _declare(self, names: Iterable[str]) -> None:
        assert self._sink is not None
        for n in names:
            if n in self._declared:
                continue
            inst = self.instruments.get(n)
            if inst is None:
                # A USD-sized future must be declared inverse before its position counts,
                # whether or not get_instruments listed it (yet): its name says enough.
                early = parser.inverse_future_event(n)
                if early is not None:
                    self._declared.add(n)
                    await self._sink.put(early, self.settings.name)
                continue
            try:
                ev = parser.instrument_event(inst) or parser.inverse_future_event(n)
            except Rejected as rej:
                self._sink.reject(self.settings.name, rej)
                self._declared.add(n)
                continue
            self._declared.add(n)
            if ev is not None:
                await self._sink.put(ev, self.settings.name)

    def _index_of(self, name: str) -> str | None:
        inst = self.instruments.get(name)
        if inst is not None and inst.price_index:
            return inst.price_index
        head = name.split("-", 1)[0]
        base, _, quote = head.partition("_")
        return f"{base.lower()}_{(quote or 'usd').lower()}" if base else None

    async def _subscribe_market(self, rpc: _Rpc, names: Sequence[str]) -> None:
        await self._declare(names)
        iv = self.settings.ticker_interval
        channels = [f"ticker.{n}.{iv}" for n in names if n not in self._subscribed]
        indices = {self._index_of(n) for n in names} | {
            f"{c.lower()}_usd" for c in self.settings.currencies if c not in DOLLAR_COINS
        }
        channels += [
            f"deribit_price_index.{i}"
            for i in sorted(x for x in indices if x)
            if f"deribit_price_index.{i}" not in self._subscribed
        ]
        await self._subscribe(rpc, channels, private=False)
        self._subscribed.update(names)

    async def _subscribe(self, rpc: _Rpc, channels: Sequence[str], *, private: bool) -> None:
        method = "private/subscribe" if private else "public/subscribe"
        for i in range(0, len(channels), _SUBSCRIBE_CHUNK):
            chunk = list(channels[i : i + _SUBSCRIBE_CHUNK])
            await rpc.call(method, {"channels": chunk})
            self._subscribed.update(chunk)

    async def _follow(self, names: list[str]) -> None:
        """A newly held instrument: price it (and declare it) on the live session."""
        rpc = self._rpc
        if rpc is None:
            return
        await self._subscribe_market(rpc, [n for n in names if n not in self._subscribed])

    async def _instrument_loop(self, session: Session, rpc: _Rpc) -> None:
        while True:
            now_ms = self._now_ms()
            expiries = [
                i.expiration_timestamp
                for i in self.instruments.values()
                if i.expiration_timestamp is not None and i.expiration_timestamp > now_ms
            ]
            wait = _INSTRUMENT_REFRESH_S
            if expiries:
                wait = min(wait, (min(expiries) - now_ms) / 1000.0 + 60.0)
            await asyncio.sleep(max(wait, 1.0))
            try:
                await self._load_instruments(rpc)
                await self._subscribe_market(rpc, self._wanted())
            except RpcFailure as exc:
                self._on_failure(session, exc)
                raise

    def _on_failure(self, session: Session, exc: RpcFailure) -> None:
        if exc.code == DeribitError.TOO_MANY_REQUESTS:
            self._retry_floor_s = self.settings.rate_limit_delay_s
            session.end("too_many_requests (10028)")

    # --- helpers --------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000.0)

    def _scrub(self, text: str) -> str:
        secrets = [t for t in self._tokens if t]
        if self._secret is not None:
            with contextlib.suppress(Exception):  # an unreadable file: nothing of it leaks
                secrets.append(self._secret())
        for s in secrets:
            if s and s in text:
                text = text.replace(s, "***")
        return text
