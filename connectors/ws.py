"""Venue-independent websocket session machinery, shared by every websocket connector.

:class:`WebSocketRunner` owns the socket's life: connect, a handshake the venue's
:class:`SessionHandler` performs, a receive loop that hands every frame (bytes, unparsed) to
the handler, liveness (stall) detection, reconnect with :class:`connectors.base.Backoff`,
and the truth of :class:`connectors.base.ConnectorStatus`. It knows nothing of JSON-RPC or
of any venue: Deribit's JSON-RPC and Binance's streams both sit on top.

Per connection, every task (the receive loop, the handler's background loops such as a
token refresh) is named and owned by one ``asyncio.TaskGroup``: when the session ends, for
whatever reason, all of them are cancelled before the next connection starts.

Status truth: ``connected`` is True only between a completed handshake and the end of that
session; ``reconnects`` counts connection attempts after the first; ``messages`` and
``last_message_s`` count frames received (heartbeats included); ``last_error`` says why the
last session ended (never a frame's content, so never a token).

A venue that splits its streams over several sockets (Binance's market and user data)
opens the others with :meth:`Session.attach`: they are part of the session, their frames
go to the same handler, and the end of any of them ends the session (so ``connected``
means every socket of the session is up, and a reconnect rebuilds them all).

Liveness: a session with no frame at all for ``liveness_s`` is stalled and is closed and
replaced. The budget is on *any* frame, so a venue heartbeat keeps a quiet subscription
alive: a channel that is silent (a far option nobody trades) is normal, a silent socket is
not. The handler sets the budget once it knows the heartbeat it asked for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from monitor.model.backoff import Backoff
from monitor.model.health import ConnectorStatus

__all__ = ["Session", "SessionEnded", "SessionHandler", "WebSocketRunner", "WsSettings"]

log = logging.getLogger("riskmon.connectors")
#: Handed to websockets: its DEBUG records carry frame contents (requests with secrets,
#: answers with tokens), so this logger never goes below INFO, whatever the root level.
_wire_log = logging.getLogger("riskmon.connectors.websockets")
_wire_log.setLevel(logging.INFO)


class SessionEnded(Exception):
    """The current session is over (closed, stalled, or ended by the handler): reconnect."""


class FatalConnectorError(Exception):
    """A failure reconnecting cannot fix (bad credentials, bad config): stop the connector."""


@dataclass(slots=True)
class WsSettings:
    """Timing of one websocket connector (seconds)."""

    url: str
    #: Budget without any frame before a session counts as stalled (the handler may change
    #: it on the live session once it knows its heartbeat).
    liveness_s: float = 30.0
    open_timeout_s: float = 10.0
    #: The handler's whole handshake (subscribe, auth, snapshot) must finish within this.
    handshake_timeout_s: float = 60.0
    close_timeout_s: float = 2.0
    max_size: int = 1 << 24
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, cap=30.0))


class Session:
    """One live connection, as a handler sees it: send frames, own tasks, end it."""

    def __init__(
        self,
        ws: ClientConnection,
        tg: asyncio.TaskGroup,
        name: str,
        liveness_s: float,
        attach: Callable[[Session, str, str, float], Coroutine[Any, Any, None]] | None = None,
    ):
        self._ws = ws
        self._tg = tg
        self._name = name
        self.liveness_s = liveness_s
        self._attach = attach
        self._ended: asyncio.Event = asyncio.Event()
        self.end_reason = ""

    async def attach(self, url: str, name: str, *, ping_interval_s: float = 20.0) -> None:
        """Open another socket for this session and return once it is open.

        Its frames go to the handler's ``on_frame`` like the first socket's. It may be quiet
        by nature (a user data stream), so its liveness is a websocket ping every
        ``ping_interval_s`` (a pong later than that closes it), not the frame budget. Its
        close, for whatever reason, ends the session.

        Raises
        ------
        SessionEnded
            It could not be opened.
        """
        if self._attach is None:
            raise SessionEnded(f"{name}: this session cannot open other sockets")
        await self._attach(self, url, name, ping_interval_s)

    async def send(self, frame: str | bytes, *, text: bool = True) -> None:
        """Send one frame: a text frame (UTF-8 ``bytes`` are sent as text) unless ``text``
        is False."""
        try:
            await self._ws.send(frame, text=text)
        except websockets.ConnectionClosed as exc:
            raise SessionEnded(
                f"send on a closed connection ({exc.rcvd or 'no close frame'})"
            ) from None

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task of this session (named ``<connector>.<name>``); it is
        cancelled when the session ends. An exception in it ends the session."""
        return self._tg.create_task(coro, name=f"{self._name}.{name}")

    def end(self, reason: str) -> None:
        """End the session (the runner closes the socket and reconnects)."""
        if not self._ended.is_set():
            self.end_reason = reason
            self._ended.set()

    async def _watch(self) -> None:
        await self._ended.wait()
        raise SessionEnded(self.end_reason)


