"""``/governor/health`` (readiness), ``/governor/health/live`` (liveness), and a 404 in Ollama's
shape for any other ``/governor/`` path.

Readiness is what a load balancer or a Kubernetes readiness probe reads: 200 only when Ollama
answers and the governor is not draining. Liveness says only that the governor's loop answers,
so a probe that restarts on failure never restarts the governor because Ollama is down.
All the governor's own endpoints live under ``/governor/`` so no Ollama path is ever shadowed.
"""

from __future__ import annotations

from aiohttp import web

from proxy.balancer.signals import check_readiness
from proxy.keys import INFLIGHT, UPSTREAM

PREFIX = "/governor"
HEALTH_PATH = f"{PREFIX}/health"
LIVE_PATH = f"{PREFIX}/health/live"
HEALTH_TIMEOUT_S = 3.0


async def health(request: web.Request) -> web.Response:
    """200 when Ollama answers ``/api/version`` and the governor is not draining, else 503 with
    the reason (``draining`` from the stop signal on, ``unavailable`` when Ollama does not answer)."""
    upstream = request.app[UPSTREAM]
    state = await check_readiness(upstream, request.app[INFLIGHT], timeout_s=HEALTH_TIMEOUT_S)
    if state.draining:
        return web.json_response(
            {"status": "draining", "upstream": upstream.base_url, "draining": True}, status=503
        )
    if state.error is not None:
        return web.json_response(
            {"status": "unavailable", "upstream": upstream.base_url, "error": state.error}, status=503
        )
    return web.json_response(
        {"status": "ok", "upstream": upstream.base_url, "ollama_version": state.ollama_version}
    )


async def live(request: web.Request) -> web.Response:
    """200 whenever the governor answers at all (Ollama is not asked)."""
    return web.json_response({"status": "alive", "draining": request.app[INFLIGHT].draining})


async def not_found(request: web.Request) -> web.Response:
    """Any other ``/governor/`` path."""
    return web.json_response({"error": f"no governor endpoint {request.path!r}"}, status=404)


def health_routes() -> list[web.RouteDef]:
    """The probes and the catch-all; add them after every other ``/governor/`` route."""
    return [
        web.get(HEALTH_PATH, health),
        web.get(LIVE_PATH, live),
        web.route("*", f"{PREFIX}/{{tail:.*}}", not_found),
    ]
