"""Logging: JSON lines when stdout is not a terminal, and rate-limited rejection logs.

A venue that sends garbage at 10 kHz must not turn the log into a second firehose: each
``(source, reason)`` logs its first few rejections per interval in full, then one summary
line saying how many were suppressed. The counters (``riskmon_rejected_events_total``)
always see every rejection.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Final, Literal

__all__ = ["JsonFormatter", "RejectionLog", "log_task_stacks", "setup_logging"]

_RESERVED: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


JsonFormatter.converter = time.gmtime


def setup_logging(level: str = "info", fmt: Literal["auto", "json", "text"] = "auto") -> None:
    """Configure the root logger on stderr; ``auto`` means JSON unless stdout is a TTY."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class RejectionLog:
    """Log rejections in full up to ``burst`` per ``(source, reason)`` per ``interval_s``."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._burst = burst
        self._interval = interval_s
        self._clock = clock
        self._windows: dict[tuple[str, str], list[float]] = {}  # [window start, n seen]

    def __call__(self, source: str, reason: str, detail: str) -> None:
        now = self._clock()
        key = (source, reason)
        w = self._windows.get(key)
        if w is None or now - w[0] >= self._interval:
            if w is not None and w[1] > self._burst:
                self._log.warning(
                    "suppressed %d more rejections",
                    int(w[1] - self._burst),
                    extra={"source": source, "reason": reason},
                )
            w = self._windows[key] = [now, 0.0]
        w[1] += 1
        if w[1] <= self._burst:
            self._log.warning(
                "rejected event: %s", detail, extra={"source": source, "reason": reason}
            )


def log_task_stacks() -> None:
    """SIGUSR1 (``riskmon run`` and ``riskmon ingest``): log every task's stack, what a
    stop or a stall is waiting on. Threads' stacks: SIGABRT (``faulthandler``, stderr)."""
    for task in asyncio.all_tasks():
        buf = io.StringIO()
        task.print_stack(file=buf)
        logging.getLogger("riskmon").warning("task %s\n%s", task.get_name(), buf.getvalue())
