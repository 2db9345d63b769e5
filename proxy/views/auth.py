"""Admin authentication, checked in one place: a middleware in front of every ``/governor/`` path.

With ``admin_token`` set, every path under ``/governor/`` needs ``Authorization: Bearer <token>``,
except the probes ``/governor/health`` and ``/governor/health/live`` (load balancers, Kubernetes
and systemd probe them without credentials, and they tell nothing but "up" and Ollama's
version) and the dashboard page itself (a static file with no data in it: a browser cannot send
a header when it opens a URL, so the page takes the token from ``#token=...`` and sends it with
each of its own requests). Ollama's own paths are never
touched, ``Authorization`` included.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from proxy.views.health import HEALTH_PATH, LIVE_PATH, PREFIX

OPEN_PATHS = frozenset({HEALTH_PATH, LIVE_PATH, f"{PREFIX}/", PREFIX})
"""Admin paths that never need the token: the probes and the (data-free) dashboard page."""

AdminToken = Callable[[], str | None]
"""Returns the current admin token, read per request, so a reload can set or rotate it."""


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
    # Header bytes that are not UTF-8 arrive surrogate-escaped; compare them as the bytes they were.
    if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected):
        return _unauthorized("wrong admin token", "invalid_token")
    return None


def admin_auth_middleware(token: AdminToken) -> Middleware:
    """An aiohttp middleware that asks for ``Authorization: Bearer <token>`` on the admin paths.

    ``/governor/health`` and the dashboard page stay open (see the module docstring). With no
    token (None or empty) it lets everything through. Paths outside ``/governor`` are Ollama's and
    pass untouched, the client's own ``Authorization`` included.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not _is_admin_path(path) or path in OPEN_PATHS:
            return await handler(request)
        current = token()
        if (denied := _denied(request, current.encode("utf-8") if current else None)) is not None:
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
