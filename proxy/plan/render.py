"""A plan as ``--json`` (``plan_version`` 1, docs/plan.md) and as the table people read."""

from __future__ import annotations

from typing import Any

from policies.memory import Calibration, format_bytes
from policies.scheduler import Prediction
from proxy.plan.build import PLAN_VERSION, ModelPlan, Plan, Together


def plan_json(plan: Plan) -> dict[str, Any]:
    """The documented JSON shape; every size in bytes, every context in tokens per slot."""
    inputs = plan.inputs
    settings, snapshot = inputs.settings, inputs.snapshot
    version = settings.version
    return {
        "plan_version": PLAN_VERSION,
        "ollama": {
            "version": ".".join(map(str, version)) if version else None,
            "version_from": inputs.version_from,
            "rules": "0.30+" if plan.server.llama_server else "before 0.30",
            "num_parallel": settings.num_parallel,
            "kv_cache_type": settings.kv_cache_type,
            "flash_attention": settings.flash_attention,
            "max_loaded_models": settings.max_loaded_models,
            "keep_alive": settings.keep_alive,
            "fit_target_bytes": plan.server.fit_target_bytes,
        },
        "memory": {
            "source": inputs.memory_from,
            "kind": snapshot.kind,
            "known": snapshot.known,
            "free_bytes": snapshot.free_bytes,
            "total_bytes": snapshot.total_bytes,
            "reserve_bytes": snapshot.reserve_bytes,
            "error": snapshot.error,
        },
        "loaded": None
        if inputs.residents is None
        else [
            {
                "name": resident.name,
                "context_length": resident.loaded.context_length,
                "size_bytes": resident.loaded.size_bytes,
                "size_vram_bytes": resident.loaded.size_vram_bytes,
                "spilled": resident.loaded.spilled,
            }
            for resident in inputs.residents
        ],
        "prompt_tokens": inputs.prompt_tokens,
        "models": [model_json(model) for model in plan.models],
        "together": together_json(plan.together),
    }


def model_json(model: ModelPlan) -> dict[str, Any]:
    """One model's part of the JSON."""
    planned, facts = model.model, model.model.facts
    headroom = model.headroom
    return {
        "model": facts.name,
        "argument": planned.argument,
        "source": planned.source,
        "path": planned.model_path,
        "facts": {
            "architecture": facts.architecture,
            "parameter_size": facts.parameter_size,
            "quantization_level": facts.quantization_level,
            "context_length": facts.context_length,
            "block_count": facts.block_count,
            "embedding_length": facts.embedding_length,
            "head_count_kv": facts.head_count_kv,
            "sliding_window": facts.sliding_window,
            "weights_bytes": facts.weights_bytes,
            "capabilities": list(facts.capabilities),
        },
        "parallel": model.parallel,
        "default_num_ctx": model.default_num_ctx,
        "calibration": calibration_json(planned.calibration_key, planned.calibration),
        "contexts": [prediction_json(prediction, requested) for requested, prediction in model.rows],
        "largest_fit": model.largest_fit,
        "largest_fit_beside_loaded": model.largest_fit_beside,
        "at_default": prediction_json(model.at_default, model.default_num_ctx),
        "headroom": {
            "policy": planned.headroom_from,
            "num_ctx": headroom.num_ctx,
            "outcome": headroom.outcome,
            "reason": headroom.reason,
            "rejection": headroom.rejection,
            "ollama": None if headroom.prediction is None else prediction_json(headroom.prediction),
        },
    }


def calibration_json(key: str, calibration: Calibration | None) -> dict[str, Any]:
    """Whether the figures carry a correction learnt on this host, or are the formula alone."""
    if calibration is None:
        return {"key": key, "calibrated": False, "samples": 0, "slope": None, "offset_bytes": None}
    return {
        "key": key,
        "calibrated": True,
        "samples": len(calibration.samples),
        "slope": calibration.slope,
        "offset_bytes": round(calibration.offset_bytes),
    }


def prediction_json(prediction: Prediction, requested: int | None = None) -> dict[str, Any]:
    """One prediction: the footprint's parts, Ollama's figures and what it does."""
    footprint = prediction.footprint
    return {
        "requested_num_ctx": requested,
        "num_ctx": prediction.num_ctx,
        "parallel": prediction.parallel,
        "num_batch": prediction.num_batch,
        "weights_bytes": footprint.weights_bytes,
        "kv_bytes": footprint.kv_bytes,
        "kv_full_bytes": footprint.kv_full_bytes,
        "kv_swa_bytes": footprint.kv_swa_bytes,
        "compute_bytes": footprint.compute_bytes,
        "graph_bytes": footprint.graph_bytes,
        "output_bytes": footprint.output_bytes,
        "raw_bytes": footprint.raw_bytes,
        "total_bytes": footprint.total_bytes,
        "fits": prediction.fits,
        "action": prediction.action,
        "reloads": prediction.reloads,
        "evicts": [
            {"name": eviction.name, "cause": eviction.cause, "freed_bytes": eviction.freed_bytes}
            for eviction in prediction.evicted
        ],
        "ollama_estimate_bytes": prediction.ollama_estimate_bytes,
        "batch_surcharge_bytes": prediction.batch_surcharge_bytes,
        "threshold_bytes": prediction.threshold_bytes,
        "free_bytes": prediction.free_bytes,
        "gpu_bytes": prediction.gpu_bytes,
        "spill_bytes": prediction.spill_bytes,
        "reason": prediction.reason,
        "notes": list(prediction.notes),
    }


