"""ModelFacts parsing and the memory model: KV cache sizes pinned to docs/ollama-rules.md §6."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from policies.memory import (
    GIB,
    KV_BYTES_PER_ELEMENT,
    LEGACY_KV_BYTES_PER_ELEMENT,
    MIB,
    Calibration,
    auto_num_batch,
    compute_buffer_bytes,
    effective_parallel,
    estimate,
    estimate_bytes,
    format_bytes,
    kv_cache_bytes,
    kv_cache_split,
    largest_fitting_ctx,
    legacy_predicted_bytes,
    ollama_predicted_bytes,
    output_buffer_bytes,
    parse_size,
    ps_unreported_bytes,
)
from policies.model import (
    IncompleteModelFacts,
    ModelFacts,
    parse_version,
    per_layer,
    uses_llama_server,
)

DATA = Path(__file__).parent / "data"

V0_24 = (0, 24, 0)

GEMMA3_270M_TAGS_V0_24 = {
    "name": "gemma3-270m:latest",
    "model": "gemma3-270m:latest",
    "size": 253113841,
    "digest": "d929f07bd2c39a197066f5b10aab6e62aabbb02f748322780c0b9135a6fe8385",
}
"""The ``/api/tags`` row recorded beside show.txt (ollama-transcripts/misc_endpoints.txt)."""


def show_gemma3_270m() -> dict[str, Any]:
    """The real v0.24.0 ``/api/show`` body for gemma3-270m, trimmed (tests/data)."""
    data: dict[str, Any] = json.loads((DATA / "show_gemma3_270m.json").read_text())
    return data


def gemma3_270m(**overrides: Any) -> ModelFacts:
    """gemma3-270m parsed from the recorded show and tags, with ``overrides`` applied."""
    parsed = ModelFacts.from_show("gemma3-270m", show_gemma3_270m(), GEMMA3_270M_TAGS_V0_24)
    return dataclasses.replace(parsed, **overrides)


def llama31_8b(**overrides: Any) -> ModelFacts:
    """llama3.1:8b: 32 layers, 8 KV heads of 128, no sliding window (docs/ollama-rules.md §6 worked example)."""
    base = ModelFacts(
        name="llama3.1:8b",
        architecture="llama",
        context_length=131072,
        block_count=32,
        embedding_length=4096,
        head_count=32,
        head_count_kv=8,
        key_length=128,
        value_length=128,
        vocab_size=128256,
        weights_bytes=4_920_753_328,
    )
    return dataclasses.replace(base, **overrides)


def gemma3_27b(**overrides: Any) -> ModelFacts:
    """gemma3:27b: 62 layers, 16 KV heads of 128, window 1024, 10 global layers."""
    base = ModelFacts(
        name="gemma3:27b",
        architecture="gemma3",
        context_length=131072,
        block_count=62,
        embedding_length=5376,
        head_count=32,
        head_count_kv=16,
        key_length=128,
        value_length=128,
        sliding_window=1024,
        vocab_size=262144,
        weights_bytes=17_396_936_446,
    )
    return dataclasses.replace(base, **overrides)


def gemma3_4b(**overrides: Any) -> ModelFacts:
    """gemma3:4b: 34 layers, 4 KV heads of 256, window 1024, 5 global layers."""
    base = ModelFacts(
        name="gemma3:4b",
        architecture="gemma3",
        context_length=131072,
        block_count=34,
        embedding_length=2560,
        head_count=8,
        head_count_kv=4,
        key_length=256,
        value_length=256,
        sliding_window=1024,
        vocab_size=262144,
        weights_bytes=3_338_801_804,
    )
    return dataclasses.replace(base, **overrides)


class TestParseVersion:
    @pytest.mark.parametrize(
        ("text", "version"),
        [
            ("0.32.15", (0, 32, 15)),
            ("0.33.0-rc2", (0, 33, 0)),
            ("v0.12.0", (0, 12, 0)),
            ("0.6", (0, 6, 0)),
            ("1", (1, 0, 0)),
        ],
    )
    def test_parse(self, text: str, version: tuple[int, int, int]) -> None:
        """Release candidates count as their release; missing parts count as 0."""
        assert parse_version(text) == version

    def test_garbage(self) -> None:
        """Text that is no version says what was expected."""
        with pytest.raises(ValueError, match=r"expected MAJOR\.MINOR\.PATCH"):
            parse_version("latest")

    @pytest.mark.parametrize(
        ("version", "expected"),
        [(None, True), ((0, 0, 0), True), ((0, 29, 9), False), ((0, 24, 0), False), ((0, 30, 0), True)],
    )
    def test_engine(self, version: tuple[int, int, int] | None, expected: bool) -> None:
        """0.30 switched to llama-server; unknown and dev builds are taken as current."""
        assert uses_llama_server(version) is expected


class TestPerLayer:
    def test_scalar(self) -> None:
        """One number applies to every layer."""
        assert per_layer(8, 3) == (8, 8, 8)

    def test_array(self) -> None:
        """A per-layer array is kept as it is."""
        assert per_layer([0, 8, 0], 3) == (0, 8, 0)

    def test_wrong_length(self) -> None:
        """An array that does not match the layer count is refused, as llama.cpp does."""
        with pytest.raises(ValueError, match="expected 3 per-layer values, got 2"):
            per_layer([8, 8], 3)

    def test_unknown(self) -> None:
        """An unknown value cannot be expanded."""
        with pytest.raises(ValueError, match="unknown"):
            per_layer(None, 3)


class TestFromShow:
    def test_real_show(self) -> None:
        """Every field of the recorded gemma3-270m show and tags lands where it belongs."""
        model = gemma3_270m()
        assert model.name == "gemma3-270m"
        assert model.digest == GEMMA3_270M_TAGS_V0_24["digest"]
        assert model.architecture == "gemma3"
        assert model.context_length == 32768
        assert model.block_count == 18
        assert model.embedding_length == 640
        assert (model.head_count, model.head_count_kv) == (4, 1)
        assert (model.key_length, model.value_length) == (256, 256)
        assert (model.key_length_swa, model.value_length_swa) == (None, None)
        assert model.sliding_window == 512
        assert model.sliding_window_pattern is None
        assert model.vocab_size == 262144  # token_embd.weight shape [640, 262144]
        assert model.weights_bytes == 253113841
        assert model.capabilities == ("completion",)
        assert model.modelfile_num_ctx is None
        assert (model.family, model.parameter_size, model.quantization_level) == (
            "gemma3",
            "268.10M",
            "Q4_K_M",
        )

    def test_real_show_swa_layers(self) -> None:
        """gemma3 keeps full attention on every sixth layer: 5, 11 and 17 of 18."""
        model = gemma3_270m()
        assert [il for il in range(18) if not model.is_swa_layer(il)] == [5, 11, 17]

    def test_model_info_kept_read_only_without_tokenizer_arrays(self) -> None:
        """Policies can read unmodelled keys, but not mutate them or carry the token list."""
        show = show_gemma3_270m()
        show["model_info"]["tokenizer.ggml.tokens"] = ["<pad>", "<eos>"]
        model = ModelFacts.from_show("m", show)
        assert model.model_info["gemma3.rope.freq_base"] == 1000000
        assert "tokenizer.ggml.tokens" not in model.model_info
        with pytest.raises(TypeError):
            model.model_info["x"] = 1  # type: ignore[index]

    def test_modelfile_num_ctx_from_parameters(self) -> None:
        """The ``%-30s %#v`` parameter lines carry the Modelfile's num_ctx."""
        show = {
            "parameters": 'num_ctx                        8192\nstop                           "<end_of_turn>"'
        }
        assert ModelFacts.from_show("m", show).modelfile_num_ctx == 8192

    def test_modelfile_num_ctx_from_modelfile(self) -> None:
        """Without parameters, the Modelfile's PARAMETER line is read instead."""
        show = {"modelfile": "FROM x\nPARAMETER num_ctx 16384\nPARAMETER stop <eot>\n"}
        assert ModelFacts.from_show("m", show).modelfile_num_ctx == 16384

    def test_parameters_win_over_modelfile(self) -> None:
        """The parameters text is what Ollama resolved, so it is preferred."""
        show = {"parameters": "num_ctx 4096", "modelfile": "PARAMETER num_ctx 16384\n"}
        assert ModelFacts.from_show("m", show).modelfile_num_ctx == 4096

    @pytest.mark.parametrize("blanked", [[], None])
    def test_blanked_arrays_are_unknown(self, blanked: Any) -> None:
        """A non-verbose show blanks per-layer arrays; they become None, not a wrong number."""
        show = {
            "model_info": {
                "general.architecture": "lfm2",
                "lfm2.block_count": 16,
                "lfm2.attention.head_count": 32,
                "lfm2.attention.head_count_kv": blanked,
            }
        }
        model = ModelFacts.from_show("lfm2", show)
        assert model.head_count_kv is None
        with pytest.raises(IncompleteModelFacts, match="verbose:true"):
            kv_cache_bytes(model, 4096)

    def test_verbose_per_layer_arrays(self) -> None:
        """A verbose show gives per-layer KV heads, zeros included."""
        show = {
            "model_info": {
                "general.architecture": "lfm2",
                "lfm2.attention.head_count_kv": [0, 0, 8, 0, 0, 8],
            }
        }
        assert ModelFacts.from_show("lfm2", show).head_count_kv == (0, 0, 8, 0, 0, 8)

    def test_missing_head_count_kv_means_multi_head(self) -> None:
        """A GGUF without head_count_kv has as many KV heads as query heads (llama.cpp default)."""
        show = {"model_info": {"general.architecture": "gpt2", "gpt2.attention.head_count": 12}}
        assert ModelFacts.from_show("gpt2", show).head_count_kv == 12

    def test_default_head_dim(self) -> None:
        """Without key/value_length the head size is embedding_length / head_count."""
        show = {
            "model_info": {
                "general.architecture": "llama",
                "llama.embedding_length": 4096,
                "llama.attention.head_count": 32,
            }
        }
        model = ModelFacts.from_show("llama", show)
        assert (model.key_length, model.value_length) == (128, 128)

    def test_sliding_window_zero_is_none(self) -> None:
        """A window of 0 switches SWA off in llama.cpp."""
        show = {"model_info": {"general.architecture": "gemma3", "gemma3.attention.sliding_window": 0}}
        assert ModelFacts.from_show("m", show).sliding_window is None

    def test_pattern_array(self) -> None:
        """A bool pattern array is read per layer."""
        show = {
            "model_info": {
                "general.architecture": "gemma4",
                "gemma4.attention.sliding_window_pattern": [True, True, False],
            }
        }
        assert ModelFacts.from_show("m", show).sliding_window_pattern == (True, True, False)

    def test_pattern_period(self) -> None:
        """A scalar pattern is a period, expanded like llama.cpp's set_swa_pattern."""
        show = {
            "model_info": {
                "general.architecture": "cohere2",
                "cohere2.block_count": 8,
                "cohere2.attention.sliding_window_pattern": 4,
            }
        }
        pattern = ModelFacts.from_show("m", show).sliding_window_pattern
        assert pattern == (True, True, True, False, True, True, True, False)

    def test_whole_floats_are_numbers(self) -> None:
        """Some converters write counts as floats (gemma3n shared_kv_layers = 10.0)."""
        show = {
            "model_info": {
                "general.architecture": "gemma3n",
                "gemma3n.attention.shared_kv_layers": 10.0,
                "gemma3n.block_count": True,
            }
        }
        model = ModelFacts.from_show("m", show)
        assert model.shared_kv_layers == 10
        assert model.block_count is None  # a bool is not a count

    def test_tags_fill_gaps(self) -> None:
        """v0.32.15 /api/tags rows carry context, embedding size and capabilities."""
        tags = {
            "size": 253113579,
            "digest": "38c4052d",
            "details": {
                "family": "gemma3",
                "parameter_size": "268.10M",
                "quantization_level": "Q4_K_M",
                "context_length": 32768,
                "embedding_length": 640,
            },
            "capabilities": ["completion"],
        }
        model = ModelFacts.from_show("m", {}, tags)
        assert (model.context_length, model.embedding_length) == (32768, 640)
        assert model.capabilities == ("completion",)
        assert (model.family, model.weights_bytes, model.digest) == ("gemma3", 253113579, "38c4052d")

    def test_vocab_from_tokens_or_key(self) -> None:
        """The vocabulary comes from vocab_size, else the (verbose) token list."""
        with_key = {"model_info": {"general.architecture": "x", "x.vocab_size": 32000}}
        with_tokens = {"model_info": {"general.architecture": "x", "tokenizer.ggml.tokens": ["a", "b"]}}
        assert ModelFacts.from_show("m", with_key).vocab_size == 32000
        assert ModelFacts.from_show("m", with_tokens).vocab_size == 2

    @pytest.mark.parametrize(
        "show",
        [
            {},
            {"model_info": "nope", "details": [], "capabilities": "completion", "tensors": {}},
            {"model_info": {"general.architecture": 7, "7.block_count": 3}},
            {"model_info": {"general.architecture": "x", "x.attention.head_count": ["a"]}},
            {"parameters": 5, "modelfile": None},
        ],
    )
    def test_odd_shapes_never_raise(self, show: dict[str, Any]) -> None:
        """Whatever well-formed JSON arrives, unknown facts are None and nothing raises."""
        model = ModelFacts.from_show("m", show, {"size": "big"})
        assert model.name == "m"
        assert model.block_count is None
        assert model.weights_bytes is None


