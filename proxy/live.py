"""The live views: ``/governor/metrics``, ``/governor/status``, the dashboard and its data.

Everything here reads; nothing decides. The routes get what they show from a ``LiveSources``
the app fills in (config, ``/api/ps``, the results store, the GPU sample, the metrics and the
last decisions), so they hold no state of their own and are tested against plain callables.

The results store is SQLite: every read runs in a worker thread (``asyncio.to_thread``) so a
slow disk never stalls the proxy. Without a store, the views fall back to the last decisions
kept in memory (``RecentDecisions``).

Admin authentication (``admin_auth_middleware``): with ``admin_token`` set, every path under
``/governor/`` needs ``Authorization: Bearer <token>``, except ``/governor/health`` (load
balancers and systemd probe it without credentials, and it tells nothing but "up" and Ollama's
version) and the dashboard page itself (a static file with no data in it: a browser cannot send
a header when it opens a URL, so the page takes the token from ``#token=...`` and sends it with
each of its own requests). Ollama's own paths are never touched, ``Authorization`` included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.resources
import ipaddress
import re
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from policies.context import GpuSnapshot, LoadedModel
from proxy.admin import PREFIX
from proxy.config import Config
from proxy.metrics import GovernorMetrics
from proxy.report import median, parse_since
from proxy.results import canonical_model
from proxy.store import ResultStore, connect_readonly
from proxy.upstream import Upstream

__all__ = [
    "OPEN_PATHS",
    "AdminToken",
    "LiveSources",
    "RecentDecisions",
    "admin_auth_middleware",
    "cached_ps",
    "dashboard_html",
    "live_routes",
    "summarise_config",
    "warn_if_exposed",
]

log = structlog.get_logger("ollama_governor.live")

OPEN_PATHS = frozenset({f"{PREFIX}/health", f"{PREFIX}/", PREFIX})
"""Admin paths that never need the token: the health probe and the (data-free) dashboard page."""

DECISION_FIELDS = (
    "ts",
    "model",
    "endpoint",
    "stream",
    "client_num_ctx",
    "applied_num_ctx",
    "client_keep_alive",
    "applied_keep_alive",
    "changed_by",
    "policy_errors",
    "rejected_by",
    "load_ms",
    "total_ms",
    "ttfb_ms",
    "prompt_tokens",
    "prompt_tokens_per_s",
    "eval_tokens",
    "eval_tokens_per_s",
    "reloaded",
    "spilled",
    "truncation_suspect",
    "status",
    "done_reason",
    "completed",
    "error",
    "dry_run",
)
"""What a decision keeps of a result event: names and numbers only, copied field by field so a
body or prompt that ever strayed into an event could not reach the status page."""

POINT_FIELDS = ("ts", "applied_num_ctx", "eval_tokens_per_s", "load_ms", "reloaded", "spilled", "status")
"""What the plots need of each result."""

DEFAULT_SERIES_WINDOW_S = 86_400.0
MAX_SERIES_POINTS = 20_000
STATUS_DECISIONS = 50
STATUS_CHANGES = 20
ROWS_PER_PHASE = 1000
"""Before/after figures use each change's latest this-many results: enough for a stable median,
bounded however long a change has run."""
LOADED_TIMEOUT_S = 3.0


# --- last decisions, in memory ---------------------------------------------------------------------


class RecentDecisions:
    """The last result events and the changes among them, for when there is no results store
    (and for the status page's "last decisions", which must include what is not yet committed).

    A ``Results`` sink: ``add`` copies the safe fields of each event into a bounded ring buffer and
    files it under the model's current change, opened the way the store opens one (a new applied
    ``(num_ctx, keep_alive)`` that was really sent: not dry run, status below 400).
    """

    def __init__(self, maxlen: int = 200, max_changes: int = 100) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._changes: deque[dict[str, Any]] = deque(maxlen=max_changes)
        self._current: dict[str, dict[str, Any]] = {}
        self._next_change_id = 1

    def add(self, event: Mapping[str, Any]) -> None:
        """Keep one result event (its safe fields only)."""
        decision = {key: event[key] for key in DECISION_FIELDS if key in event}
        raw_model = event.get("model")
        if not isinstance(raw_model, str) or not raw_model:
            return
        model = decision["model"] = canonical_model(raw_model)
        ts = float(event.get("ts") or time.time())
        decision["ts"] = ts
        applied = (event.get("applied_num_ctx"), event.get("applied_keep_alive"))
        really_applied = not event.get("dry_run") and int(event.get("status") or 0) < 400
        current = self._current.get(model)
        if current is None or (
            really_applied and (current["to_num_ctx"], current["to_keep_alive"]) != applied
        ):
            current = {
                "change_id": self._next_change_id,
                "model": model,
                "ts": ts,
                "from_num_ctx": None if current is None else current["to_num_ctx"],
                "to_num_ctx": applied[0],
                "from_keep_alive": None if current is None else current["to_keep_alive"],
                "to_keep_alive": applied[1],
                "spilled": False,
                "previous_id": None if current is None else current["change_id"],
            }
            self._next_change_id += 1
            self._current[model] = current
            self._changes.append(current)
        if event.get("spilled") is True:
            current["spilled"] = True
        decision["change_id"] = current["change_id"]
        self._events.append(decision)

    def decisions(self, limit: int = STATUS_DECISIONS) -> list[dict[str, Any]]:
        """The newest decisions first."""
        newest = list(self._events)[-limit:] if limit > 0 else []
        return [dict(decision) for decision in reversed(newest)]

    def changes(
        self, *, model: str | None = None, since_ts: float | None = None, limit: int = STATUS_CHANGES
    ) -> list[dict[str, Any]]:
        """The newest changes first, each with its before/after figures from the events kept."""
        wanted = [
            change
            for change in reversed(self._changes)
            if (model is None or change["model"] == model) and (since_ts is None or change["ts"] >= since_ts)
        ][:limit]
        rows_by_change: dict[int, list[Mapping[str, Any]]] = {}
        for decision in self._events:
            rows_by_change.setdefault(decision["change_id"], []).append(decision)
        return [_with_figures(change, rows_by_change) for change in wanted]

    def points(
        self, *, model: str | None = None, since_ts: float | None = None, limit: int = MAX_SERIES_POINTS
    ) -> list[dict[str, Any]]:
        """Plot points, oldest first, with the model they belong to."""
        chosen = [
            decision
            for decision in self._events
            if (model is None or decision["model"] == model)
            and (since_ts is None or decision["ts"] >= since_ts)
        ][-limit:]
        return [{"model": d["model"], **{key: d.get(key) for key in POINT_FIELDS}} for d in chosen]


# --- before/after figures ------------------------------------------------------------------------


def _phase(change_id: int | None, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One change's figures, as ``report.PhaseStats``: dry runs left out, load over reloads only."""
    if change_id is None:
        return None
    real = [row for row in rows if not row.get("dry_run")]
    loads = [float(row["load_ms"]) for row in real if row.get("reloaded") and row.get("load_ms") is not None]
    evals = [float(row["eval_tokens_per_s"]) for row in real if row.get("eval_tokens_per_s") is not None]
    return {
        "change_id": change_id,
        "requests": len(real),
        "loads": sum(1 for row in real if row.get("reloaded")),
        "load_ms_median": median(loads),
        "eval_tokens_per_s_median": median(evals),
    }