def together_json(together: Together | None) -> dict[str, Any] | None:
    """Several models: the shared rung (or null) and the sequence at headroom's choices."""
    if together is None:
        return None
    shared = together.side_by_side
    sequence = together.at_headroom
    return {
        "side_by_side": shared is not None,
        "num_ctx": shared[0] if shared else None,
        "contexts": shared[1].contexts if shared else None,
        "at_headroom": {
            "side_by_side": sequence.side_by_side,
            "resident": list(sequence.resident),
            "steps": [
                {
                    "model": step.model_name,
                    "num_ctx": step.num_ctx,
                    "action": step.action,
                    "fits": step.fits,
                    "evicts": list(step.evicted_names),
                    "reason": step.reason,
                }
                for step in sequence.steps
            ],
        },
    }


# -- text -----------------------------------------------------------------------------------------

_COLUMNS = (
    "num_ctx",
    "batch",
    "weights",
    "KV full",
    "KV SWA",
    "compute",
    "total",
    "fits",
    "Ollama est.",
    "its line",
)


def render_text(plan: Plan) -> str:
    """The plan as a few header lines and a table per model."""
    lines = [*_header(plan), ""]
    for model in plan.models:
        lines += [*_model_lines(plan, model), ""]
    if plan.together is not None:
        lines += _together_lines(plan.together)
    return "\n".join(lines).rstrip() + "\n"


def _header(plan: Plan) -> list[str]:
    inputs = plan.inputs
    settings, snapshot = inputs.settings, inputs.snapshot
    version = ".".join(map(str, settings.version)) if settings.version else "unknown"
    rules = "0.30+ rules" if plan.server.llama_server else "rules before 0.30"
    where = {"--ollama-version": "--ollama-version", "config": "the config", "ollama": "/api/version"}
    if inputs.version_from in where:
        version_text = f"{version} (from {where[inputs.version_from]}; {rules})"
    else:
        version_text = f"version unknown ({rules}, the newest; --ollama-version to choose)"
    cap = settings.max_loaded_models or "automatic"
    lines = [
        f"ollama: {version_text}, num_parallel {settings.num_parallel}, kv_cache_type "
        f"{settings.kv_cache_type}, flash attention {settings.flash_attention}, max loaded models {cap}",
    ]
    if snapshot.known:
        lines.append(
            f"memory: {format_bytes(snapshot.free_bytes or 0)} free of "
            f"{format_bytes(snapshot.total_bytes or 0)} ({snapshot.kind}, from {inputs.memory_from}), "
            f"reserve {format_bytes(snapshot.reserve_bytes)}"
        )
    else:
        lines.append(f"memory: unknown ({snapshot.error}); fits cannot be judged, give --vram or --free")
    if inputs.residents is None:
        lines.append("loaded: not asked (GGUF files only; pass --upstream to include what Ollama holds)")
    elif not inputs.residents:
        lines.append("loaded: nothing")
    else:
        held = ", ".join(
            f"{r.name} at {r.loaded.context_length} ({format_bytes(r.loaded.size_bytes)})"
            for r in inputs.residents
        )
        lines.append(f"loaded: {held}")
    return lines


