"""The daemon's HTTP endpoint: Prometheus scrape, health probes and the report JSON.

Routes (GET; HEAD too)::

    /metrics           Prometheus exposition of the registry (text 0.0.4, or OpenMetrics
                       when the scraper asks for it in ``Accept``)
    /-/healthy         200 "OK" while the server runs (liveness)
    /-/ready           200 once a snapshot exists and every connector has delivered an
                       event; else 503. JSON body either way:
                       {"ready": bool, "snapshot": bool, "waiting_for": [connector names],
                        "missing": [human-readable reasons]}
    /api/v1/snapshot   the report JSON (``RiskSnapshot.report()``); 503
                       {"error": "no snapshot yet"} before the first evaluation
    /api/v1/accounts/{account}
                       one account's report section (attribution and suggestions
                       included) with ``as_of``; 404 for an account the report lacks
    /api/v1/summary    per account and in total the headline figures (Greeks, exposure,
                       volatility, VaR/ES, margin headroom and distance to a call), the
                       number of positions and of active alerts: no position rows
    POST /api/v1/whatif
                       proposed trades -> the accounts' figures before and after
                       (``monitor.engine.whatif``). Body: {"account": optional default,
                       "trades": [{"instrument", "quantity", "account", "price", "iv"}]};
                       400 {"error": reason} for a body it cannot take (never 500)

Access: with a bearer token (``[server] token_file``), every ``/api/`` route (and
``/metrics`` with ``protect_metrics``) wants ``Authorization: Bearer <token>``, compared in
constant time; anything else is 401 with nothing of the request echoed. The health probes
stay open (an orchestrator must reach them).

Handlers run on the engine's event loop and read the view by reference, never under a lock
(the engine is the single writer and publishes immutable snapshots). The only real work is
rendering: the scrape, and the report documents (snapshot, summary, an account), which are
built and encoded once per snapshot on the server's encoding thread (``encode_json`` hands
the GIL back between slices), so a 20,000-position report never stalls the engine loop;
requests that come meanwhile await the same encoding.
The access log is off; scrapes every few seconds would drown everything else.

A request the HTTP parser refuses (a 100 kB URL, a 20 kB header, not HTTP at all) is the
client's problem: it gets a plain ``400 Bad Request`` that does not echo its input (which
may hold a token), and the log gets one debug line without a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Self

import msgspec
import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from monitor.engine.whatif import Trade, WhatIfError
from monitor.model.alert import Alert
from monitor.model.events import SCHEMA_VERSION, iso_ms
from monitor.model.snapshot import RiskSnapshot
from monitor.serve.metrics import MonitorView

__all__ = [
    "DEFAULT_LISTEN",
    "HttpServer",
    "encode_json",
    "encode_report",
    "parse_listen",
    "summary",
]

#: Loopback by default: exposing the book to a network is a deliberate act.
DEFAULT_LISTEN: Final = "127.0.0.1:9321"

_log = logging.getLogger(__name__)

_JSON: Final = "application/json"


def _enc_hook(obj: Any) -> Any:
    # Figures that later stages put in ``extra`` may still be numpy scalars or arrays.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__} in the report JSON")


_encoder: Final = msgspec.json.Encoder(enc_hook=_enc_hook)

#: List items per msgspec call when encoding a large document (about 0.3 ms of the GIL for
#: position rows), and how deep dicts are split into one call per value.
_CHUNK: Final = 256
_SPLIT_DEPTH: Final = 3


def _encode_into(doc: Any, out: list[bytes | memoryview], depth: int) -> None:
    if isinstance(doc, dict) and depth < _SPLIT_DEPTH and doc:
        sep = b"{"
        for key, value in doc.items():
            out += (sep, _encoder.encode(key), b":")
            _encode_into(value, out, depth + 1)
            sep = b","
        out.append(b"}")
    elif isinstance(doc, list) and len(doc) > _CHUNK:
        sep = b"["
        for start in range(0, len(doc), _CHUNK):
            out += (sep, memoryview(_encoder.encode(doc[start : start + _CHUNK]))[1:-1])
            sep = b","
        out.append(b"]")
    else:
        out.append(_encoder.encode(doc))


def encode_json(doc: Any) -> bytes:
    """``doc`` as compact JSON, the bytes ``msgspec.json.encode`` gives, in pieces.

    msgspec holds the GIL for a whole call: one call over a 20,000-position report holds
    it for tens of ms. Here the large lists and the top levels of dicts are encoded a
    slice at a time, so a worker thread encoding a report hands the GIL back to the
    event loop between slices (after at most ``sys.getswitchinterval()``).
    """
    out: list[bytes | memoryview] = []
    _encode_into(doc, out, 0)
    return b"".join(out)


def encode_report(snapshot: RiskSnapshot) -> bytes:
    """The body of ``GET /api/v1/snapshot``: ``snapshot.report()`` as JSON (the position
    rows built as structs, which encode to the same bytes as the report's dicts)."""
    return encode_json(snapshot.report(structs=True))


def _active(alerts: Sequence[Alert]) -> dict[str, int]:
    firing = sum(a.state == "firing" for a in alerts)
    return {"firing": firing, "pending": len(alerts) - firing}


def _pick(doc: Any, *keys: str) -> dict[str, Any] | None:
    """The ``keys`` ``doc`` has, in that order; ``None`` for a missing or ``null`` block."""
    return None if not isinstance(doc, dict) else {k: doc[k] for k in keys if k in doc}


def _headline(section: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one report section (an account's or the total's), the
    report's own values and names, nested as in the report."""
    out: dict[str, Any] = {
        k: section[k]
        for k in ("greeks", "exposure_usd", "volatility_usd", "unpriced_positions")
        if k in section
    }
    var = section.get("var")
    if isinstance(var, dict):
        out["var"] = {
            **(_pick(var, "confidence", "horizon_days") or {}),
            "delta_normal": _pick(var.get("delta_normal"), "var_usd", "es_usd"),
            "delta_gamma": _pick(var.get("delta_gamma"), "var_usd", "es_usd"),
            "full_revaluation": _pick(var.get("full_revaluation"), "var_usd", "es_usd", "as_of"),
        }
    if "margin" in section:
        margin = section["margin"]
        keys = ("equity", "maintenance_margin", "utilization", "headroom_usd")
        head = _pick(margin, *keys, "scenario_margin", "scenarios_as_of")
        if head is not None:
            dtc = _pick(margin.get("distance_to_call"), "down", "up", "sigmas")
            head["distance_to_call"] = dtc
        out["margin"] = head
    return out


def summary(snapshot: RiskSnapshot) -> dict[str, Any]:
    """The document of ``GET /api/v1/summary``: the report's ``assets``, ``correlation``
    and ``alerts`` sections; per account and for the total, the headline figures of the
    report (the same values, by the same code), the number of positions and of active
    alerts; no position rows (what ``riskmon status`` shows)."""
    accounts: dict[str, Any] = {}
    for name, fig in sorted(snapshot.accounts.items()):
        doc = _headline(fig.report(with_positions=False))
        doc["positions"] = 0 if fig.positions is None else len(fig.positions.instrument)
        doc["alerts"] = _active([a for a in snapshot.alerts if a.account == name])
        accounts[name] = doc
    total = _headline(snapshot.total.report(with_positions=False))
    total["positions"] = sum(doc["positions"] for doc in accounts.values())
    total["alerts"] = _active(snapshot.alerts)
    return {
        "schema": SCHEMA_VERSION,
        "as_of": iso_ms(snapshot.as_of_ms),
        "assets": snapshot.assets_report(),
        "correlation": snapshot.correlation_report(),
        "accounts": accounts,
        "total": total,
        "alerts": [a.report() for a in snapshot.alerts],
    }


#: Runs a what-if off the loop; None before the first evaluation.
WhatIf = Callable[[Sequence[Trade]], Awaitable[dict[str, Any] | None]]
_MAX_TRADES: Final = 100


class _TradeBody(msgspec.Struct, forbid_unknown_fields=True):
    instrument: str
    quantity: float
    account: str | None = None
    price: float | None = None
    iv: float | None = None


class _WhatIfBody(msgspec.Struct, forbid_unknown_fields=True):
    trades: list[_TradeBody]
    account: str | None = None


_whatif_decoder: Final = msgspec.json.Decoder(_WhatIfBody)


def parse_whatif(body: bytes) -> list[Trade]:
    """The trades of a what-if request body. Raises ``ValueError`` with a reason that
    quotes no input value (a body may hold anything)."""
    try:
        req = _whatif_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"invalid body: {exc}"[:300]) from None
    if not req.trades:
        raise ValueError("no trades given")
    if len(req.trades) > _MAX_TRADES:
        raise ValueError(f"at most {_MAX_TRADES} trades per what-if")
    out: list[Trade] = []
    for k, t in enumerate(req.trades):
        account = t.account if t.account is not None else req.account
        where = f"trades[{k}]"
        if not account:
            raise ValueError(f"{where}: no account (give it in the trade or the body)")
        if not t.instrument or len(t.instrument) > 200 or len(account) > 200:
            raise ValueError(f"{where}: instrument and account must be 1-200 characters")
        if not (math.isfinite(t.quantity) and t.quantity != 0.0):
            raise ValueError(f"{where}.quantity: expected a finite, non-zero number")
        for name in ("price", "iv"):
            v = getattr(t, name)
            if v is not None and not (math.isfinite(v) and v > 0.0):
                raise ValueError(f"{where}.{name}: expected a finite number > 0")
        out.append(Trade(account, t.instrument, t.quantity, t.price, t.iv))
    return out


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:9321"`` for IPv6) into host and port.

    Port 0 asks the OS for a free port (see :attr:`HttpServer.port`). The host is required:
    use ``0.0.0.0:PORT`` to listen on every interface.

    >>> parse_listen("127.0.0.1:9321"), parse_listen("[::1]:0")
    (('127.0.0.1', 9321), ('::1', 0))
    """
    host, sep, port_s = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_s.isdigit() or int(port_s) > 65535:
        raise ValueError(
            f"listen address {listen!r} is not HOST:PORT (e.g. {DEFAULT_LISTEN!r}, "
            "'0.0.0.0:9321' for every interface, port 0 for any free port)"
        )
    return host, int(port_s)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class _QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering unparsable requests without echo or ERROR."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not (isinstance(exc, HttpProcessingError) and 400 <= status < 500):
            return super().handle_error(request, status, exc, message)
        # exc's text quotes the request (aiohttp echoes it): name only its kind.
        _log.debug("refused a malformed HTTP request: %s (%d)", type(exc).__name__, status)
        phrase = HTTPStatus(status).phrase
        resp = web.Response(status=status, text=f"{status} {phrase}\n")
        resp.force_close()
        return resp


class _QuietServer(web.Server):
    """A ``web.Server`` whose connections use :class:`_QuietRequestHandler`."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        # aiohttp builds the handler itself; same slots, so the subclass can take it over.
        handler.__class__ = _QuietRequestHandler
        return handler


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _QuietServer  # only __call__ differs
        return server


def _log_failure(route: str, future: asyncio.Future[bytes]) -> None:
    # Once per snapshot and route, not once per request that awaited it.
    if not future.cancelled() and (exc := future.exception()) is not None:
        _log.error("encoding %s failed", route, exc_info=exc)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type=_JSON)


