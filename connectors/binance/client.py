"""The Binance USD-M futures connector: one combined stream on
:class:`connectors.ws.WebSocketRunner` and a signed REST client (aiohttp).

Binance routes USD-M streams by path (since 2026-04-23 the legacy ``/ws`` and ``/stream``
deliver neither): mark prices on ``{ws_url}/market``, user data on ``{ws_url}/private``.
A session holds both sockets (:meth:`connectors.ws.Session.attach`): ``connected`` means
both are up, and the end of either ends the session, which rebuilds both.

Per session (every connect and reconnect), in order:

1. ``{ws_url}/market/stream?streams=<symbol>@markPrice@1s/...`` for the configured
   symbols, then ``SUBSCRIBE`` for every other symbol held. A mark frame arrives every
   second per symbol: the liveness budget is on them.
2. With credentials: the server time offset (``GET /fapi/v1/time``: signed requests carry
   ``timestamp`` = local clock + offset, so a skewed clock does not get -1021), a listenKey
   (``POST /fapi/v1/listenKey``), and the user data socket
   ``{ws_url}/private/ws?listenKey=<key>`` (quiet by nature: its liveness is a websocket
   ping).
3. With credentials, the snapshot: ``GET /fapi/v3/positionRisk`` and ``GET /fapi/v3/account``
   (HMAC-SHA256 signed, ``recvWindow``). It replaces the positions (quantity 0 for symbols
   no longer held) except what ``ACCOUNT_UPDATE`` changed while it was in flight and is newer
   (:class:`connectors.binance.book.PositionBook`). The user data socket is already open,
   so nothing falls between the snapshot and the stream.
4. Session tasks: the listenKey keep-alive (``PUT`` every ``keepalive_s``, 30 min); the
   equity refresh (``/fapi/v3/account`` after every ``ACCOUNT_UPDATE``, and every
   ``account_interval_s`` since unrealized PnL moves with the mark); the planned reconnect
   at ``max_session_s`` (before Binance cuts a connection at 24 h).

A new listenKey and a new snapshot (a new session) follow ``listenKeyExpired``, a
keep-alive answered -1125 (the key does not exist), the 24-hour cut and any disconnect.

Rate limits: ``X-MBX-USED-WEIGHT-1M`` is read from every answer; above
``weight_soft_limit`` the periodic equity refresh is skipped. HTTP 429 and 418 (an IP ban)
stop every API call until ``Retry-After`` has passed: ``status.last_error`` and an error log
line say until when, the session ends, and the next connection waits for the ban's end.

Secrets: the API key, the secret and the listenKeys never reach a log line, an error, the
status or a repr (errors are scrubbed; request URLs, which carry signatures, are never
quoted).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hashlib
import hmac
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlencode

import aiohttp
import msgspec
from yarl import URL

from connectors.base import EventSink
from connectors.binance import parser
from connectors.binance.book import PositionBook
from connectors.binance.messages import AccountUpdate, ListenKeyExpired, MarkPriceUpdate
from connectors.ws import FatalConnectorError, Session, SessionEnded, WebSocketRunner, WsSettings
from monitor.model.backoff import Backoff
from monitor.model.events import AccountEvent, PositionEvent, Reason, Rejected
from monitor.model.health import ConnectorStatus

__all__ = ["BinanceApiError", "BinanceFutures", "BinanceSettings", "RateLimited"]

log = logging.getLogger("riskmon.connectors.binance")

_SUBSCRIBE_CHUNK: Final = 50
#: Error codes that reconnecting cannot fix: a bad key, secret or permission.
_FATAL_CODES: Final = frozenset({-2014, -2015, -1022})
_TIMESTAMP_OUTSIDE_RECV_WINDOW: Final = -1021
_LISTEN_KEY_DOES_NOT_EXIST: Final = -1125


@dataclass(frozen=True, slots=True)
class BinanceSettings:
    """Everything the connector needs (built from the config entry).

    The timings are Binance's rules by default; tests pass small values directly (the user
    config does not expose them).
    """

    name: str = "binance"
    rest_url: str = "https://fapi.binance.com"
    ws_url: str = "wss://fstream.binance.com"
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    api_key: str = field(default="", repr=False)
    recv_window_ms: int = 5_000
    request_timeout_s: float = 10.0
    #: Binance: a listenKey lives 60 minutes after its last POST/PUT; PUT every 30.
    keepalive_s: float = 1_800.0
    #: Binance cuts a connection at 24 h; reconnect on our terms before that.
    max_session_s: float = 23.5 * 3_600.0
    account_interval_s: float = 5.0
    #: Least spacing of two equity refreshes (a burst of updates makes one or two).
    account_min_gap_s: float = 0.5
    liveness_s: float = 15.0
    #: The user data socket is quiet by nature: a websocket ping this often proves it alive.
    user_ping_s: float = 20.0
    #: Of Binance's 2,400 per minute: above it the periodic equity refresh waits.
    weight_soft_limit: int = 1_800
    #: 429/418 without a ``Retry-After``: how long to stop.
    retry_after_default_s: float = 60.0
    backoff: Backoff | None = None


class BinanceApiError(Exception):
    """A REST error answer: HTTP status, Binance's code and message (never the request)."""

    def __init__(self, what: str, status: int, code: int | None, msg: str) -> None:
        super().__init__(f"{what}: HTTP {status}" + (f" error {code} {msg}" if code else ""))
        self.status = status
        self.code = code


