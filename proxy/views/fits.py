"""``/governor/status`` ``fits``: what fits now for the loaded and recently used models.

The same figures ``plan`` prints, from the same functions (``policies.scheduler``, the facts'
caches, the memory sample): per model, the largest context that loads with everything else staying
loaded, the largest whatever Ollama unloads for it, and what Ollama would do at the client's last
``num_ctx`` and at the server's default. Inputs are read on the event loop (cheap cache reads);
the arithmetic (a few hundred estimates per model) runs in a worker thread on a status request,
and is remembered per model, loaded set and memory reading, so the page's poll every 10 s costs
a lookup while nothing changes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.context import GpuSnapshot
from policies.memory import Calibration
from policies.model import ModelFacts
from policies.scheduler import Budget, Candidate, Prediction, Resident, largest_loadable_ctx, predict
from proxy.config.settings import OllamaSettings
from proxy.facts.context import server_default_num_ctx
from proxy.facts.ollama import Facts
from proxy.facts.scheduling import ollama_server, residents
from proxy.names import canonical_model

MAX_MODELS = 8
"""Models listed at most: the loaded ones, then the most recently used."""

CACHED_FITS = 64
"""Per-model answers remembered (model, what is loaded, the memory, settings)."""


@dataclass(frozen=True, slots=True)
class FitModel:
    """One model to size: its facts (None until ``/api/show`` answered), blob and calibration."""

    name: str
    facts: ModelFacts | None
    model_path: str | None
    calibration: Calibration | None
    client_num_ctx: int | None
    """The ``num_ctx`` its newest governed request asked for (None: none, or it sent none)."""


@dataclass(frozen=True, slots=True)
class FitInputs:
    """What ``fits_json`` computes from, read from the running governor at one moment."""

    models: tuple[FitModel, ...]
    residents: tuple[Resident, ...]
    snapshot: GpuSnapshot | None
    settings: OllamaSettings
    version: tuple[int, int, int] | None


def fit_inputs(
    facts: Facts, snapshot: GpuSnapshot | None, decisions: Sequence[Mapping[str, Any]]
) -> FitInputs:
    """Gather the inputs from the facts' caches and the newest decisions (newest first); no I/O."""
    held = residents(facts)
    client: dict[str, int | None] = {}
    for decision in decisions:
        name = decision.get("model")
        if isinstance(name, str) and canonical_model(name) not in client:
            asked = decision.get("client_num_ctx")
            client[canonical_model(name)] = asked if isinstance(asked, int) and asked > 0 else None
    names = [canonical_model(resident.name) for resident in held]
    names += [name for name in client if name not in names]
    models = []
    for name in names[:MAX_MODELS]:
        model = facts.cached_facts(name)
        calibration = facts.calibrations.get(facts.calibration_key(model)) if model is not None else None
        models.append(FitModel(name, model, facts.model_path(name), calibration, client.get(name)))
    return FitInputs(tuple(models), held, snapshot, facts.settings, facts.version)


def fits_json(inputs: FitInputs) -> list[dict[str, Any]]:
    """The status JSON's ``fits`` list (docs/plan.md describes the fields)."""
    budget = Budget.from_snapshot(inputs.snapshot)
    # Only the devices decide the default context; a new sample of the same memory is the same key.
    snapshot = dataclasses.replace(inputs.snapshot, taken_at=0.0) if inputs.snapshot is not None else None
    entries = []
    for model in inputs.models:
        entry: dict[str, Any] = {"model": model.name, "client_num_ctx": model.client_num_ctx}
        loaded = next((r.loaded for r in inputs.residents if canonical_model(r.name) == model.name), None)
        entry["loaded_num_ctx"] = loaded.context_length if loaded is not None else None
        if model.facts is None:
            entries.append({**entry, "error": "no facts yet (/api/show has not answered for it)"})
            continue
        try:
            fit = _model_fit(model, inputs.residents, budget, snapshot, inputs.settings, inputs.version)
        except ValueError as error:  # IncompleteModelFacts, an unknown cache type
            entries.append({**entry, "error": f"cannot estimate memory: {error}"})
            continue
        entries.append(
            {
                **entry,
                "largest_fit_now": fit.largest_fit_now,
                "largest_fit": fit.largest_fit,
                "at_client": _summary(fit.at_client),
                "default_num_ctx": fit.default_num_ctx,
                "at_default": _summary(fit.at_default),
                "error": None,
            }
        )
    return entries


@dataclass(frozen=True, slots=True)
class _Fit:
    largest_fit_now: int | None
    largest_fit: int | None
    at_client: Prediction | None
    default_num_ctx: int
    at_default: Prediction


@functools.lru_cache(maxsize=CACHED_FITS)
def _model_fit(
    model: FitModel,
    residents: tuple[Resident, ...],
    budget: Budget,
    snapshot: GpuSnapshot | None,
    settings: OllamaSettings,
    version: tuple[int, int, int] | None,
) -> _Fit:
    """One model's figures; remembered for the same inputs, since the status page asks every 10 s
    and the search for the largest context takes tens of milliseconds for a large model."""
    facts = model.facts
    assert facts is not None
    server = ollama_server(settings, version)
    candidate = Candidate(facts, 0, model_path=model.model_path, calibration=model.calibration)
    default = server_default_num_ctx(settings, version, facts, snapshot)
    auto = facts.modelfile_num_ctx is None and not settings.context_length
    at_default = predict(
        dataclasses.replace(candidate, num_ctx=default, num_ctx_auto=auto), residents, budget, server
    )
    at_client = None
    if model.client_num_ctx is not None:
        at_client = predict(
            dataclasses.replace(candidate, num_ctx=model.client_num_ctx), residents, budget, server
        )
    trained = facts.context_length is not None
    return _Fit(
        largest_fit_now=largest_loadable_ctx(candidate, residents, budget, server, beside=True)
        if trained
        else None,
        largest_fit=largest_loadable_ctx(candidate, residents, budget, server) if trained else None,
        at_client=at_client,
        default_num_ctx=default,
        at_default=at_default,
    )


def _summary(prediction: Prediction | None) -> dict[str, Any] | None:
    if prediction is None:
        return None
    return {
        "num_ctx": prediction.num_ctx,
        "action": prediction.action,
        "fits": prediction.fits,
        "evicts": list(prediction.evicted_names),
        "total_bytes": prediction.footprint.total_bytes,
        "reason": prediction.reason,
    }
