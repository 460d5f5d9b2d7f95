"""Webhook notifier: one JSON POST per alert transition.

Request: ``POST <url>`` with body :func:`~monitor.notify.base.transition_payload` (UTF-8
JSON), headers ``Content-Type: application/json``, ``Idempotency-Key: <transition key>``
(also in the body as ``key``), ``User-Agent: riskmon/<version>`` and, when a token is set,
``Authorization: Bearer <token>``.

Responses:

- ``2xx``: acknowledged.
- ``408``, ``429``, ``5xx``, a timeout or a connection error: retried with capped jittered
  backoff (``Retry-After`` in seconds is honoured up to ``max_backoff``), forever. A
  response lost after the receiver processed the request makes the retry a duplicate with
  the same ``Idempotency-Key``: receivers dedup on it.
- any other status (``3xx``: redirects are not followed, ``400``, ``401``, ``403``,
  ``404``, ...): the receiver will never accept this request; logged at ERROR, counted in
  ``failed`` and dropped, so one bad message cannot block every alert behind it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import aiohttp

from monitor import __version__
from monitor.model.alert import Transition
from monitor.notify.base import Session, check_http_response, transition_payload
from monitor.notify.config import WebhookConfig

__all__ = ["WebhookNotifier"]


class WebhookNotifier:
    """POSTs every transition to one URL (see the module doc for the semantics)."""

    name: Final = "webhook"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_backoff_s: float = 60.0,
        token: str | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._max_backoff_s = max_backoff_s
        self._headers = {"User-Agent": f"riskmon/{__version__}"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_config(cls, cfg: WebhookConfig) -> WebhookNotifier:
        return cls(
            cfg.url,
            timeout_s=cfg.timeout / 1000.0,
            max_backoff_s=cfg.max_backoff / 1000.0,
            token=cfg.token,
        )

    @property
    def max_backoff_s(self) -> float:
        return self._max_backoff_s

    def wants(self, transition: Transition) -> bool:
        return True

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as http:
            yield _WebhookSession(self.url, http)


class _WebhookSession:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self._url = url
        self._http = http

    async def maintain(self) -> float | None:
        return None

    async def deliver(self, transition: Transition) -> None:
        body = json.dumps(transition_payload(transition), separators=(",", ":"))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": transition.idempotency_key,
        }
        async with self._http.post(
            self._url, data=body.encode(), headers=headers, allow_redirects=False
        ) as resp:
            text = await resp.text(errors="replace")
            check_http_response(resp.status, text, resp.headers.get("Retry-After"), "webhook")
