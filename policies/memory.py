"""How much memory a model needs at a given ``num_ctx``, and the largest context that fits.

The KV cache is computed exactly as llama.cpp (Ollama 0.30 and later) or Ollama's own engine
(before 0.30) allocates it, and the compute buffer from a formula fitted to llama-server's own
allocations; ``docs/ollama-rules.md`` gives the measurements and their limits. Weights come from
the model's size on disk. Whatever that misses is learnt per model by ``Calibration`` from what
Ollama reports once the model is loaded. Ollama's own rules (its predictor, its batch choice, its
slot count) live in ``policies.ollama``; this module applies them to a ``ModelFacts``.

Everything here is pure arithmetic on ``ModelFacts``: no I/O, no clocks, no global state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard

from policies.model import IncompleteModelFacts, ModelFacts, per_layer, uses_llama_server
from policies.ollama import DEFAULT_NUM_BATCH as DEFAULT_NUM_BATCH
from policies.ollama import SINGLE_SLOT_ARCHITECTURES as SINGLE_SLOT_ARCHITECTURES
from policies.ollama import (
    automatic_num_batch,
    legacy_graph_bytes,
    predict_server_vram,
)
from policies.ollama import num_parallel as _num_parallel

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

KV_CELL_PADDING = 256
"""llama.cpp and Ollama's engine both round KV cell counts up to a multiple of 256."""

_KV_TYPE_LAYOUT: Mapping[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q5_1": (32, 24),
    "q5_0": (32, 22),
    "q4_1": (32, 20),
    "q4_0": (32, 18),
    "iq4_nl": (32, 18),
}
"""ggml block layout per cache type: (elements per block, bytes per block).

Rows are stored as whole blocks, so the exact size of a row of ``n`` elements is
``ceil(n / elements) * bytes`` (ggml ``ggml_row_size``).
"""

_LEGACY_KV_TYPE_LAYOUT: Mapping[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "q8_0": (1, 1),
    "q4_0": (2, 1),
}
"""Ollama <= 0.24 accepted only f16, q8_0 and q4_0 (f32 is its internal fallback) and counted
1 and 0.5 bytes per element for the quantised two."""

KV_BYTES_PER_ELEMENT: Mapping[str, float] = {
    name: size_bytes / elements for name, (elements, size_bytes) in _KV_TYPE_LAYOUT.items()
}
"""Bytes per cached element for each ``OLLAMA_KV_CACHE_TYPE`` on Ollama 0.30 and later."""

LEGACY_KV_BYTES_PER_ELEMENT: Mapping[str, float] = {
    name: size_bytes / elements for name, (elements, size_bytes) in _LEGACY_KV_TYPE_LAYOUT.items()
}
"""Bytes per cached element as Ollama <= 0.24 counted them."""

DEFAULT_VOCAB_SIZE = 262_144
"""Vocabulary assumed when a model does not report one: Gemma's, the largest in common use."""

FFN_ROWS_AT_PEAK = 4
"""f32 rows of ``feed_forward_length`` per micro-batch token live at the compute peak (fitted)."""

INPUT_BYTES_PER_TOKEN = 4
"""The int32 position of each micro-batch token, an input tensor live for the whole graph."""

INDEX_BYTES_PER_TOKEN_PER_CACHE = 16
"""The int64 K and V cell indices each KV cache takes per micro-batch token."""

LOGIT_BYTES = 4
"""One f32 logit; the output buffer holds a vocabulary's worth per slot."""


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """One estimate, broken down so that a decision can say where the bytes go."""

    num_ctx: int
    """The per-slot context after clamping to the trained length."""
    parallel: int
    """Parallel slots (``OLLAMA_NUM_PARALLEL``); the KV cache scales with it."""
    n_ubatch: int
    """The micro-batch the estimate assumed (Ollama's automatic choice unless overridden)."""
    weights_bytes: int
    """The model's size on disk; a little above the allocated weights (the GGUF metadata)."""
    kv_bytes: int
    """``kv_full_bytes + kv_swa_bytes``."""
    kv_full_bytes: int
    """Full-attention layers' cache, the part that grows with ``num_ctx``."""
    kv_swa_bytes: int
    """Sliding-window layers' cache (0 without SWA); ``/api/ps`` on 0.30+ reports only this part
    of an SWA model's cache, see ``ps_unreported_bytes``."""
    compute_bytes: int
    """``graph_bytes + output_bytes``: what llama.cpp allocates beside weights and cache."""
    graph_bytes: int
    """The compute buffer (``compute_buffer_bytes``)."""
    output_bytes: int
    """The output buffer: one row of f32 logits per slot."""
    raw_bytes: int
    """``weights_bytes + kv_bytes + compute_bytes``: what ``Calibration`` learns from."""
    total_bytes: int
    """``raw_bytes`` corrected by the calibration, if one was given."""