class TestIsSwaLayer:
    def test_gemma2_alternates(self) -> None:
        """gemma2 starts with a sliding layer and alternates."""
        model = ModelFacts(name="m", architecture="gemma2", sliding_window=4096)
        assert [model.is_swa_layer(il) for il in range(4)] == [True, False, True, False]

    def test_gemma3n_period_five(self) -> None:
        """gemma3n has four sliding layers then a global one."""
        model = ModelFacts(name="m", architecture="gemma3n", sliding_window=512)
        assert [il for il in range(10) if not model.is_swa_layer(il)] == [4, 9]

    def test_pattern_wins(self) -> None:
        """A GGUF pattern overrides the architecture's built-in period."""
        pattern = (False, True, True)
        model = ModelFacts(
            name="m", architecture="gemma3", sliding_window=512, sliding_window_pattern=pattern
        )
        assert [model.is_swa_layer(il) for il in range(3)] == [False, True, True]

    def test_no_window_no_swa(self) -> None:
        """Without a window no layer is sliding, whatever the architecture."""
        assert not ModelFacts(name="m", architecture="gemma3").is_swa_layer(0)

    def test_unknown_architecture_is_full_attention(self) -> None:
        """An unknown SWA layout is treated as full attention: the larger, safe estimate."""
        assert not ModelFacts(name="m", architecture="mistral", sliding_window=4096).is_swa_layer(0)


