"""Subjects, message ids and shards: pure functions of an event or an account name.

Subjects (``<p>`` is ``[cluster] subject_prefix``, ``riskmon`` by default):

- ``<p>.md.<underlying>.<instrument>``: prices;
  ``<p>.md.<underlying>.<instrument>.def``: instrument definitions (a subject of their
  own, so the last value per subject keeps both the definition and the latest price);
- ``<p>.acct.<account>.position.<instrument>``: positions (the instrument is in the
  subject because a position is an absolute snapshot *per instrument*: the last message
  per subject is then the account's current holding of that instrument);
- ``<p>.acct.<account>.account``: equity and margin.

Tokens are escaped so any name is a valid, unambiguous NATS token: every byte of the
UTF-8 name outside ``[A-Za-z0-9_-]`` becomes ``%XX`` (upper-case hex), ``%`` included, so
``a.b``, ``a b`` and ``a%2Eb`` map to three different tokens and :func:`unescape` gives
the name back. The empty name is ``%`` (not a valid escape, so it collides with nothing).

Shards: an account belongs to shard ``crc32(utf-8 name) % shard_count``: stable across
processes, machines and Python versions (unlike ``hash()``).
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Final

from monitor.model.events import AccountEvent, Event, InstrumentEvent, PositionEvent, PriceEvent
from monitor.model.instruments import parse_name

__all__ = [
    "account_filter",
    "account_of_subject",
    "escape",
    "is_account_event",
    "kv_key",
    "market_filter",
    "message_id",
    "shard_of",
    "subject_of",
    "unescape",
]

_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def escape(name: str) -> str:
    """``name`` as one NATS subject token (see the module docstring)."""
    if not name:
        return "%"
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in name.encode())


def unescape(token: str) -> str:
    """The name :func:`escape` made ``token`` from."""
    if token == "%":
        return ""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "%":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out += token[i].encode()
            i += 1
    return out.decode()


def market_filter(prefix: str) -> str:
    return f"{prefix}.md.>"


def account_filter(prefix: str) -> str:
    return f"{prefix}.acct.>"


def _underlying(instrument: str) -> str:
    parsed = parse_name(instrument)
    return parsed.underlying if parsed is not None else instrument


def subject_of(event: Event, prefix: str) -> str:
    """The subject ``event`` is published on."""
    if isinstance(event, PriceEvent):
        return f"{prefix}.md.{escape(_underlying(event.instrument))}.{escape(event.instrument)}"
    if isinstance(event, InstrumentEvent):
        return f"{prefix}.md.{escape(event.underlying)}.{escape(event.instrument)}.def"
    if isinstance(event, PositionEvent):
        return f"{prefix}.acct.{escape(event.account)}.position.{escape(event.instrument)}"
    return f"{prefix}.acct.{escape(event.account)}.account"


def account_of_subject(subject: str, prefix: str) -> str | None:
    """The account an account subject is about (None for any other subject)."""
    head = f"{prefix}.acct."
    if not subject.startswith(head):
        return None
    return unescape(subject[len(head) :].split(".", 1)[0])


def kv_key(account: str) -> str:
    """The key-value key of ``account``: its token with ``%`` as ``=`` (``%`` is not
    allowed in a key; ``=`` never appears in a token, so keys stay distinct)."""
    return "acct." + escape(account).replace("%", "=")


def message_id(subject: str, payload: bytes) -> str:
    """``Nats-Msg-Id`` for an account event: the same event published twice (a retry after
    a lost acknowledgement) is stored once within the stream's duplicate window."""
    return f"{subject}:{hashlib.blake2b(payload, digest_size=12).hexdigest()}"


def shard_of(account: str, shard_count: int) -> int:
    """The shard ``account`` belongs to, in ``0 .. shard_count - 1``."""
    return zlib.crc32(account.encode()) % shard_count


def is_account_event(event: Event) -> bool:
    return isinstance(event, PositionEvent | AccountEvent)
