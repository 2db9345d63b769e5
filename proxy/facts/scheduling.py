"""The inputs of the scheduler model (``policies.scheduler``) as the running governor knows them.

One place builds them for the live pipeline's predictions, the ``headroom`` policy's Context, the
status page's ``fits`` and ``plan``: the loaded runners (``/api/ps`` with each model's facts,
blob and the keep_alive the governor last sent it), and the server as ``[ollama]`` describes it.
"""

from __future__ import annotations

import datetime
import math

from policies.context import LoadedModel
from policies.duration import keep_alive_seconds
from policies.scheduler import OllamaServer, Resident
from proxy.config.settings import OllamaSettings
from proxy.facts.ollama import Facts
from proxy.names import canonical_model


def ollama_server(settings: OllamaSettings, version: tuple[int, int, int] | None) -> OllamaServer:
    """The scheduler model's view of a server configured as ``settings`` say, at ``version``."""
    text = settings.keep_alive.strip()
    keep_alive = keep_alive_seconds(int(text) if text.lstrip("-").isdigit() else text)
    return OllamaServer(
        version=version,
        num_parallel=settings.num_parallel,
        kv_cache_type=settings.kv_cache_type,
        max_loaded_models=settings.max_loaded_models,
        flash_attention=settings.flash_attention,
        keep_alive_s=keep_alive,
        gpu_overhead_bytes=settings.gpu_overhead_bytes,
    )


def keep_alive_from_expiry(loaded: LoadedModel, now_year: int) -> float | None:
    """``math.inf`` for a runner whose ``expires_at`` is more than 20 years ahead (kept forever, as
    Ollama's CLI reads it); None otherwise (its keep_alive is not in ``/api/ps``)."""
    expires = loaded.expires_at or ""
    year = expires[:4]
    if year.isdigit() and int(year) > now_year + 20:
        return math.inf
    return None


def residents(facts: Facts, sent_keep_alive: dict[str, float] | None = None) -> tuple[Resident, ...]:
    """What Ollama holds now, each runner with its cached facts, its blob and its keep_alive: the
    one the governor last sent it when known, else what ``expires_at`` tells (no I/O)."""
    year = datetime.datetime.now(datetime.UTC).year
    sent = sent_keep_alive or {}
    return tuple(
        Resident(
            loaded=loaded,
            facts=facts.cached_facts(loaded.name),
            keep_alive_s=sent.get(canonical_model(loaded.name), keep_alive_from_expiry(loaded, year)),
            model_path=facts.model_path(loaded.name),
        )
        for loaded in facts.loaded
        if not loaded.provisional
    )