class TestKvCacheBytes:
    @pytest.mark.parametrize(
        ("kv_cache_type", "expected_bytes"),
        [
            # 32 layers x 8192 cells x 8 heads x (128 + 128) x 2 B = 1,073,741,824 = 1024 MiB
            ("f16", 1024 * MIB),
            # rows of 8 x 128 = 1024 elements = 32 blocks of 34 B = 1088 B, K and V:
            # 32 x 8192 x 2 x 1088 = 570,425,344 = 544 MiB
            ("q8_0", 544 * MIB),
            # 32 blocks of 18 B = 576 B per row: 32 x 8192 x 2 x 576 = 301,989,888 = 288 MiB
            ("q4_0", 288 * MIB),
            # 4 B per element: twice f16
            ("f32", 2048 * MIB),
        ],
    )
    def test_llama31_8b(self, kv_cache_type: str, expected_bytes: int) -> None:
        """llama3.1:8b at 8192 matches docs/ollama-rules.md §6: 1024 / 544 / 288 MiB."""
        assert kv_cache_bytes(llama31_8b(), 8192, kv_cache_type=kv_cache_type) == expected_bytes

    @pytest.mark.parametrize(
        ("kv_cache_type", "expected_bytes"),
        [
            # Ollama <= 0.24 counted 1 B (q8_0) and 0.5 B (q4_0) per element
            ("q8_0", 512 * MIB),
            ("q4_0", 256 * MIB),
            ("f16", 1024 * MIB),
        ],
    )
    def test_llama31_8b_legacy_types(self, kv_cache_type: str, expected_bytes: int) -> None:
        """Before 0.30 quantised caches were counted at 1 and 0.5 bytes per element."""
        model = llama31_8b()
        assert kv_cache_bytes(model, 8192, kv_cache_type=kv_cache_type, version=V0_24) == (expected_bytes)

    def test_bytes_per_element_tables(self) -> None:
        """The published per-element sizes match ggml's block layouts."""
        assert KV_BYTES_PER_ELEMENT["f16"] == 2.0
        assert KV_BYTES_PER_ELEMENT["bf16"] == 2.0
        assert KV_BYTES_PER_ELEMENT["f32"] == 4.0
        assert KV_BYTES_PER_ELEMENT["q8_0"] == 34 / 32
        assert KV_BYTES_PER_ELEMENT["q4_0"] == 18 / 32
        assert LEGACY_KV_BYTES_PER_ELEMENT["q8_0"] == 1.0
        assert LEGACY_KV_BYTES_PER_ELEMENT["q4_0"] == 0.5

    @pytest.mark.parametrize(
        ("parallel", "n_ubatch", "expected_bytes"),
        [
            # 8 KiB per token per layer (16 heads x 256 x 2 B).
            # global: 10 layers x 131072 cells x 8 KiB = 10 GiB
            # SWA:    52 layers x pad256(1024 + 512) = 1536 cells x 8 KiB = 624 MiB
            # total 11,391,729,664 B = 10.61 GiB
            (1, 512, 10 * GIB + 624 * MIB),
            # SWA: 52 x pad256(1024 + 2048) = 3072 x 8 KiB = 1248 MiB -> 12,046,041,088 = 11.22 GiB
            (1, 2048, 10 * GIB + 1248 * MIB),
            # -c 393216 -np 3: global 10 x 3 x 131072 x 8 KiB = 30 GiB
            # SWA 52 x 3 x 1536 x 8 KiB = 1872 MiB -> 34,175,188,992 = 31.83 GiB
            (3, 512, 30 * GIB + 1872 * MIB),
            # SWA 52 x 3 x 3072 x 8 KiB = 3744 MiB -> 36,138,123,264 = 33.66 GiB
            (3, 2048, 30 * GIB + 3744 * MIB),
        ],
    )
    def test_gemma3_27b(self, parallel: int, n_ubatch: int, expected_bytes: int) -> None:
        """gemma3:27b at 131072 matches docs/ollama-rules.md §6: 10.6-11.2 GiB at P=1, 31.8-33.7 GiB at P=3."""
        assert kv_cache_bytes(gemma3_27b(), 131072, parallel, n_ubatch=n_ubatch) == expected_bytes

    def test_gemma3_27b_without_swa(self) -> None:
        """Without SWA, P=3 would need 62 x 393216 x 8 KiB = 186 GiB, the facts' comparison."""
        model = gemma3_27b(sliding_window=None)
        assert kv_cache_bytes(model, 131072, 3) == 186 * GIB

    def test_gemma3_27b_legacy_engine(self) -> None:
        """Ollama's own engine (<= 0.24) at P=3 needs 31.5 GiB.

        global: 10 x pad256(3 x 131072) x 8 KiB = 30 GiB
        SWA: 52 x pad256(3 x (1024 + 1) + 512 = 3587) = 3840 cells x 8 KiB = 1560 MiB
        total 33,848,033,280 B = 31.52 GiB
        """
        assert kv_cache_bytes(gemma3_27b(), 131072, 3, version=V0_24) == 30 * GIB + 1560 * MIB

    @pytest.mark.parametrize(
        ("n_ubatch", "expected_bytes"),
        [
            # 4 KiB per token per layer (4 heads x 512 x 2 B)
            # global 5 x 8192 x 4 KiB = 160 MiB; SWA 29 x 1536 x 4 KiB = 174 MiB -> 334 MiB
            (512, 334 * MIB),
            # SWA 29 x pad256(1024 + 1024) = 2048 x 4 KiB = 232 MiB -> 392 MiB
            (1024, 392 * MIB),
        ],
    )
    def test_gemma3_4b(self, n_ubatch: int, expected_bytes: int) -> None:
        """gemma3:4b at 8192 matches docs/ollama-rules.md §6: 334-392 MiB."""
        assert kv_cache_bytes(gemma3_4b(), 8192, n_ubatch=n_ubatch) == expected_bytes

    def test_gemma3_4b_without_swa(self) -> None:
        """Without SWA it would be 34 x 8192 x 4 KiB = 1088 MiB."""
        assert kv_cache_bytes(gemma3_4b(sliding_window=None), 8192) == 1088 * MIB

    def test_clamped_to_trained_context(self) -> None:
        """A num_ctx above the trained 32768 costs what 32768 costs.

        3 global x 32768 x 1 KiB = 96 MiB; 15 SWA x pad256(512 + 512) x 1 KiB = 15 MiB.
        """
        model = gemma3_270m()
        assert kv_cache_bytes(model, 262144) == kv_cache_bytes(model, 32768) == 111 * MIB

    def test_padding_per_slot(self) -> None:
        """llama-server pads the total and then each slot to 256 cells; the old engine only the total.

        128 KiB per cell (32 layers x 4 KiB). num_ctx 1100 x 3 slots: n_ctx = pad256(3300) = 3328,
        n_ctx_seq = pad256(3328 / 3 = 1109) = 1280, cells 3840 -> 480 MiB; pre-0.30 3328 -> 416 MiB.
        """
        model = llama31_8b()
        assert kv_cache_bytes(model, 1100, 3) == 480 * MIB
        assert kv_cache_bytes(model, 1100, 3, version=V0_24) == 416 * MIB

    def test_layers_without_kv(self) -> None:
        """Layers with 0 KV heads (convolution, recurrent) hold no cache.

        2 attention layers x 4096 cells x 8 heads x (64 + 64) x 2 B = 16 MiB.
        """
        model = ModelFacts(
            name="lfm2",
            architecture="lfm2",
            block_count=6,
            head_count=16,
            head_count_kv=(0, 0, 8, 0, 0, 8),
            key_length=64,
            value_length=64,
        )
        assert kv_cache_bytes(model, 4096) == 16 * MIB

    def test_per_layer_heads_and_swa_head_size(self) -> None:
        """gemma4-style layers differ in KV heads and head size between SWA and global.

        SWA: 5 layers x pad256(512 + 512) = 1024 cells x 8 heads x (256 + 256) x 2 B = 40 MiB.
        global: 1 layer x 8192 cells x 2 heads x (512 + 512) x 2 B = 32 MiB.
        """
        model = ModelFacts(
            name="gemma4",
            architecture="gemma4",
            block_count=6,
            head_count=16,
            head_count_kv=(8, 8, 8, 8, 8, 2),
            key_length=512,
            value_length=512,
            key_length_swa=256,
            value_length_swa=256,
            sliding_window=512,
            sliding_window_pattern=(True, True, True, True, True, False),
        )
        assert kv_cache_bytes(model, 8192) == 72 * MIB

    @pytest.mark.parametrize(("shared_kv_layers", "expected_bytes"), [(None, 64 * MIB), (10, 64 * MIB)])
    def test_shared_kv_layers(self, shared_kv_layers: int | None, expected_bytes: int) -> None:
        """gemma3n's last 10 of 30 layers reuse earlier caches (hard-coded or from the GGUF).

        The first 20 layers: globals at 4, 9, 14, 19. 2 KiB per cell per layer (2 heads x 512 x 2 B).
        global 4 x 4096 x 2 KiB = 32 MiB; SWA 16 x pad256(512 + 512) x 2 KiB = 32 MiB.
        """
        model = ModelFacts(
            name="gemma3n",
            architecture="gemma3n",
            block_count=30,
            head_count=8,
            head_count_kv=2,
            key_length=256,
            value_length=256,
            sliding_window=512,
            shared_kv_layers=shared_kv_layers,
        )
        assert kv_cache_bytes(model, 4096) == expected_bytes

    def test_unknown_cache_type(self) -> None:
        """An unknown cache type names the accepted ones."""
        with pytest.raises(ValueError, match=r"expected one of .*q8_0"):
            kv_cache_bytes(llama31_8b(), 8192, kv_cache_type="q3_k")

    def test_legacy_refuses_bf16(self) -> None:
        """Ollama <= 0.24 accepted only f16, q8_0 and q4_0 (and f32 internally)."""
        with pytest.raises(ValueError, match=r"before 0\.30"):
            kv_cache_bytes(llama31_8b(), 8192, kv_cache_type="bf16", version=V0_24)

    def test_missing_layers(self) -> None:
        """A model without block_count cannot be sized; the error names the field."""
        with pytest.raises(IncompleteModelFacts, match="block_count"):
            kv_cache_bytes(ModelFacts(name="m"), 8192)

    def test_bad_num_ctx(self) -> None:
        """A context below one token is a programming error."""
        with pytest.raises(ValueError, match="at least 1"):
            kv_cache_bytes(llama31_8b(), 0)

    def test_parallel_zero_is_one(self) -> None:
        """OLLAMA_NUM_PARALLEL=0 means one slot, as Ollama's max(P, 1)."""
        assert kv_cache_bytes(llama31_8b(), 8192, 0) == kv_cache_bytes(llama31_8b(), 8192, 1)


