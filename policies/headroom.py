"""The ``headroom`` policy: give each request the context it needs, without reloads, sized to fit.

A ``num_ctx`` too large for free VRAM makes Ollama put part of the model in system RAM, which is
many times slower; a ``num_ctx`` that differs from the loaded one makes Ollama reload the model
(seconds to minutes); a ``num_ctx`` smaller than the prompt makes Ollama cut it without a word.
This policy sends what the prompt needs, keeps the loaded value when it has room so nothing
reloads, and, when free memory is known, never more than fits. Everything but the fit works on a
host whose memory the governor cannot read.
"""

from __future__ import annotations

import fnmatch
import math
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from policies.context import Context, LoadedModel
from policies.decision import Decision
from policies.memory import (
    Calibration,
    effective_parallel,
    estimate,
    estimate_bytes,
    format_bytes,
    largest_fitting_ctx,
    ps_unreported_bytes,
)
from policies.model import ModelFacts
from policies.outcome import Outcome
from policies.scheduler import Budget, Candidate, Prediction, predict

OnOverflow = Literal["spill", "reject", "truncate"]
"""What to do when the prompt needs more context than fits in free GPU memory."""

ON_OVERFLOW_CHOICES: Final[tuple[str, ...]] = get_args(OnOverflow)

STICKY: Final = Outcome.STICKY
REFIT: Final = Outcome.REFIT
OVERFLOW: Final = Outcome.OVERFLOW
TRUNCATE: Final = Outcome.TRUNCATE
REJECT: Final = Outcome.REJECT
UNKNOWN: Final = Outcome.UNKNOWN

WORKING_SET: Final = Outcome.WORKING_SET
EVICTS: Final = Outcome.EVICTS

OUTCOMES: Final[frozenset[str]] = frozenset(
    {STICKY, REFIT, OVERFLOW, TRUNCATE, REJECT, UNKNOWN, WORKING_SET, EVICTS}
)
"""The outcomes ``headroom`` attaches to its decisions (``Decision.outcome``)."""

EMBEDDING_ENDPOINTS: Final[frozenset[str]] = frozenset({"embed", "embeddings", "openai.embeddings"})
"""Routes that embed their input rather than generate a reply."""

_MAX_FIT_KEYS: Final = 64
"""Model/parallel/cache-type/version/calibration combinations whose fits are remembered."""
_MAX_INTERVALS_PER_KEY: Final = 64
"""Budget intervals remembered per combination: one per bucket, so a whole model's range."""

_FitKey = tuple[ModelFacts, int, str, tuple[int, int, int] | None, Calibration | None, bool, int]
_Interval = tuple[float, float, int | None]
"""``(lowest_budget, budget_limit, fit)``: every budget in ``[lowest, limit)`` gives ``fit``."""


class _Intervals:
    """The budget intervals whose fit is known for one key: disjoint, sorted, found by bisection.

    They are disjoint because each is exactly the set of budgets giving one answer.
    """

    __slots__ = ("entries", "lowest")

    def __init__(self) -> None:
        self.lowest: list[float] = []
        self.entries: list[_Interval] = []

    def find(self, budget_bytes: int) -> tuple[bool, int | None]:
        """``(True, fit)`` when ``budget_bytes`` lies in a known interval, else ``(False, None)``."""
        index = bisect_right(self.lowest, budget_bytes) - 1
        if index >= 0:
            _, limit, fit = self.entries[index]
            if budget_bytes < limit:
                return True, fit
        return False, None

    def add(self, interval: _Interval) -> None:
        """Remember ``interval``; when full, forget the end farthest from it."""
        index = bisect_right(self.lowest, interval[0])
        self.lowest.insert(index, interval[0])
        self.entries.insert(index, interval)
        if len(self.entries) > _MAX_INTERVALS_PER_KEY:
            drop = 0 if index >= len(self.entries) // 2 else -1
            del self.lowest[drop], self.entries[drop]


