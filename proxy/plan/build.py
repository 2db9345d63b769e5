"""The plan itself, computed from gathered inputs: no I/O, so the status page can run it too.

Every figure comes from the functions the governor decides with: ``policies.memory.estimate`` for
the footprint, ``policies.scheduler`` for what Ollama does, and the ``headroom`` policy's own
``decide`` on a Context built by ``proxy.facts.context.governed_context``, so what ``plan`` says
headroom would send is what headroom sends for the same inputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from policies.context import GpuSnapshot
from policies.decision import Decision
from policies.headroom import Headroom
from policies.memory import Calibration
from policies.model import ModelFacts
from policies.scheduler import (
    Budget,
    Candidate,
    OllamaServer,
    Prediction,
    Resident,
    WorkingSet,
    largest_loadable_ctx,
    predict,
    same_runner,
    side_by_side_ctx,
    working_set,
)
from proxy.config.settings import OllamaSettings
from proxy.facts.context import governed_context, host_fields, server_default_num_ctx
from proxy.facts.scheduling import ollama_server
from proxy.request.parse import parse_request

PLAN_VERSION = 1
"""The version of ``plan --json``'s shape (docs/plan.md); bumped when a field changes meaning."""

PLAN_ENDPOINT: Final = "generate"
"""The route the plan's what-if request takes (a rule's ``endpoints`` decide whether it governs)."""

DEFAULT_PROMPT_TOKENS = 100
"""``--prompt-tokens`` when not given: a short prompt, so headroom's choice shows its defaults."""

LADDER_FLOOR = 2048
"""The default ladder starts here and doubles up to the trained length."""

FALLBACK_CEILING = 131072
"""The ladder's top for a model whose trained length is unknown."""

Source = Literal["gguf", "ollama"]
HeadroomFrom = Literal["config", "built-in", "not governed"]
"""Whose headroom policy a plan runs: a rule of the config file, the built-in default rule (a config
that names no rules), or none governs the model and headroom's defaults stand in."""


@dataclass(frozen=True, slots=True)
class PlannedModel:
    """One MODEL argument, resolved: its facts, where they came from and its calibration."""

    argument: str
    facts: ModelFacts
    source: Source
    model_path: str | None
    """The GGUF file, or the blob Ollama runs for a name (its Modelfile's FROM), when known."""
    calibration_key: str
    calibration: Calibration | None
    assumed_parts: tuple[str, ...]
    """What the figures assume, not measure, on this host (``policies.memory.assumed_parts``): what
    a calibration learns, or would once the model has loaded here."""
    headroom: Headroom
    """The headroom policy the rule for this model runs, else one with its defaults."""
    headroom_from: HeadroomFrom


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """Everything a plan is computed from, gathered once (``proxy.plan.inputs.gather``)."""

    models: tuple[PlannedModel, ...]
    settings: OllamaSettings
    """``[ollama]`` with the command line's overrides; ``version`` is the one the rules use."""
    version_from: str
    """``--ollama-version``, ``config``, ``ollama`` (``/api/version``) or ``unknown`` (newest rules)."""
    snapshot: GpuSnapshot
    """The memory as read (or as the flags describe it), with the reserve stamped on it."""
    memory_from: str
    """The memory source that read it (what ``auto`` chose), or ``flags``."""
    residents: tuple[Resident, ...] | None
    """What Ollama has loaded, or None when Ollama was not asked (GGUF files only)."""
    contexts: tuple[int, ...] | None
    """``--ctx`` values; None for the default ladder per model."""
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS


@dataclass(frozen=True, slots=True)
class HeadroomChoice:
    """What the headroom policy sends for a request without ``num_ctx``, and what Ollama does then."""

    num_ctx: int | None
    outcome: str | None
    reason: str
    rejection: str | None
    prediction: Prediction | None


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One model: a row per context, the largest that fits, headroom's choice, the server default."""

    model: PlannedModel
    parallel: int
    default_num_ctx: int
    default_auto: bool
    rows: tuple[tuple[int, Prediction], ...]
    """``(requested num_ctx, prediction)`` in ladder order."""
    largest_fit: int | None
    """The largest context that loads fully, whatever Ollama unloads for it."""
    largest_fit_beside: int | None
    """The largest context that loads fully with everything loaded staying (None: none, or
    nothing is loaded and it equals ``largest_fit``)."""
    at_default: Prediction
    headroom: HeadroomChoice


@dataclass(frozen=True, slots=True)
class Together:
    """Several models: the largest shared rung they all stay loaded at, and the sequence at
    headroom's choices."""

    side_by_side: tuple[int, WorkingSet] | None
    at_headroom: WorkingSet


@dataclass(frozen=True, slots=True)
class Plan:
    inputs: PlanInputs
    server: OllamaServer
    budget: Budget
    models: tuple[ModelPlan, ...]
    together: Together | None