class TestEffectiveParallel:
    @pytest.mark.parametrize(
        ("model", "expected"),
        [
            (llama31_8b(), 4),
            (llama31_8b(architecture="qwen3next"), 1),
            (llama31_8b(architecture="nemotron_h_moe"), 1),
            (llama31_8b(capabilities=("embedding",)), 1),
        ],
    )
    def test_forced_single_slot(self, model: ModelFacts, expected: int) -> None:
        """Some architectures and every embedding model get one slot whatever is configured."""
        assert effective_parallel(model, 4) == expected

    def test_zero_is_one(self) -> None:
        """A configured 0 still means one slot."""
        assert effective_parallel(llama31_8b(), 0) == 1


class TestOllamaPredictedBytes:
    @pytest.mark.parametrize(
        ("model", "num_ctx", "parallel", "kv_term_bytes"),
        [
            # 2 x 62 x 16 x (5376 / 32 = 168) x 131072 x 2 = 87,375,740,928 B = 81.4 GiB
            (gemma3_27b(), 131072, 1, 87_375_740_928),
            (gemma3_27b(), 131072, 3, 3 * 87_375_740_928),  # 244.1 GiB
            # 2 x 34 x 4 x (2560 / 8 = 320) x 8192 x 2 = 1360 MiB
            (gemma3_4b(), 8192, 1, 1360 * MIB),
            # 2 x 32 x 8 x 128 x 8192 x 2 = 1 GiB, the same as the real cache
            (llama31_8b(), 8192, 1, 1 * GIB),
        ],
    )
    def test_head_predictor(self, model: ModelFacts, num_ctx: int, parallel: int, kv_term_bytes: int) -> None:
        """Ollama's own predictor overestimates SWA models, as docs/ollama-rules.md §5 shows."""
        assert model.weights_bytes is not None
        predicted_bytes = ollama_predicted_bytes(model, num_ctx, parallel)
        assert predicted_bytes == model.weights_bytes + kv_term_bytes