def effective_parallel(model: ModelFacts, num_parallel: int) -> int:
    """The slot count Ollama will really use for ``model`` (``policies.ollama.num_parallel``).

    Pass the result as ``parallel`` to the functions below, since the KV cache scales with it.
    A model known only as an embedding model (``("embedding",)``) counts as one without
    completion, so it gets one slot.
    """
    return _num_parallel(model.architecture, model.capabilities, num_parallel)


def pad_cells(cells: int) -> int:
    """Round a KV cell count up to the 256-cell padding both engines use."""
    return -(-cells // KV_CELL_PADDING) * KV_CELL_PADDING


def clamp_num_ctx(model: ModelFacts, num_ctx: int) -> int:
    """The ``num_ctx`` Ollama actually loads: at most the trained context length."""
    if num_ctx < 1:
        raise ValueError(f"num_ctx must be at least 1, got {num_ctx}")
    if model.context_length is not None and model.context_length > 0:
        return min(num_ctx, model.context_length)
    return num_ctx


def kv_cache_bytes(
    model: ModelFacts,
    num_ctx: int,
    parallel: int = 1,
    kv_cache_type: str = "f16",
    n_ubatch: int = DEFAULT_NUM_BATCH,
    version: tuple[int, int, int] | None = None,
) -> int:
    """Bytes of K and V cache Ollama allocates for ``num_ctx`` tokens in each of ``parallel`` slots.

    The sum of ``kv_cache_split``'s full-attention and sliding-window parts; see there.
    """
    full_bytes, swa_bytes = kv_cache_split(model, num_ctx, parallel, kv_cache_type, n_ubatch, version)
    return full_bytes + swa_bytes


def kv_cache_split(
    model: ModelFacts,
    num_ctx: int,
    parallel: int = 1,
    kv_cache_type: str = "f16",
    n_ubatch: int = DEFAULT_NUM_BATCH,
    version: tuple[int, int, int] | None = None,
) -> tuple[int, int]:
    """``(full_bytes, swa_bytes)``: the cache of full-attention layers and of sliding-window ones.

    llama.cpp logs them as two ``llama_kv_cache: size = ...`` lines, which these match to the
    byte on every recorded load (tests/test_memory_recorded.py). Ollama 0.30 and later (and
    ``version=None``) follow llama.cpp with one KV stream per slot: ``n_ctx = pad256(num_ctx * P)``,
    ``n_ctx_seq = pad256(n_ctx / P)``; a full-attention layer holds ``n_ctx_seq * P`` cells and a
    sliding-window layer ``P * pad256(min(n_ctx_seq, window + n_ubatch))``. Older versions follow
    Ollama's engine: ``pad256(P * num_ctx)`` cells, and ``pad256(P * window' + num_batch)`` on
    sliding-window layers (``window' = window + 1`` when ``P > 1``); pass that ``num_batch`` as
    ``n_ubatch``.

    Layers with 0 KV heads (recurrent or convolution blocks) and layers that share an earlier
    layer's cache count 0: their fixed-size recurrent state does not grow with ``num_ctx`` and is
    left to the calibration offset. ``parallel`` below 1 counts as 1, as in Ollama.
    """
    parallel = max(parallel, 1)
    if n_ubatch < 1:
        raise ValueError(f"n_ubatch must be at least 1, got {n_ubatch}")
    legacy = not uses_llama_server(version)
    elements_per_block, bytes_per_block = _kv_layout(kv_cache_type, legacy=legacy)
    full_cells, swa_cells = _kv_cells(
        clamp_num_ctx(model, num_ctx), parallel, model.sliding_window, n_ubatch, legacy=legacy
    )

    def row_bytes(elements: int) -> int:
        return -(-elements // elements_per_block) * bytes_per_block

    full_bytes = swa_bytes = 0
    for is_swa, key_elements, value_elements in _kv_layers(model):
        layer_row_bytes = row_bytes(key_elements) + row_bytes(value_elements)
        if is_swa:
            swa_bytes += swa_cells * layer_row_bytes
        else:
            full_bytes += full_cells * layer_row_bytes
    return full_bytes, swa_bytes


def auto_num_batch(
    num_ctx: int,
    parallel: int = 1,
    *,
    version: tuple[int, int, int] | None = None,
    predicted_bytes: int | None = None,
    free_bytes: int | None = None,
) -> int:
    """The ``num_batch`` (= llama.cpp ``n_ubatch``) Ollama picks when neither request nor Modelfile
    sets one: ``policies.ollama.automatic_num_batch`` for ``num_ctx * P`` cells.

    From 0.30: 2048 when ``num_ctx * P`` exceeds 32768, 1024 above 4096, else 512; stepped down
    unless Ollama's own prediction (``ollama_predicted_bytes``) is within 60% (for 2048) or 75%
    (for 1024) of ``free_bytes`` and leaves room for the batch surcharge under 80%. Without
    ``free_bytes`` the largest choice is returned, which gives the larger estimate. Before 0.30
    the batch was always 512.
    """
    return automatic_num_batch(num_ctx * max(parallel, 1), predicted_bytes, free_bytes, version=version)


def ollama_predicted_bytes(model: ModelFacts, num_ctx: int, parallel: int = 1) -> int:
    """Ollama 0.30+'s own footprint prediction (``policies.ollama.predict_server_vram``), which
    drives its placement, eviction and automatic ``num_batch``.

    ``weights + 2 * block_count * min(head_count_kv) * (embedding_length / max(head_count))
    * num_ctx * P * 2``. It ignores the cache type, SWA and ``key_length``, so it can be far off
    (81 GiB of KV for gemma3:27b at 131072 where 10.6 GiB are allocated); use it to predict what
    Ollama will do, not what fits.
    """
    name = model.name
    weights_bytes = _require(model.weights_bytes, name, "weights_bytes", "the /api/tags size")
    block_count = _require(model.block_count, name, "block_count", "model_info block_count")
    embedding_length = _require(
        model.embedding_length, name, "embedding_length", "model_info embedding_length"
    )
    head_count = _layers(model.head_count, block_count, name, "head_count")
    head_count_kv = _layers(model.head_count_kv, block_count, name, "head_count_kv")
    ctx_total = clamp_num_ctx(model, num_ctx) * max(parallel, 1)
    return predict_server_vram(
        weights_bytes, block_count, min(head_count_kv), embedding_length, max(head_count), ctx_total
    )


def legacy_predicted_bytes(
    model: ModelFacts,
    num_ctx: int,
    parallel: int = 1,
    kv_cache_type: str = "f16",
    num_batch: int = DEFAULT_NUM_BATCH,
) -> int:
    """What Ollama before 0.30 predicted for a full offload on its llama.cpp runner.

    ``fs/ggml`` ``GraphSize``: weights, plus ``ctx * (key + value) * max(head_count_kv) * s`` per
    layer with ``ctx = num_ctx * P`` and Ollama's old element sizes (no SWA, no row blocks), plus
    ``policies.ollama.legacy_graph_bytes``. ``EstimateGPULayers`` also kept the 457 MiB minimum and
    ``OLLAMA_GPU_OVERHEAD`` free, which are not added here. Ollama-engine architectures (gemma3 and
    others at v0.12) were sized from real allocations instead, so this is for the llama.cpp path.
    """
    name = model.name
    weights_bytes = _require(model.weights_bytes, name, "weights_bytes", "the /api/tags size")
    block_count = _require(model.block_count, name, "block_count", "model_info block_count")
    embedding_length = _require(
        model.embedding_length, name, "embedding_length", "model_info embedding_length"
    )
    head_count = _layers(model.head_count, block_count, name, "head_count")
    head_count_kv = _layers(model.head_count_kv, block_count, name, "head_count_kv")
    per_element = LEGACY_KV_BYTES_PER_ELEMENT.get(kv_cache_type.lower())
    if per_element is None:
        raise ValueError(
            f"unknown KV cache type {kv_cache_type!r} for Ollama before 0.30: "
            f"expected one of {', '.join(sorted(LEGACY_KV_BYTES_PER_ELEMENT))}"
        )
    key_length = model.key_length or _default_head_dim(model, block_count)
    value_length = model.value_length or key_length
    ctx_total = clamp_num_ctx(model, num_ctx) * max(parallel, 1)
    kv_total = block_count * int(ctx_total * (key_length + value_length) * max(head_count_kv) * per_element)
    graph = legacy_graph_bytes(
        model.architecture,
        embedding_length=embedding_length,
        head_count_max=max(head_count),
        head_count_kv_min=min(head_count_kv),
        vocab_size=model.vocab_size or DEFAULT_VOCAB_SIZE,
        ctx_total=ctx_total,
        num_batch=num_batch,
        kv_total_bytes=kv_total,
    )
    return weights_bytes + kv_total + graph


def compute_buffer_bytes(
    model: ModelFacts,
    num_ctx: int,
    parallel: int,
    n_ubatch: int,
    *,
    version: tuple[int, int, int] | None = None,
) -> int:
    """llama.cpp's compute buffer (``sched_reserve: ... compute buffer size``) for one load.

    ``n_ubatch * (4 * (4 * feed_forward + embedding + kv_width) + 4 + 16 * caches)
    + 2 * n_ubatch * (n_ctx_seq + swa_cells_seq)``: four f32 rows of the FFN width, one of the
    hidden size and one K row live at the peak, the token positions and each cache's int64 K/V
    cell indices, and the f16 attention mask flash attention builds over every cell of a slot
    (one mask per cache: full and sliding-window). ``kv_width`` is the widest layer's
    ``head_count_kv * key_length``; ``caches`` is 2 for a model with both kinds of layer.

    Measured on llama.cpp b10488's CPU backend with flash attention enabled (Ollama 0.33.0-rc2):
    it reproduces all 22 recorded loads of two models of different shapes (gemma3-270m, with
    SWA, and a llama) to 0.12 MiB with an f16 cache; a q8_0 cache moves the peak by up to 2 MiB,
    and three slots add 0.1 MiB, neither modelled. Assumed for GPUs: the same graph, which CUDA
    and Metal allocate with their own kernels' scratch and a small host-side input buffer, and
    split across devices under partial offload; ``Calibration`` learns that difference per model.
    ``feed_forward_length`` comes from ``model_info`` (the largest layer's), else
    ``4 * embedding_length``.
    """
    embedding_length = _require(
        model.embedding_length, model.name, "embedding_length", "model_info embedding_length"
    )
    parallel = max(parallel, 1)
    legacy = not uses_llama_server(version)
    layers = _kv_layers(model)
    has_swa = any(is_swa for is_swa, _, _ in layers)
    has_full = any(not is_swa for is_swa, _, _ in layers)
    caches = int(has_swa) + int(has_full)
    kv_width = max((key_elements for _, key_elements, _ in layers), default=0)
    full_cells, swa_cells = _kv_cells(
        clamp_num_ctx(model, num_ctx), parallel, model.sliding_window, n_ubatch, legacy=legacy
    )
    streams = 1 if legacy else parallel  # the mask spans one slot's cells per stream
    mask_cells = (full_cells if has_full else 0) + (swa_cells if has_swa else 0)
    per_token_bytes = (
        4 * (FFN_ROWS_AT_PEAK * _feed_forward_length(model) + embedding_length + kv_width)
        + INPUT_BYTES_PER_TOKEN
        + INDEX_BYTES_PER_TOKEN_PER_CACHE * caches
    )
    return n_ubatch * per_token_bytes + 2 * n_ubatch * (mask_cells // streams)


def output_buffer_bytes(model: ModelFacts, parallel: int = 1) -> int:
    """llama.cpp's output buffer: one row of f32 logits per slot (1.00 MiB per slot for Gemma)."""
    return LOGIT_BYTES * (model.vocab_size or DEFAULT_VOCAB_SIZE) * max(parallel, 1)


def estimate(
    model: ModelFacts,
    num_ctx: int,
    parallel: int = 1,
    kv_cache_type: str = "f16",
    *,
    version: tuple[int, int, int] | None = None,
    calibration: Calibration | None = None,
    n_ubatch: int | None = None,
    flash_attention: bool = True,
    gpu_count: int = 1,
) -> MemoryEstimate:
    """Weights + KV cache + compute and output buffers for one load, with the breakdown.

    ``n_ubatch`` defaults to Ollama's automatic choice for the context (``auto_num_batch`` without
    free-memory step-down, i.e. the largest). Before calibration the total is 0.4% to 2.3% above
    llama-server's recorded allocations, never below (docs/ollama-rules.md). Raises
    ``IncompleteModelFacts`` when a needed fact is unknown.

    Two GPU parts are assumed from llama.cpp's graph, not measured (calibration corrects them):
    with ``flash_attention`` off the attention scores are materialised, an f32 matrix of
    ``n_ubatch x n_ctx_seq x head_count`` at the peak, and a quantised cache is counted as f16
    (llama.cpp refuses a quantised V cache without flash attention); a load split over
    ``gpu_count`` GPUs keeps one compute buffer on each.
    """
    raw = _raw_estimate(
        model, num_ctx, max(parallel, 1), kv_cache_type, version, n_ubatch, flash_attention, gpu_count
    )
    if calibration is None:
        return raw
    return dataclasses.replace(raw, total_bytes=calibration.apply(raw.raw_bytes))


@functools.lru_cache(maxsize=4096)
def _raw_estimate(
    model: ModelFacts,
    num_ctx: int,
    parallel: int,
    kv_cache_type: str,
    version: tuple[int, int, int] | None,
    n_ubatch: int | None,
    flash_attention: bool,
    gpu_count: int,
) -> MemoryEstimate:
    """``estimate`` before calibration, remembered: it is pure, costs ~80 µs for a 62-layer model,
    and every governed request (headroom's search, the scheduler's prediction, the status page)
    asks it for the same few models and contexts again."""
    clamped_ctx = clamp_num_ctx(model, num_ctx)
    if n_ubatch is None:
        n_ubatch = auto_num_batch(clamped_ctx, parallel, version=version)
    if not flash_attention and kv_cache_type not in ("f16", "f32", "bf16"):
        kv_cache_type = "f16"
    weights_bytes = _require(model.weights_bytes, model.name, "weights_bytes", "the /api/tags size")
    kv_full_bytes, kv_swa_bytes = kv_cache_split(
        model, clamped_ctx, parallel, kv_cache_type, n_ubatch=n_ubatch, version=version
    )
    graph_bytes = compute_buffer_bytes(model, clamped_ctx, parallel, n_ubatch, version=version)
    if not flash_attention:
        graph_bytes += attention_matrix_bytes(model, clamped_ctx, parallel, n_ubatch)
    graph_bytes *= max(gpu_count, 1)
    output_bytes = output_buffer_bytes(model, parallel)
    kv_bytes = kv_full_bytes + kv_swa_bytes
    compute_bytes = graph_bytes + output_bytes
    raw_bytes = weights_bytes + kv_bytes + compute_bytes
    return MemoryEstimate(
        num_ctx=clamped_ctx,
        parallel=parallel,
        n_ubatch=n_ubatch,
        weights_bytes=weights_bytes,
        kv_bytes=kv_bytes,
        kv_full_bytes=kv_full_bytes,
        kv_swa_bytes=kv_swa_bytes,
        compute_bytes=compute_bytes,
        graph_bytes=graph_bytes,
        output_bytes=output_bytes,
        raw_bytes=raw_bytes,
        total_bytes=raw_bytes,
    )


def assumed_parts(
    backend: str, *, flash_attention: bool = True, gpu_count: int = 1, kv_cache_type: str = "f16"
) -> tuple[str, ...]:
    """The parts of ``estimate`` that are assumed, not measured, on this host: what a
    ``Calibration`` learnt here corrects, and what the figures rest on before one is.

    The formulas were fitted to llama-server's own allocations on the CPU backend with flash
    attention on (docs/ollama-rules.md §6); every other backend's compute buffer, the attention
    matrix of flash attention off, a quantised cache stored as f16 without it, and one compute
    buffer per GPU of a split load follow llama.cpp's graph but were never recorded.
    """
    parts: list[str] = []
    if backend != "cpu":
        parts.append(
            f"the compute buffer on {backend}"
            if backend not in ("gpu", "unknown")
            else "the GPU compute buffer"
        )
    if not flash_attention:
        parts.append("the attention matrix (flash attention off)")
        if kv_cache_type not in ("f16", "f32", "bf16"):
            parts.append(f"a {kv_cache_type} V cache held as f16 (flash attention off)")
    if gpu_count > 1:
        parts.append(f"a compute buffer on each of {gpu_count} GPUs")
    return tuple(parts)


def attention_matrix_bytes(model: ModelFacts, num_ctx: int, parallel: int, n_ubatch: int) -> int:
    """The f32 attention scores llama.cpp materialises without flash attention: one row per
    micro-batch token, one column per cell of a slot, per head (assumed, not measured)."""
    block_count = _require(model.block_count, model.name, "block_count", "model_info block_count")
    head_count = max(_layers(model.head_count, block_count, model.name, "head_count"))
    n_ctx_seq = pad_cells(pad_cells(clamp_num_ctx(model, num_ctx) * max(parallel, 1)) // max(parallel, 1))
    return 4 * n_ubatch * n_ctx_seq * head_count


def ps_unreported_bytes(result: MemoryEstimate, *, version: tuple[int, int, int] | None = None) -> int:
    """The bytes Ollama 0.30+ allocates for this load but leaves out of ``/api/ps`` ``size``.

    Ollama fills ``size`` (and ``size_vram``, and its own free-memory accounting) from
    llama-server's "buffer size" log lines, keeping one figure per (component, device, kind)
    (``llm/llama_server.go`` ``memoryParsingWriter``). A model with sliding-window layers logs two
    ``llama_kv_cache: <device> KV buffer size`` lines, full-attention cache first, so the second
    replaces the first and the full-attention cache is never counted: ``size`` equals the sum of
    the logged buffers minus that line on all 22 recorded loads, to the byte. Before 0.30 ``size``
    came from Ollama's own estimate, and a model without SWA logs one cache line; both give 0.
    """
    if not uses_llama_server(version) or result.kv_swa_bytes == 0:
        return 0
    return result.kv_full_bytes


def estimate_bytes(
    model: ModelFacts,
    num_ctx: int,
    parallel: int = 1,
    kv_cache_type: str = "f16",
    *,
    version: tuple[int, int, int] | None = None,
    calibration: Calibration | None = None,
    n_ubatch: int | None = None,
    flash_attention: bool = True,
    gpu_count: int = 1,
) -> int:
    """Total bytes Ollama will hold for this model at ``num_ctx``; see ``estimate``."""
    return estimate(
        model,
        num_ctx,
        parallel,
        kv_cache_type,
        version=version,
        calibration=calibration,
        n_ubatch=n_ubatch,
        flash_attention=flash_attention,
        gpu_count=gpu_count,
    ).total_bytes


def largest_fitting_ctx(
    model: ModelFacts,
    budget_bytes: int,
    *,
    step: int = 1024,
    min_ctx: int = 2048,
    max_ctx: int | None = None,
    parallel: int = 1,
    kv_cache_type: str = "f16",
    version: tuple[int, int, int] | None = None,
    calibration: Calibration | None = None,
    n_ubatch: int | None = None,
    flash_attention: bool = True,
    gpu_count: int = 1,
) -> int | None:
    """The largest ``num_ctx`` whose estimate fits in ``budget_bytes``, or ``None`` if none does.

    Candidates are the multiples of ``step`` between ``min_ctx`` and the ceiling
    (``min(max_ctx, trained context length)``), plus ``min_ctx`` and the ceiling themselves, so
    a model can be offered its whole trained context even when that is not a multiple of
    ``step``. A ``min_ctx`` above the ceiling is lowered to it. The estimate never decreases as
    ``num_ctx`` grows, so a binary search finds the answer in a handful of estimates.
    """
    if step < 1:
        raise ValueError(f"step must be at least 1, got {step}")
    if min_ctx < 1:
        raise ValueError(f"min_ctx must be at least 1, got {min_ctx}")
    ceiling = _ctx_ceiling(model, max_ctx)
    floor = min(min_ctx, ceiling)
    first_multiple = -(-floor // step) * step
    candidates: list[int] = sorted({floor, ceiling, *range(first_multiple, ceiling + 1, step)})

    def fits(num_ctx: int) -> bool:
        total_bytes = estimate_bytes(
            model,
            num_ctx,
            parallel,
            kv_cache_type,
            version=version,
            calibration=calibration,
            n_ubatch=n_ubatch,
            flash_attention=flash_attention,
            gpu_count=gpu_count,
        )
        return total_bytes <= budget_bytes

    if not fits(candidates[0]):
        return None
    low, high = 0, len(candidates) - 1  # candidates[low] fits; the answer is in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if fits(candidates[middle]):
            low = middle
        else:
            high = middle - 1
    return candidates[low]


@dataclass(frozen=True, slots=True)
class Calibration:
    """A per-model linear correction learnt from what Ollama reported after real loads.

    ``apply(raw) = slope * raw + offset_bytes``. Each ``observe`` keeps the sample (newest wins
    per ``num_ctx``, at most ``MAX_SAMPLES``) and refits: one distinct context fixes only the
    offset, two or more give a least-squares line. The slope is held within ``SLOPE_BOUNDS``
    (then the offset is refitted), because noisy samples close together can suggest a wild slope,
    and extrapolating one to a much larger context is worse than a bounded error.

    What it learns towards is the memory the load really holds, not ``/api/ps`` ``size`` as such.
    On Ollama 0.30+ ``size`` leaves out the full-attention KV cache of every model with
    sliding-window layers (``ps_unreported_bytes``): 96 of 457 MiB for gemma3-270m at 32768, 288
    of 848 MiB at 32768 with three slots. Fitted to ``size`` alone, the line would learn a slope
    below 1 and promise contexts that do not fit. So ``observe`` takes ``unreported_bytes`` (pass
    ``ps_unreported_bytes(estimate(...))``, which the KV model reproduces to the byte) and learns
    from ``reported + unreported_bytes``; the samples hold that sum. Models without SWA, and
    Ollama before 0.30, report faithfully and pass 0.

    A calibration belongs to one model digest, ``parallel``, cache type and Ollama version; the
    proxy keys and persists it (``to_json``/``from_json``).
    """

    offset_bytes: float = 0.0
    slope: float = 1.0
    samples: tuple[tuple[int, int, int], ...] = ()
    """``(num_ctx, raw_estimate_bytes, allocated_bytes)``, oldest first; ``allocated_bytes`` is
    the reported size plus what Ollama leaves out of it."""

    MAX_SAMPLES: ClassVar[int] = 16
    SLOPE_BOUNDS: ClassVar[tuple[float, float]] = (0.5, 2.0)
    JSON_FORMAT: ClassVar[int] = 1

    def observe(
        self, num_ctx: int, raw_estimate: int, reported: int, *, unreported_bytes: int = 0
    ) -> Calibration:
        """A new calibration that also accounts for one load of ``num_ctx``.

        ``raw_estimate`` is the uncalibrated ``estimate(...).raw_bytes`` for that load,
        ``reported`` what Ollama said it holds (``/api/ps`` ``size``), and ``unreported_bytes``
        what that figure is known to leave out (``ps_unreported_bytes``).
        """
        for label, value in (
            ("num_ctx", num_ctx),
            ("raw_estimate", raw_estimate),
            ("reported", reported),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"calibration {label} must be a positive integer, got {value!r}")
        if not _is_count(unreported_bytes):
            raise ValueError(
                f"calibration unreported_bytes must be a non-negative integer, got {unreported_bytes!r}"
            )
        kept = tuple(sample for sample in self.samples if sample[0] != num_ctx)
        samples = (*kept, (num_ctx, raw_estimate, reported + unreported_bytes))[-self.MAX_SAMPLES :]
        slope, offset_bytes = _fit_line(samples, self.SLOPE_BOUNDS)
        return Calibration(offset_bytes=offset_bytes, slope=slope, samples=samples)

    def apply(self, raw_bytes: int) -> int:
        """The calibrated estimate for an uncalibrated ``raw_bytes``; never negative."""
        return max(0, round(self.slope * raw_bytes + self.offset_bytes))

    def to_json(self) -> str:
        """Serialise for the proxy's state directory."""
        return json.dumps(
            {
                "format": self.JSON_FORMAT,
                "offset_bytes": self.offset_bytes,
                "slope": self.slope,
                "samples": [list(sample) for sample in self.samples],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Calibration:
        """Read what ``to_json`` wrote; ``ValueError`` says what is wrong with anything else."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"calibration JSON is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError("calibration JSON must be an object")
        if data.get("format") != cls.JSON_FORMAT:
            raise ValueError(
                f"calibration JSON has format {data.get('format')!r}, expected {cls.JSON_FORMAT}"
            )
        offset_bytes = data.get("offset_bytes")
        slope = data.get("slope")
        if not _is_finite_number(offset_bytes):
            raise ValueError(f"calibration offset_bytes must be a number, got {offset_bytes!r}")
        if not _is_finite_number(slope) or slope <= 0:
            raise ValueError(f"calibration slope must be a positive number, got {slope!r}")
        raw_samples = data.get("samples")
        if not isinstance(raw_samples, list):
            raise ValueError("calibration samples must be a list")
        samples: list[tuple[int, int, int]] = []
        for sample in raw_samples:
            if not (
                isinstance(sample, list)
                and len(sample) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in sample)
            ):
                raise ValueError(
                    f"calibration sample must be [num_ctx, raw_bytes, reported_bytes], got {sample!r}"
                )
            samples.append((sample[0], sample[1], sample[2]))
        return cls(offset_bytes=float(offset_bytes), slope=float(slope), samples=tuple(samples))


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS: Mapping[str, int] = {
    "b": 1,
    "kib": KIB,
    "mib": MIB,
    "gib": GIB,
    "tib": TIB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}


def parse_size(value: str | int) -> int:
    """Bytes from a config value: ``"512MiB"``, ``"24GiB"``, ``"1.5 GB"``, ``"1024"`` or an int.

    KiB/MiB/GiB/TiB are binary and KB/MB/GB/TB decimal, case-insensitively. A bare letter such as
    ``"24G"`` is refused because it could mean either.
    """
    if isinstance(value, bool):
        raise ValueError(f"size must be a number of bytes or a string like '24GiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"size must be a number of bytes or a string like '24GiB', got {value!r}")
    match = _SIZE_RE.match(value)
    if match is None:
        raise ValueError(
            f"cannot read size {value!r}: expected a number and a unit such as '512MiB', '24GiB' or '1.5GB'"
        )
    number, unit = match.groups()
    multiplier = _SIZE_UNITS.get(unit.lower() if unit else "b")
    if multiplier is None:
        raise ValueError(
            f"unknown size unit {unit!r} in {value!r}: use B, KiB, MiB, GiB, TiB (binary) "
            "or KB, MB, GB, TB (decimal)"
        )
    return round(float(number) * multiplier)


def format_bytes(n: int | float) -> str:
    """``14.2 GiB``: binary units with one decimal, plain bytes below 1 KiB."""
    magnitude = abs(n)
    if magnitude < KIB:
        return f"{int(n)} B"
    for unit, size in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if magnitude >= size or unit == "KiB":
            return f"{n / size:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _kv_layout(kv_cache_type: str, *, legacy: bool) -> tuple[int, int]:
    layouts = _LEGACY_KV_TYPE_LAYOUT if legacy else _KV_TYPE_LAYOUT
    layout = layouts.get(kv_cache_type.lower())
    if layout is None:
        engine = "Ollama before 0.30" if legacy else "Ollama 0.30 and later"
        raise ValueError(
            f"unknown KV cache type {kv_cache_type!r} for {engine}: "
            f"expected one of {', '.join(sorted(layouts))}"
        )
    return layout


def _kv_cells(
    num_ctx: int, parallel: int, window: int | None, n_ubatch: int, *, legacy: bool
) -> tuple[int, int]:
    """Cells of a full-attention layer and of a sliding-window layer (docs/ollama-rules.md)."""
    if legacy:
        full_cells = pad_cells(parallel * num_ctx)
        if window is None or num_ctx < window:
            return full_cells, full_cells
        window_cells = window + 1 if parallel > 1 else window
        return full_cells, pad_cells(parallel * window_cells + n_ubatch)
    n_ctx_seq = pad_cells(pad_cells(num_ctx * parallel) // parallel)
    full_cells = n_ctx_seq * parallel
    if window is None:
        return full_cells, full_cells
    return full_cells, parallel * pad_cells(min(n_ctx_seq, window + n_ubatch))


def _feed_forward_length(model: ModelFacts) -> int:
    """The widest layer's FFN from ``model_info``, else ``4 * embedding_length``."""
    raw = model.model_info.get(f"{model.architecture}.feed_forward_length") if model.architecture else None
    values = raw if isinstance(raw, list) else [raw]
    widths = [value for value in values if isinstance(value, int) and not isinstance(value, bool)]
    widths = [value for value in widths if value > 0]
    if widths:
        return max(widths)
    return 4 * _require(model.embedding_length, model.name, "embedding_length", "model_info embedding_length")


def _kv_layers(model: ModelFacts) -> list[tuple[bool, int, int]]:
    """``(is_swa, key_elements, value_elements)`` per token for each layer that owns a cache."""
    name = model.name
    block_count = _require(model.block_count, name, "block_count", "model_info block_count")
    head_count_kv = _layers(model.head_count_kv, block_count, name, "head_count_kv")
    key_length = model.key_length or _default_head_dim(model, block_count)
    value_length = model.value_length or key_length
    layers: list[tuple[bool, int, int]] = []
    for il, kv_heads in enumerate(head_count_kv):
        if kv_heads <= 0 or not model.has_own_kv(il):
            continue
        is_swa = model.is_swa_layer(il)
        layer_key_length = (model.key_length_swa if is_swa else None) or key_length
        layer_value_length = (model.value_length_swa if is_swa else None) or value_length
        layers.append((is_swa, kv_heads * layer_key_length, kv_heads * layer_value_length))
    return layers


def _default_head_dim(model: ModelFacts, block_count: int) -> int:
    embedding_length = _require(
        model.embedding_length, model.name, "embedding_length", "model_info embedding_length"
    )
    head_count = _layers(model.head_count, block_count, model.name, "head_count")
    if head_count[0] <= 0:
        raise IncompleteModelFacts(f"model {model.name!r}: key_length unknown and head_count of layer 0 is 0")
    return embedding_length // head_count[0]


def _require(value: int | None, model_name: str, field_name: str, source: str) -> int:
    if value is None:
        raise IncompleteModelFacts(f"model {model_name!r}: {field_name} is unknown; it comes from {source}")
    return value


def _layers(
    value: int | Sequence[int] | None, block_count: int, model_name: str, field_name: str
) -> tuple[int, ...]:
    if value is None:
        raise IncompleteModelFacts(
            f"model {model_name!r}: {field_name} is unknown; it may be a per-layer array that "
            "/api/show hides unless asked with verbose:true"
        )
    try:
        return per_layer(value, block_count)
    except ValueError as error:
        raise IncompleteModelFacts(f"model {model_name!r}: {field_name}: {error}") from None


def _ctx_ceiling(model: ModelFacts, max_ctx: int | None) -> int:
    limits = [limit for limit in (max_ctx, model.context_length) if limit is not None]
    if not limits:
        raise IncompleteModelFacts(
            f"model {model.name!r}: context_length is unknown; pass max_ctx to bound the search"
        )
    ceiling = min(limits)
    if ceiling < 1:
        raise ValueError(f"context ceiling must be at least 1, got {ceiling}")
    return ceiling


def _fit_line(
    samples: Sequence[tuple[int, int, int]], slope_bounds: tuple[float, float]
) -> tuple[float, float]:
    """Least-squares ``reported = slope * raw + offset`` with the slope kept within bounds.

    When the free slope falls outside the bounds, the constrained optimum has the slope at the
    nearest bound and the offset that centres the residuals, which is what is returned.
    """
    raws = [float(raw) for _, raw, _ in samples]
    reported = [float(value) for _, _, value in samples]
    mean_offset = sum(y - x for x, y in zip(raws, reported, strict=True)) / len(samples)
    mean_raw = sum(raws) / len(raws)
    variance = sum((x - mean_raw) ** 2 for x in raws)
    if len(set(raws)) < 2 or variance == 0.0:
        return 1.0, mean_offset
    mean_reported = sum(reported) / len(reported)
    covariance = sum((x - mean_raw) * (y - mean_reported) for x, y in zip(raws, reported, strict=True))
    low, high = slope_bounds
    slope = min(max(covariance / variance, low), high)
    return slope, mean_reported - slope * mean_raw


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_finite_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