class Headroom:
    """Give each request the context its prompt needs, without a needless reload, never more than
    fits in memory, and never so little that Ollama silently cuts the prompt.

    Each request goes through these steps:

    1. **need**: the estimated prompt tokens plus room for the reply (the client's positive
       ``num_predict`` up to ``max_reply_tokens``, else ``reply_tokens``), rounded up to a multiple
       of ``step`` and at least ``min_ctx``. The cap matters for clients that ask a large
       ``max_tokens`` by habit (coding agents send 32000): reserving it all would spill the model,
       for a reply that is rarely that long (a longer one stops at the window, done_reason
       "length"). Rounding to buckets keeps similar prompts on the same ``num_ctx``, so they do
       not reload the model.
    2. **sticky**: if the model is loaded (not spilled to system RAM) with a context of at least
       *need* (and not above ``max_ctx``), that context is sent, whatever the client asked: two
       clients alternating 2048 and 8192 cause one load, not one per request. It is set explicitly
       because Ollama reloads when ``num_ctx`` is omitted after a load that set another value.
    3. **wanted**: the value asked so far (the client's, or an earlier policy's), raised to *need*
       so the prompt is never cut; when none was asked, what the prompt needs or the server's own
       default context (``Context.default_num_ctx``), whichever is larger. (``fill=True`` asks for
       the largest context that fits instead.)
    4. **fit**, only when the memory budget is known: the largest bucket whose estimated footprint
       fits in free memory, plus what this model already holds (a reload frees it), minus the
       reserve; never above ``max_ctx`` or the trained length. *wanted* is lowered to *fit*. When
       *need* itself exceeds *fit*, ``on_overflow`` decides: ``"spill"`` sends *need* (right
       answer, part of the model in system RAM), ``"reject"`` refuses with a 400, ``"truncate"``
       sends *fit* and lets Ollama cut the prompt.
    5. a loaded model that spills to system RAM is never sticky, so it is reloaded at a context
       that fits.

    Without a memory budget (no memory source, a failed read) or without the model's facts, steps
    1-3 still run: the decision avoids reloads and truncation and says in its reason that nothing
    capped it (outcome ``unknown``).

    Reasons start ``"headroom: "`` or ``"headroom[TOKEN]: "`` for readers; programs read the
    outcome from ``Decision.outcome`` (``sticky``, ``refit``, ``overflow``, ``truncate``,
    ``reject`` or ``unknown``: ``policies.Outcome``), a stable interface. The prose is not.

    Sizing the fit takes a few hundred microseconds of estimates, so results are remembered per
    model, parallel slots, cache type, version and calibration as budget intervals: a later
    request whose budget falls in a known interval costs a dictionary lookup.
    """

    def __init__(
        self,
        min_ctx: int = 2048,
        max_ctx: int | None = None,
        step: int = 2048,
        reply_tokens: int = 1024,
        on_overflow: OnOverflow = "spill",
        fill: bool = False,
        max_reply_tokens: int = 8192,
        protect: Sequence[str] = (),
        weights: Mapping[str, float] | None = None,
    ) -> None:
        _check_int("min_ctx", min_ctx, minimum=1)
        if max_ctx is not None:
            _check_int("max_ctx", max_ctx, minimum=1)
            if min_ctx > max_ctx:
                raise ValueError(f"headroom: min_ctx ({min_ctx}) must not exceed max_ctx ({max_ctx})")
        _check_int("step", step, minimum=1)
        _check_int("reply_tokens", reply_tokens, minimum=0)
        _check_int("max_reply_tokens", max_reply_tokens, minimum=0)
        if on_overflow not in ON_OVERFLOW_CHOICES:
            raise ValueError(
                f"headroom: on_overflow must be one of {', '.join(ON_OVERFLOW_CHOICES)}, not {on_overflow!r}"
            )
        if not isinstance(fill, bool):
            raise ValueError(f"headroom: fill must be true or false, not {fill!r}")
        self.min_ctx = min_ctx
        self.max_ctx = max_ctx
        self.step = step
        self.reply_tokens = reply_tokens
        self.on_overflow: OnOverflow = on_overflow
        self.fill = fill
        self.max_reply_tokens = max_reply_tokens
        if isinstance(protect, str) or not all(isinstance(p, str) and p.strip() for p in protect):
            raise ValueError(
                f"headroom: protect must be a list of model globs such as ['nomic-*'], not {protect!r}"
            )
        self.protect = tuple(_canonical(p) for p in protect)
        weights = dict(weights or {})
        for pattern, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                raise ValueError(
                    f"headroom: weights[{pattern!r}] must be a number of 0 or more, not {weight!r}"
                )
        self.weights = tuple((_canonical(p), float(w)) for p, w in weights.items())
        self._fits: OrderedDict[_FitKey, _Intervals] = OrderedDict()

    async def __call__(self, ctx: Context, decision: Decision) -> Decision:
        return self.decide(ctx, decision)

    def decide(self, ctx: Context, decision: Decision) -> Decision:
        """The policy itself, synchronous: a pure function of ``ctx`` and ``decision``."""
        asked = decision.num_ctx
        model = ctx.model
        ceiling = self._ceiling(model)
        need, needs_text = self._need(ctx, ceiling)
        asked_text = "none" if asked is None else str(asked)

        loaded = ctx.loaded
        spilled = loaded is not None and _spilled(loaded)
        if (
            loaded is not None
            and not spilled
            and loaded.context_length is not None
            and need <= loaded.context_length
            and (ceiling is None or loaded.context_length <= ceiling)
        ):
            kept = loaded.context_length
            where = "in system RAM" if ctx.gpu is not None and ctx.gpu.kind == "system" else "fully on GPU"
            return decision.replace(
                num_ctx=kept,
                outcome=STICKY,
                reason=f"headroom[{STICKY}]: asked {asked_text}, loaded at {kept} {where}; "
                f"{needs_text}; keeping {kept} (no reload)",
            )

        default = ctx.default_num_ctx
        wanted = max(asked, need) if asked is not None else max(need, default or 0)
        if ceiling is not None:
            wanted = min(wanted, ceiling)
        default_text = f", server default {default}" if asked is None and default is not None else ""

        budget = self._budget(ctx, loaded)
        unknown_why = budget.unknown
        fit: int | None = None
        if unknown_why is None:
            if model is None:
                unknown_why = f"no facts about model {ctx.model_name!r}"
            elif ceiling is None:
                unknown_why = f"model {model.name!r}: context_length is unknown and max_ctx is not set"
            else:
                try:
                    fit = self._largest_fitting(model, budget.bytes, budget.parallel, ctx, ceiling)
                except ValueError as error:  # IncompleteModelFacts, unknown cache type
                    unknown_why = f"cannot estimate memory: {error}"
        if unknown_why is not None:
            return decision.replace(
                num_ctx=wanted,
                outcome=UNKNOWN,
                reason=f"headroom[{UNKNOWN}]: {unknown_why}; asked {asked_text}{default_text}, "
                f"{needs_text}; using {wanted}, uncapped",
            )
        assert model is not None and ceiling is not None

        if fit is None:
            fit_text = "nothing fits"
        elif fit == ceiling:
            fit_text = f"{fit} fit ({self._cap_name(model, ceiling)} cap)"
        else:
            fit_text = f"{fit} fit"
        figures = f"asked {asked_text}{default_text}, {fit_text} in {budget.text}; {needs_text}"
        refit_text = ""
        if spilled and loaded is not None:
            refit_text = (
                f"; loaded at {loaded.context_length} with "
                f"{format_bytes(loaded.size_bytes - loaded.size_vram_bytes)} in system RAM"
            )

        limit = fit or 0
        if need <= limit:
            chosen = min(limit if self.fill and asked is None else wanted, limit)
            placed = self._place(ctx, model, need, chosen)
            if placed is not None and placed.num_ctx != chosen:
                return decision.replace(
                    num_ctx=placed.num_ctx,
                    outcome=placed.outcome,
                    reason=f"headroom[{placed.outcome}]: {figures}{refit_text}; {placed.why}; "
                    f"using {placed.num_ctx}",
                )
            tag = f"[{REFIT}]" if spilled else ""
            evicts = f"; {placed.why}" if placed is not None and placed.outcome == EVICTS else ""
            return decision.replace(
                num_ctx=chosen,
                outcome=EVICTS if evicts else (REFIT if spilled else None),
                reason=f"headroom{tag}: {figures}{refit_text}{evicts}; using {chosen}",
            )

        capped = fit is not None and fit == ceiling  # the cap binds, not memory
        if self.on_overflow == "reject":
            if capped:
                message = f"prompt needs ~{need} tokens of context; {ctx.model_name} allows at most {ceiling}"
            else:
                where = {"system": "RAM", "unified": "unified memory"}.get(budget.kind, "GPU memory")
                message = f"prompt needs ~{need} tokens of context; at most {limit} fit in free {where}"
            return decision.replace(
                reason=f"headroom[{REJECT}]: {figures}; rejecting", outcome=REJECT
            ).reject(message)
        if self.on_overflow == "truncate":
            chosen = fit if fit is not None else min(self.min_ctx, ceiling)
            return decision.replace(
                num_ctx=chosen,
                outcome=TRUNCATE,
                reason=f"headroom[{TRUNCATE}]: {figures}{refit_text}; using {chosen}, "
                "Ollama will cut the prompt",
            )
        chosen = min(need, ceiling)
        consequence = (
            f"the prompt exceeds the {self._cap_name(model, ceiling)} cap, Ollama will cut it"
            if capped
            else "more than fits, part of the model will run from system RAM"
        )
        return decision.replace(
            num_ctx=chosen,
            outcome=OVERFLOW,
            reason=f"headroom[{OVERFLOW}]: {figures}{refit_text}; using {chosen}, {consequence}",
        )

    def _place(self, ctx: Context, model: ModelFacts, need: int, chosen: int) -> _Placement | None:
        """Among the contexts from ``chosen`` down to ``need``, the largest at which Ollama's
        scheduler (``policies.scheduler``) unloads no more than it must and does not spill.

        Ollama unloads in one order whatever the size, so a larger context unloads a superset:
        what it must unload is what *need* unloads, and a binary search finds the largest context
        that unloads no more (by ``weights``; a protected, pinned or heavier model counts first).
        None without the scheduler's inputs, when ``chosen`` unloads nothing, or when even
        *need* spills."""
        server, gpu = ctx.server, ctx.gpu
        if server is None or gpu is None or not gpu.known or not ctx.residents:
            return None
        budget = Budget.from_snapshot(gpu)
        weight = self._weight(ctx.model_name)
        seen: dict[int, tuple[Prediction, tuple[bool, float]] | None] = {}

        def outcome(num_ctx: int) -> tuple[Prediction, tuple[bool, float]] | None:
            """What Ollama does at ``num_ctx`` and what that costs; None when it spills."""
            if num_ctx not in seen:
                candidate = Candidate(model, num_ctx, calibration=ctx.calibration)
                prediction = predict(candidate, ctx.residents, budget, server)
                evicted = prediction.evicted_names
                refused = any(not self._evictable(ctx, name, weight) for name in evicted)
                cost = (refused, sum(self._weight(name) for name in evicted))
                seen[num_ctx] = None if prediction.action == "spill" else (prediction, cost)
            return seen[num_ctx]

        try:
            at_chosen = outcome(chosen)
            if at_chosen is not None and not at_chosen[0].evicted:
                return None
            contexts = _descending(chosen, need, self.step)
            at_need = outcome(contexts[-1])
            if at_need is None:
                return None
            low, high = 0, len(contexts) - 1  # contexts[high] costs no more than need; find the first
            while low < high:
                middle = (low + high) // 2
                found = outcome(contexts[middle])
                if found is not None and found[1] <= at_need[1]:
                    high = middle
                else:
                    low = middle + 1
        except ValueError:
            return None
        num_ctx = contexts[high]
        placed = outcome(num_ctx) or at_need
        evicted = placed[0].evicted_names
        if not evicted:
            kept = ", ".join(
                r.name for r in ctx.residents if _canonical(r.name) != _canonical(ctx.model_name)
            )
            did = (
                "would spill into system RAM"
                if at_chosen is None
                else f"would unload {', '.join(at_chosen[0].evicted_names)}"
            )
            keeps = f"keeps {kept} loaded" if kept else "fits on the GPU"
            return _Placement(num_ctx, WORKING_SET, f"{chosen} {did}; {num_ctx} {keeps}")
        why = f"Ollama will unload {', '.join(evicted)} for it"
        refused = [name for name in evicted if not self._evictable(ctx, name, weight)]
        if refused:
            why += f": even {need} does not fit beside {', '.join(refused)}"
        return _Placement(num_ctx, EVICTS, why)

    def _weight(self, model_name: str) -> float:
        """How much this model matters when not all fit (``weights``; 1 unless a glob says)."""
        name = _canonical(model_name)
        for pattern, weight in self.weights:
            if fnmatch.fnmatchcase(name, pattern):
                return weight
        return 1.0

    def _evictable(self, ctx: Context, name: str, weight: float) -> bool:
        """Whether this request may make Ollama unload ``name``: not protected, not pinned
        (kept forever), and no more important than the model asking."""
        key = _canonical(name)
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in self.protect):
            return False
        resident = next((r for r in ctx.residents if _canonical(r.name) == key), None)
        if resident is not None and resident.keep_alive_s is not None and math.isinf(resident.keep_alive_s):
            return False
        return self._weight(name) <= weight

    def _need(self, ctx: Context, ceiling: int | None) -> tuple[int, str]:
        """What the prompt and the reply need, in ``step`` buckets, and how to say it."""
        prompt_tokens = max(ctx.prompt_tokens, 0) if ctx.prompt_tokens is not None else None
        reply_tokens = ctx.num_predict if ctx.num_predict is not None and ctx.num_predict > 0 else None
        reply_tokens = self.reply_tokens if reply_tokens is None else min(reply_tokens, self.max_reply_tokens)
        if ctx.endpoint in EMBEDDING_ENDPOINTS:
            reply_tokens = 0  # an embedding generates nothing
        wanted = (prompt_tokens or 0) + reply_tokens
        need = max(self.min_ctx, -(-wanted // self.step) * self.step)
        if ceiling is not None and wanted <= ceiling:
            need = min(need, ceiling)
        prompt_text = "?" if prompt_tokens is None else f"~{prompt_tokens}"
        return need, f"prompt needs {need} ({prompt_text} + {reply_tokens} reply)"

    def _budget(self, ctx: Context, loaded: LoadedModel | None) -> _Budget:
        """Free memory plus what this model holds (a reload frees it), minus the reserve."""
        gpu = ctx.gpu
        if gpu is None or not gpu.known:
            why = "no memory source" if gpu is None else gpu.error or f"no devices from {gpu.source}"
            return _Budget(unknown=f"no memory budget ({why})")
        free_bytes = gpu.free_bytes or 0
        own_bytes = 0
        if loaded is not None:
            own_bytes = loaded.size_bytes if gpu.kind == "system" else loaded.size_vram_bytes
        parallel = (
            effective_parallel(ctx.model, ctx.num_parallel) if ctx.model is not None else ctx.num_parallel
        )
        held_text = f" + {format_bytes(own_bytes)} held by this model" if own_bytes else ""
        parallel_text = f", parallel {parallel}" if parallel > 1 else ""
        where = "free RAM" if gpu.kind == "system" else "free"
        return _Budget(
            bytes=free_bytes + own_bytes - gpu.reserve_bytes,
            parallel=parallel,
            kind=gpu.kind,
            text=f"{format_bytes(free_bytes)} {where}{held_text} (reserve {format_bytes(gpu.reserve_bytes)}"
            f"{parallel_text})",
        )

    def _ceiling(self, model: ModelFacts | None) -> int | None:
        """The largest context this policy may send: ``max_ctx`` and the trained length."""
        trained = model.context_length if model is not None and model.context_length else None
        limits = [limit for limit in (self.max_ctx, trained) if limit is not None]
        return min(limits) if limits else None

    def _cap_name(self, model: ModelFacts, ceiling: int) -> str:
        return "max_ctx" if ceiling == self.max_ctx and ceiling != model.context_length else "trained length"

    def _largest_fitting(
        self, model: ModelFacts, budget_bytes: int, parallel: int, ctx: Context, ceiling: int
    ) -> int | None:
        """``memory.largest_fitting_ctx``, remembered as the budget interval that gives each answer.

        The answer ``fit`` holds for every budget from its own estimate up to (not including) the
        estimate of the next candidate, because estimates never decrease with ``num_ctx``. So a
        miss costs the search plus two estimates, and any later budget in the interval is exact.
        """
        if budget_bytes <= 0:
            return None
        gpu_count = _gpu_count(ctx)
        key: _FitKey = (
            model,
            parallel,
            ctx.kv_cache_type,
            ctx.ollama_version,
            ctx.calibration,
            ctx.flash_attention,
            gpu_count,
        )
        intervals = self._fits.get(key)
        if intervals is None:
            intervals = self._fits[key] = _Intervals()
            if len(self._fits) > _MAX_FIT_KEYS:
                self._fits.popitem(last=False)
        else:
            self._fits.move_to_end(key)
            known, fit = intervals.find(budget_bytes)
            if known:
                return fit

        fit = largest_fitting_ctx(
            model,
            budget_bytes,
            step=self.step,
            min_ctx=self.min_ctx,
            max_ctx=self.max_ctx,
            parallel=parallel,
            kv_cache_type=ctx.kv_cache_type,
            version=ctx.ollama_version,
            calibration=ctx.calibration,
            flash_attention=ctx.flash_attention,
            gpu_count=gpu_count,
        )

        def estimated(num_ctx: int) -> int:
            return estimate_bytes(
                model,
                num_ctx,
                parallel,
                ctx.kv_cache_type,
                version=ctx.ollama_version,
                calibration=ctx.calibration,
                flash_attention=ctx.flash_attention,
                gpu_count=gpu_count,
            )

        if fit is None:
            interval: _Interval = (-math.inf, estimated(min(self.min_ctx, ceiling)), None)
        else:
            following = min((fit // self.step + 1) * self.step, ceiling)
            limit = estimated(following) if following > fit else math.inf
            interval = (estimated(fit), limit, fit)
        intervals.add(interval)
        return fit


def _gpu_count(ctx: Context) -> int:
    """GPUs a load may be split over (``GpuSnapshot.gpu_count``; 1 without a sample)."""
    return ctx.gpu.gpu_count if ctx.gpu is not None else 1


@dataclass(frozen=True, slots=True)
class _Placement:
    """A context chosen to keep other models loaded (or to say whom Ollama will unload)."""

    num_ctx: int
    outcome: str
    why: str


def _descending(top: int, bottom: int, step: int) -> list[int]:
    """``top``, the multiples of ``step`` below it, and ``bottom``: the contexts ``_place`` weighs."""
    below = range(top - (top % step or step), bottom, -step)
    return list(dict.fromkeys([top, *below, bottom])) if bottom < top else [top]


def _canonical(name: str) -> str:
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _unreported(ctx: Context, model: ModelFacts, num_ctx: int, parallel: int) -> int:
    """What the loaded model holds beyond ``/api/ps`` ``size``: a sliding-window model's
    full-attention cache, which 0.30+ leaves out (``memory.ps_unreported_bytes``)."""
    try:
        load = estimate(model, num_ctx, parallel, ctx.kv_cache_type, version=ctx.ollama_version)
    except ValueError:
        return 0
    return ps_unreported_bytes(load, version=ctx.ollama_version)


def _spilled(loaded: LoadedModel) -> bool:
    """Part of the model is in system RAM, as the facts read it from ``/api/ps`` (on a CPU-only
    host ``size_vram`` is 0 for every model, which is CPU inference, not a spill)."""
    return loaded.spilled


@dataclass(frozen=True, slots=True)
class _Budget:
    """The memory a load may fill, or why it is unknown."""

    bytes: int = 0
    parallel: int = 1
    text: str = ""
    kind: str = "gpu"
    unknown: str | None = None


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum >= 1 else "a non-negative integer"
        raise ValueError(f"headroom: {name} must be {kind}, not {value!r}")