class HttpServer:
    """aiohttp server for a :class:`~monitor.serve.metrics.MonitorView` and its registry.

    Use as ``async with HttpServer(view, registry, listen) as server:`` or call
    :meth:`start` / :meth:`stop`. After start, :attr:`port` is the bound port (useful with
    port 0) and :attr:`url` the base URL.
    """

    def __init__(
        self,
        view: MonitorView,
        registry: CollectorRegistry,
        listen: str = DEFAULT_LISTEN,
        *,
        shutdown_timeout_s: float = 2.0,
        token: str | None = None,
        protect_metrics: bool = False,
        whatif: WhatIf | None = None,
    ) -> None:
        """``token``: a bearer token for ``/api/*`` (and ``/metrics`` with
        ``protect_metrics``); None leaves them open (the default bind is loopback).
        ``whatif``: runs ``POST /api/v1/whatif`` (None: that route answers 503)."""
        self._view = view
        self._whatif = whatif
        self._token = None if token is None else token.encode()
        self._protected: tuple[str, ...] = ("/api/", "/metrics") if protect_metrics else ("/api/",)
        self._registry = registry
        self._host, self._port = parse_listen(listen)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        # Documents of the latest snapshot, encoded once each however many clients poll:
        # keyed by the snapshot's seq (the engine's evaluation counter: one per published
        # snapshot), then by route. Requests that come while one is being encoded await
        # the same future; a newer snapshot starts a fresh cache.
        self._cache_seq: int | None = None
        self._cache: dict[str, asyncio.Future[bytes]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._authorize] if self._token else [])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/-/healthy", self._healthy)
        app.router.add_get("/-/ready", self._ready)
        app.router.add_get("/api/v1/snapshot", self._snapshot)
        app.router.add_get("/api/v1/alerts", self._alerts)
        app.router.add_get("/api/v1/accounts/{account}", self._account)
        app.router.add_get("/api/v1/summary", self._summary)
        app.router.add_post("/api/v1/whatif", self._post_whatif)
        return app

    async def start(self) -> None:
        """Bind and serve. Raises ``OSError`` when the address is taken or not available."""
        if self._runner is not None:
            raise RuntimeError("HttpServer already started")
        runner = _Runner(self._app(), access_log=None, shutdown_timeout=self._shutdown_timeout_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="riskmon.http-encode")
        self._port = int(runner.addresses[0][1])
        _log.info("HTTP listening on %s", self.url)
        if self._token is None and not _is_loopback(self._host):
            _log.warning(
                "HTTP on %s serves the book without a token: set [server] token_file", self.url
            )

    async def stop(self) -> None:
        """Stop serving (in-flight requests get ``shutdown_timeout_s`` to finish)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._cache_seq, self._cache = None, {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    # Handlers. They run on the engine's loop: see the module docstring.

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(self._protected):
            given = request.headers.get("Authorization", "")
            scheme, _, credential = given.partition(" ")
            expected = self._token or b""
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                credential.strip().encode(), expected
            ):
                return web.Response(
                    body=_encoder.encode({"error": "unauthorized"}),
                    status=401,
                    content_type=_JSON,
                    headers={"WWW-Authenticate": 'Bearer realm="riskmon"'},
                )
        response: web.StreamResponse = await handler(request)
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._registry)
        # content_type= would reject the parameters (version, charset) the format needs.
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _ready(self, request: web.Request) -> web.Response:
        has_snapshot = self._view.snapshot is not None
        waiting = [c.name for c in self._view.connectors if not c.delivered]
        ready = has_snapshot and not waiting
        missing = [] if has_snapshot else ["no risk snapshot yet"]
        missing += [f"connector {name!r} has not delivered an event" for name in waiting]
        body = {
            "ready": ready,
            "snapshot": has_snapshot,
            "waiting_for": waiting,
            "missing": missing,
        }
        return _json(body, 200 if ready else 503)

    async def _encoded(
        self, snapshot: RiskSnapshot, route: str, render: Callable[[], bytes]
    ) -> web.Response:
        """``render()``'s bytes, computed once per snapshot and route on the encoding
        thread: the loop only awaits it (a large report takes tens of ms to build)."""
        if self._cache_seq != snapshot.seq:
            self._cache_seq, self._cache = snapshot.seq, {}
        future = self._cache.get(route)
        if future is None:
            if self._pool is None:
                raise web.HTTPServiceUnavailable()  # stopping
            future = asyncio.get_running_loop().run_in_executor(self._pool, render)
            future.add_done_callback(partial(_log_failure, route))
            self._cache[route] = future
        # shield: a client that hangs up must not cancel the encoding others await.
        body = await asyncio.shield(future)
        return web.Response(body=body, content_type=_JSON)

    async def _snapshot(self, request: web.Request) -> web.Response:
        snapshot = self._view.snapshot
        if snapshot is None:
            return _json({"error": "no snapshot yet"}, 503)
        return await self._encoded(snapshot, "snapshot", partial(encode_report, snapshot))

    async def _summary(self, request: web.Request) -> web.Response:
        """Per account and in total, the headline figures without the position rows."""
        snapshot = self._view.snapshot
        if snapshot is None:
            return _json({"error": "no snapshot yet"}, 503)
        return await self._encoded(snapshot, "summary", lambda: encode_json(summary(snapshot)))

    async def _alerts(self, request: web.Request) -> web.Response:
        """Pending and firing alerts, and the run's transitions (report ``alerts`` fields)."""
        snapshot = self._view.snapshot
        if snapshot is None:
            return _json({"error": "no snapshot yet"}, 503)
        return _json(
            {
                "as_of": iso_ms(snapshot.as_of_ms),
                "alerts": [a.report() for a in snapshot.alerts],
                "alert_history": [t.report() for t in snapshot.alert_history],
            }
        )

    async def _account(self, request: web.Request) -> web.Response:
        """One account's report section, with the snapshot's ``as_of``."""
        snapshot = self._view.snapshot
        if snapshot is None:
            return _json({"error": "no snapshot yet"}, 503)
        account = request.match_info["account"]
        fig = snapshot.accounts.get(account)
        if fig is None:
            return _json({"error": "no such account in the report"}, 404)

        def render() -> bytes:
            return encode_json({"as_of": iso_ms(snapshot.as_of_ms), **fig.report(structs=True)})

        return await self._encoded(snapshot, f"accounts/{account}", render)

    async def _post_whatif(self, request: web.Request) -> web.Response:
        """Before and after of proposed trades; 400 with a reason for a body it cannot take."""
        if self._whatif is None:
            return _json({"error": "what-if is not available"}, 503)
        try:
            trades = parse_whatif(await request.read())
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        try:
            result = await self._whatif(trades)
        except WhatIfError as exc:
            return _json({"error": str(exc)[:300]}, 400)
        if result is None:
            return _json({"error": "no snapshot yet"}, 503)
        return _json(result)
