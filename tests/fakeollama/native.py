"""Ollama's own API: /api/generate, /api/chat (NDJSON), /api/embed and /api/embeddings.

Wire format as recorded (tests/data/ollama-0.33/generate_stream.txt, chat_stream.txt, ...):
one JSON object per line and per HTTP chunk, a final ``done:true`` object carrying the metrics.
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
import time
from typing import Any

from aiohttp import web

from tests.fakeollama.engine import IMAGE_TOKENS, Gen, placeholder_arguments, tokens_of
from tests.fakeollama.host import Host
from tests.fakeollama.models import FakeModel
from tests.fakeollama.options import content_text
from tests.fakeollama.records import RunnerRequest
from tests.fakeollama.simtime import LoadTiming, SimTime
from tests.fakeollama.wire import ApiError, dumps, json_response, ts

NDJSON_HEADERS = {"Content-Type": "application/x-ndjson"}
EMBEDDINGS_UNSUPPORTED = "This server does not support embeddings. Start it with `--embeddings`"


def tool_call_id() -> str:
    """Ollama's tool call ids: "call_" and 8 lowercase letters or digits."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(8))


def fake_tool_calls(tools: Any, last_role: str) -> list[dict[str, Any]]:
    """The fake's answer to a request with tools: call the first tool, unless a tool just answered."""
    if not isinstance(tools, list) or not tools or last_role == "tool":
        return []
    tool = tools[0] if isinstance(tools[0], dict) else {}
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = str((fn or {}).get("name", "tool"))
    return [{"id": tool_call_id(), "name": name, "arguments": placeholder_arguments(tool)}]


def embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text``."""
    rnd = random.Random(hashlib.sha256(text.encode()).digest())
    v = [rnd.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


class NativeRenderer:
    """/api/generate and /api/chat: NDJSON lines, the final one with metrics (and context)."""

    stream_headers = NDJSON_HEADERS

    def __init__(self, modern: bool) -> None:
        self.modern = modern

    def _head(self, g: Gen) -> dict[str, Any]:
        return {"model": g.req_model, "created_at": ts(time.time_ns())}

    def _message(self, text: str, g: Gen, *, with_tools: bool) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if with_tools and g.tool_calls:
            msg["tool_calls"] = [
                {"id": c["id"], "function": {"index": i, "name": c["name"], "arguments": c["arguments"]}}
                for i, c in enumerate(g.tool_calls)
            ]
        return msg

    def chunk(self, g: Gen, i: int) -> list[bytes]:
        if i >= len(g.pieces):
            return []
        out = self._head(g)
        if g.flavour == "generate":
            out["response"] = g.pieces[i]
        else:
            out["message"] = self._message(g.pieces[i], g, with_tools=False)
        out["done"] = False
        return [(dumps(out) + "\n").encode()]

    def tail(self, g: Gen) -> list[bytes]:
        out: list[bytes] = []
        if g.tool_calls and g.flavour == "chat":
            chunk = {**self._head(g), "message": self._message("", g, with_tools=True), "done": False}
            out.append((dumps(chunk) + "\n").encode())
        return [*out, (dumps(self.final(g, whole=False)) + "\n").encode()]

    def body(self, g: Gen) -> web.StreamResponse:
        return json_response(self.final(g, whole=True))

    def final(self, g: Gen, *, whole: bool) -> dict[str, Any]:
        """The done:true object (whole=True: the non-streamed body, carrying the full text)."""
        text = g.text if whole else ""
        out = self._head(g)
        if g.flavour == "generate":
            out["response"] = text
        else:
            out["message"] = self._message(text, g, with_tools=whole)
        out.update(done=True, done_reason=g.done_reason)
        if g.flavour == "generate":
            n_ctx = g.orig_prompt_tokens - (1 if self.modern and g.model.add_bos else 0)
            out["context"] = list(range(1, n_ctx + g.n_tokens + 1))
        out.update(g.metrics())
        return out


class NativeRoutes(Host):
    """The /api completion and embedding handlers; what they call of the other mixins is in host.py."""

    modern: bool
    sim: SimTime
    fail_next: list[tuple[int, str]]

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, "generate")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, "chat")

    async def _native(self, request: web.Request, flavour: str) -> web.StreamResponse:
        t0 = time.monotonic_ns()
        body = await self._body(request)
        keep_alive = self._keep_alive(body)
        if self.fail_next:
            status, msg = self.fail_next.pop(0)
            raise ApiError(status, msg)
        req_model, model = self._model(body)
        if "completion" not in model.capabilities:
            raise ApiError(400, f'"{req_model}" does not support {flavour}')
        if flavour == "chat" and body.get("tools") and "tools" not in model.capabilities:
            raise ApiError(400, f"registry.ollama.ai/library/{model.full_name} does not support tools")
        if body.get("think") not in (None, False) and "thinking" not in model.capabilities:
            raise ApiError(400, f'"{req_model}" does not support thinking')
        opts = self._options(body)
        runner = self._runner_request(model, opts, keep_alive, body.get("shift"))
        vision = "vision" in model.capabilities
        if flavour == "generate":
            parts = [("user", tokens_of(content_text(body.get("prompt"))))]
            empty = not body.get("prompt")
        else:
            msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)]
            parts = [
                (
                    str(m.get("role", "user")),
                    tokens_of(content_text(m.get("content")))
                    + (IMAGE_TOKENS * len(m.get("images") or []) if vision else 0),
                )
                for m in msgs
            ]
            empty = not msgs
        if empty:
            return await self._preload(flavour, req_model, model, runner, keep_alive)
        merged = self._merged(model, opts)
        stop = merged.get("stop") or []
        tool_calls = fake_tool_calls(body.get("tools"), parts[-1][0]) if flavour == "chat" else []
        g = self._new_gen(
            flavour,
            NativeRenderer(self.modern),
            request.path,
            req_model,
            runner,
            parts,
            opts.get("num_predict"),
            body.get("stream") is not False,
            t0,
            stop=[str(s) for s in stop] if isinstance(stop, list) else [str(stop)],
            json_format=body.get("format") not in (None, ""),
            tool_calls=tool_calls,
        )
        if tool_calls:
            g.pieces = []
        g.truncate = body.get("truncate") is not False
        g.num_keep = int(merged.get("num_keep", g.num_keep))
        return await self._run(request, g)

    async def _preload(
        self, flavour: str, req_model: str, model: FakeModel, runner: RunnerRequest, keep_alive: int | None
    ) -> web.StreamResponse:
        """Empty prompt/messages: load (done_reason load) or, with keep_alive 0, unload now."""
        if keep_alive == 0:
            self._unload_model(model)
            reason = "unload"
        else:
            self._release(await self._acquire(runner))
            reason = "load"
        out: dict[str, Any] = {"model": req_model, "created_at": ts(time.time_ns())}
        if flavour == "generate":
            out["response"] = ""
        else:
            out["message"] = {"role": "assistant", "content": ""}
        out.update(done=True, done_reason=reason)
        return json_response(out)

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        """/api/embed and /api/embeddings: load the model (parallel 1), then embed or refuse."""
        t0 = time.monotonic_ns()
        body = await self._body(request)
        keep_alive = self._keep_alive(body)
        legacy = request.path == "/api/embeddings"
        if self.modern and not legacy:
            name = body.get("model") or ""
            if isinstance(name, str) and self._find(name) is None:
                raise ApiError(404, f'model "{name}" not found, try pulling it first')
        req_model, model = self._model(body)
        if "embedding" not in model.capabilities and not self.modern:
            raise ApiError(
                501,
                EMBEDDINGS_UNSUPPORTED if self._at_least_030() else "this model does not support embeddings",
            )
        opts = self._options(body)
        runner = self._runner_request(model, opts, keep_alive)
        raw = body.get("prompt", "") if legacy else body.get("input", "")
        texts = [str(x) for x in raw] if isinstance(raw, list) else [str(raw)]
        timing = LoadTiming()
        state = await self._acquire(runner, timing)
        try:
            wall = time.monotonic_ns() - t0
            sim_extra_ns = self.sim.acquire_ns(wall, timing) - wall
            load_ns = max(wall + sim_extra_ns, 1_000_000)
            if "embedding" not in model.capabilities:  # 0.33 loads the model first (embed.txt)
                raise ApiError(500 if legacy else 501, EMBEDDINGS_UNSUPPORTED)
            counts = [max(1, tokens_of(t)) for t in texts]
            if body.get("truncate") is False and max(counts) > state.num_ctx:
                raise ApiError(400, "the input length exceeds the context length")
            dims = int(model.info("embedding_length", 8))
            want = body.get("dimensions")
            if isinstance(want, int) and 0 < want < dims:
                dims = want
            vecs = [embedding(t, dims) for t in texts]
        finally:
            self._release(state)
        if legacy:
            return json_response({"embedding": vecs[0]})
        tokens = sum(min(c, state.num_ctx) for c in counts) if self.modern else sum(counts)
        return json_response(
            {
                "model": req_model,
                "embeddings": vecs,
                "total_duration": time.monotonic_ns() - t0 + sim_extra_ns,
                "load_duration": load_ns,
                "prompt_eval_count": tokens,
            }
        )
