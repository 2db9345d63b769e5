"""Running one generation: get a runner, fit the prompt, then stream tokens or answer in one body.

Why one engine for every route: /api/generate, /api/chat, /v1/chat/completions, /v1/completions,
/v1/responses and /v1/messages differ only in how the same tokens are framed; the load, the
parallel slot, the prompt and token delays and the cancellation handling are Ollama's alike.
Each route supplies a Renderer that turns the generation into its wire format.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from tests.fakeollama.host import Host
from tests.fakeollama.models import FakeModel
from tests.fakeollama.records import Completion, LoadedState, RunnerRequest
from tests.fakeollama.simtime import LoadTiming, SimTime
from tests.fakeollama.wire import ApiError, dumps

PROMPT_TOKENS_PER_STEP = 512  # prompt eval: one token-delay per ubatch of prompt tokens
IMAGE_TOKENS = 768  # what server/prompt.go counts per image when fitting chat history
DEFAULT_NUM_KEEP = 4
PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; "
    "shorten the prompt, adjust the context length in settings, or use a model with a "
    "longer context length"
)


class Renderer(Protocol):
    """The wire format of one route: streamed chunks, what follows them, or one body."""

    stream_headers: dict[str, str]

    def chunk(self, g: Gen, i: int) -> list[bytes]: ...

    def tail(self, g: Gen) -> list[bytes]: ...

    def body(self, g: Gen) -> web.StreamResponse: ...


@dataclass
class Gen:
    """One completion in flight, whatever its route."""

    flavour: str  # generate | chat | oa_chat | oa_completion | oa_responses | messages
    renderer: Renderer
    path: str
    req_model: str
    model: FakeModel
    runner: RunnerRequest
    parts: list[tuple[str, int]]
    """The prompt as (role, tokens) per message (one part for a plain prompt)."""
    n_tokens: int
    done_reason: str
    stream: bool
    t0: int
    pieces: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    truncate: bool = True
    num_keep: int = DEFAULT_NUM_KEEP
    prompt_tokens: int = 0
    orig_prompt_tokens: int = 0
    include_usage: bool = False
    oid: str = ""
    created: int = 0
    load_ns: int = 0
    prompt_ns: int = 0
    eval_ns: int = 0
    truncated: bool = False
    sim_extra_ns: int = 0
    """Simulated minus wall time so far (0 unless ``time_scale`` compresses the delays)."""
    request: dict[str, Any] = field(default_factory=dict)
    """The route's own request fields its renderer echoes (e.g. /v1/responses' settings)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Renderer scratch space (e.g. SSE sequence numbers)."""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def metrics(self) -> dict[str, int]:
        """Ollama's final-chunk durations and counts, zero values left out as Go does."""
        metrics = {
            "total_duration": time.monotonic_ns() - self.t0 + self.sim_extra_ns,
            "load_duration": self.load_ns,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": self.prompt_ns,
            "eval_count": self.n_tokens,
            "eval_duration": self.eval_ns,
        }
        return {k: v for k, v in metrics.items() if v}


def tokens_of(text: str) -> int:
    """The fake's tokenizer: one token per 4 characters."""
    return math.ceil(len(text) / 4)


def reply_pieces(n: int, stop: list[str], json_format: bool) -> tuple[list[str], bool]:
    """The ``n`` reply tokens ("tok0 ", "tok1 ", ...), cut before a stop string (then True);
    wrapped as a JSON object when a format was asked for."""
    pieces: list[str] = []
    text = ""
    for i in range(n):
        piece = f"tok{i} "
        hits = [(text + piece).find(s) for s in stop if s and s in text + piece]
        if hits:
            cut = min(hits) - len(text)
            if cut > 0:
                pieces.append(piece[:cut])
            return _wrap_json(pieces) if json_format else pieces, True
        pieces.append(piece)
        text += piece
    return _wrap_json(pieces) if json_format else pieces, False


def _wrap_json(pieces: list[str]) -> list[str]:
    if not pieces:
        return ['{"reply":""}']
    out = [dumps(p)[1:-1] for p in pieces]
    out[0] = '{"reply":"' + out[0]
    out[-1] += '"}'
    return out


