"""The governor's own endpoints, all under ``/governor/`` so no Ollama path is ever shadowed."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from proxy.upstream import Upstream

PREFIX = "/governor"


def admin_routes(upstream: Callable[[], Upstream]) -> list[web.RouteDef]:
    """Routes for the admin API; later features add theirs beside these."""

    async def health(request: web.Request) -> web.Response:
        """200 when Ollama answers ``/api/version``, 503 with the reason otherwise."""
        current = upstream()
        try:
            version = await current.get_json("/api/version", timeout_s=3.0)
        except Exception as exc:
            return web.json_response(
                {
                    "status": "unavailable",
                    "upstream": current.base_url,
                    "error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                },
                status=503,
            )
        return web.json_response(
            {
                "status": "ok",
                "upstream": current.base_url,
                "ollama_version": version.get("version") if isinstance(version, dict) else None,
            }
        )

    async def not_found(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": f"no governor endpoint {request.path!r}"}, status=404
        )

    return [
        web.get(f"{PREFIX}/health", health),
        web.route("*", f"{PREFIX}/{{tail:.*}}", not_found),
    ]
