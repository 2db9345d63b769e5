"""Mutated request bodies on every governed route, through the governor and straight at the fake.

A seeded generator takes a valid body per route and breaks it the ways clients do (a field of
another type, a field dropped, an unknown one added, a body cut short, odd strings and numbers).
Whatever Ollama (the fake) makes of each, the governor must never answer with a 5xx of its own:
a 5xx through it is only ever Ollama's.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartFake, StartProxy

VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**63, -(2**63), 1.5, -0.0, 1e308, "", "x", "\u0000", "\ud800",
    "é", [], {}, [1], {"a": 1}, "5m", "-1", -1e9, "NaN", [None], {"": None},
)  # fmt: skip
FIELDS = ("options", "keep_alive", "stream", "num_ctx", "think", "format", "tools", "images", "system",
          "temperature", "stream_options", "n", "seed", "max_tokens", "input", "messages")  # fmt: skip
BASES: dict[str, dict[str, Any]] = {
    "/api/generate": {"model": "gemma3-270m", "prompt": "hi", "stream": False, "options": {"num_ctx": 2048}},
    "/api/chat": {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"num_ctx": 2048},
        "keep_alive": "5m",
    },
    "/api/embed": {"model": "gemma3-270m", "input": ["a", "b"]},
    "/api/embeddings": {"model": "gemma3-270m", "prompt": "a"},
    "/v1/chat/completions": {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
    },
    "/v1/completions": {"model": "gemma3-270m", "prompt": "hi", "max_tokens": 5},
    "/v1/embeddings": {"model": "gemma3-270m", "input": "hi"},
    "/v1/responses": {"model": "gemma3-270m", "input": "hi", "max_output_tokens": 5},
    "/v1/messages": {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
    },
}
GOVERNED = """
[[rules]]
models = ["*"]
policies = [{ use = "headroom" }, { use = "keep_alive", default = "10m" }]
"""


def slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) inside ``value``: the places a mutation can land."""
    found: list[tuple[Any, Any]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found.append((value, key))
        found += slots(item)
    return found


def mutate(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` with one or two places changed: a value swapped for another of any
    type, a field dropped, or a field added at the top."""
    body = json.loads(json.dumps(body))
    for _ in range(rng.choice((1, 1, 2))):
        places = slots(body)
        if not places or rng.random() < 0.2:
            body[rng.choice(FIELDS)] = copy.deepcopy(rng.choice(VALUES))
            continue
        container, key = rng.choice(places)
        if rng.random() < 0.25:
            del container[key]
        else:
            container[key] = copy.deepcopy(rng.choice(VALUES))
    return body


def cases(seed: int, count: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        path = rng.choice(list(BASES))
        raw = json.dumps(mutate(rng, BASES[path])).encode()
        if rng.random() < 0.1:
            raw = raw[: rng.randrange(len(raw))]
        out.append((path, raw))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_no_mutated_body_gets_a_5xx_of_the_governors_own(
    start_fake: StartFake, start_proxy: StartProxy, seed: int
) -> None:
    """400 mutated bodies per seed: where the governor answers 5xx, Ollama alone did too."""
    fake = await start_fake(version="0.33.0-rc2")
    proxy = await start_proxy(fake.url, GOVERNED)  # type: ignore[attr-defined]
    ours = []
    async with aiohttp.ClientSession() as http:
        for path, raw in cases(seed, 400):
            async with http.post(proxy.url + path, data=raw) as response:
                governed = response.status
                await response.read()
            async with http.post(fake.url + path, data=raw) as response:  # type: ignore[attr-defined]
                direct = response.status
                await response.read()
            if governed >= 500 and direct < 500:
                ours.append((path, raw[:120], governed, direct))
    assert ours == []