class TestAutoNumBatch:
    @pytest.mark.parametrize(
        ("num_ctx", "parallel", "expected"),
        [(4096, 1, 512), (4097, 1, 1024), (32768, 1, 1024), (32769, 1, 2048), (16384, 3, 2048)],
    )
    def test_by_total_context(self, num_ctx: int, parallel: int, expected: int) -> None:
        """2048 above 32768 total cells, 1024 above 4096, else 512."""
        assert auto_num_batch(num_ctx, parallel) == expected

    @pytest.mark.parametrize(("fraction", "expected"), [(0.5, 2048), (0.7, 1024), (0.8, 512)])
    def test_steps_down_when_tight(self, fraction: float, expected: int) -> None:
        """2048 needs the prediction within 60% of free memory, 1024 within 75%."""
        free_bytes = 10 * GIB
        predicted_bytes = int(fraction * free_bytes)
        got = auto_num_batch(65536, predicted_bytes=predicted_bytes, free_bytes=free_bytes)
        assert got == expected

    def test_legacy(self) -> None:
        """Before 0.30 the batch was always 512."""
        assert auto_num_batch(131072, version=V0_24) == 512


class TestEstimate:
    def test_breakdown_adds_up(self) -> None:
        """Weights, KV and compute add up to the raw total, which is the total uncalibrated."""
        result = estimate(gemma3_27b(), 131072)
        assert result.n_ubatch == 2048
        assert result.kv_bytes == 10 * GIB + 1248 * MIB
        assert result.raw_bytes == result.weights_bytes + result.kv_bytes + result.compute_bytes
        assert result.total_bytes == result.raw_bytes == estimate_bytes(gemma3_27b(), 131072)

    def test_reports_clamped_context(self) -> None:
        """The breakdown shows the context Ollama will really load."""
        assert estimate(gemma3_270m(), 131072).num_ctx == 32768

    def test_monotonic_in_num_ctx(self) -> None:
        """More context never costs less, across n_ubatch steps too (binary search relies on it)."""
        model = gemma3_4b()
        totals = [estimate_bytes(model, num_ctx) for num_ctx in range(1024, 131073, 1024)]
        assert totals == sorted(totals)

    def test_explicit_n_ubatch(self) -> None:
        """A request's num_batch overrides the automatic choice."""
        assert estimate(gemma3_4b(), 8192, n_ubatch=512).kv_bytes == 334 * MIB

    def test_calibration_applied(self) -> None:
        """A calibration corrects the total but not the raw figure."""
        calibration = Calibration(offset_bytes=float(GIB))
        result = estimate(llama31_8b(), 8192, calibration=calibration)
        assert result.total_bytes == result.raw_bytes + GIB

    def test_needs_weights(self) -> None:
        """Without the /api/tags size there is no estimate, and the error says where to get it."""
        with pytest.raises(IncompleteModelFacts, match="/api/tags"):
            estimate_bytes(llama31_8b(weights_bytes=None), 8192)


