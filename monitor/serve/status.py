"""``riskmon status``: fetch the daemon's report JSON and render it for a terminal.

Blocking and stdlib-only on purpose: the CLI asks once and exits, no event loop needed.
:func:`render_status` works on the report document (README "Report JSON"), whatever
produced it (``GET /api/v1/snapshot`` or ``riskmon replay``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "SNAPSHOT_PATH",
    "WHATIF_PATH",
    "StatusError",
    "fetch_report",
    "post_whatif",
    "render_status",
    "render_whatif",
]

SNAPSHOT_PATH: Final = "/api/v1/snapshot"
WHATIF_PATH: Final = "/api/v1/whatif"

# Greeks in the order a desk reads them; keys and units as in the report JSON.
_GREEK_ORDER: Final = ("delta_usd", "gamma_usd", "vega", "theta")
_NA: Final = "-"


class StatusError(OSError):
    """The daemon could not be reached, or did not answer with a report (message says why).

    An ``OSError`` so that callers catching I/O failures catch this too.
    """


def fetch_report(url: str, timeout_s: float, token: str | None = None) -> dict[str, Any]:
    """GET the report JSON from a running daemon.

    Parameters
    ----------
    url
        The daemon's base URL (``http://127.0.0.1:9321``, the snapshot path is appended) or
        the full snapshot URL.
    timeout_s
        Connect and read timeout, seconds.
    token
        Bearer token, for a daemon with ``[server] token_file``.

    Raises
    ------
    StatusError
        Not reachable (refused, unknown host, timeout), no snapshot yet (HTTP 503), another
        HTTP error, or a body that is not a report.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StatusError(f"{url!r} is not an http:// URL of a riskmon daemon")
    if parts.path in ("", "/"):
        url = urllib.parse.urlunsplit(parts._replace(path=SNAPSHOT_PATH))
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        body = _send(request, url, timeout_s)
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        if exc.code == 503:
            raise StatusError(
                f"riskmon at {url} is up but has no report yet ({detail}): it evaluates once "
                "the connectors have delivered prices; try again shortly"
            ) from None
        raise StatusError(f"riskmon at {url} answered HTTP {exc.code}: {detail}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("assets"), dict):
        raise StatusError(f"{url} answered, but not with a riskmon report")
    return doc


def post_whatif(
    base_url: str, body: Mapping[str, Any], timeout_s: float, token: str | None = None
) -> dict[str, Any]:
    """POST a what-if (``{"account", "trades": [...]}``) to a running daemon.

    Raises
    ------
    StatusError
        Not reachable, or an HTTP error (its ``error`` reason in the message: a 400 says
        what is wrong with the trades).
    """
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StatusError(f"{base_url!r} is not an http:// URL of a riskmon daemon")
    url = urllib.parse.urlunsplit(parts._replace(path=WHATIF_PATH))
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        raw = _send(request, url, timeout_s)
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        raise StatusError(f"riskmon at {url} answered HTTP {exc.code}: {detail}") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("accounts"), dict):
        raise StatusError(f"{url} answered, but not with a what-if")
    return doc


def render_whatif(result: Mapping[str, Any]) -> str:
    """Before / after / change of each account's main figures, then the alerts that move."""
    lines = [f"what-if as of {result.get('as_of')}"]
    for account, acc in sorted(result["accounts"].items()):
        before, after = acc.get("before") or {}, acc.get("after") or {}
        rows: list[tuple[str, Any, Any]] = []
        for k in _GREEK_ORDER:
            rows.append((k, _get(before, "greeks", k), _get(after, "greeks", k)))
        unds = sorted({*(before.get("exposure_usd") or {}), *(after.get("exposure_usd") or {})})
        for u in unds:
            rows.append(
                (f"exposure {u}", _get(before, "exposure_usd", u), _get(after, "exposure_usd", u))
            )
        for u in unds:
            b, a = (
                _get(before, "contributions", u, "share"),
                _get(after, "contributions", u, "share"),
            )
            budget = _get(after, "contributions", u, "budget")
            rows.append((f"share {u} (budget {_fmt(budget)})", b, a))
        rows.append(("volatility_usd", before.get("volatility_usd"), after.get("volatility_usd")))
        for method in ("delta_normal", "delta_gamma", "full_revaluation"):
            rows.append(
                (
                    f"VaR {method}",
                    _get(before, "var", method, "var_usd"),
                    _get(after, "var", method, "var_usd"),
                )
            )
        rows.append(
            (
                "scenario margin",
                _get(before, "margin", "scenario_margin"),
                _get(after, "margin", "scenario_margin"),
            )
        )
        for side in ("down", "up"):
            rows.append(
                (
                    f"distance to call {side}",
                    _get(before, "margin", "distance_to_call", side),
                    _get(after, "margin", "distance_to_call", side),
                )
            )
        lines.append(f"\naccount {account}")
        table = [("figure", "before", "after", "change")]
        for name, b, a in rows:
            change = a - b if isinstance(a, int | float) and isinstance(b, int | float) else None
            table.append((name, _fmt(b), _fmt(a), _fmt(change)))
        widths = [max(len(r[c]) for r in table) for c in range(4)]
        for r in table:
            lines.append(
                "  "
                + r[0].ljust(widths[0])
                + "  "
                + "  ".join(r[c].rjust(widths[c]) for c in (1, 2, 3))
            )
        alerts = acc.get("alerts") or {}
        for what in ("fire", "clear"):
            for al in alerts.get(what, []):
                lines.append(f"  would {what}: {al['rule']} ({al['severity']}): {al['summary']}")
    return "\n".join(lines)


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _fmt(v: Any) -> str:
    if v is None:
        return _NA
    if isinstance(v, float) and abs(v) < 10:
        return f"{v:.4f}"
    if isinstance(v, int | float):
        return f"{v:,.0f}"
    return str(v)


