"""``/governor/health``, and a 404 in Ollama's shape for any other ``/governor/`` path.

All the governor's own endpoints live under ``/governor/`` so no Ollama path is ever shadowed.
"""

from __future__ import annotations

from aiohttp import web

from proxy.keys import UPSTREAM

PREFIX = "/governor"


async def health(request: web.Request) -> web.Response:
    """200 when Ollama answers ``/api/version``, 503 with the reason otherwise."""
    upstream = request.app[UPSTREAM]
    try:
        version = await upstream.get_json("/api/version", timeout_s=3.0)
    except Exception as exc:
        return web.json_response(
            {
                "status": "unavailable",
                "upstream": upstream.base_url,
                "error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            },
            status=503,
        )
    return web.json_response(
        {
            "status": "ok",
            "upstream": upstream.base_url,
            "ollama_version": version.get("version") if isinstance(version, dict) else None,
        }
    )


async def not_found(request: web.Request) -> web.Response:
    """Any other ``/governor/`` path."""
    return web.json_response({"error": f"no governor endpoint {request.path!r}"}, status=404)


def health_routes() -> list[web.RouteDef]:
    """The health probe and the catch-all; add them after every other ``/governor/`` route."""
    return [web.get(f"{PREFIX}/health", health), web.route("*", f"{PREFIX}/{{tail:.*}}", not_found)]
