"""The vocabulary every config section is written in: durations, sections, errors.

Each part of riskmon owns the config Struct of its own section (a connector its
``[[connectors]]`` entry, the rule pack its ``[[rules]]``, the notifiers ``[alerts]``);
``monitor.config`` assembles them into the file's schema and applies the environment.
They all build on this module, so an error path, a duration or a redacted secret reads the
same in every section.

Secrets: fields whose name ends in ``secret``, ``password``, ``token`` or ``api_key`` are
shown as ``"***"`` by ``repr()``, by ``monitor.config.redacted`` and in error messages.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any, Final, TypeAlias, cast

from msgspec import Meta, Struct

__all__ = [
    "REDACTED",
    "ConfigError",
    "Delay",
    "Duration",
    "EpochMs",
    "Invalid",
    "PathSeg",
    "Section",
    "dec_hook",
    "format_path",
    "is_secret",
    "parse_delay",
    "parse_duration",
    "read_secret_file",
    "show",
]

_SECRET_SUFFIXES: Final = ("secret", "password", "token", "api_key")
REDACTED: Final = "***"
#: One step of a key path: a key, an array index, or None for a dict key msgspec did not
#: name (shown as ``[...]``).
PathSeg: TypeAlias = str | int | None


class ConfigError(Exception):
    """Invalid configuration. ``path`` is the key path (``""`` for file-level errors)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class Invalid(ConfigError, ValueError):
    """Raised by ``__post_init__`` checks; a ValueError so msgspec adds the section path.

    ``segs`` is the key path relative to the Struct that raised it.
    """

    def __init__(self, segs: tuple[str | int, ...], message: str) -> None:
        super().__init__(format_path(segs), message)
        self.segs = segs


# --- durations ---------------------------------------------------------------------------

_UNITS: Final = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|d|h|m|s))+")
_DURATION_HINT: Final = 'expected a duration such as "250ms", "1s", "1h"'


class Duration(int):
    """A positive span of time in whole milliseconds.

    ``Duration("1h30m")`` or ``Duration(5_400_000)``; ``str()`` gives the compact human form
    back (``"1h30m"``), which :func:`parse_duration` reads again.

    >>> d = Duration("1m30s")
    >>> int(d), d.seconds, str(d)
    (90000, 90.0, '1m30s')
    """

    __slots__ = ()

    def __new__(cls, value: int | str) -> Duration:
        if isinstance(value, str):
            return parse_duration(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Duration takes int milliseconds or a string, not {value!r}")
        if value <= 0:
            raise ValueError(f"expected a duration > 0; got {value} ms")
        return super().__new__(cls, value)

    @property
    def seconds(self) -> float:
        """The duration in seconds."""
        return int(self) / 1000.0

    def __str__(self) -> str:
        rest = int(self)
        parts: list[str] = []
        for unit, size in _UNITS.items():
            count, rest = divmod(rest, size)
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts)

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int(self).__format__(spec)


def parse_duration(text: str) -> Duration:
    """Parse ``"250ms"``, ``"1s"``, ``"10m"``, ``"1h30m"``, ``"1d"``, ``"1.5s"``.

    Units are ``ms``, ``s``, ``m``, ``h``, ``d``, largest first, each at most once; the total
    must be a positive whole number of milliseconds.

    Raises
    ------
    ValueError
        With a message fit for a :class:`ConfigError` (no key path).
    """
    s = text.strip()
    if not _DURATION_FULL.fullmatch(s):
        raise ValueError(f"{_DURATION_HINT}; got {show(text)}")
    total = Decimal(0)
    last = math.inf
    for number, unit in _DURATION_PART.findall(s):
        size = _UNITS[unit]
        if size >= last:
            raise ValueError(
                f"{_DURATION_HINT}; got {show(text)} (units go largest first, each once)"
            )
        last = size
        total += Decimal(number) * size
    if total != total.to_integral_value():
        raise ValueError(f"expected a whole number of milliseconds; got {show(text)}")
    if total <= 0:
        raise ValueError(f"expected a duration > 0; got {show(text)}")
    return Duration(int(total))


class Delay(Duration):
    """A span of time >= 0 in whole milliseconds (a rule's ``for``, ``cooldown``).

    Like :class:`Duration`, but zero is allowed and written ``"0s"``.

    >>> str(Delay("0s")), str(Delay("1m30s")), int(Delay(0))
    ('0s', '1m30s', 0)
    """

    __slots__ = ()

    def __new__(cls, value: int | str) -> Delay:
        if isinstance(value, str):
            return parse_delay(value)
        if value == 0 and not isinstance(value, bool) and isinstance(value, int):
            return int.__new__(cls, 0)
        return cast(Delay, super().__new__(cls, value))

    def __str__(self) -> str:
        return super().__str__() if self else "0s"

    def __repr__(self) -> str:
        return f"Delay({str(self)!r})"


def parse_delay(text: str) -> Delay:
    """Parse a :class:`Delay`: what :func:`parse_duration` reads, or zero (``"0s"``)."""
    s = text.strip()
    if _DURATION_FULL.fullmatch(s) and all(Decimal(n) == 0 for n, _ in _DURATION_PART.findall(s)):
        return Delay(0)
    return Delay(int(parse_duration(text)))


def dec_hook(tp: type[Any], obj: Any) -> Any:
    if tp is Duration or tp is Delay:
        if isinstance(obj, str):
            return parse_duration(obj) if tp is Duration else parse_delay(obj)
        unitless = isinstance(obj, int | float) and not isinstance(obj, bool)
        raise ValueError(
            f"{_DURATION_HINT}; got {show(obj)}" + (" (a number needs a unit)" if unitless else "")
        )
    raise NotImplementedError(f"no decoder for {tp!r}")


# --- schema ------------------------------------------------------------------------------


def is_secret(name: str) -> bool:
    return name.lower().endswith(_SECRET_SUFFIXES)


class Section(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config Struct: secrets never reach ``repr()``."""

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={REDACTED!r}"
            if is_secret(name) and getattr(self, name) is not None
            else f"{name}={getattr(self, name)!r}"
            for name in self.__struct_fields__
        )
        return f"{type(self).__name__}({fields})"


def show(value: Any) -> str:
    """A value as it would be written in TOML (tables and long arrays abbreviated)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        shown = "[" + ", ".join(show(v) for v in value) + "]"
        return shown if len(shown) <= 60 else f"an array of {len(value)}"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return repr(value)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_path(segs: Sequence[PathSeg]) -> str:
    out = ""
    for seg in segs:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif seg is None:
            out += "[...]"
        else:
            out += ("." if out else "") + (seg if _BARE_KEY.fullmatch(seg) else json.dumps(seg))
    return out


# Epoch milliseconds in 2000..2200, as in monitor.model.events: outside is a unit mix-up.
EpochMs = Annotated[int, Meta(ge=946_684_800_000, le=7_258_118_400_000)]


def read_secret_file(path: str, key: str) -> str:
    """The secret stored in the file at ``path`` (one line; surrounding white space dropped).

    Refused unless only its owner may read it: a secret readable by the group or the world
    is already leaked. ``key`` is the config key path, for the error; the message never
    quotes the file's content.

    Raises
    ------
    ConfigError
        The file is missing, unreadable, group/world readable, or empty.
    """
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise ConfigError(
                key,
                f"{path} is readable by its group or others (mode {st.st_mode & 0o777:o}); "
                f"make it private: chmod 600 {path}",
            )
        with open(path, encoding="utf-8") as fh:
            secret = fh.read().strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(key, f"{path} is empty")
    return secret
