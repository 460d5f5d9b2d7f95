"""The on-disk outbox: transitions a notifier has not acknowledged yet.

One :class:`Outbox` per notifier, in its own directory (``<alerts.outbox>/<notifier>/``).
Each pending transition is one file, written before delivery is attempted and removed
when the notifier acknowledges it, so a crash or a restart loses nothing: a new process
loads what is left and delivers it first, in the order it was submitted.

File format (``FORMAT_VERSION`` 1)
----------------------------------
Name: ``<seq, 16 digits>-<sha256(idempotency_key)[:24]>.json``; ``seq`` is the submission
order (it restarts above the largest pending one). Content, one JSON object::

    {"v": 1, "seq": 7, "notifier": "webhook", "key": "<idempotency key>",
     "transition": {"ts_ms": ..., "previous": "pending",
                    "alert": {"rule": ..., "severity": ..., "state": ..., "account": ...,
                              "underlying": ..., "value": ..., "threshold": ...,
                              "since_ms": ..., "active_since_ms": ..., "summary": ...,
                              "labels": {...}}}}

A value or threshold that is not finite is stored as ``null`` and read back as NaN.

Atomicity
---------
A file is written as ``.tmp-<name>``, flushed with ``fsync``, renamed over its final name
with ``os.replace`` (atomic on POSIX), then the directory is ``fsync``-ed once per batch so
the rename itself survives a power cut. A reader therefore sees a whole file or none; a
crash before the rename leaves only a ``.tmp-`` file, which :meth:`Outbox.load` deletes.
Removal after an acknowledgement is a plain ``unlink`` without a directory ``fsync``: if a
crash undoes it, the transition is delivered again, which the idempotency key makes
harmless (delivery is at least once, receivers dedup to exactly once per key).

A file that cannot be parsed (a disk fault, a hand edit) is renamed ``.corrupt-<name>``,
counted and logged; it is never deleted silently and never blocks the ones behind it.

Limits
------
- ``max_pending`` files per notifier (default 10 000; an alert transition is ~0.5-1 kB, so
  about 10 MB). The count is exported (``riskmon_alert_notifications_pending``). When a new
  transition arrives at the cap, the *oldest* pending one is dropped (its file removed),
  counted in ``dropped`` and logged at ERROR with its key: the newest state of an alert is
  what a person needs, and a receiver down long enough to miss 10 000 transitions has
  missed the moment of the old ones anyway. Delivery is oldest first, so the backlog
  drains in order once the receiver is back.
- A transition whose file cannot be written (disk full, read-only) is still queued in
  memory and delivered while this process lives; ``write_errors`` counts it and an ERROR
  is logged. Only a restart before delivery loses it.
- One process per outbox directory: two daemons sharing one would deliver twice (harmless
  to receivers, thanks to the keys) and race on removals.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from monitor.model.alert import Transition

__all__ = ["DEFAULT_MAX_PENDING", "FORMAT_VERSION", "Outbox", "OutboxEntry"]

log = logging.getLogger("riskmon.notify")

FORMAT_VERSION: Final = 1
DEFAULT_MAX_PENDING: Final = 10_000
_TMP: Final = ".tmp-"
_CORRUPT: Final = ".corrupt-"
_NAME: Final = re.compile(r"^(\d{16})-([0-9a-f]{24})\.json$")


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One pending transition; ``path`` is ``None`` when it could not be written to disk."""

    seq: int
    transition: Transition
    path: Path | None

    @property
    def key(self) -> str:
        return self.transition.idempotency_key