def placeholder_arguments(tool: dict[str, Any]) -> dict[str, Any]:
    """Arguments for the fake's tool call: every required parameter with a value of its type."""
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    params = (fn or {}).get("parameters") or (fn or {}).get("input_schema") or {}
    props = params.get("properties") or {}
    typed = {"string": "tok0", "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}
    out: dict[str, Any] = {}
    for name in params.get("required") or []:
        kind = (props.get(name) or {}).get("type", "string")
        out[str(name)] = typed.get(kind if isinstance(kind, str) else "string", "tok0")
    return out


class EngineMixin(Host):
    """The generation loop shared by every completion route; FakeOllama sets these attributes."""

    modern: bool
    sim: SimTime
    token_delay_s: float
    spill_slowdown: float
    reply_tokens: int
    hold: asyncio.Event | None
    cancelled: list[str]
    truncated: list[str]
    completions: list[Completion]
    _oa_counter: int

    def _new_gen(
        self,
        flavour: str,
        renderer: Renderer,
        path: str,
        req_model: str,
        runner: RunnerRequest,
        parts: list[tuple[str, int]],
        num_predict: Any,
        stream: bool,
        t0: int,
        *,
        stop: list[str] | None = None,
        json_format: bool = False,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> Gen:
        """A generation of ``reply_tokens`` tokens (fewer with num_predict: done_reason length)."""
        n, reason = self.reply_tokens, "stop"
        if isinstance(num_predict, int) and 0 <= num_predict <= self.reply_tokens:
            n, reason = num_predict, "length"
        pieces, stopped = reply_pieces(n, stop or [], json_format)
        if stopped:
            n, reason = len(pieces), "stop"
        self._oa_counter += 1
        g = Gen(
            flavour,
            renderer,
            path,
            req_model,
            runner.model,
            runner,
            parts,
            n,
            reason,
            stream,
            t0,
            pieces=pieces,
            tool_calls=tool_calls or [],
            oid=str(self._oa_counter),
            created=int(time.time()),
        )
        prompt_tokens = max(1, sum(t for _, t in parts))
        if self.modern:
            g.orig_prompt_tokens = prompt_tokens + (1 if runner.model.add_bos else 0)
        else:  # before 0.33 a too-long prompt was cut silently to num_ctx
            num_ctx = runner.options.num_ctx
            if prompt_tokens > num_ctx:
                self.truncated.append(path)
                g.truncated, prompt_tokens = True, num_ctx
            g.orig_prompt_tokens = prompt_tokens
        g.prompt_tokens = prompt_tokens
        return g

    def _fit_prompt(self, g: Gen, state: LoadedState) -> None:
        """0.33: drop old chat messages, then keep num_keep and cut the middle (or fail, 400).

        server/prompt.go keeps the longest suffix of the history that fits num_ctx (system
        messages and the last message always); llm/llama_server.go completionPromptForRequest
        then cuts a prompt over num_ctx-1 tokens to num_ctx - max((num_ctx-num_keep)/2, 1),
        and with truncate false llama-server refuses a prompt that fills the context.
        """
        num_ctx, bos = state.num_ctx, 1 if g.model.add_bos else 0
        parts = g.parts
        if g.truncate and len(parts) > 1:
            n = len(parts) - 1
            for i in range(n - 1, -1, -1):
                count = sum(t for r, t in parts[:i] if r == "system") + sum(t for _, t in parts[i:])
                if count > num_ctx:
                    break
                n = i
            dropped = [p for p in parts[:n] if p[0] != "system"]
            if dropped:
                g.truncated = True
            parts = [p for p in parts[:n] if p[0] == "system"] + parts[n:]
        tokens = max(1, sum(t for _, t in parts)) + bos
        if not g.truncate:
            if tokens >= num_ctx:
                detail = {
                    "error": {
                        "code": 400,
                        "message": f"request ({tokens} tokens) exceeds the "
                        f"available context size ({num_ctx} tokens), try increasing it",
                        "type": "exceed_context_size_error",
                        "n_prompt_tokens": tokens,
                        "n_ctx": num_ctx,
                    }
                }
                raise ApiError(400, dumps(detail))
        elif num_ctx > 1 and tokens > num_ctx - 1:
            if not state.context_shift:
                raise ApiError(400, PROMPT_TOO_LONG)
            keep = tokens if g.num_keep < 0 else g.num_keep
            keep = min(keep + bos, num_ctx - 1)
            tokens = num_ctx - max((num_ctx - keep) // 2, 1)
            g.truncated = True
        if g.truncated:
            self.truncated.append(g.path)
        g.prompt_tokens = tokens

    @staticmethod
    def _gone(request: web.Request) -> bool:
        t = request.transport
        return t is None or t.is_closing()

    async def _pause(self, request: web.Request, seconds: float) -> None:
        """Sleep, noticing a client that went away (run_app does not cancel handlers)."""
        end = time.monotonic() + seconds
        while True:
            if self._gone(request):
                raise ConnectionResetError("client went away")
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.02))

    async def _wait_hold(self, request: web.Request, hold: asyncio.Event) -> None:
        while not hold.is_set():
            await self._pause(request, 0.01)

    async def _run(self, request: web.Request, g: Gen) -> web.StreamResponse:
        """Load if needed, then emit tokens (streamed chunk by chunk or as one body)."""
        resp: web.StreamResponse | None = None
        state: LoadedState | None = None
        try:
            t_load, timing = time.monotonic_ns(), LoadTiming()
            state = await self._acquire(g.runner, timing)
            wall = time.monotonic_ns() - t_load
            g.load_ns = self.sim.acquire_ns(wall, timing)
            g.sim_extra_ns += g.load_ns - wall
            g.load_ns = max(g.load_ns, 1_000_000)
            if self.modern:
                self._fit_prompt(g, state)
            completion = Completion(
                request.path,
                state.name,
                state.num_ctx,
                state.spilled,
                g.truncated,
                g.prompt_tokens,
                g.load_ns,
            )
            index = len(self.completions)
            self.completions.append(completion)
            t_slot = time.monotonic_ns()
            async with state.slots:
                wall = time.monotonic_ns() - t_slot
                g.sim_extra_ns += self.sim.scaled_ns(wall) - wall
                delay = self.token_delay_s * (self.spill_slowdown if state.spilled else 1.0)
                prompt_s = delay * math.ceil(g.prompt_tokens / PROMPT_TOKENS_PER_STEP)
                t = time.monotonic_ns()
                await self._pause(request, prompt_s / self.sim.time_scale)
                wall = time.monotonic_ns() - t
                g.prompt_ns = max(self.sim.compressed_ns(wall, prompt_s), 1)
                g.sim_extra_ns += g.prompt_ns - wall
                t = time.monotonic_ns()
                if g.stream:
                    resp = web.StreamResponse(headers=g.renderer.stream_headers)
                    await resp.prepare(request)
                for i in range(g.n_tokens):
                    if resp is not None:
                        for piece in g.renderer.chunk(g, i):
                            await resp.write(piece)
                        if i == 0 and self.hold is not None:
                            await self._wait_hold(request, self.hold)
                    await self._pause(request, delay / self.sim.time_scale)
                wall = time.monotonic_ns() - t
                g.eval_ns = max(self.sim.compressed_ns(wall, delay * g.n_tokens), 1)
                g.sim_extra_ns += g.eval_ns - wall
                self.completions[index] = dataclasses.replace(
                    completion, eval_tokens=g.n_tokens, eval_ns=g.eval_ns
                )
                if resp is None:
                    return g.renderer.body(g)
                for piece in g.renderer.tail(g):
                    await resp.write(piece)
                await resp.write_eof()
                return resp
        except asyncio.CancelledError:
            self.cancelled.append(request.path)
            raise
        except ConnectionResetError:
            self.cancelled.append(request.path)
            return resp if resp is not None else web.Response(status=499)
        finally:
            if state is not None:
                self._release(state)
