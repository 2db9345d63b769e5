"""The dashboard page at ``/governor/``: one self-contained HTML file, served with a strict CSP.

The page (``static/dashboard.html``: no CDN, no build step) reads ``/governor/status`` and
``/governor/api/series`` every 10 s and draws, per model on one time axis, the num_ctx applied, the
eval tokens/s and each model load, with the changes marked; beside them what is loaded, what fits
(``status["fits"]`` when the status has it), the changes' figures, how often Ollama's scheduler did
what was predicted (``status["predictions"]``, with every surprise) and the last decisions. With
``admin_token`` set it is opened as ``/governor/#token=<admin_token>``: the token is kept in
sessionStorage (that tab only), removed from the address bar and sent as a bearer token. Every value
is inserted as text, never as markup: model names come from clients.

What tests can read: each plot's ``<svg class="plot">`` carries ``data-model``, ``data-metric``
(``ctx``, ``eval``, ``load``) and ``data-points``; its tick labels sit in ``<g data-axis="x|y">``;
change markers (``line.change-marker``) and points carry ``data-ts``, label groups
(``g.marker-group``) ``data-count``; ``<body data-ready="1">`` marks a render (``"error"`` a first
one that failed) and ``data-renders`` counts them.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
from collections.abc import Iterable

from aiohttp import hdrs, web

from proxy.views.health import PREFIX


def dashboard_html() -> str:
    """The dashboard page, shipped as package data (``proxy/static/dashboard.html``)."""
    return importlib.resources.files("proxy.views").joinpath("static/dashboard.html").read_text("utf-8")


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


def dashboard_routes() -> list[web.RouteDef]:
    """``/governor/`` (the page) and ``/governor`` (a redirect to it)."""
    html = dashboard_html()
    page_headers = {
        hdrs.CONTENT_SECURITY_POLICY: _content_security_policy(html),
        hdrs.CACHE_CONTROL: "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html", headers=page_headers)

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{PREFIX}/")

    return [web.get(f"{PREFIX}/", page), web.get(PREFIX, to_page)]