class TestCalibration:
    def test_identity_by_default(self) -> None:
        """An empty calibration changes nothing."""
        assert Calibration().apply(123_456_789) == 123_456_789

    def test_one_observation_fixes_offset(self) -> None:
        """One load makes the estimate exact at that context, with slope 1."""
        calibration = Calibration().observe(8192, 5 * GIB, 5 * GIB + 300 * MIB)
        assert calibration.slope == 1.0
        assert calibration.apply(5 * GIB) == 5 * GIB + 300 * MIB

    def test_newest_wins_per_context(self) -> None:
        """A second load at the same context replaces the first sample."""
        calibration = Calibration().observe(8192, GIB, GIB + 10).observe(8192, GIB, GIB + 20)
        assert calibration.samples == ((8192, GIB, GIB + 20),)
        assert calibration.apply(GIB) == GIB + 20

    def test_converges_to_true_footprint(self) -> None:
        """Two loads learn true = 1.07 x raw + 350 MiB; a third context is then within 1%."""
        model = gemma3_27b()

        def raw_bytes(num_ctx: int) -> int:
            return estimate(model, num_ctx).raw_bytes

        def true_bytes(num_ctx: int) -> int:
            return round(1.07 * raw_bytes(num_ctx) + 350 * MIB)

        calibration = Calibration()
        for num_ctx in (8192, 131072):
            calibration = calibration.observe(num_ctx, raw_bytes(num_ctx), true_bytes(num_ctx))
        calibrated_bytes = estimate_bytes(model, 32768, calibration=calibration)
        assert calibrated_bytes == pytest.approx(true_bytes(32768), rel=0.01)
        assert raw_bytes(32768) != pytest.approx(true_bytes(32768), rel=0.01)

    def test_recorded_v0_24_sizes(self) -> None:
        """Fitted on two recorded /api/ps sizes, the other two are predicted within 1%.

        gemma3-270m on Ollama v0.24.0 (ollama-transcripts/README.md): 2048 -> 467,313,152 B,
        4096 -> 477,798,912, 8192 -> 494,576,128, 32768 -> 595,239,424.
        """
        model = gemma3_270m()
        reported = {2048: 467_313_152, 4096: 477_798_912, 8192: 494_576_128, 32768: 595_239_424}
        calibration = Calibration()
        for num_ctx in (2048, 32768):
            raw_bytes = estimate(model, num_ctx, version=V0_24).raw_bytes
            calibration = calibration.observe(num_ctx, raw_bytes, reported[num_ctx])
        for num_ctx in (4096, 8192):
            calibrated_bytes = estimate_bytes(model, num_ctx, version=V0_24, calibration=calibration)
            assert calibrated_bytes == pytest.approx(reported[num_ctx], rel=0.01)

    def test_keeps_latest_samples(self) -> None:
        """Only the newest MAX_SAMPLES contexts are kept."""
        calibration = Calibration()
        for num_ctx in range(1, 21):
            calibration = calibration.observe(num_ctx * 1024, num_ctx * GIB, num_ctx * GIB)
        assert len(calibration.samples) == Calibration.MAX_SAMPLES
        assert calibration.samples[0][0] == 5 * 1024

    def test_slope_is_bounded(self) -> None:
        """A wild slope from two close samples is held at the bound and the offset refitted."""
        calibration = (
            Calibration().observe(4096, 10 * GIB, 10 * GIB).observe(8192, 10 * GIB + MIB, 10 * GIB + 5 * MIB)
        )
        assert calibration.slope == Calibration.SLOPE_BOUNDS[1]
        midpoint_raw = 10 * GIB + MIB // 2
        assert calibration.apply(midpoint_raw) == pytest.approx(10 * GIB + 2.5 * MIB)

    @pytest.mark.parametrize(("num_ctx", "raw", "reported"), [(0, 1, 1), (1, 0, 1), (1, 1, -5), (1, 1, True)])
    def test_rejects_nonsense(self, num_ctx: int, raw: int, reported: int) -> None:
        """A sample that is not three positive integers is refused, not learnt."""
        with pytest.raises(ValueError, match="positive integer"):
            Calibration().observe(num_ctx, raw, reported)

    def test_json_round_trip(self) -> None:
        """What the proxy persists loads back equal and keeps learning."""
        calibration = Calibration().observe(8192, 5 * GIB, 6 * GIB).observe(16384, 6 * GIB, 7 * GIB)
        loaded = Calibration.from_json(calibration.to_json())
        assert loaded == calibration
        assert loaded.observe(32768, 7 * GIB, 8 * GIB).samples[-1] == (32768, 7 * GIB, 8 * GIB)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("{", "not valid JSON"),
            ("[]", "must be an object"),
            ('{"format": 2}', "format 2"),
            ('{"format": 1, "offset_bytes": "x", "slope": 1, "samples": []}', "offset_bytes"),
            ('{"format": 1, "offset_bytes": 0, "slope": 0, "samples": []}', "slope"),
            ('{"format": 1, "offset_bytes": 0, "slope": 1, "samples": [[1, 2]]}', "sample"),
        ],
    )
    def test_json_errors(self, text: str, message: str) -> None:
        """A corrupt state file says what is wrong, so the proxy can log it and start fresh."""
        with pytest.raises(ValueError, match=message):
            Calibration.from_json(text)


