"""FakeOllama: the aiohttp application, its configuration and what tests inspect afterwards.

The routes live in native.py, openai.py, anthropic.py and management.py, the scheduler in
scheduler.py, the generation loop in engine.py; this module composes them around one state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from tests.fakeollama.anthropic import AnthropicRoutes
from tests.fakeollama.engine import EngineMixin
from tests.fakeollama.management import ManagementRoutes
from tests.fakeollama.models import FakeModel, gemma3_270m
from tests.fakeollama.native import NativeRoutes
from tests.fakeollama.openai import OpenAIRoutes
from tests.fakeollama.options import OptionsMixin, vram_tier_num_ctx
from tests.fakeollama.records import Completion, Eviction, LoadedState, LoadEvent, Recorded
from tests.fakeollama.scheduler import SchedulerMixin, default_keep_alive
from tests.fakeollama.simtime import SimTime
from tests.fakeollama.wire import (
    SSE_ERROR_HEADERS,
    ApiError,
    GiB,
    error_response,
    full_name,
    parse_json_body,
    version_tuple,
)

N_UBATCH = 512
LEGACY_DEFAULT_NUM_CTX = 4096
DEFAULT_VERSION = "0.33.0-rc2"


class FakeOllama(
    SchedulerMixin, EngineMixin, OptionsMixin, NativeRoutes, OpenAIRoutes, AnthropicRoutes, ManagementRoutes
):
    """Fake Ollama: build it, serve ``.app``, then assert on requests/loads/evictions/etc.

    ``version`` picks the behaviour: "0.33" or newer follows Ollama 0.33.0-rc2 (see the package
    docstring), anything older the fake's earlier model of 0.32 and before.
    """

    def __init__(
        self,
        *,
        models: Sequence[FakeModel] | None = None,
        version: str = DEFAULT_VERSION,
        vram_bytes: int | None = None,
        num_parallel: int = 1,
        default_num_ctx: int | None = None,
        context_length_env: int | None = None,
        gpu_overhead_bytes: int = 0,
        max_loaded_models: int = 0,
        fit_target_bytes: int | None = None,
        ram_bytes: int | None = None,
        kv_cache_type: str = "f16",
        flash_attention: bool = True,
        keep_alive_env: str | float | None = None,
        token_delay_s: float = 0.0,
        spill_slowdown: float = 10.0,
        load_delay_s: float = 0.0,
        reply_tokens: int = 8,
        load_bytes_per_s: float | None = None,
        time_scale: float = 1.0,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if load_bytes_per_s is not None and load_bytes_per_s <= 0:
            raise ValueError(f"load_bytes_per_s must be > 0, got {load_bytes_per_s}")
        self.version, self.vram_bytes, self.num_parallel = version, vram_bytes, num_parallel
        self.modern = version_tuple(version) >= (0, 33)
        self.gpu_overhead_bytes = gpu_overhead_bytes
        if default_num_ctx is None:
            total = 0 if vram_bytes is None else max(vram_bytes - gpu_overhead_bytes, 0)
            default_num_ctx = vram_tier_num_ctx(total) if self.modern else LEGACY_DEFAULT_NUM_CTX
        self.default_num_ctx = default_num_ctx
        self.context_length_env = context_length_env
        self.max_loaded_models, self.ram_bytes = max_loaded_models, ram_bytes
        self.fit_target_bytes = (GiB if self.modern else 0) if fit_target_bytes is None else fit_target_bytes
        self.kv_cache_type, self.flash_attention = kv_cache_type, flash_attention
        self.default_keep_alive_ns = default_keep_alive(keep_alive_env)
        self.token_delay_s, self.spill_slowdown = token_delay_s, spill_slowdown
        self.load_delay_s, self.reply_tokens = load_delay_s, reply_tokens
        self.load_bytes_per_s, self.time_scale = load_bytes_per_s, time_scale
        self.sim = SimTime(time_scale)
        self.n_ubatch = N_UBATCH
        self.models: dict[str, FakeModel] = {}
        self.registry: dict[str, FakeModel] = {}  # what /api/pull can fetch besides known models
        self._modified: dict[str, int] = {}
        now = time.time_ns()  # one timestamp, so /api/tags keeps the given order
        for m in (gemma3_270m(),) if models is None else models:
            self._add_model(m, now)
        self.requests: list[Recorded] = []
        self.loads: list[tuple[str, int]] = []
        self.load_events: list[LoadEvent] = []
        self.evictions: list[Eviction] = []
        self.cancelled: list[str] = []
        self.truncated: list[str] = []
        self.completions: list[Completion] = []
        self.fail_next: list[tuple[int, str]] = []
        self.fail_next_loads = 0
        self.hold: asyncio.Event | None = None
        self.blob_bytes_received: dict[str, int] = {}
        self.blobs: set[str] = set()
        self._loaded: dict[str, LoadedState] = {}
        self._sched = asyncio.Lock()
        self._changed = asyncio.Event()
        self._oa_counter = 0
        self.app = self._build_app()

    # ------------------------------------------------------------ public inspection
    def bodies(self, path: str) -> list[Any]:
        """Parsed JSON bodies received on ``path`` (unparsable bodies are skipped)."""
        out: list[Any] = []
        for r in self.requests:
            if r.path == path:
                with contextlib.suppress(ValueError):
                    out.append(r.json())
        return out

    # ------------------------------------------------------------ store
    def _add_model(self, m: FakeModel, ts: int | None = None) -> None:
        self.models[m.full_name] = m
        self._modified[m.full_name] = time.time_ns() if ts is None else ts

    def _find(self, name: str) -> FakeModel | None:
        return self.models.get(full_name(name)) if name else None

    def _at_least_030(self) -> bool:
        return version_tuple(self.version) >= (0, 30)

    # ------------------------------------------------------------ request parsing
    async def _body(self, request: web.Request) -> dict[str, Any]:
        obj = parse_json_body(await request.read())
        if not isinstance(obj, dict):
            raise ApiError(400, f"json: cannot unmarshal {type(obj).__name__} into Go value")
        return obj

    def _model(self, body: dict[str, Any], key: str = "model") -> tuple[str, FakeModel]:
        name = body.get(key) or body.get("name") or ""
        if not isinstance(name, str):
            raise ApiError(400, f"json: cannot unmarshal into Go struct field .{key} of type string")
        model = self._find(name)
        if model is None:
            raise ApiError(404, f"model '{name}' not found")
        return name, model

    # ------------------------------------------------------------ app
    def _build_app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            is_blob_post = request.method == "POST" and request.path.startswith("/api/blobs/")
            body = b"" if is_blob_post else await request.read()
            self.requests.append(
                Recorded(
                    request.method,
                    request.path,
                    request.rel_url.raw_query_string,
                    CIMultiDict(request.headers),
                    body,
                )
            )
            try:
                return await handler(request)
            except ApiError as e:
                response = error_response(request.path, e, modern=self.modern)
                if e.from_writer and request.get(SSE_ERROR_HEADERS):
                    response.headers.update({"Cache-Control": "no-cache", "Connection": "keep-alive"})
                return response

        app = web.Application(middlewares=[record], client_max_size=1 << 30)
        r = app.router
        r.add_get("/", self._root)
        r.add_get("/api/version", self._version)
        r.add_get("/api/status", self._status)
        r.add_get("/api/tags", self._tags)
        r.add_get("/api/ps", self._ps)
        r.add_post("/api/show", self._show)
        r.add_post("/api/generate", self._generate)
        r.add_post("/api/chat", self._chat)
        r.add_post("/api/embed", self._embed)
        r.add_post("/api/embeddings", self._embed)
        r.add_post("/api/pull", self._pull)
        r.add_post("/api/create", self._create)
        r.add_post("/api/copy", self._copy)
        r.add_delete("/api/delete", self._delete)
        r.add_route("HEAD", "/api/blobs/{digest}", self._blob_head)
        r.add_post("/api/blobs/{digest}", self._blob_post)
        r.add_post("/v1/chat/completions", self._oa_chat)
        r.add_post("/v1/completions", self._oa_completion)
        r.add_post("/v1/embeddings", self._oa_embeddings)
        r.add_post("/v1/responses", self._oa_responses)
        r.add_post("/v1/messages", self._messages)
        r.add_get("/v1/models", self._oa_models)
        r.add_get("/v1/models/{model:.+}", self._oa_model)
        r.add_route("*", "/{tail:.*}", self._not_found)
        return app
