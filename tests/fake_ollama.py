"""The fake Ollama, as tests import it: a façade over the ``tests.fakeollama`` package.

See tests/fakeollama/__init__.py for what the fake models (and what it does not), per version.
"""

from tests.fakeollama import (
    DEFAULT_KEEP_ALIVE_NS,
    FOREVER_NS,
    GEMMA3_TEMPLATE,
    JSON_CT,
    PROMPT_TOKENS_PER_STEP,
    Completion,
    Eviction,
    FakeModel,
    FakeOllama,
    Footprint,
    LoadedState,
    LoadEvent,
    LoadPlan,
    MiB,
    Recorded,
    RunnerOptions,
    RunnerRequest,
    gemma3_4b,
    gemma3_27b,
    gemma3_270m,
    gemma3_270m_8k,
    gemma3_270m_b,
    human_number,
    lfm2_1_2b,
    llama3_1_8b,
    llama_tiny,
    nomic_embed_text,
    parse_go_duration,
)
from tests.fakeollama.memory import KV_TYPE_BYTES
from tests.fakeollama.server import N_UBATCH

__all__ = [
    "DEFAULT_KEEP_ALIVE_NS", "FOREVER_NS", "GEMMA3_TEMPLATE", "JSON_CT", "KV_TYPE_BYTES", "N_UBATCH",
    "PROMPT_TOKENS_PER_STEP", "Completion", "Eviction", "FakeModel", "FakeOllama", "Footprint",
    "LoadEvent", "LoadPlan", "LoadedState", "MiB", "Recorded", "RunnerOptions", "RunnerRequest",
    "gemma3_4b", "gemma3_27b", "gemma3_270m", "gemma3_270m_8k", "gemma3_270m_b", "human_number",
    "lfm2_1_2b", "llama3_1_8b", "llama_tiny", "nomic_embed_text", "parse_go_duration",
]