class TestParseSize:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("512MiB", 512 * MIB),
            ("24GiB", 24 * GIB),
            ("24 gib", 24 * GIB),
            ("1.5 GB", 1_500_000_000),
            ("1KB", 1000),
            ("2TiB", 2 * 1024 * GIB),
            ("1024", 1024),
            ("100B", 100),
            (4096, 4096),
        ],
    )
    def test_parse(self, value: str | int, expected: int) -> None:
        """Binary and decimal units, plain integers and ints are all bytes."""
        assert parse_size(value) == expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("24G", "unknown size unit 'G'"),
            ("lots", "cannot read size"),
            ("-1GiB", "cannot read size"),
            (-1, "must not be negative"),
            (True, "number of bytes"),
        ],
    )
    def test_errors(self, value: Any, message: str) -> None:
        """Ambiguous or malformed sizes are refused with what to write instead."""
        with pytest.raises(ValueError, match=message):
            parse_size(value)


class TestFormatBytes:
    @pytest.mark.parametrize(
        ("n", "expected"),
        [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (334 * MIB, "334.0 MiB"),
            (10 * GIB + 624 * MIB, "10.6 GiB"),
            (int(14.2 * GIB), "14.2 GiB"),
            (3 * 1024 * GIB, "3.0 TiB"),
            (-2 * GIB, "-2.0 GiB"),
        ],
    )
    def test_format(self, n: int, expected: str) -> None:
        """One decimal in the largest binary unit that keeps the number at least 1."""
        assert format_bytes(n) == expected


class TestLargestFittingCtx:
    def test_exact_budget(self) -> None:
        """A budget equal to an estimate yields that context; one byte less, the step below."""
        model = llama31_8b()
        budget_bytes = estimate_bytes(model, 20480)
        assert largest_fitting_ctx(model, budget_bytes) == 20480
        assert largest_fitting_ctx(model, budget_bytes - 1) == 19456

    def test_matches_linear_scan(self) -> None:
        """Binary search finds what trying every step would find."""
        model = gemma3_27b()
        for budget_gib in (18, 20, 24, 32, 48):
            budget_bytes = budget_gib * GIB
            fitting = [
                num_ctx
                for num_ctx in range(2048, 131073, 1024)
                if estimate_bytes(model, num_ctx) <= budget_bytes
            ]
            expected = max(fitting) if fitting else None
            assert largest_fitting_ctx(model, budget_bytes) == expected

    def test_nothing_fits(self) -> None:
        """None when even min_ctx does not fit."""
        model = llama31_8b()
        assert largest_fitting_ctx(model, estimate_bytes(model, 2048) - 1) is None

    def test_capped_by_trained_context(self) -> None:
        """A huge budget gets the trained context, not more."""
        assert largest_fitting_ctx(gemma3_270m(), 1024 * GIB) == 32768

    def test_ceiling_itself_is_a_candidate(self) -> None:
        """A max_ctx that is not a multiple of step is still offered in full."""
        assert largest_fitting_ctx(llama31_8b(), 1024 * GIB, step=4096, max_ctx=50000) == 50000

    def test_min_ctx_above_trained_context(self) -> None:
        """A min_ctx beyond what the model supports is lowered to its trained context."""
        assert largest_fitting_ctx(gemma3_270m(), 1024 * GIB, min_ctx=65536) == 32768

    def test_calibration_shrinks_the_answer(self) -> None:
        """When the calibration says loads are 1 GiB larger, less context fits."""
        model = llama31_8b()
        budget_bytes = 8 * GIB
        plain = largest_fitting_ctx(model, budget_bytes)
        calibrated = largest_fitting_ctx(
            model, budget_bytes, calibration=Calibration(offset_bytes=float(GIB))
        )
        assert plain is not None and calibrated is not None
        assert calibrated < plain

    def test_needs_a_ceiling(self) -> None:
        """Without a trained context length, max_ctx must bound the search."""
        with pytest.raises(IncompleteModelFacts, match="max_ctx"):
            largest_fitting_ctx(llama31_8b(context_length=None), 8 * GIB)


class TestKvCacheSplit:
    def test_gemma3_27b_parts(self) -> None:
        """gemma3:27b at 131072: 10 global layers hold 10 GiB, 52 SWA layers 1248 MiB at ub 2048."""
        full_bytes, swa_bytes = kv_cache_split(gemma3_27b(), 131072, n_ubatch=2048)
        assert (full_bytes, swa_bytes) == (10 * GIB, 1248 * MIB)

    def test_no_swa(self) -> None:
        """A model without a window keeps everything in the full-attention part."""
        assert kv_cache_split(llama31_8b(), 8192) == (GIB, 0)

    def test_estimate_carries_the_split(self) -> None:
        """The estimate exposes both parts and their sum."""
        result = estimate(gemma3_4b(), 8192, n_ubatch=512)
        assert (result.kv_full_bytes, result.kv_swa_bytes) == kv_cache_split(gemma3_4b(), 8192, n_ubatch=512)
        assert result.kv_bytes == result.kv_full_bytes + result.kv_swa_bytes