def _num_out(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _num_in(x: float | None) -> float:
    return math.nan if x is None else float(x)


def encode_transition(t: Transition) -> dict[str, Any]:
    """The ``transition`` object of an outbox file (JSON: a non-finite value is null)."""
    doc = t.as_state()
    a = doc["alert"]
    a["value"], a["threshold"] = _num_out(a["value"]), _num_out(a["threshold"])
    return doc


def decode_transition(doc: dict[str, Any]) -> Transition:
    """Inverse of :func:`encode_transition`; raises ``KeyError``/``TypeError``/``ValueError``."""
    a = dict(doc["alert"])
    a["value"], a["threshold"] = _num_in(a["value"]), _num_in(a["threshold"])
    a.setdefault("labels", {})
    return Transition.from_state({**doc, "alert": a})


def _file_name(seq: int, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"{seq:016d}-{digest}.json"


class Outbox:
    """Durable FIFO of one notifier's unacknowledged transitions (see the module doc).

    The delivery task (on the event loop) reads and acknowledges; :meth:`add` may run on
    one writer thread at a time (the dispatcher's, so the engine never waits for an
    ``fsync``). A lock guards the in-memory queue only, never the disk: an entry becomes
    visible to :meth:`head` once its file is durable. Each key is pending at most once:
    submitting a key that is already pending (or being written) is a no-op.
    """

    def __init__(
        self, directory: Path, notifier: str, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.directory = directory
        self.notifier = notifier
        self.max_pending = max_pending
        self._entries: dict[str, OutboxEntry] = {}  # key -> entry, in seq order
        self._writing: set[str] = set()  # keys whose files are being written
        self._lock = threading.Lock()
        self._next_seq = 0
        #: Oldest transitions removed at the cap (never delivered).
        self.dropped = 0
        #: Transitions that could not be written (kept in memory only).
        self.write_errors = 0
        #: Unreadable files set aside as ``.corrupt-*`` at load.
        self.corrupt = 0
        #: ``.tmp-*`` files left by a crash and removed at load.
        self.stale_temp_files = 0

    # -- reading --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[OutboxEntry]:
        with self._lock:
            return iter(list(self._entries.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def head(self) -> OutboxEntry | None:
        """The oldest pending entry, the next to deliver."""
        with self._lock:
            return next(iter(self._entries.values()), None)

    # -- lifecycle --------------------------------------------------------------------------

    def load(self) -> list[OutboxEntry]:
        """Create the directory, clean up after a crash and queue what is pending, by seq.

        Call once, before the first :meth:`add`.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[OutboxEntry] = []
        for path in self.directory.iterdir():
            name = path.name
            if name.startswith(_TMP):
                path.unlink(missing_ok=True)
                self.stale_temp_files += 1
                log.warning(
                    "outbox: removed a partial write left by a crash",
                    extra={"notifier": self.notifier, "file": name},
                )
                continue
            m = _NAME.match(name)
            if m is None:
                continue  # .corrupt-* and anything else that is not ours
            try:
                doc = json.loads(path.read_bytes())
                if doc.get("v") != FORMAT_VERSION:
                    raise ValueError(f"unknown outbox format {doc.get('v')!r}")
                seq = int(doc["seq"])
                if seq != int(m.group(1)):
                    raise ValueError(f"seq {seq} does not match the file name")
                transition = decode_transition(doc["transition"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self.corrupt += 1
                path.replace(path.with_name(_CORRUPT + name))
                log.error(
                    "outbox: unreadable file set aside",
                    extra={"notifier": self.notifier, "file": name, "error": repr(exc)},
                )
                continue
            found.append(OutboxEntry(seq, transition, path))
        found.sort(key=lambda e: e.seq)
        for entry in found:
            if entry.key in self._entries:  # same key twice: keep the first, drop the copy
                assert entry.path is not None
                entry.path.unlink(missing_ok=True)
                continue
            self._entries[entry.key] = entry
        if found:
            self._next_seq = found[-1].seq + 1
        if self.stale_temp_files:
            self._fsync_dir()
        return list(self._entries.values())

    def add(self, transitions: Iterable[Transition]) -> list[OutboxEntry]:
        """Persist and queue ``transitions`` (in order); returns the entries added.

        Every file is durable (data and directory ``fsync``) when this returns, and only
        then queued for delivery. Never raises for an I/O error: see the module doc.
        """
        with self._lock:  # claim keys and sequence numbers; the disk work runs unlocked
            todo: list[tuple[int, Transition]] = []
            for t in transitions:
                key = t.idempotency_key
                if key in self._entries or key in self._writing:
                    continue
                self._writing.add(key)
                todo.append((self._next_seq, t))
                self._next_seq += 1
        added: list[OutboxEntry] = []
        for seq, t in todo:
            key = t.idempotency_key
            final = self.directory / _file_name(seq, key)
            path: Path | None = final
            doc = {
                "v": FORMAT_VERSION,
                "seq": seq,
                "notifier": self.notifier,
                "key": key,
                "transition": encode_transition(t),
            }
            try:
                self._write(final, json.dumps(doc, separators=(",", ":")).encode())
            except OSError as exc:
                self.write_errors += 1
                log.error(
                    "outbox: could not persist an alert transition; it is kept in memory "
                    "only and is lost if the daemon stops before delivering it",
                    extra={"notifier": self.notifier, "alert_key": key, "error": repr(exc)},
                )
                path = None
            added.append(OutboxEntry(seq, t, path))
        if any(e.path is not None for e in added):
            try:
                self._fsync_dir()
            except OSError as exc:
                self.write_errors += 1
                log.error(
                    "outbox: could not fsync the directory",
                    extra={"notifier": self.notifier, "error": repr(exc)},
                )
        dropped: list[OutboxEntry] = []
        with self._lock:
            for entry in added:
                while len(self._entries) >= self.max_pending:
                    dropped.append(self._pop_oldest())
                self._entries[entry.key] = entry
                self._writing.discard(entry.key)
        for entry in dropped:
            self._dropped(entry)
        return added

    def ack(self, entry: OutboxEntry) -> None:
        """Forget ``entry``: the notifier acknowledged it (or refused it for good)."""
        with self._lock:
            current = self._entries.get(entry.key)
            if current is not None and current.seq == entry.seq:
                del self._entries[entry.key]
        self._remove(entry)

    # -- internals --------------------------------------------------------------------------

    def _pop_oldest(self) -> OutboxEntry:
        key, entry = next(iter(self._entries.items()))
        del self._entries[key]
        return entry

    def _dropped(self, entry: OutboxEntry) -> None:
        self._remove(entry)
        self.dropped += 1
        key, t = entry.key, entry.transition
        log.error(
            "outbox full: dropped the oldest undelivered alert transition",
            extra={
                "notifier": self.notifier,
                "alert_key": key,
                "max_pending": self.max_pending,
                "state": t.alert.state,
            },
        )

    def _remove(self, entry: OutboxEntry) -> None:
        if entry.path is None:
            return
        try:
            entry.path.unlink(missing_ok=True)
        except OSError as exc:  # delivered again after a restart: harmless, but say so
            log.warning(
                "outbox: could not remove an acknowledged transition",
                extra={"notifier": self.notifier, "file": entry.path.name, "error": repr(exc)},
            )

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(_TMP + path.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