class RateLimited(Exception):
    """Binance answered 429 or 418, or an earlier one still holds: no call until then."""


class _Rest:
    """Signed and keyed REST calls with the server time offset and the rate-limit stop."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        settings: BinanceSettings,
        secret: Callable[[], str] | None,
        on_block: Callable[[str], None],
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._http = http
        self._s = settings
        self._secret = secret
        self._on_block = on_block
        self._clock = clock
        self._monotonic = monotonic
        self.offset_ms = 0
        self.used_weight: int | None = None
        self._blocked_until = 0.0
        self._block_text = ""

    def blocked_for(self) -> float:
        """Seconds left of a 429/418 stop (0 when none holds)."""
        return max(0.0, self._blocked_until - self._monotonic())

    def server_now_ms(self) -> int:
        return round(self._clock() * 1000.0) + self.offset_ms

    async def sync_time(self) -> None:
        """Measure the server clock's offset from ours (half the round trip assumed)."""
        t0 = self._clock()
        body = await self._request("GET", "/fapi/v1/time", "", key=False)
        t1 = self._clock()
        try:
            server = parser.decode_server_time(body)
        except Rejected as rej:
            raise SessionEnded(f"GET /fapi/v1/time: {rej.reason.value}") from None
        self.offset_ms = server - round((t0 + t1) * 500.0)

    async def keyed(self, method: str, path: str) -> bytes:
        """A call that needs the API key only (the listenKey endpoints)."""
        return await self._request(method, path, "", key=True)

    async def signed(self, method: str, path: str, params: dict[str, str]) -> bytes:
        """A signed call; on -1021 the time offset is measured again and the call retried once."""
        try:
            return await self._request(method, path, self._sign(params), key=True)
        except BinanceApiError as exc:
            if exc.code != _TIMESTAMP_OUTSIDE_RECV_WINDOW:
                raise
        await self.sync_time()
        return await self._request(method, path, self._sign(params), key=True)

    def _sign(self, params: dict[str, str]) -> str:
        assert self._secret is not None
        query = urlencode(
            {
                **params,
                "recvWindow": str(self._s.recv_window_ms),
                "timestamp": str(self.server_now_ms()),
            }
        )
        sig = hmac.new(self._secret().encode(), query.encode(), hashlib.sha256).hexdigest()
        return f"{query}&signature={sig}"

    async def _request(self, method: str, path: str, query: str, *, key: bool) -> bytes:
        what = f"{method} {path}"
        if self.blocked_for() > 0.0:
            raise RateLimited(self._block_text)
        url = URL(
            self._s.rest_url.rstrip("/") + path + (f"?{query}" if query else ""), encoded=True
        )
        headers = {"X-MBX-APIKEY": self._s.api_key} if key else {}
        try:
            async with asyncio.timeout(self._s.request_timeout_s):
                async with self._http.request(method, url, headers=headers) as resp:
                    body = await resp.read()
                    status = resp.status
                    weight = resp.headers.get("X-MBX-USED-WEIGHT-1M")
                    retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise SessionEnded(f"{what}: no answer in {self._s.request_timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            # Never the exception's text: it may quote the URL (signature, timestamp).
            raise SessionEnded(f"{what}: {type(exc).__name__}") from None
        if weight is not None and weight.isdigit():
            self.used_weight = int(weight)
        if status in (418, 429):
            self._block(status, retry_after, what)
            raise RateLimited(self._block_text)
        if status >= 400:
            err = parser.decode_error(body)
            code, msg = (err.code, err.msg) if err is not None else (None, "")
            exc_ = BinanceApiError(what, status, code, msg)
            if code in _FATAL_CODES:
                raise FatalConnectorError(str(exc_))
            raise exc_
        return body

    def _block(self, status: int, retry_after: str | None, what: str) -> None:
        try:
            wait = float(retry_after) if retry_after is not None else -1.0
        except ValueError:
            wait = -1.0
        if not wait >= 0.0:
            wait = self._s.retry_after_default_s
        self._blocked_until = self._monotonic() + wait
        until = _dt.datetime.fromtimestamp(self._clock() + wait, tz=_dt.UTC)
        kind = "IP banned (HTTP 418)" if status == 418 else "rate limited (HTTP 429)"
        self._block_text = (
            f"{kind} on {what}: no API call until {until:%Y-%m-%dT%H:%M:%SZ} ({wait:g}s)"
        )
        self._on_block(self._block_text)


class BinanceFutures:
    """Binance USD-M prices, positions and account (implements ``connectors.base.Connector``).

    Parameters
    ----------
    settings
        See :class:`BinanceSettings`. Without ``api_key`` it runs public-only.
    secret
        Returns the API secret (read at each session, so a rotated ``api_secret_file`` is
        picked up).
    clock, monotonic
        Wall clock (epoch seconds: event times of snapshots, the ban's end) and the clock
        a ban is timed on.
    """

    def __init__(
        self,
        settings: BinanceSettings,
        *,
        secret: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._secret = secret if settings.api_key else None
        self._clock = clock
        self._monotonic = monotonic
        self._status = ConnectorStatus(name=settings.name, kind="binance_futures")
        s = settings
        self._runner = WebSocketRunner(
            WsSettings(
                url=f"{s.ws_url.rstrip('/')}/market/stream?streams="
                + "/".join(_stream(sym) for sym in s.symbols),
                liveness_s=s.liveness_s,
                handshake_timeout_s=max(6.0 * s.request_timeout_s, 30.0),
                backoff=s.backoff or Backoff(initial=0.5, cap=30.0),
            ),
            self,
            self._status,
            scrub=self._scrub,
            clock=clock,
        )
        self._sink: EventSink | None = None
        self._rest: _Rest | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[str | None]] = {}
        self._listen_keys: deque[str] = deque(maxlen=8)
        # What this connector has told the engine, across sessions.
        self.book = PositionBook()
        self.held: dict[str, float] = {}
        self.account: AccountEvent | None = None
        self.funding: dict[str, tuple[float, int]] = {}
        self._declared: set[str] = set()
        self._subscribed: set[str] = set()
        self._account_due = asyncio.Event()

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    @property
    def authenticated(self) -> bool:
        return self._secret is not None

    async def run(self, sink: EventSink) -> None:
        self._sink = sink
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            self._rest = _Rest(
                http, self.settings, self._secret, self._on_block, self._clock, self._monotonic
            )
            try:
                await self._runner.run()
            finally:
                self._rest = None

    # --- SessionHandler -------------------------------------------------------------------

    def retry_floor_s(self) -> float:
        return self._rest.blocked_for() if self._rest is not None else 0.0

    def on_close(self) -> None:
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(SessionEnded("SUBSCRIBE: session closed"))
        self._replies.clear()
        self._subscribed.clear()
        self.book.abandon_snapshot()

    async def on_open(self, session: Session) -> None:
        s = self.settings
        self._subscribed.update(s.symbols)  # in the URL
        held = {sym for sym in self.held if parser.instrument_name(sym) is not None}
        await self._subscribe(session, sorted(held))
        if self._secret is not None:
            await self._open_user_data(session)
            await self._snapshot()
            await self._subscribe(session, sorted(self.held))
            session.spawn(self._keepalive_loop(session), "listen_key_keepalive")
            session.spawn(self._account_loop(), "account")
        session.spawn(self._planned_reconnect(session), "planned_reconnect")

    async def _open_user_data(self, session: Session) -> None:
        """Time offset, a listenKey, and the user data socket (module docstring, step 2)."""
        rest = self._require_rest()
        await rest.sync_time()
        body = await rest.keyed("POST", "/fapi/v1/listenKey")
        try:
            key = parser.decode_listen_key(body)
        except Rejected as rej:
            raise SessionEnded(f"POST /fapi/v1/listenKey: {rej.reason.value}") from None
        self._listen_keys.append(key)
        url = f"{self.settings.ws_url.rstrip('/')}/private/ws?listenKey={key}"
        await session.attach(url, "user_data", ping_interval_s=self.settings.user_ping_s)

    async def on_frame(self, session: Session, frame: bytes) -> None:
        sink = self._sink
        assert sink is not None
        name = self.settings.name
        try:
            msg = parser.parse_frame(frame)
            if type(msg) is MarkPriceUpdate:
                perp, index = parser.price_events(msg)
                await sink.put(perp, name)
                if index.instrument not in self._declared:
                    self._declared.add(index.instrument)
                    await sink.put(parser.index_declaration(index.instrument.split(".")[0]), name)
                await sink.put(index, name)
                f = parser.funding(msg)
                if f is not None:
                    self.funding[perp.instrument] = f
            elif type(msg) is AccountUpdate:
                await self._account_update(session, msg)
            elif type(msg) is ListenKeyExpired:
                session.end("listenKeyExpired: a new listenKey and a new snapshot")
            elif type(msg) is parser.Reply:
                fut = self._replies.pop(msg.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg.error)
            elif type(msg) is parser.Ignored and msg.event == "MARGIN_CALL":
                # Binance's own warning: say so, and take the account's figures now.
                log.warning("binance sent MARGIN_CALL", extra={"connector": name})
                self._account_due.set()
        except Rejected as rej:
            sink.reject(name, rej)
        except (SessionEnded, asyncio.CancelledError):
            raise
        except Exception:  # a bug costs one frame, never the session
            log.exception("binance frame handling failed", extra={"connector": name})
            sink.reject(name, Rejected(Reason.INTERNAL_ERROR, "binance frame handling failed"))

    # --- user data ------------------------------------------------------------------------

    async def _account_update(self, session: Session, msg: AccountUpdate) -> None:
        """Merge the changed legs (never replace); any update makes the equity due."""
        ts = msg.transaction_time
        changed = sorted(
            {
                p.symbol
                for p in msg.data.positions
                if self.book.update(p.symbol, p.side, p.amount, ts)
            }
        )
        for sym in changed:
            await self._emit_position(sym, ts)
        self._account_due.set()
        new = [sym for sym in changed if sym in self.held and sym not in self._subscribed]
        if new:
            session.spawn(self._subscribe(session, new), "follow")

    async def _emit_position(self, symbol: str, ts: int) -> None:
        assert self._sink is not None
        name = parser.instrument_name(symbol)
        if name is None:
            self._sink.reject(
                self.settings.name, Rejected(Reason.UNKNOWN_INSTRUMENT, f"symbol {symbol!r}")
            )
            return
        qty = self.book.net(symbol)
        if qty == 0.0:
            self.held.pop(symbol, None)
        else:
            self.held[symbol] = qty
        ev = PositionEvent(ts=ts, account=self.settings.name, instrument=name, quantity=qty)
        await self._sink.put(ev, self.settings.name)

    async def _snapshot(self) -> None:
        """Positions and account over REST (module docstring, step 3)."""
        rest = self._require_rest()
        self.book.begin_snapshot()
        try:
            risk = parser.decode_position_risk(
                await rest.signed("GET", "/fapi/v3/positionRisk", {})
            )
            body = await rest.signed("GET", "/fapi/v3/account", {})
        except Rejected as rej:
            self.book.abandon_snapshot()
            raise SessionEnded(f"snapshot: {rej.reason.value}: {rej.detail}") from None
        except BaseException:
            self.book.abandon_snapshot()
            raise
        ts = rest.server_now_ms()
        symbols = self.book.apply_snapshot(
            (r.symbol, r.side, r.amount, r.update_time) for r in risk
        )
        for sym in symbols:
            await self._emit_position(sym, ts)
        await self._emit_account(body, ts)

    async def _emit_account(self, body: bytes, ts: int) -> None:
        assert self._sink is not None
        try:
            ev = parser.account_event(parser.decode_account(body), self.settings.name, ts)
        except Rejected as rej:
            self._sink.reject(self.settings.name, rej)
            return
        self.account = ev
        await self._sink.put(ev, self.settings.name)

    async def _account_loop(self) -> None:
        """Refresh equity after updates and every ``account_interval_s``."""
        s = self.settings
        rest = self._require_rest()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.account_interval_s):
                    await self._account_due.wait()
            due = self._account_due.is_set()
            self._account_due.clear()
            busy = rest.used_weight is not None and rest.used_weight > s.weight_soft_limit
            if busy and not due:
                continue
            try:
                ts = rest.server_now_ms()
                await self._emit_account(await rest.signed("GET", "/fapi/v3/account", {}), ts)
            except RateLimited:
                pass  # the status says until when; the next round tries again
            except (SessionEnded, BinanceApiError) as exc:
                log.warning(
                    "binance account refresh failed: %s",
                    self._scrub(str(exc)),
                    extra={"connector": s.name},
                )
            await asyncio.sleep(s.account_min_gap_s)

    async def _keepalive_loop(self, session: Session) -> None:
        """``PUT`` the listenKey every ``keepalive_s``; a failed one is retried within a
        minute (the key lives 60 minutes), -1125 ends the session (a new key and snapshot)."""
        rest = self._require_rest()
        delay = self.settings.keepalive_s
        while True:
            await asyncio.sleep(delay)
            delay = self.settings.keepalive_s
            try:
                await rest.keyed("PUT", "/fapi/v1/listenKey")
                continue
            except BinanceApiError as exc:
                if exc.code == _LISTEN_KEY_DOES_NOT_EXIST:
                    session.end("listenKey does not exist (-1125): a new key and a new snapshot")
                    return
                reason = str(exc)
            except SessionEnded as exc:
                reason = str(exc)
            except RateLimited:
                reason = ""  # already logged, with until when
            # Retry soon; a key that expires meanwhile sends listenKeyExpired (a new session).
            delay = min(delay, 60.0)
            if reason:
                log.warning(
                    "binance listenKey keep-alive failed: %s",
                    self._scrub(reason),
                    extra={"connector": self.settings.name},
                )

    async def _planned_reconnect(self, session: Session) -> None:
        await asyncio.sleep(self.settings.max_session_s)
        session.end("planned reconnect before Binance's 24-hour cut")

    # --- market data ----------------------------------------------------------------------

    async def _subscribe(self, session: Session, symbols: list[str]) -> None:
        """``SUBSCRIBE`` the mark price streams of ``symbols`` and wait for each answer."""
        streams = [_stream(sym) for sym in symbols if sym not in self._subscribed]
        for i in range(0, len(streams), _SUBSCRIBE_CHUNK):
            chunk = streams[i : i + _SUBSCRIBE_CHUNK]
            rid = next(self._ids)
            fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            self._replies[rid] = fut
            await session.send(_encoder.encode({"method": "SUBSCRIBE", "params": chunk, "id": rid}))
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    error = await fut
            except TimeoutError:
                raise SessionEnded(
                    f"SUBSCRIBE: no answer in {self.settings.request_timeout_s:g}s"
                ) from None
            finally:
                self._replies.pop(rid, None)
            if error is not None:
                raise SessionEnded(f"SUBSCRIBE refused: {error}")
        self._subscribed.update(symbols)

    # --- helpers --------------------------------------------------------------------------

    def _require_rest(self) -> _Rest:
        if self._rest is None:
            raise SessionEnded("REST client not running")
        return self._rest

    def _on_block(self, text: str) -> None:
        self._status.last_error = text
        log.error("binance: %s", text, extra={"connector": self.settings.name})

    def _scrub(self, text: str) -> str:
        secrets = [self.settings.api_key, *self._listen_keys]
        if self._secret is not None:
            with contextlib.suppress(Exception):  # an unreadable file: nothing of it leaks
                secrets.append(self._secret())
        for s in secrets:
            if s and s in text:
                text = text.replace(s, "***")
        return text


_encoder = msgspec.json.Encoder()


def _stream(symbol: str) -> str:
    """The mark price stream of a symbol: ``btcusdt@markPrice@1s``."""
    return f"{symbol.lower()}@markPrice@1s"
