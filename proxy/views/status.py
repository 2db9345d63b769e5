"""``/governor/status``, ``/governor/loaded`` and ``/governor/api/series``: what the governor knows
and did, as JSON.

Everything here reads; nothing decides. ``/governor/loaded`` is the cheap one, for a balancer or
an operator's script to poll: what Ollama has loaded and at which context, from the last
``/api/ps`` read, with no store read, no thread and no call to Ollama, and a weak ``ETag`` so an
unchanged answer costs a 304. The routes read the app's components (config, facts,
memory sample, ledger); the ledger's reads of SQLite run in worker threads, so a slow disk never
stalls the proxy. Authentication is the middleware's (``proxy.views.auth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from typing import Any

from aiohttp import hdrs, web

from policies.context import GpuSnapshot, LoadedModel
from proxy.config import Config
from proxy.facts.memory.auto import AutoSource
from proxy.govern.boundary import describe
from proxy.keys import FACTS, INFLIGHT, LEDGER, MEMORY, METRICS, PIPELINE
from proxy.ledger.figures import CHANGE_KEYS, predictions, predictions_json
from proxy.ledger.memory import MAX_SERIES_POINTS, STATUS_CHANGES, STATUS_DECISIONS
from proxy.ledger.report import parse_since
from proxy.ledger.rows import POINT_FIELDS
from proxy.views.fits import fit_inputs, fits_json
from proxy.views.health import PREFIX

DEFAULT_SERIES_WINDOW_S = 86_400.0
SERIES_CHANGES = 500
STATUS_SURPRISES = 20


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


def _loaded_json(item: LoadedModel) -> dict[str, Any]:
    """One loaded model as the status page shows it."""
    return {
        "name": item.name,
        "context_length": item.context_length,
        "size_bytes": item.size_bytes,
        "size_vram_bytes": item.size_vram_bytes,
        "spilled": item.spilled,
        "expires_at": item.expires_at,
    }


def loaded_json(models: tuple[LoadedModel, ...]) -> list[dict[str, Any]]:
    """The loaded models sorted by name, each with ``loading`` (sent, not yet confirmed by
    ``/api/ps``: a load or reload in progress)."""
    ordered = sorted(models, key=lambda model: (model.name, model.context_length or 0))
    return [{**_loaded_json(model), "loading": model.provisional} for model in ordered]


def _gpu_json(snapshot: GpuSnapshot | None, configured: str) -> dict[str, Any] | None:
    """The memory sample: ``source`` is the one that read it (what ``auto`` chose),
    ``configured_source`` the running ``[gpu] source`` (``auto`` or a name), ``kind`` what memory
    it is (``GpuSnapshot.kind``)."""
    if snapshot is None:
        return None
    return {
        "source": snapshot.source,
        "configured_source": configured,
        "kind": snapshot.kind,
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


def _since_ts(text: str | None, now: float) -> float:
    """``since`` as a unix timestamp (``1718000000``) or a window (``6h``, as ``report --since``)."""
    if not text:
        return now - DEFAULT_SERIES_WINDOW_S
    with contextlib.suppress(ValueError):
        return float(text)
    return now - parse_since(text)


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text (or OpenMetrics when the scraper asks for it)."""
    registry = request.app[METRICS]
    registry.set_gpu(request.app[MEMORY].snapshot)
    body, content_type = registry.render_for(request.headers.get(hdrs.ACCEPT))
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


async def status(request: web.Request) -> web.Response:
    """The config, the memory, what Ollama has loaded, what fits, the last decisions and the
    recent changes."""
    app = request.app
    ledger, facts = app[LEDGER], app[FACTS]
    memory = app[MEMORY]
    # The source running now: [gpu] applies at restart, so a reloaded config may name another.
    configured = "auto" if isinstance(memory.source, AutoSource) else memory.source.name
    error = facts.ps_error
    decisions = await ledger.backend.decisions(STATUS_DECISIONS)
    snapshot = memory.snapshot
    # What fits now (docs/plan.md): the scheduler model's arithmetic, in a worker thread.
    fits = await asyncio.to_thread(fits_json, fit_inputs(facts, snapshot, decisions))
    return web.json_response(
        {
            "generated_ts": time.time(),
            "config": summarise_config(app[PIPELINE].governor.config),
            "gpu": _gpu_json(snapshot, configured),
            "loaded": [_loaded_json(model) for model in facts.loaded],
            "loaded_error": None if error is None else describe(error),
            "results_source": ledger.backend.name,
            "decisions": decisions,
            "predictions": predictions_json(predictions(decisions, keep=STATUS_SURPRISES)),
            "fits": fits,
            "changes": await ledger.backend.changes(limit=STATUS_CHANGES),
        },
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )


async def loaded(request: web.Request) -> web.Response:
    """What Ollama has loaded, at which context, as of the last ``/api/ps`` read; 304 when the
    client's ``If-None-Match`` is still current."""
    app = request.app
    facts = app[FACTS]
    error = facts.ps_error
    state = {
        "draining": app[INFLIGHT].draining,
        "loaded": loaded_json(facts.loaded),
        "loaded_error": None if error is None else describe(error),
    }
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:32]
    etag = f'W/"{digest}"'
    headers = {hdrs.ETAG: etag, hdrs.CACHE_CONTROL: "no-cache"}
    if etag in {tag.strip() for tag in request.headers.get(hdrs.IF_NONE_MATCH, "").split(",")}:
        return web.Response(status=304, headers=headers)
    return web.json_response({**state, "read_ts": facts.ps_read_ts}, headers=headers)


async def series(request: web.Request) -> web.Response:
    """Per model: eval tokens/s, load time and num_ctx over time, and the changes."""
    now = time.time()
    model = request.query.get("model") or None
    try:
        since_ts = _since_ts(request.query.get("since"), now)
        limit = min(int(request.query.get("limit", MAX_SERIES_POINTS)), MAX_SERIES_POINTS)
    except ValueError as exc:
        return _bad_request(f"{exc}; since is a unix time or a window such as 6h, limit an integer")
    if limit < 1:
        return _bad_request("limit must be at least 1")
    backend = request.app[LEDGER].backend
    points = await backend.points(model=model, since_ts=since_ts, limit=limit)
    changes = await backend.changes(model=model, since_ts=since_ts, limit=SERIES_CHANGES, figures=False)
    by_model: dict[str, dict[str, Any]] = {}
    for point in points:
        entry = by_model.setdefault(point["model"], {"model": point["model"], "points": [], "changes": []})
        entry["points"].append({key: point[key] for key in POINT_FIELDS})
    for change in reversed(changes):  # oldest first, like the points
        entry = by_model.setdefault(change["model"], {"model": change["model"], "points": [], "changes": []})
        entry["changes"].append({key: change[key] for key in CHANGE_KEYS})
    return web.json_response(
        {
            "generated_ts": now,
            "since_ts": since_ts,
            "results_source": backend.name,
            "models": [by_model[name] for name in sorted(by_model)],
        },
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )


def status_routes() -> list[web.RouteDef]:
    """``/governor/metrics``, ``/governor/status``, ``/governor/loaded`` and ``/governor/api/series``."""
    return [
        web.get(f"{PREFIX}/metrics", metrics),
        web.get(f"{PREFIX}/status", status),
        web.get(f"{PREFIX}/loaded", loaded),
        web.get(f"{PREFIX}/api/series", series),
    ]