def _ratio(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None or before == 0 else after / before


def _with_figures(
    change: Mapping[str, Any], rows_by_change: Mapping[int, Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """A change as the status page shows it, the way ``ollama-governor report`` compares it."""
    previous_id = change.get("previous_id")
    after = _phase(change["change_id"], rows_by_change.get(change["change_id"], ()))
    before = _phase(previous_id, rows_by_change.get(previous_id, ())) if previous_id is not None else None
    assert after is not None
    return {
        "change_id": change["change_id"],
        "model": change["model"],
        "ts": change["ts"],
        "from_num_ctx": change["from_num_ctx"],
        "to_num_ctx": change["to_num_ctx"],
        "from_keep_alive": change["from_keep_alive"],
        "to_keep_alive": change["to_keep_alive"],
        "spilled": bool(change.get("spilled")),
        "first_seen": previous_id is None,
        "before": before,
        "after": after,
        "eval_tokens_per_s_ratio": _ratio(
            after["eval_tokens_per_s_median"], None if before is None else before["eval_tokens_per_s_median"]
        ),
        "load_ms_ratio": _ratio(
            after["load_ms_median"], None if before is None else before["load_ms_median"]
        ),
    }


# --- the results store (worker threads only) ------------------------------------------------------


def _store_changes(
    db_path: Path, *, model: str | None, since_ts: float | None, limit: int, figures: bool
) -> list[dict[str, Any]]:
    """The newest changes first, optionally with before/after figures; [] when nothing is stored.

    Runs in a worker thread. The store's own ``recent_changes`` cannot filter by model or time or
    name the previous change, so this reads the same tables on a read-only connection.
    """
    try:
        conn = connect_readonly(db_path)
    except (FileNotFoundError, sqlite3.Error):
        return []
    try:
        changes = [
            dict(row)
            for row in conn.execute(
                "SELECT c.id AS change_id, c.model, c.ts, c.from_num_ctx, c.to_num_ctx, "
                "c.from_keep_alive, c.to_keep_alive, c.spilled, "
                "(SELECT MAX(p.id) FROM changes p WHERE p.model = c.model AND p.id < c.id) AS previous_id "
                "FROM changes c WHERE (?1 IS NULL OR c.model = ?1) AND (?2 IS NULL OR c.ts >= ?2) "
                "ORDER BY c.id DESC LIMIT ?3",
                (model, since_ts, limit),
            )
        ]
        if not figures:
            return [
                {**change, "spilled": bool(change["spilled"]), "first_seen": change["previous_id"] is None}
                for change in changes
            ]
        wanted = {change["change_id"] for change in changes} | {
            change["previous_id"] for change in changes if change["previous_id"] is not None
        }
        rows_by_change = {
            change_id: [
                dict(row)
                for row in conn.execute(
                    "SELECT dry_run, reloaded, load_ms, eval_tokens_per_s FROM results "
                    "WHERE change_id = ? ORDER BY id DESC LIMIT ?",
                    (change_id, ROWS_PER_PHASE),
                )
            ]
            for change_id in wanted
        }
        return [_with_figures(change, rows_by_change) for change in changes]
    except sqlite3.Error as exc:
        log.warning("live_store_read_failed", error=str(exc), path=str(db_path))
        return []
    finally:
        conn.close()


def _store_points(
    store: ResultStore, *, model: str | None, since_ts: float | None, limit: int
) -> list[dict[str, Any]]:
    """Plot points, oldest first (worker thread)."""
    rows = store.recent_results(model=model, since_ts=since_ts, limit=limit)
    return [{"model": row["model"], **{key: row.get(key) for key in POINT_FIELDS}} for row in reversed(rows)]


# --- what the app provides -------------------------------------------------------------------------


LoadedModels = Callable[[], Awaitable[Sequence[Mapping[str, Any] | LoadedModel]]]


@dataclass(frozen=True)
class LiveSources:
    """Where the live views read from; the app builds one and keeps it for its lifetime.

    Attributes:
        config_summary: the current config as plain JSON (``summarise_config``); read per request
            so a reload shows at once. Must not contain secrets (policy options, the admin token).
        loaded_models: the models Ollama holds now: ``/api/ps``'s ``models`` (dicts) or
            ``LoadedModel`` facts; may be cached (``cached_ps``). Raising is shown as an error.
        store: the results store, or None when results are not stored.
        gpu: the latest GPU sample, or None when no sampler runs.
        metrics: the Prometheus metrics (fed as a results sink).
        recent: the last decisions (fed as a results sink).
    """

    config_summary: Callable[[], Mapping[str, Any]]
    loaded_models: LoadedModels
    store: Callable[[], ResultStore | None]
    gpu: Callable[[], GpuSnapshot | None]
    metrics: GovernorMetrics
    recent: RecentDecisions


def summarise_config(config: Config) -> dict[str, Any]:
    """The config as the status page shows it: rules by policy name, never policy options (they
    may hold credentials) and never the admin token (only whether one is set)."""
    return {
        "source": config.source,
        "listen": config.listen,
        "upstream": config.upstream,
        "dry_run": config.dry_run,
        "policy_timeout_s": config.policy_timeout_s,
        "admin_auth": bool(config.admin_token),
        "rules": [
            {"models": list(rule.models), "policies": [spec.use for spec in rule.policies]}
            for rule in config.rules
        ],
    }


def cached_ps(upstream: Callable[[], Upstream], *, ttl_s: float = 2.0) -> LoadedModels:
    """A ``loaded_models`` source: ``/api/ps`` at most once per ``ttl_s``, however many dashboards
    poll, so watching the governor never loads Ollama."""
    lock = asyncio.Lock()
    cached: list[Sequence[Mapping[str, Any]]] = []
    fetched_at = [0.0]

    async def loaded() -> Sequence[Mapping[str, Any]]:
        async with lock:
            if cached and time.monotonic() - fetched_at[0] < ttl_s:
                return cached[0]
            answer = await upstream().get_json("/api/ps", timeout_s=LOADED_TIMEOUT_S)
            models = answer.get("models") if isinstance(answer, dict) else None
            result = [m for m in models if isinstance(m, Mapping)] if isinstance(models, list) else []
            cached[:] = [result]
            fetched_at[0] = time.monotonic()
            return result

    return loaded


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _loaded_json(item: Mapping[str, Any] | LoadedModel, gpu_known: bool) -> dict[str, Any]:
    """One loaded model as the status page shows it, from ``/api/ps`` or ``LoadedModel``."""
    if isinstance(item, LoadedModel):
        return {
            "name": item.name,
            "context_length": item.context_length,
            "size_bytes": item.size_bytes,
            "size_vram_bytes": item.size_vram_bytes,
            "spilled": item.spilled,
            "expires_at": item.expires_at,
        }
    size, size_vram = _int_or_none(item.get("size")), _int_or_none(item.get("size_vram"))
    spilled = item.get("spilled")
    if not isinstance(spilled, bool):
        # As LoadedModel defines it: a CPU-only host reports size_vram 0 for everything, which is
        # not a spill; unless the GPU is known, only a partial offload counts.
        spilled = (
            size is not None and size_vram is not None and size_vram < size and (gpu_known or size_vram > 0)
        )
    return {
        "name": str(item.get("name") or item.get("model") or ""),
        "context_length": _int_or_none(item.get("context_length")),
        "size_bytes": size,
        "size_vram_bytes": size_vram,
        "spilled": spilled,
        "expires_at": item.get("expires_at") if isinstance(item.get("expires_at"), str) else None,
    }


def _gpu_json(snapshot: GpuSnapshot | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    return {
        "source": snapshot.source,
        "known": snapshot.known,
        "free_bytes": snapshot.free_bytes,
        "total_bytes": snapshot.total_bytes,
        "taken_at": snapshot.taken_at,
        "error": snapshot.error,
        "devices": [
            {
                "index": device.index,
                "name": device.name,
                "free_bytes": device.free_bytes,
                "total_bytes": device.total_bytes,
                "utilization_pct": device.utilization_pct,
            }
            for device in snapshot.devices
        ],
    }


# --- the dashboard page ----------------------------------------------------------------------------


def dashboard_html() -> str:
    """The dashboard page, shipped as package data (``proxy/static/dashboard.html``)."""
    return importlib.resources.files("proxy").joinpath("static/dashboard.html").read_text("utf-8")


def _inline_hashes(html: str, tag: str) -> Iterable[str]:
    for body in re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL):
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii")
        yield f"'sha256-{digest}'"


def _content_security_policy(html: str) -> str:
    """Only the page's own inline script and style run, and it may only talk to this origin:
    the page is self-contained, and a model name that smuggled markup could run nothing."""
    scripts = " ".join(_inline_hashes(html, "script")) or "'none'"
    styles = " ".join(_inline_hashes(html, "style")) or "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


# --- routes ----------------------------------------------------------------------------------------


def _since_ts(text: str | None, now: float) -> float:
    """``since`` as a unix timestamp (``1718000000``) or a window (``6h``, as ``report --since``)."""
    if not text:
        return now - DEFAULT_SERIES_WINDOW_S
    with contextlib.suppress(ValueError):
        return float(text)
    return now - parse_since(text)


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


AdminToken = str | None | Callable[[], str | None]
"""The admin token, or a function returning the current one (so a reload can rotate it)."""


def _token_bytes(token: AdminToken) -> Callable[[], bytes | None]:
    if callable(token):
        read = token

        def current() -> bytes | None:
            value = read()
            return value.encode("utf-8") if value else None

        return current
    fixed = token.encode("utf-8") if token else None
    return lambda: fixed


def live_routes(sources: LiveSources, *, admin_token: AdminToken = None) -> list[web.RouteDef]:
    """Routes for ``/governor/metrics``, ``/governor/status``, ``/governor/`` and
    ``/governor/api/series``; pass them as ``create_app(extra_routes=...)``.

    With ``admin_token`` these routes check it themselves too (all but the page), so they stay
    closed even in an app without ``admin_auth_middleware``; the middleware is still what guards
    every other ``/governor/`` path.
    """
    html = dashboard_html()
    page_headers = {
        hdrs.CONTENT_SECURITY_POLICY: _content_security_policy(html),
        hdrs.CACHE_CONTROL: "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    expected = _token_bytes(admin_token)

    async def metrics(request: web.Request) -> web.Response:
        """Prometheus text (or OpenMetrics when the scraper asks for it)."""
        if (denied := _denied(request, expected())) is not None:
            return denied
        sources.metrics.set_gpu(sources.gpu())
        body, content_type = sources.metrics.render_for(request.headers.get(hdrs.ACCEPT))
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})

    async def loaded_now(gpu_known: bool) -> tuple[list[dict[str, Any]], str | None]:
        try:
            models = await asyncio.wait_for(sources.loaded_models(), LOADED_TIMEOUT_S)
        except Exception as exc:
            return [], f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return [_loaded_json(item, gpu_known) for item in models], None

    async def recent_changes(store: ResultStore | None) -> list[dict[str, Any]]:
        if store is None:
            return sources.recent.changes(limit=STATUS_CHANGES)
        return await asyncio.to_thread(
            _store_changes, store.path, model=None, since_ts=None, limit=STATUS_CHANGES, figures=True
        )

    async def decisions(store: ResultStore | None) -> list[dict[str, Any]]:
        """The last decisions from memory, topped up from the store after a restart."""
        newest = sources.recent.decisions(STATUS_DECISIONS)
        if store is None or len(newest) >= STATUS_DECISIONS:
            return newest
        stored = await asyncio.to_thread(store.recent_results, limit=STATUS_DECISIONS)
        oldest_ts = newest[-1]["ts"] if newest else float("inf")
        older = [
            {key: row[key] for key in DECISION_FIELDS if key in row}
            for row in stored
            if row["ts"] < oldest_ts
        ]
        return (newest + older)[:STATUS_DECISIONS]

    async def status(request: web.Request) -> web.Response:
        """The config, what Ollama has loaded, the last decisions and the recent changes."""
        if (denied := _denied(request, expected())) is not None:
            return denied
        store = sources.store()
        snapshot = sources.gpu()
        (loaded, loaded_error), changes, last = await asyncio.gather(
            loaded_now(snapshot is not None and snapshot.known), recent_changes(store), decisions(store)
        )
        return web.json_response(
            {
                "generated_ts": time.time(),
                "config": dict(sources.config_summary()),
                "gpu": _gpu_json(snapshot),
                "loaded": loaded,
                "loaded_error": loaded_error,
                "results_source": "memory" if store is None else "store",
                "decisions": last,
                "changes": changes,
            },
            headers={hdrs.CACHE_CONTROL: "no-store"},
        )

    async def series(request: web.Request) -> web.Response:
        """Per model: eval tokens/s, load time and num_ctx over time, and the changes."""
        if (denied := _denied(request, expected())) is not None:
            return denied
        now = time.time()
        model_param = request.query.get("model") or None
        model = None if model_param is None else canonical_model(model_param)
        try:
            since_ts = _since_ts(request.query.get("since"), now)
            limit = min(int(request.query.get("limit", MAX_SERIES_POINTS)), MAX_SERIES_POINTS)
        except ValueError as exc:
            return _bad_request(f"{exc}; since is a unix time or a window such as 6h, limit an integer")
        if limit < 1:
            return _bad_request("limit must be at least 1")
        store = sources.store()
        if store is not None:
            points, changes = await asyncio.gather(
                asyncio.to_thread(_store_points, store, model=model, since_ts=since_ts, limit=limit),
                asyncio.to_thread(
                    _store_changes, store.path, model=model, since_ts=since_ts, limit=500, figures=False
                ),
            )
        else:
            points = sources.recent.points(model=model, since_ts=since_ts, limit=limit)
            changes = sources.recent.changes(model=model, since_ts=since_ts, limit=500)
        by_model: dict[str, dict[str, Any]] = {}
        for point in points:
            entry = by_model.setdefault(
                point["model"], {"model": point["model"], "points": [], "changes": []}
            )
            entry["points"].append({key: point[key] for key in POINT_FIELDS})
        for change in reversed(changes):  # oldest first, like the points
            entry = by_model.setdefault(
                change["model"], {"model": change["model"], "points": [], "changes": []}
            )
            entry["changes"].append(
                {
                    key: change[key]
                    for key in (
                        "ts",
                        "from_num_ctx",
                        "to_num_ctx",
                        "from_keep_alive",
                        "to_keep_alive",
                        "spilled",
                        "first_seen",
                    )
                }
            )
        return web.json_response(
            {
                "generated_ts": now,
                "since_ts": since_ts,
                "results_source": "memory" if store is None else "store",
                "models": [by_model[name] for name in sorted(by_model)],
            },
            headers={hdrs.CACHE_CONTROL: "no-store"},
        )

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html", headers=page_headers)

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{PREFIX}/")

    return [
        web.get(f"{PREFIX}/metrics", metrics),
        web.get(f"{PREFIX}/status", status),
        web.get(f"{PREFIX}/api/series", series),
        web.get(f"{PREFIX}/", page),
        web.get(PREFIX, to_page),
    ]


# --- admin authentication ----------------------------------------------------------------------


def _is_admin_path(path: str) -> bool:
    return path == PREFIX or path.startswith(f"{PREFIX}/")


def _unauthorized(message: str, error: str) -> web.Response:
    return web.json_response(
        {"error": message},
        status=401,
        headers={hdrs.WWW_AUTHENTICATE: f'Bearer realm="ollama-governor", error="{error}"'},
    )


def _denied(request: web.Request, expected: bytes | None) -> web.Response | None:
    """None when the request may pass, else the 401 to answer (constant-time comparison)."""
    if expected is None:
        return None
    scheme, _, presented = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return _unauthorized(
            "the governor's admin endpoints need 'Authorization: Bearer <admin_token>'", "invalid_request"
        )
    if not hmac.compare_digest(presented.encode("utf-8"), expected):
        return _unauthorized("wrong admin token", "invalid_token")
    return None


def admin_auth_middleware(token: AdminToken) -> Middleware:
    """An aiohttp middleware that asks for ``Authorization: Bearer <token>`` on the admin paths.

    ``/governor/health`` and the dashboard page stay open (see the module docstring). With no
    token (None or empty) it lets everything through. ``token`` may be a function returning the
    current token, read per request, so a config reload can set or rotate it. Paths outside
    ``/governor`` are Ollama's and pass untouched, the client's own ``Authorization`` included.
    """
    expected = _token_bytes(token)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not _is_admin_path(path) or path in OPEN_PATHS:
            return await handler(request)
        if (denied := _denied(request, expected())) is not None:
            return denied
        return await handler(request)

    return middleware


class _WarningLogger(Protocol):
    def warning(self, event: str, **fields: Any) -> Any: ...


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False  # a host name other than localhost may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def warn_if_exposed(listen_host: str, token: str | None, log: _WarningLogger) -> bool:
    """Log ``admin_exposed`` when the admin endpoints answer anyone on the network: the listen
    address is not loopback (127.0.0.0/8, ::1, localhost) and no token is set. True if it warned."""
    if token or _is_loopback(listen_host):
        return False
    log.warning(
        "admin_exposed",
        listen_host=listen_host,
        reason="anyone who can reach this address can read /governor/status and /governor/metrics",
        action="set admin_token in the config, or listen on 127.0.0.1",
    )
    return True
