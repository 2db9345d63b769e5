"""``/api/generate`` and ``/api/chat``: parse, decide, rewrite, forward, and record the result.

The request -> facts -> policies -> decision -> upstream -> results flow lives here. Anything
the governor cannot understand (not JSON, no model, odd option types) is forwarded untouched so
the client gets Ollama's own answer; a broken policy or missing fact never blocks a request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import hdrs, web

from policies.context import Context, Endpoint, FrozenJSON
from policies.decision import Decision
from policies.duration import KeepAlive, format_keep_alive, keep_alive_seconds
from proxy.chain import ChainOutcome, run_chain
from proxy.forward import error_response, relay
from proxy.governor import Governor
from proxy.results import DoneMetrics, Results
from proxy.tap import FinalObjectTap
from proxy.tokens import PromptSize, measure
from proxy.upstream import Upstream

log = structlog.get_logger("ollama_governor.intercept")

GOVERNED_PATHS: dict[str, Endpoint] = {"/api/generate": "generate", "/api/chat": "chat"}
MAX_GOVERNED_BODY_BYTES = 128 * 1024 * 1024
"""Bodies larger than this (many big images) are streamed through ungoverned, never refused."""


@dataclass(frozen=True, slots=True)
class GovernedRequest:
    """The parts of a client body the governor reads; the body itself is kept for rewriting."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    client_num_ctx: int | None
    client_keep_alive: KeepAlive | None
    num_predict: int | None
    stream: bool
    prompt: PromptSize


def parse_governed(endpoint: Endpoint, raw: bytes) -> GovernedRequest | None:
    """The request, or None when it is not something to govern (Ollama will answer it)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    model = body.get("model")
    options = body.get("options")
    if not isinstance(model, str) or not model or not (options is None or isinstance(options, dict)):
        return None
    options = options or {}
    num_ctx = _whole_number(options.get("num_ctx"))
    num_predict = _whole_number(options.get("num_predict"))
    if num_ctx is False or num_predict is False:
        return None
    keep_alive = body.get("keep_alive")
    if keep_alive is not None:
        try:
            keep_alive_seconds(keep_alive)
        except ValueError:
            return None
    stream = body.get("stream")
    return GovernedRequest(
        endpoint=endpoint,
        body=body,
        model=model,
        client_num_ctx=num_ctx if num_ctx and num_ctx > 0 else None,
        client_keep_alive=keep_alive,
        num_predict=num_predict or None,
        stream=stream is not False,
        prompt=measure(endpoint, body),
    )


def _whole_number(value: object) -> int | bool | None:
    """An integer option as Ollama reads it (floats truncate); False when Ollama would refuse it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return int(value)


def rewrite_body(request: GovernedRequest, decision: Decision) -> bytes | None:
    """The body with the decision applied, or None when it equals what the client sent."""
    num_ctx_changed = decision.num_ctx != request.client_num_ctx
    keep_alive_changed = decision.keep_alive != request.client_keep_alive
    if not num_ctx_changed and not keep_alive_changed:
        return None
    body = dict(request.body)
    if num_ctx_changed:
        options = dict(body.get("options") or {})
        if decision.num_ctx is None:
            options.pop("num_ctx", None)
        else:
            options["num_ctx"] = decision.num_ctx
        body["options"] = options
    if keep_alive_changed:
        if decision.keep_alive is None:
            body.pop("keep_alive", None)
        else:
            body["keep_alive"] = decision.keep_alive
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


ContextBuilder = Callable[[GovernedRequest, web.Request], Awaitable[Context]]
AfterResponse = Callable[["GovernedRequest", dict[str, Any]], Awaitable[None] | None]
"""Adds facts to a finished request's result; an awaitable delays recording (not the client)."""


def request_fields(request: GovernedRequest, http_request: web.Request | None) -> dict[str, Any]:
    """The Context fields the request alone tells (``http_request`` is None for warm-up calls)."""
    return {
        "endpoint": request.endpoint,
        "model_name": request.model,
        "body": FrozenJSON(request.body),
        "client": http_request.remote if http_request else None,
        "headers": http_request.headers if http_request else FrozenJSON({}),
        "client_num_ctx": request.client_num_ctx,
        "client_keep_alive": request.client_keep_alive,
        "num_predict": request.num_predict,
    }


async def basic_context(request: GovernedRequest, http_request: web.Request) -> Context:
    """The context with what the request alone tells; facts providers add GPU and model data."""
    return Context(**request_fields(request, http_request))


