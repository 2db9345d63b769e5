"""The fake's "true" memory model (llama.cpp's buffers) and Ollama 0.33's own rough estimate.

Why both: the scheduler decides with Ollama's estimate (file size + f16 KV on every layer,
``llm.PredictServerVRAM``) while the GPU fills with what llama.cpp really allocates (weights,
KV with sliding-window layers, compute and output buffers). A governor sees the gap.
Nothing here is imported from the project: the fake's truth must not agree with a buggy estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.fakeollama.models import FakeModel
from tests.fakeollama.wire import GiB, MiB

KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
BATCH_DEFAULT, BATCH_CONSTRAINED, BATCH_MEDIUM, BATCH_LARGE = 512, 256, 1024, 2048
EMBEDDING_BATCH = 2048
MASK_BYTES_PER_CELL = 2  # the f16 KQ mask: one cell of the longest KV per ubatch token


def pad256(n: int) -> int:
    return -(-n // 256) * 256


def _heads(model: FakeModel) -> tuple[int, list[int]]:
    """(max head_count, head_count_kv per layer); arrays are per layer, 0 = no KV cache."""
    n_layer = int(model.info("block_count", 0))
    heads = model.info("attention.head_count", 1)
    n_head = int(max(heads) if isinstance(heads, list) else heads) or 1
    kv = model.info("attention.head_count_kv", heads)
    kv_per_layer = [int(kv[il] if isinstance(kv, list) else kv) for il in range(n_layer)]
    return n_head, kv_per_layer


def head_dim(model: FakeModel) -> int:
    """key_length, defaulting to embedding_length / head_count as llama.cpp does."""
    n_head, _ = _heads(model)
    return int(model.info("attention.key_length", int(model.info("embedding_length", 0)) // n_head))


def swa_layers(model: FakeModel) -> list[bool]:
    """Which layers use the sliding window (gemma3: il % 6 != 5, unless a pattern array says)."""
    n_layer = int(model.info("block_count", 0))
    window = model.info("attention.sliding_window")
    pattern = model.info("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return [bool(pattern[il]) for il in range(n_layer)]
    return [window is not None and model.arch == "gemma3" and il % 6 != 5 for il in range(n_layer)]


def kv_by_kind(
    model: FakeModel, num_ctx: int, *, parallel: int, n_ubatch: int, cache_type: str
) -> tuple[int, int]:
    """(full-attention KV bytes, sliding-window KV bytes) as llama.cpp allocates them (facts §3a).

    ``num_ctx`` is per sequence and already clamped; cells are pad256'd, KV is per sequence.
    """
    s = KV_TYPE_BYTES[cache_type]
    n_head, kv_heads = _heads(model)
    default_dim = int(model.info("embedding_length", 0)) // n_head
    kv_len = int(model.info("attention.key_length", default_dim))
    kv_len += int(model.info("attention.value_length", default_dim))
    window = model.info("attention.sliding_window")
    n_ctx = pad256(num_ctx * parallel)
    n_ctx_seq = pad256(n_ctx // parallel)
    full = swa = 0.0
    for n_kv, is_swa in zip(kv_heads, swa_layers(model), strict=True):
        if is_swa:
            swa += parallel * pad256(min(n_ctx_seq, int(window) + n_ubatch)) * n_kv * kv_len * s
        else:
            full += n_ctx_seq * parallel * n_kv * kv_len * s
    return int(full), int(swa)


def compute_bytes(model: FakeModel, num_ctx: int, *, parallel: int, n_ubatch: int) -> int:
    """0.33's compute buffer: activations per ubatch token plus the f16 attention mask.

    Fitted to memory-matrix.txt (gemma3-270m and llama-tiny within ~3%): activations are
    4 bytes x (3.5 x FFN + 2.5 x heads x head_dim) per ubatch token, the mask one cell per
    KV cell of a sequence per ubatch token. There is no closed form (facts §3a); plausible is enough.
    """
    per_token = model.compute_bytes_per_token
    if per_token <= 0:
        n_head, _ = _heads(model)
        ffn = model.info("feed_forward_length", 0)
        ffn = int(max(ffn) if isinstance(ffn, list) else ffn)
        per_token = int(4 * (3.5 * ffn + 2.5 * n_head * head_dim(model)))
    n_ctx_seq = pad256(pad256(num_ctx * parallel) // parallel)
    return per_token * n_ubatch + MASK_BYTES_PER_CELL * n_ctx_seq * n_ubatch


def vocab_size(model: FakeModel) -> int:
    if model.vocab_size > 0:
        return model.vocab_size
    v = model.info("vocab_size")
    return int(v) if v else 32000


def output_bytes(model: FakeModel, *, parallel: int) -> int:
    """The logits buffer: one f32 row of the vocabulary per sequence."""
    return 4 * vocab_size(model) * parallel


def ollama_estimate(model: FakeModel, num_ctx: int, parallel: int) -> int:
    """Ollama 0.33's ``PredictServerVRAM``: file size + f16 KV on every layer with head_dim =
    embedding_length / max(head_count) and min(head_count_kv); no SWA, no cache type (facts §3a)."""
    n_head, kv_heads = _heads(model)
    n_layer = len(kv_heads)
    emb = int(model.info("embedding_length", 0))
    ctx_total = min(num_ctx, model.context_length) * parallel
    return model.weights_bytes + 2 * n_layer * min(kv_heads, default=0) * (emb // n_head) * ctx_total * 2


def batch_surcharge(num_batch: int) -> int:
    """sched.go generationBatchSurcharge: what a big ubatch adds to the estimate."""
    if num_batch >= BATCH_LARGE:
        return 2 * GiB
    if num_batch >= BATCH_MEDIUM:
        return 768 * MiB
    return 0


def _batch_fits(batch: int, predicted: int, available: int) -> bool:
    if predicted == 0 or available == 0:
        return True
    threshold = available * 80 // 100
    if predicted > threshold:
        return False
    if batch >= BATCH_LARGE and predicted > available * 60 // 100:
        return False
    if batch >= BATCH_MEDIUM and predicted > available * 75 // 100:
        return False
    return batch_surcharge(batch) <= threshold - predicted


def automatic_batch(
    ctx_total: int, predicted: int, available: int, *, cuda_without_fa: bool = False, small_gpu: bool = False
) -> int:
    """sched.go automaticGenerationBatch: by context tier, stepped down until the estimate fits."""
    if cuda_without_fa:
        return BATCH_CONSTRAINED if ctx_total > 4096 and small_gpu else BATCH_DEFAULT
    batch = BATCH_LARGE if ctx_total > 32768 else BATCH_MEDIUM if ctx_total > 4096 else BATCH_DEFAULT
    while batch > BATCH_DEFAULT and not _batch_fits(batch, predicted, available):
        batch = BATCH_MEDIUM if batch > BATCH_MEDIUM else BATCH_DEFAULT
    return batch


def next_lower_auto_num_ctx(num_ctx: int) -> int | None:
    """sched.go nextLowerAutoNumCtx: the one retry an automatic context gets after a load OOM."""
    if num_ctx > 32768:
        return 32768
    if num_ctx > 4096:
        return 4096
    return None


@dataclass(frozen=True)
class Footprint:
    """What one runner really allocates, in bytes, and what /api/ps reports of it.

    ``reported`` leaves out the full-attention KV of a model that also has sliding-window
    layers: 0.33 keeps only the last "KV buffer size" log line per device, the SWA one
    (memory-matrix.txt: ps.size = model + SWA KV + compute + output).
    """

    weights: int
    kv_full: int
    kv_swa: int
    compute: int
    output: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_full + self.kv_swa + self.compute + self.output

    @property
    def hidden_kv(self) -> int:
        return self.kv_full if self.kv_swa and self.kv_full else 0

    @property
    def reported(self) -> int:
        return self.total - self.hidden_kv


def footprint(model: FakeModel, num_ctx: int, *, parallel: int, n_ubatch: int, cache_type: str) -> Footprint:
    """The 0.33 runner's buffers for a clamped per-sequence ``num_ctx``."""
    full, swa = kv_by_kind(model, num_ctx, parallel=parallel, n_ubatch=n_ubatch, cache_type=cache_type)
    weights = model.model_buffer_bytes or model.weights_bytes
    return Footprint(
        weights,
        full,
        swa,
        compute_bytes(model, num_ctx, parallel=parallel, n_ubatch=n_ubatch),
        output_bytes(model, parallel=parallel),
    )
