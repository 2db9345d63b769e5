"""Several models on one GPU, direct vs governed: the benchmark's working-set scenarios (smoke size)
run on the 0.33 fake, whose scheduler evicts on Ollama's own estimate as 0.33 does.

Governed, ``headroom`` asks the scheduler model what each context does to the other loaded models
and picks one that keeps them; every request's predicted action is checked against what the fake's
scheduler then did.
"""

from __future__ import annotations

import pytest

from bench.scenarios import Scenario, SideResult, run_side, scenarios


def scenario(key: str) -> Scenario:
    [found] = [s for s in scenarios(smoke=True) if s.key == key]
    return found


async def both(key: str) -> tuple[Scenario, SideResult, SideResult]:
    """The scenario, its run straight at the fake, and its run through the governor."""
    chosen = scenario(key)
    return chosen, await run_side(chosen, governed=False), await run_side(chosen, governed=True)


def predicted_every_request(side: SideResult, chosen: Scenario) -> bool:
    return side["predicted"] == chosen.requests and side["predicted_right"] == side["predicted"]


async def test_two_chat_models_stay_loaded_side_by_side() -> None:
    """Each asks 32768 with two slots: directly, Ollama's estimate (no sliding window) evicts the
    first model; governed, gemma3:4b gets a context that passes the pre-flight beside it."""
    chosen, direct, governed = await both("i")
    assert direct["evictions"] >= 1 and direct["loads"] > 2
    assert (governed["loads"], governed["evictions"], governed["spilled_requests"]) == (2, 0, 0)
    assert governed["truncated_prompts"] == 0
    assert predicted_every_request(governed, chosen)


async def test_the_seed_model_beside_a_helper_does_not_spill() -> None:
    """gemma3:27b asking 131072 next to gemma3-270m on 24 GiB: it spills directly, not governed,
    and the helper is never unloaded for it."""
    chosen, direct, governed = await both("j")
    assert direct["spilled_requests"] > 0
    assert (governed["spilled_requests"], governed["evictions"], governed["loads"]) == (0, 0, 2)
    assert predicted_every_request(governed, chosen)


@pytest.mark.parametrize("key", ["k", "l"], ids=["48GiB", "24GiB"])
async def test_three_models_round_robin_load_once_each(key: str) -> None:
    """Three models asked in turn with no num_ctx: directly, at least one is evicted and loaded
    again; governed, each loads once and none spills."""
    chosen, direct, governed = await both(key)
    assert direct["evictions"] >= 1 and direct["loads"] > 3
    assert (governed["loads"], governed["evictions"], governed["spilled_requests"]) == (3, 0, 0)
    assert predicted_every_request(governed, chosen)


async def test_a_direct_run_predicts_nothing() -> None:
    """Without the governor nobody predicted anything: the counts stay zero, not invented."""
    _, direct, _ = await both("i")
    assert (direct["predicted"], direct["predicted_right"]) == (0, 0)
