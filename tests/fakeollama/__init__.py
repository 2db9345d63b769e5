"""A fake Ollama server (aiohttp) that speaks Ollama's wire format and records what reaches it.

Why: the proxy must be tested against something that behaves like Ollama where it matters to a
governor (num_ctx reloads, keep_alive, memory footprint, VRAM spill, streaming framing, errors)
without a GPU or a real model. Ground truth: the recorded exchanges in tests/data/ollama-0.33/
(real Ollama 0.33.0-rc2) and Ollama's source (server/sched.go, server/routes.go,
llm/llama_server.go, openai/, anthropic/, middleware/). This package imports nothing from the
project, so its "true" memory model cannot silently agree with a buggy estimator.

``FakeOllama(version=...)`` picks the behaviour. Before 0.33 (the default version is "0.32.15"):

- Memory: a runner's footprint is weights + the llama.cpp KV cache (GQA heads, key/value lengths,
  sliding-window layers with a 512 ubatch, pad 256, ``num_ctx x num_parallel``, KV cache type) +
  a compute buffer linear in ``num_ctx`` (``size_for``). A load that does not fit in the VRAM
  left free by other runners (idle ones are evicted first, LRU) puts the rest in system RAM:
  ``spilled``, as ``/api/ps`` shows with ``size_vram < size``. Every byte of VRAM is usable.
- A prompt longer than num_ctx is cut to num_ctx silently (counted in ``truncated``).

From 0.33 (Ollama 0.33.0-rc2, see scheduler.py for the scheduler):

- Default num_ctx by the VRAM tier of ``vram_bytes - gpu_overhead_bytes`` (>= 47 GiB: 262144,
  >= 23 GiB: 32768, else and CPU-only: 4096), overridden by ``context_length_env``
  (OLLAMA_CONTEXT_LENGTH) and a Modelfile ``num_ctx``; explicit values truncate, minimum 4,
  vision models at least 2048, clamped to the trained length.
- Memory: weights as llama.cpp allocates them, KV with the automatic ubatch, a compute buffer
  fitted to memory-matrix.txt, the logits buffer; llama.cpp keeps ``fit_target_bytes`` (1 GiB)
  free and spills the rest. /api/ps ``size`` leaves out the full-attention KV of sliding-window
  models, as 0.33 does (it keeps only the last KV log line per device).
- Chat history is cut oldest first, then a prompt over num_ctx-1 tokens keeps num_keep and
  loses its middle; ``truncate: false`` is llama-server's 400.
- OpenAI (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /v1/responses)
  and Anthropic (/v1/messages) routes in 0.33's exact framing.

Both: speed is ``token_delay_s`` per reply token and per ``PROMPT_TOKENS_PER_STEP`` prompt
tokens, loads ``load_delay_s`` plus weights at ``load_bytes_per_s``, all ``spill_slowdown``
times slower when spilled. ``time_scale`` compresses the delays: the fake sleeps
``delay / time_scale`` but reports durations in simulated time; waits on other requests are
wall time x ``time_scale``; keep_alive expiry is wall time. Not modelled: slowdown with a longer
context or a partial spill's size, parallel slots sharing throughput, prompt caching, context
shift during generation, multi-GPU, a real tokenizer (4 characters per token).
"""

from tests.fakeollama.engine import PROMPT_TOKENS_PER_STEP, Gen
from tests.fakeollama.memory import Footprint
from tests.fakeollama.models import (
    GEMMA3_TEMPLATE,
    FakeModel,
    gemma3_4b,
    gemma3_27b,
    gemma3_270m,
    gemma3_270m_8k,
    gemma3_270m_b,
    lfm2_1_2b,
    llama3_1_8b,
    llama_tiny,
    nomic_embed_text,
)
from tests.fakeollama.records import (
    Completion,
    Eviction,
    LoadedState,
    LoadEvent,
    Recorded,
    RunnerOptions,
    RunnerRequest,
)
from tests.fakeollama.scheduler import LoadPlan
from tests.fakeollama.server import FakeOllama
from tests.fakeollama.wire import (
    DEFAULT_KEEP_ALIVE_NS,
    FOREVER_NS,
    JSON_CT,
    GiB,
    MiB,
    human_number,
    parse_go_duration,
)

__all__ = [
    "DEFAULT_KEEP_ALIVE_NS",
    "FOREVER_NS",
    "GEMMA3_TEMPLATE",
    "JSON_CT",
    "PROMPT_TOKENS_PER_STEP",
    "Completion",
    "Eviction",
    "FakeModel",
    "FakeOllama",
    "Footprint",
    "Gen",
    "GiB",
    "LoadEvent",
    "LoadPlan",
    "LoadedState",
    "MiB",
    "Recorded",
    "RunnerOptions",
    "RunnerRequest",
    "gemma3_4b",
    "gemma3_27b",
    "gemma3_270m",
    "gemma3_270m_8k",
    "gemma3_270m_b",
    "human_number",
    "lfm2_1_2b",
    "llama3_1_8b",
    "llama_tiny",
    "nomic_embed_text",
    "parse_go_duration",
]