def _model_lines(plan: Plan, model: ModelPlan) -> list[str]:
    planned, facts = model.model, model.model.facts
    where = f"GGUF {planned.model_path}" if planned.source == "gguf" else "from Ollama"
    shape = [
        facts.architecture or "?",
        " ".join(part for part in (facts.parameter_size, facts.quantization_level) if part),
        f"trained {facts.context_length}" if facts.context_length else "trained length unknown",
        f"{facts.block_count} layers" if facts.block_count else "",
        f"sliding window {facts.sliding_window}" if facts.sliding_window else "no sliding window",
        f"weights {format_bytes(facts.weights_bytes)}" if facts.weights_bytes else "",
    ]
    lines = [f"{facts.name} ({where}): " + ", ".join(part for part in shape if part)]
    lines.append(f"  parallel {model.parallel}; server default num_ctx {model.default_num_ctx}")
    calibration = planned.calibration
    if calibration is None:
        lines.append("  figures: the formula (no calibration learnt on this host for this model)")
    else:
        lines.append(
            f"  figures: calibrated from {len(calibration.samples)} load(s) on this host "
            f"(slope {calibration.slope:.3f}, offset {format_bytes(calibration.offset_bytes)})"
        )
    table: list[tuple[str, ...]] = [(*_COLUMNS, "Ollama will")]
    for requested, prediction in model.rows:
        table.append(_row(requested, prediction, plan))
    lines += ["  " + line for line in _align(table)]
    if model.largest_fit is None:
        largest = "none" if plan.budget.known else "unknown (memory unknown)"
    else:
        largest = str(model.largest_fit)
    if model.largest_fit_beside is not None and model.largest_fit_beside != model.largest_fit:
        largest += f" ({model.largest_fit_beside} without unloading anything)"
    elif (
        model.largest_fit is not None and inputs_have_others(plan, model) and model.largest_fit_beside is None
    ):
        largest += " (only after Ollama unloads other models)"
    lines.append(f"  largest context that loads fully: {largest}")
    headroom = model.headroom
    source = {
        "config": "the config's rule",
        "built-in": "the built-in default rule",
        "not governed": "no rule governs this model; headroom's defaults",
    }[planned.headroom_from]
    prompt = f"a {plan.inputs.prompt_tokens}-token prompt"
    if headroom.rejection is not None:
        lines.append(f"  headroom ({source}), {prompt}: rejects: {headroom.rejection}")
    else:
        then = f"; Ollama will {_will(headroom.prediction)}" if headroom.prediction else ""
        lines.append(f"  headroom ({source}), {prompt}: num_ctx {headroom.num_ctx}{then}")
        lines.append(f"    {headroom.reason}")
    lines.append(
        f"  without num_ctx (server default {model.default_num_ctx}): Ollama will {_will(model.at_default)}"
    )
    return lines


def inputs_have_others(plan: Plan, model: ModelPlan) -> bool:
    """Something other than this model is loaded."""
    residents = plan.inputs.residents or ()
    return any(resident.name != model.model.facts.name for resident in residents)


def _row(requested: int, prediction: Prediction, plan: Plan) -> tuple[str, ...]:
    footprint = prediction.footprint
    num_ctx = (
        str(prediction.num_ctx) if prediction.num_ctx == requested else f"{requested}->{prediction.num_ctx}"
    )
    fits = {True: "yes", False: "no", None: "?"}[prediction.fits]
    line = "-" if prediction.threshold_bytes is None else format_bytes(prediction.threshold_bytes)
    return (
        num_ctx,
        str(prediction.num_batch),
        format_bytes(footprint.weights_bytes),
        format_bytes(footprint.kv_full_bytes),
        format_bytes(footprint.kv_swa_bytes) if footprint.kv_swa_bytes else "-",
        format_bytes(footprint.compute_bytes),
        format_bytes(footprint.total_bytes),
        fits,
        format_bytes(prediction.preflight_bytes),
        line,
        _will(prediction, on_gpu=plan.budget.on_gpu),
    )


def _will(prediction: Prediction | None, *, on_gpu: bool = True) -> str:
    """What Ollama does, in a few words."""
    if prediction is None:
        return "?"
    first = f"unload {', '.join(prediction.evicted_names)}, then " if prediction.evicted else ""
    if prediction.action == "reuse":
        return "reuse the loaded runner (no load)"
    if prediction.action == "spill":
        if not on_gpu:
            return f"{first}load it, beyond free RAM (swap or fail)"
        return f"{first}spill {format_bytes(prediction.spill_bytes or 0)} to system RAM"
    verb = "reload" if prediction.reloads else "load"
    if prediction.fits is None:
        return f"{first}{verb} (fit unknown)"
    return f"{first}{verb} fully"


def _together_lines(together: Together) -> list[str]:
    lines = []
    shared = together.side_by_side
    if shared is not None:
        rung, result = shared
        contexts = ", ".join(f"{name} at {num_ctx}" for name, num_ctx in result.contexts.items())
        lines.append(f"together: they stay loaded side by side up to {rung} ({contexts})")
    else:
        lines.append("together: they cannot all stay loaded at any of the contexts above")
    steps = "; ".join(
        f"{step.model_name} at {step.num_ctx}: {_will(step)}" for step in together.at_headroom.steps
    )
    state = "all stay loaded" if together.at_headroom.side_by_side else "not all stay loaded"
    lines.append(f"  at headroom's choices, requested in turn: {steps} ({state})")
    return lines


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    """Right-aligned columns, the last one left-aligned."""
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [cell.rjust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        out.append("  ".join([*cells, row[-1]]).rstrip())
    return out
