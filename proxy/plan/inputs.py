"""Gather what a plan needs, once: model facts, what Ollama has loaded, and one memory reading.

A GGUF path is read locally (``read_gguf_facts``, header and metadata only); a name goes to Ollama
through the governor's own ``Facts`` (``/api/tags``, ``/api/show`` verbose, ``/api/ps``). Ollama is
asked only when a name is given, ``--upstream`` is, or the memory source reads through it, so a
plan of GGUF files works on a machine without Ollama. Every failure is a ``PlanError`` with one line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from policies.context import GpuDevice, GpuSnapshot
from policies.headroom import Headroom
from policies.scheduler import Budget, Resident, held_bytes
from proxy.config import Config
from proxy.config.settings import OllamaSettings
from proxy.facts.memory import build_source
from proxy.facts.memory.probe import read_once
from proxy.facts.ollama import Facts
from proxy.facts.scheduling import ollama_server, residents
from proxy.govern.rules import Governor
from proxy.names import canonical_model
from proxy.plan.build import (
    DEFAULT_PROMPT_TOKENS,
    PLAN_ENDPOINT,
    HeadroomFrom,
    PlanError,
    PlanInputs,
    PlannedModel,
)
from proxy.upstream.client import Upstream, new_session

OLLAMA_TIMEOUT_S = 5.0
SHOW_WAIT_S = 30.0
PS_SOURCES = ("ollama", "apple")
"""Memory sources that read Ollama's ``/api/ps``: with them a plan asks Ollama."""


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What the command line asked for (``ollama-governor plan``)."""

    models: tuple[str, ...]
    settings: OllamaSettings
    """``[ollama]`` with ``--parallel``, ``--kv-cache-type``, ``--flash-attention``,
    ``--max-loaded-models`` and ``--ollama-version`` applied."""
    version_from_flag: bool = False
    vram_bytes: int | None = None
    free_bytes: int | None = None
    reserve_bytes: int | None = None
    contexts: tuple[int, ...] | None = None
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    ask_ollama: bool = False
    """``--upstream`` was given: read what Ollama has loaded even for GGUF files."""


def is_gguf_path(argument: str) -> bool:
    """A MODEL argument names a file when it ends in ``.gguf`` or is an existing file (a blob)."""
    return argument.lower().endswith(".gguf") or Path(argument).is_file()


async def gather(config: Config, governor: Governor, request: PlanRequest) -> PlanInputs:
    """Read facts, what is loaded and the memory, as ``serve`` would on this host."""
    names = [argument for argument in request.models if not is_gguf_path(argument)]
    flags_describe_memory = request.vram_bytes is not None or request.free_bytes is not None
    ask = bool(names) or request.ask_ollama or (config.gpu.source in PS_SOURCES and not flags_describe_memory)
    async with new_session() as session:
        upstream = Upstream(config.upstream, session, retry_window_s=0)
        state_dir = config.state_dir
        facts = Facts(upstream, request.settings, state_dir=state_dir)
        residents: tuple[Resident, ...] | None = None
        if ask:
            await _reach(upstream, names)
            await facts.refresh_loaded()
            residents = await _residents(facts)
        version_from = _version_from(request, config, facts)
        settings = dataclasses.replace(request.settings, version=facts.version)
        facts.settings = settings
        snapshot, memory_from = await _memory(config, request, upstream, facts, residents, settings, ask)
        facts.gpu = lambda: snapshot  # calibrations are kept per backend and GPU count
        models = [await _model(argument, facts, upstream, governor) for argument in request.models]
    return PlanInputs(
        models=tuple(models),
        settings=settings,
        version_from=version_from,
        snapshot=snapshot,
        memory_from=memory_from,
        residents=residents,
        contexts=request.contexts,
        prompt_tokens=request.prompt_tokens,
    )


async def _reach(upstream: Upstream, names: list[str]) -> None:
    """Fail with one line when Ollama does not answer, or does not know a name."""
    try:
        await upstream.get_json("/api/version", timeout_s=OLLAMA_TIMEOUT_S)
        tags = await upstream.get_json("/api/tags", timeout_s=OLLAMA_TIMEOUT_S)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
        what = f"facts about {', '.join(map(repr, names))}" if names else "what it has loaded"
        raise PlanError(
            f"cannot reach Ollama at {upstream.base_url} for {what} ({_cause(error)}); "
            "start Ollama, pass --upstream URL, or give .gguf paths"
        ) from None
    models = tags.get("models") if isinstance(tags, dict) else None
    known = {
        canonical_model(entry["name"])
        for entry in (models if isinstance(models, list) else ())
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    }
    for name in names:
        if canonical_model(name) not in known:
            raise PlanError(
                f"model {name!r} is not in Ollama at {upstream.base_url} "
                "(`ollama list` shows what is there; give a .gguf path for a file)"
            )


async def _residents(facts: Facts) -> tuple[Resident, ...]:
    """What Ollama has loaded, each with its facts and blob once ``/api/show`` gave them."""
    if facts.ps_error is not None:
        raise PlanError(
            f"Ollama at {facts.upstream.base_url} did not answer /api/ps: {_cause(facts.ps_error)}"
        )
    for loaded in facts.loaded:
        await facts.model_facts(loaded.name, SHOW_WAIT_S)
    return residents(facts)


def _version_from(request: PlanRequest, config: Config, facts: Facts) -> str:
    if request.version_from_flag:
        return "--ollama-version"
    if config.ollama.version is not None:
        return "config"
    return "ollama" if facts.detected_version is not None else "unknown"


async def _model(argument: str, facts: Facts, upstream: Upstream, governor: Governor) -> PlannedModel:
    """One MODEL argument's facts, calibration and headroom policy."""
    if is_gguf_path(argument):
        # Imported here, not at the top: llama.cpp's gguf package brings numpy, ~16 MB and 0.2 s
        # in every process that loads the command line (serve too); only plan reads GGUF files.
        from proxy.facts.gguf import GgufError, read_gguf_facts

        path = Path(argument)
        try:
            model = await asyncio.to_thread(read_gguf_facts, path)
        except GgufError as error:
            raise PlanError(str(error)) from None
        planned_path: str | None = os.path.abspath(path)
    else:
        found = await facts.model_facts(argument, SHOW_WAIT_S)
        if found is None:
            raise PlanError(
                f"Ollama at {upstream.base_url} gave no facts for {argument!r} (/api/show failed); try again"
            )
        model, planned_path = found, facts.model_path(argument)
    key = facts.calibration_key(model)
    headroom, headroom_from = _headroom(governor, model.name)
    return PlannedModel(
        argument=argument,
        facts=model,
        source="ollama" if planned_path is None or not is_gguf_path(argument) else "gguf",
        model_path=planned_path,
        calibration_key=key,
        calibration=facts.calibrations.get(key),
        assumed_parts=facts.assumed_parts(),
        headroom=headroom,
        headroom_from=headroom_from,
    )


