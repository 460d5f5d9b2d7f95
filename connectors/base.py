"""What every connector is, and what it talks to.

A connector is an async producer: ``await connector.run(sink)`` runs until cancelled,
pushing normalized events (``monitor.model.events``) into the sink. It owns its own socket,
heartbeats and reconnects; it never touches engine state. Parsing of venue messages lives
in a pure function beside the transport so recorded messages test it without a socket.

Reconnect policy is data: ``monitor.model.backoff.Backoff``. Each connector declares its
own ``[[connectors]]`` entry as a :class:`ConnectorSettings` subclass in its own module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Annotated, Protocol, TypeVar, runtime_checkable

import msgspec
from msgspec import Meta

from monitor.model.backoff import Backoff
from monitor.model.events import Event, Reason, Rejected
from monitor.model.health import ConnectorStatus
from monitor.model.settings import Section

__all__ = [
    "Connector",
    "ConnectorName",
    "ConnectorSettings",
    "EventSink",
    "cancel_until_done",
    "decode",
    "supervise",
]

T = TypeVar("T")

ConnectorName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class EventSink(Protocol):
    """Where a connector delivers events.

    ``put`` waits only when the bounded queue is full of non-price events (prices are
    conflated and never wait); ``reject`` counts and logs an input the connector refused.
    """

    async def put(self, event: Event, source: str) -> None: ...

    def reject(self, source: str, rejected: Rejected) -> None: ...


@runtime_checkable
class Connector(Protocol):
    """An async producer of normalized events."""

    @property
    def status(self) -> ConnectorStatus: ...

    async def run(self, sink: EventSink) -> None:
        """Produce events until cancelled. Reconnects internally; raises only on bad config."""
        ...


class ConnectorSettings(Section, frozen=True, tag_field="type"):
    """Base of the ``[[connectors]]`` union, tagged on ``type``.

    To add a connector type: subclass with ``tag="<type>"`` in the connector's own module,
    redeclare ``name`` with the type as its default, implement :meth:`build`, and add the
    class to ``connectors.ConnectorConfig`` (the one registration line). Fields whose name
    ends in ``secret``/``password``/``token``/``api_key`` are redacted automatically;
    ``__post_init__`` messages must not quote them.
    """

    name: ConnectorName

    def build(self) -> Connector:
        """The connector this entry describes."""
        raise NotImplementedError(f"{type(self).__name__} does not build a connector")


def decode(decoder: msgspec.json.Decoder[T], raw: bytes | msgspec.Raw, what: str) -> T:
    """Decode a venue message with a typed decoder; what does not decode is refused.

    Raises
    ------
    Rejected
        ``missing_field`` (a required field absent), ``invalid_value`` (a field of the wrong
        type or out of range), ``malformed_json`` (not JSON); the detail starts with ``what``.
    """
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason = Reason.MISSING_FIELD if "missing required field" in text else Reason.INVALID_VALUE
        raise Rejected(reason, f"{what}: {text}") from None
    except msgspec.MsgspecError as exc:
        raise Rejected(Reason.MALFORMED_JSON, f"{what}: {exc}") from None


async def cancel_until_done(tasks: Sequence[asyncio.Task[None]], every_s: float = 1.0) -> None:
    """Cancel ``tasks`` and cancel again, every ``every_s``, those still running.

    A library that swallows a cancellation (nats-py does when it lands inside its flush,
    ``Client._flush_pending``) would otherwise leave a task running forever and a stop
    hanging; cancelled again, the task stops at its next await.
    """
    for t in tasks:
        t.cancel()
    while pending := [t for t in tasks if not t.done()]:
        await asyncio.wait(pending, timeout=every_s)
        for t in pending:
            if not t.done():
                t.cancel()


async def supervise(
    connector: Connector, sink: EventSink, backoff: Backoff, log: logging.Logger
) -> None:
    """Run ``connector`` into ``sink``; a crash is logged and the connector restarted after
    a backoff delay (``riskmon_connector_reconnects_total`` shows the flapping)."""
    status = connector.status
    delays = backoff.delays()
    while True:
        try:
            await connector.run(sink)
            log.info("connector finished", extra={"connector": status.name})
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status.connected = False
            status.last_error = f"{type(exc).__name__}: {exc}"
            delay = next(delays)
            log.exception(
                "connector failed; restarting in %.1fs", delay, extra={"connector": status.name}
            )
            await asyncio.sleep(delay)
            status.reconnects += 1