class TestComputeBuffer:
    def test_formula(self) -> None:
        """FFN, hidden and K rows plus inputs per token, and an f16 mask over one slot's cells."""
        model = llama31_8b()  # no feed_forward_length in model_info: 4 x 4096 assumed
        per_token = 4 * (4 * 4 * 4096 + 4096 + 8 * 128) + 4 + 16
        assert compute_buffer_bytes(model, 8192, 1, 1024) == 1024 * per_token + 2 * 1024 * 8192

    def test_feed_forward_from_model_info(self) -> None:
        """A feed_forward_length in model_info (largest layer of an array) replaces the fallback."""
        model = llama31_8b(model_info={"llama.feed_forward_length": [14336, 1024]})
        per_token = 4 * (4 * 14336 + 4096 + 8 * 128) + 4 + 16
        assert compute_buffer_bytes(model, 8192, 1, 512) == 512 * per_token + 2 * 512 * 8192

    def test_mask_is_per_slot(self) -> None:
        """More slots do not widen the mask: each stream masks its own cells."""
        model = llama31_8b()
        assert compute_buffer_bytes(model, 8192, 3, 1024) == compute_buffer_bytes(model, 8192, 1, 1024)

    def test_swa_adds_a_second_mask_and_cache_indices(self) -> None:
        """An SWA model masks its window cells too and indexes two caches."""
        model = gemma3_4b()
        per_token = 4 * (4 * 4 * 2560 + 2560 + 4 * 256) + 4 + 2 * 16
        assert compute_buffer_bytes(model, 8192, 1, 1024) == 1024 * per_token + 2 * 1024 * (8192 + 2048)

    def test_llama31_8b_near_llama_cpp(self) -> None:
        """llama3.1:8b at 8192 with ub 1024 comes to the 260 MiB the replaced heuristic cited from llama.cpp."""
        model = llama31_8b(model_info={"llama.feed_forward_length": 14336})
        assert compute_buffer_bytes(model, 8192, 1, 1024) / MIB == pytest.approx(260, abs=2)


class TestOutputBuffer:
    @pytest.mark.parametrize(("parallel", "expected"), [(1, MIB), (3, 3 * MIB), (0, MIB)])
    def test_logits_per_slot(self, parallel: int, expected: int) -> None:
        """One f32 row of Gemma's 262144-token vocabulary per slot."""
        assert output_buffer_bytes(gemma3_27b(), parallel) == expected

    def test_in_compute(self) -> None:
        """The estimate's compute part is the graph plus the output buffer."""
        result = estimate(gemma3_27b(), 8192, 2)
        assert (
            result.compute_bytes == result.graph_bytes + result.output_bytes == result.graph_bytes + 2 * MIB
        )


class TestPsUnreportedBytes:
    def test_swa_model(self) -> None:
        """For an SWA model on 0.30+, /api/ps misses the full-attention cache."""
        result = estimate(gemma3_27b(), 131072)
        assert ps_unreported_bytes(result) == result.kv_full_bytes == 10 * GIB

    def test_plain_model(self) -> None:
        """A model with one cache is reported faithfully."""
        assert ps_unreported_bytes(estimate(llama31_8b(), 8192)) == 0


class TestCalibrationUnreported:
    def test_learns_the_allocation(self) -> None:
        """With the known omission passed, one load makes the estimate match the real allocation."""
        calibration = Calibration().observe(8192, 5 * GIB, 4 * GIB, unreported_bytes=GIB + 300 * MIB)
        assert calibration.apply(5 * GIB) == 5 * GIB + 300 * MIB
        assert calibration.samples == ((8192, 5 * GIB, 5 * GIB + 300 * MIB),)

    @pytest.mark.parametrize("unreported", [-1, True, 1.5])
    def test_rejects_nonsense(self, unreported: Any) -> None:
        """The omission must be a non-negative integer."""
        with pytest.raises(ValueError, match="unreported_bytes"):
            Calibration().observe(8192, GIB, GIB, unreported_bytes=unreported)


class TestEffectiveParallelCompletion:
    def test_embedding_and_completion(self) -> None:
        """A model that also completes keeps the configured slots (Ollama checks completion)."""
        assert effective_parallel(llama31_8b(capabilities=("completion", "embedding")), 3) == 3


class TestAutoNumBatchSurcharge:
    def test_surcharge_steps_down(self) -> None:
        """Within 60% but without room for the 2 GiB surcharge under 80%, 2048 becomes 1024."""
        assert auto_num_batch(65536, predicted_bytes=3 * GIB, free_bytes=5 * GIB) == 1024


class TestLegacyPredictedBytes:
    def test_llama31_8b(self) -> None:
        """Weights + 1 GiB of f16 KV + the 560 MiB llama graph at 8192, batch 512."""
        model = llama31_8b()
        graph = 4 * 512 * (1 + 4 * 4096 + 8192 * 33)
        assert legacy_predicted_bytes(model, 8192) == model.weights_bytes + GIB + graph

    def test_old_element_sizes(self) -> None:
        """q8_0 counted one byte per element before 0.30: half the f16 cache, no block overhead."""
        model = llama31_8b()
        assert (
            legacy_predicted_bytes(model, 8192, kv_cache_type="q8_0")
            == legacy_predicted_bytes(model, 8192) - GIB // 2
        )

    def test_unknown_cache_type(self) -> None:
        """Cache types Ollama did not accept then are refused."""
        with pytest.raises(ValueError, match=r"before 0\.30"):
            legacy_predicted_bytes(llama31_8b(), 8192, kv_cache_type="q5_1")


class TestGpuParts:
    """The GPU parts assumed from llama.cpp's graph, not measured: calibration corrects them."""

    def test_flash_attention_off_adds_the_attention_matrix(self) -> None:
        """Without flash attention the f32 scores of one micro-batch against a slot's cells are
        materialised: 4 x n_ubatch x n_ctx_seq x heads more compute buffer."""
        model = llama31_8b()
        on = estimate(model, 8192)
        off = estimate(model, 8192, flash_attention=False)
        assert off.graph_bytes - on.graph_bytes == 4 * on.n_ubatch * 8192 * 32
        assert off.kv_bytes == on.kv_bytes

    def test_flash_attention_off_counts_a_quantised_cache_as_f16(self) -> None:
        """llama.cpp refuses a quantised V cache without flash attention: f16 is what can load."""
        model = llama31_8b()
        assert estimate(model, 8192, kv_cache_type="q8_0", flash_attention=False).kv_bytes == 1024 * MIB

    def test_a_split_keeps_a_compute_buffer_per_gpu(self) -> None:
        """Over two GPUs the graph is allocated twice; weights and cache are not."""
        model = llama31_8b()
        one, two = estimate(model, 8192), estimate(model, 8192, gpu_count=2)
        assert two.graph_bytes == 2 * one.graph_bytes
        assert (two.weights_bytes, two.kv_bytes) == (one.weights_bytes, one.kv_bytes)