async def _memory(
    config: Config,
    request: PlanRequest,
    upstream: Upstream,
    facts: Facts,
    residents: tuple[Resident, ...] | None,
    settings: OllamaSettings,
    ask: bool,
) -> tuple[GpuSnapshot, str]:
    """The flags' GPU, or one reading of the memory source ``serve`` would build here."""
    reserve = config.gpu.reserve_bytes if request.reserve_bytes is None else request.reserve_bytes
    if request.vram_bytes is not None or request.free_bytes is not None:
        total = request.vram_bytes if request.vram_bytes is not None else request.free_bytes
        assert total is not None
        free = request.free_bytes
        if free is None:
            gpu = Budget(free_bytes=total, total_bytes=total)
            server = ollama_server(settings, settings.version)
            free = total - sum(held_bytes(resident, gpu, server) for resident in residents or ())
        device = GpuDevice(
            0, "--vram" if request.vram_bytes is not None else "--free", total, free, total - free
        )
        return GpuSnapshot(source="flags", devices=(device,), kind="gpu", reserve_bytes=reserve), "flags"

    async def read_ps() -> object:
        if not ask:  # GGUF files only: the plan assumes nothing is loaded, and says so
            return {"models": []}
        return await upstream.get_json("/api/ps", timeout_s=OLLAMA_TIMEOUT_S)

    reader: Callable[[], Awaitable[object]] = read_ps
    source = build_source(config.gpu, reader, hidden_bytes=facts.ps_hidden_bytes)
    snapshot = await read_once(source)
    return dataclasses.replace(snapshot, reserve_bytes=reserve), snapshot.source


def _headroom(governor: Governor, name: str) -> tuple[Headroom, HeadroomFrom]:
    """The headroom instance the rule for ``name`` on ``/api/generate`` runs (from the config, or the
    built-in default rule when the config names none), else one with its defaults."""
    for policy in governor.policies_for(name, PLAN_ENDPOINT):
        if isinstance(policy.call, Headroom):
            return policy.call, "built-in" if governor.config.default_rules else "config"
    return Headroom(), "not governed"


def _cause(error: BaseException) -> str:
    cause = getattr(error, "os_error", None) or error
    return getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