class SessionHandler(Protocol):
    """What a venue plugs into the runner."""

    async def on_open(self, session: Session) -> None:
        """Handshake (subscribe, authenticate, snapshot) while frames already flow to
        ``on_frame``. Returning means the session is live."""
        ...

    async def on_frame(self, session: Session, frame: bytes) -> None:
        """One received frame. Must not raise for bad input (count it instead)."""
        ...

    def on_close(self) -> None:
        """The session is over (pending requests should fail now)."""
        ...

    def retry_floor_s(self) -> float:
        """The least delay before the next connection (a venue's rate limit), seconds."""
        ...


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        # Prefer the exception that ended the session over the cancellations it caused.
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def describe(exc: BaseException) -> str:
    """A one-line reason for ``status.last_error`` (type and message, no payloads)."""
    leaf = _leaf(exc)
    text = str(leaf)
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__


class WebSocketRunner:
    """Connect, hand frames to ``handler``, reconnect forever (until cancelled).

    Parameters
    ----------
    scrub
        Applied to every error text before it reaches ``status.last_error`` or the log, so
        a handler can blank secrets that a library might echo.
    clock
        Wall clock, epoch seconds (``status.last_message_s``).
    """

    def __init__(
        self,
        settings: WsSettings,
        handler: SessionHandler,
        status: ConnectorStatus,
        *,
        scrub: Callable[[str], str] = lambda s: s,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._handler = handler
        self._status = status
        self._scrub = scrub
        self._clock = clock
        self._live = False

    async def run(self) -> None:
        st = self._status
        delays = self.settings.backoff.delays()
        while True:
            self._live = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                leaf = _leaf(exc)
                st.last_error = self._scrub(describe(leaf))
                if isinstance(leaf, FatalConnectorError):
                    raise FatalConnectorError(st.last_error) from None
            finally:
                st.connected = False
                self._handler.on_close()
            if self._live:  # a session that came up: start the schedule over
                delays = self.settings.backoff.delays()
            delay = max(next(delays), self._handler.retry_floor_s())
            log.info(
                "connector session ended; reconnecting in %.2fs: %s",
                delay,
                st.last_error,
                extra={"connector": st.name},
            )
            await asyncio.sleep(delay)
            st.reconnects += 1

    async def _session(self) -> None:
        s = self.settings
        st = self._status
        async with connect(
            s.url,
            open_timeout=s.open_timeout_s,
            close_timeout=s.close_timeout_s,
            ping_interval=None,  # liveness is the venue heartbeat's job (module docstring)
            max_size=s.max_size,
            compression=None,
            logger=_wire_log,
        ) as ws:
            try:
                async with asyncio.TaskGroup() as tg:
                    session = Session(ws, tg, st.name, s.liveness_s, self._attach)
                    tg.create_task(session._watch(), name=f"{st.name}.watch")
                    tg.create_task(self._receive(ws, session), name=f"{st.name}.receive")
                    async with asyncio.timeout(s.handshake_timeout_s):
                        await self._handler.on_open(session)
                    st.connected = self._live = True
            finally:
                st.connected = False

    async def _attach(self, session: Session, url: str, name: str, ping_s: float) -> None:
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.spawn(self._attached(session, url, name, ping_s, opened), name)
        await opened

    async def _attached(
        self,
        session: Session,
        url: str,
        name: str,
        ping_s: float,
        opened: asyncio.Future[None],
    ) -> None:
        s = self.settings
        try:
            ws = await connect(
                url,
                open_timeout=s.open_timeout_s,
                close_timeout=s.close_timeout_s,
                ping_interval=ping_s,
                ping_timeout=ping_s,
                max_size=s.max_size,
                compression=None,
                logger=_wire_log,
            )
        except Exception as exc:  # the caller learns it; the session ends through it
            opened.set_exception(SessionEnded(f"{name}: {describe(exc)}"))
            return
        opened.set_result(None)
        try:
            await self._receive(ws, session, name)
        finally:
            await ws.close()

    async def _receive(self, ws: ClientConnection, session: Session, name: str = "") -> None:
        """Hand every frame of ``ws`` to the handler. The session's first socket (no
        ``name``) is held to the frame budget; an attached one is pinged instead."""
        st = self._status
        handler = self._handler
        clock = self._clock
        prefix = f"{name}: " if name else ""
        while True:
            try:
                async with asyncio.timeout(None if name else session.liveness_s):
                    frame = await ws.recv(decode=False)
            except TimeoutError:
                raise SessionEnded(f"stalled: no frame for {session.liveness_s:g}s") from None
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else "none"
                raise SessionEnded(f"{prefix}closed by peer (code {code})") from None
            st.messages += 1
            st.last_message_s = clock()
            await handler.on_frame(session, frame)