class PlanError(Exception):
    """A plan cannot be made; the message is one line saying what to do."""


def default_ladder(trained_ctx: int | None) -> tuple[int, ...]:
    """2048, 4096, ... doubling up to the trained length, and the trained length itself."""
    ceiling = trained_ctx or FALLBACK_CEILING
    rungs = []
    rung = LADDER_FLOOR
    while rung < ceiling:
        rungs.append(rung)
        rung *= 2
    return (*rungs, ceiling)


def build_plan(inputs: PlanInputs) -> Plan:
    """Compute the plan; ``PlanError`` when a model's facts cannot be sized."""
    settings = inputs.settings
    server = ollama_server(settings, settings.version)
    budget = Budget.from_snapshot(inputs.snapshot, cuda=inputs.snapshot.source in ("nvml", "flags"))
    residents = inputs.residents or ()
    plans = []
    for model in inputs.models:
        try:
            plans.append(_model_plan(model, inputs, residents, budget, server))
        except ValueError as error:
            raise PlanError(f"cannot plan {model.argument}: {error}") from None
    together = None
    if len(plans) > 1:
        candidates = [_candidate(plan.model, 0) for plan in plans]
        rungs = sorted({num_ctx for plan in plans for num_ctx, _ in plan.rows})
        shared = side_by_side_ctx(candidates, rungs, residents, budget, server)
        chosen = [
            _candidate(plan.model, plan.headroom.num_ctx or plan.default_num_ctx)
            for plan in plans
            if plan.headroom.rejection is None
        ]
        together = Together(shared, working_set(chosen, residents, budget, server))
    return Plan(inputs, server, budget, tuple(plans), together)


def _model_plan(
    model: PlannedModel,
    inputs: PlanInputs,
    residents: Sequence[Resident],
    budget: Budget,
    server: OllamaServer,
) -> ModelPlan:
    facts = model.facts
    settings = inputs.settings
    contexts = inputs.contexts or default_ladder(facts.context_length)
    rows = tuple(
        (num_ctx, predict(_candidate(model, num_ctx), residents, budget, server)) for num_ctx in contexts
    )
    template = _candidate(model, 0)
    largest = largest_loadable_ctx(template, residents, budget, server) if facts.context_length else None
    others = [resident for resident in residents if not same_runner(template, resident)]
    beside = None
    if others and facts.context_length:
        beside = largest_loadable_ctx(template, residents, budget, server, beside=True)
    default = server_default_num_ctx(settings, settings.version, facts, inputs.snapshot)
    auto = facts.modelfile_num_ctx is None and not settings.context_length
    at_default = predict(_candidate(model, default, auto=auto), residents, budget, server)
    return ModelPlan(
        model=model,
        parallel=rows[0][1].parallel if rows else at_default.parallel,
        default_num_ctx=default,
        default_auto=auto,
        rows=rows,
        largest_fit=largest,
        largest_fit_beside=beside,
        at_default=at_default,
        headroom=headroom_choice(model, inputs, residents, budget, server),
    )


def headroom_choice(
    model: PlannedModel,
    inputs: PlanInputs,
    residents: Sequence[Resident],
    budget: Budget,
    server: OllamaServer,
) -> HeadroomChoice:
    """Run the headroom policy on the Context the proxy would build for a request of
    ``inputs.prompt_tokens`` tokens without ``num_ctx``, and predict what Ollama does with its choice."""
    facts = model.facts
    request = parse_request(PLAN_ENDPOINT, json.dumps({"model": facts.name, "prompt": ""}).encode())
    assert request is not None  # a plain body always parses
    template = _candidate(model, 0)
    own = next((resident.loaded for resident in residents if same_runner(template, resident)), None)
    host = host_fields(
        settings=inputs.settings,
        version=inputs.settings.version,
        gpu=inputs.snapshot,
        model=facts,
        loaded=own,
        all_loaded=tuple(resident.loaded for resident in residents),
        calibration=model.calibration,
        residents=tuple(residents),
    )
    ctx = governed_context(request, prompt_tokens=inputs.prompt_tokens, host=host)
    decision = model.headroom.decide(ctx, Decision())
    prediction = None
    if decision.rejection is None and decision.num_ctx is not None:
        prediction = predict(_candidate(model, decision.num_ctx), residents, budget, server)
    return HeadroomChoice(
        num_ctx=decision.num_ctx,
        outcome=decision.outcomes[-1] if decision.outcomes else None,
        reason=decision.reasons[-1] if decision.reasons else "",
        rejection=decision.rejection,
        prediction=prediction,
    )


def _candidate(model: PlannedModel, num_ctx: int, *, auto: bool = False) -> Candidate:
    return Candidate(
        model.facts,
        num_ctx,
        num_ctx_auto=auto,
        model_path=model.model_path,
        calibration=model.calibration,
    )
