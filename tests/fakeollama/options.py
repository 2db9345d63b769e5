"""From a request body to what the scheduler compares: options, keep_alive, the effective num_ctx.

Why its own module: which num_ctx a request gets is the governor's whole subject. Precedence
(Ollama's routes.go): request options > Modelfile PARAMETER > OLLAMA_CONTEXT_LENGTH > the VRAM
tier default; only the last counts as "automatic" (sched.go numCtxAuto).
"""

from __future__ import annotations

from typing import Any

from tests.fakeollama.host import Host
from tests.fakeollama.models import FakeModel
from tests.fakeollama.records import RunnerOptions, RunnerRequest
from tests.fakeollama.wire import FOREVER_NS, ApiError, GiB, go_int, parse_go_duration, parse_params

_INT_OPTS = frozenset(
    {
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "draft_num_predict",
    }
)
_FLOAT_OPTS = frozenset(
    {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}
)
_BOOL_OPTS = frozenset({"use_mmap", "numa", "penalize_newline"})
VISION_MIN_CTX = 2048


def vram_tier_num_ctx(total_vram_bytes: int) -> int:
    """routes.go's "vram-based default context": 262144 from 47 GiB, 32768 from 23 GiB, else 4096."""
    if total_vram_bytes >= 47 * GiB:
        return 262144
    if total_vram_bytes >= 23 * GiB:
        return 32768
    return 4096


def content_text(content: Any) -> str:
    """The text of a message content: a string, or OpenAI/Anthropic content parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


class OptionsMixin(Host):
    """Request parsing shared by the routes; FakeOllama sets the attributes annotated here."""

    modern: bool
    default_num_ctx: int
    context_length_env: int | None

    @staticmethod
    def _keep_alive(body: dict[str, Any]) -> int | None:
        """api.Duration: numbers are seconds, strings Go durations, negative means forever."""
        v = body.get("keep_alive")
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ApiError(400, f"Unsupported type: '{type(v).__name__}'")
        if isinstance(v, str):
            try:
                ns = parse_go_duration(v)
            except ValueError as e:
                raise ApiError(400, str(e)) from e
        else:
            ns = int(v * 10**9) if isinstance(v, int) else int(v * 1e9)
        return FOREVER_NS if ns < 0 else ns

    def _options(self, body: dict[str, Any]) -> dict[str, Any]:
        """Options.FromMap: wrong types are HTTP 500, ints given as floats are truncated."""
        opts = body.get("options") or {}
        if not isinstance(opts, dict):
            raise ApiError(400, "json: cannot unmarshal options into Go struct field of type map")
        out = dict(opts)
        for k, v in opts.items():
            num = isinstance(v, int | float) and not isinstance(v, bool)
            if k in _INT_OPTS:
                if not num:
                    raise ApiError(500, f'option "{k}" must be of type integer')
                out[k] = go_int(v) if self.modern and isinstance(v, float) else int(v)
            elif k in _FLOAT_OPTS and not num:
                raise ApiError(500, f'option "{k}" must be of type float32')
            elif k in _BOOL_OPTS and not isinstance(v, bool):
                raise ApiError(500, f'option "{k}" must be of type boolean')
        return out

    def _num_ctx(self, model: FakeModel, opts: dict[str, Any]) -> int:
        """Effective num_ctx: request > Modelfile > server default, clamped to the trained length."""
        ctx = opts.get("num_ctx")
        if ctx is None:
            ctx = model.num_ctx_param
        if ctx is None and self.modern and self.context_length_env is not None:
            ctx = self.context_length_env
        ctx = self.default_num_ctx if ctx is None else int(ctx)
        if self.modern and "vision" in model.capabilities:
            ctx = max(ctx, VISION_MIN_CTX)
        return self.clamp_ctx(model, ctx)

    @staticmethod
    def _merged(model: FakeModel, opts: dict[str, Any]) -> dict[str, Any]:
        """Modelfile PARAMETERs overridden by the request's options (defaults < Modelfile < request)."""
        merged: dict[str, Any] = {
            k: (v if k == "stop" else v[-1]) for k, v in parse_params(model.parameters).items()
        }
        merged.update(opts)
        return merged

    def _runner_request(
        self, model: FakeModel, opts: dict[str, Any], keep_alive: int | None, shift: Any = None
    ) -> RunnerRequest:
        """What the request asks the scheduler for (sched.go getRunner's LlmRequest)."""
        merged = self._merged(model, opts)
        auto_ctx = (
            "num_ctx" not in opts
            and model.num_ctx_param is None
            and (not self.modern or self.context_length_env is None)
        )
        num_batch = merged.get("num_batch")
        main_gpu, use_mmap = merged.get("main_gpu"), merged.get("use_mmap")
        options = RunnerOptions(
            num_ctx=self._num_ctx(model, opts),
            num_batch=512 if num_batch is None else int(num_batch),
            num_gpu=int(merged.get("num_gpu", -1)),
            main_gpu=None if main_gpu is None else int(main_gpu),
            use_mmap=None if use_mmap is None else bool(use_mmap),
            num_thread=int(merged.get("num_thread", 0)),
            draft_num_predict=int(merged.get("draft_num_predict", 0)),
        )
        context_shift = bool(shift) if isinstance(shift, bool) else model.arch != "deepseek2"
        return RunnerRequest(model, options, auto_ctx, num_batch is None, keep_alive, context_shift)