async def read_limited(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """The body, and whether it was read whole (False: it is larger than ``limit``)."""
    if request.content_length is not None and request.content_length > limit:
        return b"", False
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
    return b"".join(chunks), True


async def _prefixed(prefix: bytes, rest: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    if prefix:
        yield prefix
    async for chunk in rest.iter_any():
        yield chunk


class Interceptor:
    """The handler for governed endpoints; reads the current governor on every request so a
    reload takes effect for new requests while in-flight ones finish under the old one."""

    def __init__(
        self,
        upstream: Callable[[], Upstream],
        governor: Callable[[], Governor],
        results: Results,
        build_context: ContextBuilder = basic_context,
        after_response: AfterResponse | None = None,
        on_forward: Callable[[GovernedRequest, int | None, dict[str, Any]], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.governor = governor
        self.results = results
        self.build_context = build_context
        self.after_response = after_response
        self.on_forward = on_forward
        self.pending: set[asyncio.Task[None]] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Govern one request and relay its answer."""
        started = time.perf_counter()
        started_ts = time.time()
        endpoint = GOVERNED_PATHS[request.path]
        raw, whole = await read_limited(request, MAX_GOVERNED_BODY_BYTES)
        if not whole:
            log.warning("not_governed", reason="body too large to govern", path=request.path)
            return (
                await relay(request, self.upstream(), body=_prefixed(raw, request.content))  # type: ignore[arg-type]
            ).response
        parsed = parse_governed(endpoint, raw)
        if parsed is None:
            return (await relay(request, self.upstream(), body=raw)).response
        governor = self.governor()
        outcome = await self._decide(governor, parsed, request)
        event = self._event(started_ts, parsed, outcome, governor.config.dry_run)
        if outcome.decision.rejection is not None:
            event["status"] = 400
            self.results.record(event)
            return error_response(400, outcome.decision.rejection)
        new_body = None if governor.config.dry_run else rewrite_body(parsed, outcome.decision)
        if self.on_forward is not None:
            sent_num_ctx = parsed.client_num_ctx if new_body is None else outcome.decision.num_ctx
            self.on_forward(parsed, sent_num_ctx, event)
        tap = FinalObjectTap()
        try:
            relayed = await relay(
                request,
                self.upstream(),
                body=raw if new_body is None else new_body,
                body_length=None if new_body is None else len(new_body),
                drop_headers=(hdrs.ACCEPT_ENCODING,),
                tap=tap,
            )
        except (asyncio.CancelledError, ConnectionError):
            # The client went away; Ollama's own word for that is 499. Still one result.
            event.update(status=499, completed=False, error="client disconnected")
            event.pop("load_expected", None)
            self.results.record(event)
            raise
        metrics = DoneMetrics.from_final(tap.final_object())
        event["status"] = relayed.status
        event["ttfb_ms"] = (
            round((relayed.first_byte_at - started) * 1000, 3) if relayed.first_byte_at else None
        )
        event["completed"] = relayed.completed
        if relayed.error:
            event["error"] = relayed.error
        _add_metrics(event, metrics)
        later = self.after_response(parsed, event) if self.after_response is not None else None
        if later is None:
            self.results.record(event)
        else:
            # The client has its answer; the result waits for facts read after a load.
            task = asyncio.create_task(self._record_after(later, event))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
        return relayed.response

    async def _record_after(self, later: Awaitable[None], event: dict[str, Any]) -> None:
        try:
            await later
        except Exception as exc:
            log.error("result_facts_error", model=event["model"], error=f"{type(exc).__name__}: {exc}")
        self.results.record(event)

    async def drain(self) -> None:
        """Record every result still waiting for facts (at shutdown)."""
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)

    async def _decide(
        self, governor: Governor, parsed: GovernedRequest, request: web.Request
    ) -> ChainOutcome:
        start = Decision(num_ctx=parsed.client_num_ctx, keep_alive=parsed.client_keep_alive)
        policies = governor.policies_for(parsed.model)
        if not policies:
            return ChainOutcome(start)
        try:
            ctx = await self.build_context(parsed, request)
        except Exception as exc:  # facts are best effort; the request must go on
            log.error("context_error", model=parsed.model, error=f"{type(exc).__name__}: {exc}")
            ctx = await basic_context(parsed, request)
        outcome = await run_chain(policies, ctx, start, governor.config.policy_timeout_s)
        for reason in outcome.decision.reasons:
            for flag in ("overflow", "truncate"):
                if f"[{flag}]" in reason:
                    log.warning(flag, model=parsed.model, num_ctx=outcome.decision.num_ctx, reason=reason)
        return outcome

    @staticmethod
    def _event(
        started_ts: float, parsed: GovernedRequest, outcome: ChainOutcome, dry_run: bool
    ) -> dict[str, Any]:
        decision = outcome.decision
        event: dict[str, Any] = {
            "ts": round(started_ts, 3),
            "model": parsed.model,
            "endpoint": parsed.endpoint,
            "stream": parsed.stream,
            "client_num_ctx": parsed.client_num_ctx,
            "applied_num_ctx": decision.num_ctx,
            "client_keep_alive": format_keep_alive(parsed.client_keep_alive),
            "applied_keep_alive": format_keep_alive(decision.keep_alive),
            "changed_by": [effect.as_dict() for effect in outcome.effects],
            "dry_run": dry_run,
        }
        if outcome.errors:
            event["policy_errors"] = list(outcome.errors)
        if outcome.rejected_by:
            event["rejected_by"] = outcome.rejected_by
        return event


_METRIC_FIELDS = (
    "done_reason",
    "load_ms",
    "prompt_tokens",
    "prompt_tokens_per_s",
    "eval_tokens",
    "eval_tokens_per_s",
    "total_ms",
    "reloaded",
)


def _add_metrics(event: dict[str, Any], metrics: DoneMetrics | None) -> None:
    event.update((name, getattr(metrics, name) if metrics else None) for name in _METRIC_FIELDS)