def _send(request: urllib.request.Request, url: str, timeout_s: float) -> bytes:
    """The response body; a transport failure as :class:`StatusError` (an HTTP error status
    is left to the caller, as ``urllib.error.HTTPError``)."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        raise StatusError(
            f"riskmon daemon not reachable at {url}: {_reason(exc.reason)} "
            "(is it running, and listening on that address?)"
        ) from None
    except TimeoutError:
        raise StatusError(
            f"riskmon daemon at {url} did not answer within {timeout_s:g} s"
        ) from None
    except OSError as exc:  # reset mid-response and the like
        raise StatusError(f"riskmon daemon at {url}: {_reason(exc)}") from None


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read())
    except (ValueError, OSError):
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, str) else str(exc.reason)


# Rendering.


def _price(v: Any) -> str:
    if v is None:
        return _NA
    x = float(v)
    return f"{x:,.2f}" if abs(x) >= 1.0 else f"{x:.6g}"


def _pct(v: Any) -> str:
    return _NA if v is None else f"{float(v) * 100.0:.1f}%"


def _usd(v: Any) -> str:
    return _NA if v is None else f"{float(v):,.2f}"


def _corr(v: Any) -> str:
    return _NA if v is None else f"{float(v):.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, the rest right."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    out = []
    for row in (header, *rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def render_status(report: Mapping[str, Any]) -> str:
    """Render a report document as plain-text tables (no trailing newline).

    Sections: assets (price USD, slow/fast volatility annualised in %, returns absorbed,
    warm), the slow correlation matrix, and per account plus the whole book the exposure
    per underlying (USD) and the greeks (``delta_usd``, ``gamma_usd`` USD per 1% move,
    ``vega`` USD per vol point, ``theta`` USD per day). Positions are not listed. Unknown
    figures (``null``) show as ``-``.
    """
    lines = [f"riskmon report as of {report.get('as_of', '?')} (schema {report.get('schema')})"]

    assets: Mapping[str, Mapping[str, Any]] = report.get("assets") or {}
    lines += ["", "Assets"]
    if assets:
        rows = [
            [
                name,
                _price(a.get("price")),
                _pct(a.get("volatility")),
                _pct(a.get("volatility_fast")),
                str(a.get("returns", _NA)),
                "yes" if a.get("warm") else "no",
            ]
            for name, a in assets.items()
        ]
        header = ["underlying", "price", "vol slow", "vol fast", "returns", "warm"]
        lines += _table(header, rows)
    else:
        lines.append("  (none)")

    corr: Mapping[str, Any] = report.get("correlation") or {}
    names: list[str] = list(corr.get("assets") or [])
    matrix: list[list[Any]] = list(corr.get("matrix") or [])
    if len(names) > 1 and len(matrix) == len(names):
        lines += ["", "Correlation (slow estimator)"]
        rows = [[n, *(_corr(v) for v in row)] for n, row in zip(names, matrix, strict=True)]
        lines += _table(["", *names], rows)

    accounts: Mapping[str, Mapping[str, Any]] = report.get("accounts") or {}
    total: Mapping[str, Any] | None = report.get("total")
    books: list[tuple[str, Mapping[str, Any]]] = list(accounts.items())
    if total is not None:
        books.append(("book (total)", total))
    lines += ["", "Accounts (USD): exposure per underlying, greeks"]
    if books:
        underlyings = _ordered(
            (u for _, b in books for u in (b.get("exposure_usd") or {})), list(assets)
        )
        greeks = _ordered((g for _, b in books for g in (b.get("greeks") or {})), _GREEK_ORDER)
        rows = []
        for name, b in books:
            exposure: Mapping[str, Any] = b.get("exposure_usd") or {}
            greek: Mapping[str, Any] = b.get("greeks") or {}
            rows.append(
                [
                    name,
                    *(_usd(exposure[u]) if u in exposure else _NA for u in underlyings),
                    *(_usd(greek[g]) if g in greek else _NA for g in greeks),
                ]
            )
        lines += _table(["account", *underlyings, *greeks], rows)
    else:
        lines.append("  (none)")

    alerts: Sequence[Mapping[str, Any]] = report.get("alerts") or []
    lines += ["", f"Alerts: {len(alerts) or 'none'}"]
    for alert in alerts:
        scope = "/".join(str(alert[k]) for k in ("account", "underlying") if alert.get(k))
        lines.append(
            f"  {str(alert.get('severity', '')).upper():8s} {alert.get('state', ''):8s} "
            f"{alert.get('rule', '')} {scope or 'book'} since {alert.get('since', '?')}: "
            f"{alert.get('summary', '')}"
        )
    return "\n".join(lines)


def _ordered(keys: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Distinct ``keys``: those in ``preferred`` in its order, then the rest sorted."""
    seen = set(keys)
    return [k for k in preferred if k in seen] + sorted(seen.difference(preferred))
