"""The aiohttp handler of the OpenAI- and Anthropic-style routes: translate, govern, translate back.

``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/responses`` and
``/v1/messages`` cannot carry ``num_ctx`` or ``keep_alive``, so a governed one is translated to
the native call Ollama's own middleware would make of it (``proxy.compat``), decided by the same
pipeline as ``/api/chat`` (``Context.endpoint`` names the route), sent to the native path and
answered in the route's own shape (``proxy.upstream.translate``). What the governor does not
govern, or cannot translate, goes to Ollama untouched so the client gets Ollama's own answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import hdrs, web

from policies.context import Endpoint
from proxy.compat import ROUTES, CompatError, CompatRoute, NativeRequest, Unsupported
from proxy.facts.ollama import Facts
from proxy.govern.boundary import safe_await
from proxy.govern.pipeline import Decided, Pipeline
from proxy.govern.record import Answer
from proxy.request.encoding import decoded
from proxy.request.handler import prefixed, read_body
from proxy.request.parse import parse_request
from proxy.upstream.client import Upstream
from proxy.upstream.inflight import InFlight
from proxy.upstream.relay import relay
from proxy.upstream.translate import error_reply, native_error_body, relay_translated

log = structlog.get_logger("ollama_governor.request")

COMPAT_PATHS: dict[str, Endpoint] = {
    "/v1/chat/completions": "openai.chat",
    "/v1/completions": "openai.completions",
    "/v1/embeddings": "openai.embeddings",
    "/v1/responses": "openai.responses",
    "/v1/messages": "anthropic.messages",
}
"""Each translated route and the endpoint name rules and policies know it by."""

THINKING = "thinking"
"""The capability ``/api/show`` lists for a model that can think."""


class CompatHandler:
    """Governs ``POST`` on the five translated ``/v1`` routes (everything else under ``/v1``,
    ``/v1/models`` included, is relayed as it is)."""

    def __init__(
        self, pipeline: Pipeline, upstream: Upstream, facts: Facts, inflight: InFlight | None = None
    ) -> None:
        self.pipeline = pipeline
        self.upstream = upstream
        self.facts = facts
        self.inflight = inflight

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        """Govern one request and answer it in its route's shape."""
        started = time.perf_counter()
        route, endpoint = ROUTES[request.path], COMPAT_PATHS[request.path]
        limits = self.pipeline.governor.config.limits
        read = await read_body(request, limits)
        if isinstance(read, web.Response):
            return read
        raw, whole = read
        if not whole:
            return await self._untouched(request, raw, whole, "body too large to govern")
        if not self.pipeline.governs_route(endpoint):
            return await self._untouched(request, raw, whole)
        text = decoded(raw, request.headers.get(hdrs.CONTENT_ENCODING), limits.max_governed_body_bytes)
        if text is None:
            return await self._untouched(request, raw, whole, "a body encoding the governor does not read")
        body = route.parse_body(text)
        if isinstance(body, CompatError):
            return error_reply(body)
        if isinstance(body, Unsupported):
            return await self._untouched(request, raw, whole, body.reason)
        model = route.model_of(body)
        if model is None:
            return await self._untouched(request, raw, whole)
        if not self.pipeline.governs(model, endpoint):
            return await self._untouched(request, raw, whole)
        native = route.to_native(body)
        if isinstance(native, CompatError):
            return error_reply(native)
        if isinstance(native, Unsupported):
            return await self._untouched(request, raw, whole, native.reason)
        native = await self._relaxed(native)
        native_bytes = native.encode()
        parsed = parse_request(endpoint, native_bytes)
        if parsed is None:
            return await self._untouched(request, raw, whole, "the translated body is not governable")
        # Governing fails open: if deciding breaks (a bug of ours), the request goes as sent.
        decided = await safe_await(
            "decide",
            self.pipeline.decide(parsed, client=request.remote, headers=request.headers),
            model=parsed.model,
        )
        if decided is None:
            return await self._untouched(request, raw, whole)
        if decided.rejection is not None:
            self.pipeline.refuse(decided)
            return error_reply(route.error_from_native(400, native_error_body(decided.rejection), native))
        del raw, parsed
        relayed = decided.for_relay(len(native_bytes))
        return await self._relay(request, route, native, native_bytes, relayed, started)

    async def _relay(
        self,
        request: web.Request,
        route: CompatRoute,
        native: NativeRequest[Any],
        native_bytes: bytes,
        decided: Decided,
        started: float,
    ) -> web.StreamResponse:
        def resend(changed: NativeRequest[Any]) -> bytes:
            return decided.applied_to(dict(changed.body)) or changed.encode()

        with self.pipeline.answering(decided):
            translated = await relay_translated(
                request,
                self.upstream,
                route,
                native,
                native_bytes if decided.body is None else decided.body,
                resend=resend,
                inflight=self.inflight,
            )
        first = translated.first_byte_at
        answer = Answer.of(
            translated.status,
            translated.final,
            completed=translated.completed,
            error=translated.error,
            ttfb_ms=round((first - started) * 1000, 3) if first else None,
        )
        self.pipeline.finish_soon(decided, answer)
        return translated.response

    async def _relaxed(self, native: NativeRequest[Any]) -> NativeRequest[Any]:
        """Without ``think`` when the model cannot think and Ollama's middleware would drop it
        (``/v1/messages``); with unknown facts it stays and a refusal is resent without it."""
        if not native.relax_thinking or "think" not in native.body:
            return native
        facts = await self.facts.model_facts(native.model)
        if facts is not None and THINKING not in facts.capabilities:
            return native.without_think()
        return native

    async def _untouched(
        self, request: web.Request, raw: bytes, whole: bool, reason: str | None = None
    ) -> web.StreamResponse:
        """Forward the client's own bytes to the client's own path: Ollama answers itself."""
        if reason is not None:
            log.info("not_governed", reason=reason, path=request.path)
        body: bytes | AsyncIterator[bytes] = raw if whole else prefixed(raw, request.content)
        limits = self.pipeline.governor.config.limits
        relayed = await relay(
            request, self.upstream, body=body, inflight=self.inflight, body_timeout_s=limits.body_timeout_s
        )
        return relayed.response
