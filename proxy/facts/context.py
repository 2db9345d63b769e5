"""Build each request's Context from the gathered facts, and feed each answer back into them.

Before the chain: memory snapshot, model facts, loaded state, a prompt-token estimate and the
model's calibration. After the answer: the chars-per-token ratio learns from Ollama's count, a
load triggers an ``/api/ps`` read (spill detection, calibration), and the record gets what was
observed (reloaded, spilled, loaded context, truncation suspicion).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

import structlog

from policies.context import Context, FrozenJSON, GpuSnapshot, LoadedModel, OllamaServer, Resident
from policies.duration import KeepAlive, keep_alive_seconds
from policies.memory import Calibration
from policies.model import ModelFacts, uses_llama_server
from policies.ollama import default_num_ctx
from policies.scheduler import Budget, Candidate, Expected, predicted_action
from proxy.config.settings import OllamaSettings
from proxy.facts.ollama import Facts
from proxy.facts.scheduling import ollama_server, residents
from proxy.facts.tokens import TokenEstimator
from proxy.govern.record import Answer, GovernedRequest, Observation
from proxy.names import canonical_model
from proxy.request.parse import ClientRequest
from proxy.request.prompt import EMBED_ENDPOINTS

log = structlog.get_logger("ollama_governor.facts")


def _expired(model: LoadedModel, now: datetime) -> bool:
    """Whether the model's keep_alive had run out (it left by itself, not for another)."""
    if not model.expires_at:
        return False
    try:
        expires = datetime.fromisoformat(model.expires_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    return expires <= now


SECONDS_PER_DAY = 86_400

MAX_REMEMBERED_MODELS = 1024
"""Model names come from clients: what is remembered per model stays bounded."""

TRUNCATION_FILL = 0.95
"""A prompt that fills this much of the context may have been cut by Ollama without a word."""


class _Seen(NamedTuple):
    """What an observation of Ollama after an answer starts from."""

    request: ClientRequest
    record: GovernedRequest
    status: int
    reloaded: bool | None
    prompt_tokens: int | None
    loaded_before: tuple[LoadedModel, ...]


def request_context(
    request: ClientRequest, *, client: str | None = None, headers: Mapping[str, str] | None = None
) -> Context:
    """The Context fields the request alone tells (no facts)."""
    return governed_context(request, client=client, headers=headers, prompt_tokens=None, host=NO_HOST)


class HostFacts(NamedTuple):
    """The Context's fields that the host and the model tell, not the request, in the Context's
    own order (checked below, with ``_ASKED``), so that a Context is made from them positionally."""

    gpu: GpuSnapshot | None
    model: ModelFacts | None
    loaded: LoadedModel | None
    all_loaded: tuple[LoadedModel, ...]
    ollama_version: tuple[int, int, int] | None
    default_num_ctx: int | None
    num_parallel: int
    kv_cache_type: str
    flash_attention: bool
    residents: tuple[Resident, ...]
    server: OllamaServer | None
    calibration: Calibration | None


_ASKED = (
    "endpoint",
    "model_name",
    "body",
    "client",
    "headers",
    "client_num_ctx",
    "client_keep_alive",
    "num_predict",
    "prompt_tokens",
)
"""The Context's fields the request tells, in the order ``governed_context`` passes them."""
_CONTEXT_FIELDS = tuple(f.name for f in dataclasses.fields(Context))
if _ASKED + HostFacts._fields != _CONTEXT_FIELDS:
    raise TypeError(f"governed_context passes the Context's fields in another order than {_CONTEXT_FIELDS}")

_BARE = Context("generate", "", {})
NO_HOST = HostFacts(*(getattr(_BARE, name) for name in HostFacts._fields))
"""What a Context holds when no fact of the host is known (the Context's own defaults)."""


def governed_context(
    request: ClientRequest,
    *,
    client: str | None = None,
    headers: Mapping[str, str] | None = None,
    prompt_tokens: int | None,
    host: HostFacts,
) -> Context:
    """What ``request`` tells, with the facts of the host (``host_fields``): the one place a
    policy's Context is made, for the proxy's requests and for ``plan``'s what-if alike. Made
    positionally: a Context per request by keyword cost a third more."""
    return Context(
        request.endpoint,
        request.model,
        FrozenJSON(request.body),
        client,
        headers if headers is not None else FrozenJSON({}),
        request.num_ctx,
        request.keep_alive,
        request.num_predict,
        prompt_tokens,
        *host,
    )


def host_fields(
    *,
    settings: OllamaSettings,
    version: tuple[int, int, int] | None,
    gpu: GpuSnapshot | None,
    model: ModelFacts | None,
    loaded: LoadedModel | None,
    all_loaded: tuple[LoadedModel, ...],
    calibration: Calibration | None,
    residents: tuple[Resident, ...],
) -> HostFacts:
    """The Context's fields that the host and the model tell, not the request."""
    return HostFacts(
        gpu=gpu,
        model=model,
        loaded=loaded,
        all_loaded=all_loaded,
        ollama_version=version,
        default_num_ctx=server_default_num_ctx(settings, version, model, gpu),
        num_parallel=settings.num_parallel,
        kv_cache_type=settings.kv_cache_type,
        flash_attention=settings.flash_attention != "off",
        residents=residents,
        server=ollama_server(settings, version),
        calibration=calibration,
    )


def server_default_num_ctx(
    settings: OllamaSettings,
    version: tuple[int, int, int] | None,
    model: ModelFacts | None,
    gpu: GpuSnapshot | None,
) -> int:
    """The context Ollama gives ``model`` when a request names none (docs/ollama-rules.md §1): its
    Modelfile ``num_ctx``, else ``OLLAMA_CONTEXT_LENGTH``, else the tier of the server's total VRAM
    (read from the memory source when it reads GPUs; a CPU-only host has none)."""
    totals: tuple[int, ...] = ()
    if gpu is not None and gpu.known and gpu.kind in ("gpu", "unified"):
        totals = tuple(device.total_bytes for device in gpu.devices)
    return default_num_ctx(
        version,
        totals,
        context_length_env=settings.context_length,
        modelfile_num_ctx=model.modelfile_num_ctx if model is not None else None,
        trained_ctx=model.context_length if model is not None else None,
        vision=model is not None and "vision" in model.capabilities,
        gpu_overhead_bytes=settings.gpu_overhead_bytes,
    )


class ContextFactory:
    """Makes Contexts for the pipeline and reads facts back from answers."""

    def __init__(
        self,
        facts: Facts,
        gpu: Callable[[], GpuSnapshot | None],
        tokens: TokenEstimator | None = None,
    ) -> None:
        self.facts = facts
        self.gpu = gpu
        self.tokens = tokens or TokenEstimator()
        self.sent_keep_alive: dict[str, float] = {}
        """The keep_alive (seconds) the governor last sent each model: Ollama keeps it on the runner,
        and its eviction order sorts by it, but ``/api/ps`` does not show it."""
        self._sent_changes = 0
        """Counts the changes of ``sent_keep_alive``'s values (what the residents show)."""
        self._hosts: dict[str, tuple[tuple[object, ...], HostFacts]] = {}
        """Each model's ``host_fields``, with the facts they were derived from (``_host``)."""
        self._budget: tuple[GpuSnapshot | None, Budget] = (None, Budget.from_snapshot(None))
        """The last memory sample's budget (``_budget_of``)."""

    async def build(
        self,
        request: ClientRequest,
        *,
        client: str | None = None,
        headers: Mapping[str, str] | None = None,
        facts_wait_s: float | None = None,
    ) -> Context:
        """The full context for one request."""
        model = await self.facts.model_facts(request.model, facts_wait_s)
        return governed_context(
            request,
            client=client,
            headers=headers,
            prompt_tokens=self.estimate_tokens(request),
            host=self._host(request.model, model, self.gpu()),
        )

    def _host(self, name: str, model: ModelFacts | None, gpu: GpuSnapshot | None) -> HostFacts:
        """``host_fields`` for the model ``name``, derived again only when a fact they come from
        changed: those change at the pace of ``/api/ps`` reads and memory samples, and deriving
        them (the residents, the server, the default context, the calibration) was a fifth of
        what deciding a request cost. The key compares with ``==``; unchanged parts are the same
        objects and compare at once."""
        facts = self.facts
        key = (
            facts.revision,
            facts.settings,
            facts.version,
            facts.calibrations.revision,
            model,
            gpu,
            self._sent_changes,
            int(time.time() // SECONDS_PER_DAY),  # the residents read "forever" off the year
        )
        kept = self._hosts.get(name)
        if kept is not None and kept[0] == key:
            return kept[1]
        fields = host_fields(
            settings=facts.settings,
            version=facts.version,
            gpu=gpu,
            model=model,
            loaded=facts.loaded_model(name),
            all_loaded=facts.loaded,
            calibration=facts.calibrations.get(facts.calibration_key(model)) if model else None,
            residents=residents(facts, self.sent_keep_alive),
        )
        self._hosts.pop(name, None)
        self._hosts[name] = (key, fields)
        if len(self._hosts) > MAX_REMEMBERED_MODELS:
            del self._hosts[next(iter(self._hosts))]
        return fields

    def default_num_ctx(self, model: ModelFacts | None, gpu: GpuSnapshot | None) -> int:
        """``server_default_num_ctx`` with the facts' settings and version."""
        return server_default_num_ctx(self.facts.settings, self.facts.version, model, gpu)

    def estimate_tokens(self, request: ClientRequest) -> int:
        """The prompt's tokens as estimated now (before this answer teaches the ratio)."""
        return self.tokens.estimate(request.model, request.prompt)

    def _note_keep_alive(self, model: str, keep_alive: KeepAlive) -> None:
        try:
            seconds = keep_alive_seconds(keep_alive)
        except ValueError:  # a client's own bad value, forwarded as is: Ollama answers it
            return
        if self.sent_keep_alive.pop(model, None) != seconds:
            self._sent_changes += 1
        self.sent_keep_alive[model] = seconds
        if len(self.sent_keep_alive) > MAX_REMEMBERED_MODELS:
            del self.sent_keep_alive[next(iter(self.sent_keep_alive))]

    def expect_load(
        self, request: ClientRequest, num_ctx: int | None, keep_alive: KeepAlive | None = None
    ) -> bool:
        """Note the context Ollama is about to hold the model at, and the keep_alive it will keep
        on the runner; True when that is a (re)load.

        A request that sends no ``num_ctx`` gets the model's default context (Ollama reloads a
        model loaded at another one), as far as the model's facts are known.
        """
        if keep_alive is not None:
            self._note_keep_alive(canonical_model(request.model), keep_alive)
        if num_ctx is None:
            model = self.facts.cached_facts(request.model)
            if model is None:
                return False
            num_ctx = self.default_num_ctx(model, self.gpu())
        return self.facts.expect_loaded(request.model, num_ctx)

    def predict(self, ctx: Context, num_ctx: int | None, keep_alive: KeepAlive | None) -> Expected | None:
        """What Ollama's scheduler will do with the request as sent, and whom it unloads for it
        (``policies.scheduler.predicted_action``), to be checked against what it did; None
        without the model's facts or the server's."""
        model, server = ctx.model, ctx.server
        if model is None or server is None:
            return None
        auto = num_ctx is None and model.modelfile_num_ctx is None and not self.facts.settings.context_length
        if num_ctx is None:
            num_ctx = ctx.default_num_ctx or self.default_num_ctx(model, ctx.gpu)
        try:
            keep_alive_s = None if keep_alive is None else keep_alive_seconds(keep_alive)
        except ValueError:
            keep_alive_s = None
        candidate = Candidate(
            model,
            num_ctx,
            num_ctx_auto=auto,
            keep_alive_s=keep_alive_s,
            model_path=self.facts.model_path(ctx.model_name),
            calibration=ctx.calibration,
        )
        try:
            return predicted_action(candidate, ctx.residents, self._budget_of(ctx.gpu), server)
        except ValueError:  # facts too thin to size the load (IncompleteModelFacts)
            return None

    def _budget_of(self, snapshot: GpuSnapshot | None) -> Budget:
        """``Budget.from_snapshot``, made once per memory sample: the sampler reads the memory
        every few seconds, a prediction is made per request, and the budget was a third of it."""
        kept, budget = self._budget
        if snapshot is not kept:
            budget = Budget.from_snapshot(snapshot)
            self._budget = (snapshot, budget)
        return budget

    def learn(
        self,
        request: ClientRequest,
        record: GovernedRequest,
        answer: Answer,
        expected_load: bool,
        loaded_before: tuple[LoadedModel, ...] = (),
    ) -> Observation | Awaitable[Observation]:
        """Learn from ``answer`` to the request ``record`` decided; after a load, the awaitable
        waits for the ``/api/ps`` read the observation needs. ``loaded_before`` is what Ollama
        held when the request went out, to see what the scheduler unloaded for it."""
        reloaded = answer.reloaded
        answered = bool(answer.done_reason) or request.endpoint in EMBED_ENDPOINTS
        if expected_load and answer.status == 200 and answered:
            # Ollama held the model at another context (or not at all) when this went out: a
            # fast load, e.g. a small model from the page cache, is still a load. (An embedding
            # has no done_reason: its 200 is the whole answer.)
            reloaded = True
        if isinstance(answer.prompt_tokens, int) and answer.status == 200:
            self.tokens.learn(
                request.model,
                request.prompt,
                answer.prompt_tokens,
                counts_cached=uses_llama_server(self.facts.version),
            )
        seen = _Seen(request, record, answer.status, reloaded, answer.prompt_tokens, loaded_before)
        loaded = self.facts.loaded_model(request.model)
        if reloaded or loaded is None or loaded.provisional or answer.status != 200:
            return self._after_load(seen)
        return self._observed(seen)

    async def _after_load(self, seen: _Seen) -> Observation:
        await self.facts.refresh_loaded_soon()
        observation = self._observed(seen)
        loaded = self.facts.loaded_model(seen.request.model)
        if loaded is not None and loaded.spilled:
            log.warning(
                "spill",
                model=seen.request.model,
                num_ctx=loaded.context_length,
                size=loaded.size_bytes,
                size_vram=loaded.size_vram_bytes,
                on_gpu_fraction=round(loaded.size_vram_bytes / loaded.size_bytes, 3),
            )
        return observation

    def _observed(self, seen: _Seen) -> Observation:
        loaded = self.facts.loaded_model(seen.request.model)
        context_length = (loaded.context_length if loaded else None) or seen.record.applied_num_ctx
        prompt_tokens, estimate = seen.prompt_tokens, seen.record.estimated_prompt_tokens
        suspect = bool(
            context_length
            and (
                (isinstance(prompt_tokens, int) and prompt_tokens >= TRUNCATION_FILL * context_length)
                or (isinstance(estimate, int) and estimate > context_length)
            )
        )
        action, evicted = self._scheduler_did(seen)
        return Observation(
            reloaded=seen.reloaded,
            spilled=loaded.spilled if loaded is not None else None,
            loaded_num_ctx=loaded.context_length if loaded is not None and not loaded.provisional else None,
            truncation_suspect=suspect,
            observed_action=action,
            observed_evictions=evicted,
        )

    def _scheduler_did(self, seen: _Seen) -> tuple[str | None, tuple[str, ...]]:
        """What Ollama's scheduler did for this request, read from ``/api/ps`` before and after:
        ``reuse`` (nothing loaded), ``load`` (beside the others), ``reload`` (this model at another
        context), ``evict`` (others unloaded to make room, named) or ``spill`` (part in system RAM).
        A model that left because its keep_alive ran out is not an eviction."""
        if seen.status != 200 or seen.reloaded is None:
            return None, ()
        if not seen.reloaded:
            return "reuse", ()
        this = canonical_model(seen.request.model)
        now = datetime.now(UTC)
        after = {canonical_model(model.name) for model in self.facts.loaded if not model.provisional}
        before = [model for model in seen.loaded_before if not model.provisional]
        evicted = tuple(
            model.name
            for model in before
            if canonical_model(model.name) != this
            and canonical_model(model.name) not in after
            and not _expired(model, now)
        )
        loaded = self.facts.loaded_model(seen.request.model)
        if loaded is not None and loaded.spilled:
            return "spill", evicted
        if evicted:
            return "evict", evicted
        if any(canonical_model(model.name) == this for model in before):
            return "reload", ()
        return "load", ()
