"""Warm restarts: the engine's state saved to a file, and restored from it at start.

The file (``riskmon.state`` in the state directory) is a fixed header and a msgpack
payload::

    magic  b"RISKMONS"   8 bytes
    version              4 bytes, big-endian (:data:`STATE_VERSION`)
    length               8 bytes, big-endian: the payload's size
    sha256               32 bytes: of the payload
    payload              msgpack {"saved_ms": int, "engine": Engine.state()}

It is written atomically: to ``riskmon.state.tmp`` (mode 600), fsynced, renamed over the
previous file, and the directory fsynced, so a crash at any moment leaves the previous
snapshot or the new one, never a torn file. Reading checks the magic, the version, the
length and the checksum before anything is decoded: a file that fails any of them is
*corrupt* (or of another *version*), and is reported and ignored, never half-restored.

Only the wall clock of the caller dates a snapshot (``now_ms``, passed in).
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

__all__ = [
    "STATE_FILE",
    "STATE_VERSION",
    "Loaded",
    "RestoreResult",
    "StateStore",
    "decode_state",
    "encode_state",
]

#: The snapshot's file name in the state directory.
STATE_FILE: Final = "riskmon.state"
#: The format version this riskmon writes and reads; a file of another version is ignored.
STATE_VERSION: Final = 1
_MAGIC: Final = b"RISKMONS"
_HEADER: Final = struct.Struct(">8sIQ32s")
#: A snapshot dated further than this in the future (the clock went back since it was
#: written) is not trusted: its clocks would hold the engine's back.
FUTURE_TOLERANCE_MS: Final = 60_000


class RestoreResult(enum.StrEnum):
    """What became of the snapshot at start (``riskmon_state_restore{result}``)."""

    RESTORED = "restored"
    ABSENT = "absent"  # no snapshot (first start, or [state] is off)
    CORRUPT = "corrupt"  # truncated, checksum mismatch, not a riskmon state file
    VERSION = "version"  # written by a riskmon of another state format
    TOO_OLD = "too_old"  # older than [state] max_age
    FUTURE = "future"  # dated in the future: the wall clock went back since
    SETTINGS = "settings"  # made under other estimator settings
    UNREADABLE = "unreadable"  # the file exists but cannot be read (permissions, I/O)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A snapshot read back: its result, the engine state when usable, and why not."""

    result: RestoreResult
    engine: dict[str, Any] | None = None
    saved_ms: int | None = None
    detail: str = ""


def encode_state(engine: dict[str, Any], saved_ms: int) -> bytes:
    """The file's bytes for ``engine`` (``Engine.state()``) as of wall time ``saved_ms``."""
    payload = msgspec.msgpack.encode({"saved_ms": int(saved_ms), "engine": engine})
    digest = hashlib.sha256(payload).digest()
    return _HEADER.pack(_MAGIC, STATE_VERSION, len(payload), digest) + payload


def decode_state(blob: bytes, now_ms: int, max_age_ms: int) -> Loaded:
    """Check and decode a state file's bytes; never raises on bad content.

    ``now_ms``: the wall clock now; a snapshot older than ``max_age_ms`` is ``too_old``,
    one dated more than a minute ahead is ``future``.
    """
    if len(blob) < _HEADER.size:
        return Loaded(RestoreResult.CORRUPT, detail=f"truncated: {len(blob)} bytes")
    magic, version, length, digest = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        return Loaded(RestoreResult.CORRUPT, detail="not a riskmon state file")
    if version != STATE_VERSION:
        return Loaded(
            RestoreResult.VERSION,
            detail=f"state format version {version}, this riskmon reads {STATE_VERSION}",
        )
    payload = blob[_HEADER.size :]
    if len(payload) != length:
        return Loaded(
            RestoreResult.CORRUPT, detail=f"truncated: {len(payload)} of {length} payload bytes"
        )
    if hashlib.sha256(payload).digest() != digest:
        return Loaded(RestoreResult.CORRUPT, detail="checksum mismatch")
    try:
        data = msgspec.msgpack.decode(payload)
        saved_ms = data["saved_ms"]
        engine = data["engine"]
    except (msgspec.DecodeError, KeyError, TypeError) as exc:
        return Loaded(RestoreResult.CORRUPT, detail=f"undecodable payload: {exc}")
    if not isinstance(saved_ms, int) or not isinstance(engine, dict):
        return Loaded(RestoreResult.CORRUPT, detail="undecodable payload: wrong types")
    age = now_ms - saved_ms
    if age > max_age_ms:
        return Loaded(
            RestoreResult.TOO_OLD,
            saved_ms=saved_ms,
            detail=f"{age / 1000:.0f}s old, max_age is {max_age_ms / 1000:.0f}s",
        )
    if age < -FUTURE_TOLERANCE_MS:
        return Loaded(
            RestoreResult.FUTURE,
            saved_ms=saved_ms,
            detail=f"dated {-age / 1000:.0f}s in the future (the clock went back?)",
        )
    return Loaded(RestoreResult.RESTORED, engine, saved_ms)


Writer = Callable[[int, bytes | memoryview], int]


class StateStore:
    """The snapshot file in one directory: atomic writes, checked reads.

    Parameters
    ----------
    directory
        The state directory (created, mode 700, when missing).
    write
        How bytes reach a file descriptor (``os.write``); tests inject a failing one to
        stand for a full or read-only disk where they cannot mount one.

    :meth:`save` may run on a worker thread; saves are serialised by a lock.
    """

    def __init__(self, directory: str | Path, *, write: Writer = os.write) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        self._tmp = self.directory / (STATE_FILE + ".tmp")
        self._write = write
        self._lock = threading.Lock()

    def save(self, blob: bytes) -> None:
        """Write ``blob`` atomically (temp file, fsync, rename, fsync of the directory).

        Raises
        ------
        OSError
            The disk is full, read-only, or the directory cannot be made; the previous
            snapshot is then intact and the temp file removed (when it can be).
        """
        with self._lock:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(blob)
                while view:
                    view = view[self._write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                self._tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            try:
                os.replace(self._tmp, self.path)
            except OSError:
                self._tmp.unlink(missing_ok=True)
                raise
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def load(self, now_ms: int, max_age_ms: int) -> Loaded:
        """Read and check the snapshot (:func:`decode_state`); never raises."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return Loaded(RestoreResult.ABSENT, detail=f"no {self.path}")
        except OSError as exc:
            return Loaded(RestoreResult.UNREADABLE, detail=f"{self.path}: {exc.strerror}")
        return decode_state(blob, now_ms, max_age_ms)
