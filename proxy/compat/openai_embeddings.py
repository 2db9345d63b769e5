"""``/v1/embeddings`` to ``/api/embed`` and back, as Ollama's ``EmbeddingsMiddleware`` does.

Request: ``encoding_format`` must be float or base64, an empty string input becomes ``[""]``,
a missing or empty input is refused. Reply: ``openai.ToEmbeddingList``; base64 is the
little-endian float32 bytes. Embeddings never stream.
"""

from __future__ import annotations

import base64
import struct as binary
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.compat.errors import CompatError, openai_error, openai_native_error
from proxy.compat.godecode import ANY, INT, STRING, GoDecodeError, decode, model_reader, struct
from proxy.compat.native import NativePath, NativeRequest, ordered_body
from proxy.compat.openai_common import parse_body as parse_body
from proxy.compat.sse import JSON_HEADERS

PATH = "/v1/embeddings"
NATIVE_PATH: NativePath = "/api/embed"

REQUEST = struct(
    "openai.EmbedRequest", {"input": ANY, "model": STRING, "dimensions": INT, "encoding_format": STRING}
)


@dataclass(frozen=True)
class EmbeddingReply:
    """What the embeddings reply translator needs besides the native answer."""

    model: str
    """The model as the client named it; Ollama echoes this, not the native answer's."""
    encoding_format: str
    """``float``, ``base64`` or empty (float)."""


model_of = model_reader("openai.EmbedRequest")


def to_native(body: Any) -> NativeRequest[EmbeddingReply] | CompatError:
    """The ``/api/embed`` request Ollama makes of this body, or its 400 error reply."""
    try:
        request = decode(body, REQUEST)
    except GoDecodeError as error:
        return openai_error(400, str(error))
    encoding_format = request.get("encoding_format", "")
    if encoding_format and encoding_format.lower() not in ("float", "base64"):
        supported = "Supported values: ['float', 'base64']."
        return openai_error(400, f"Invalid value for 'encoding_format' = {encoding_format}. {supported}")
    embed_input = request.get("input")
    if embed_input == "":
        embed_input = [""]
    if embed_input is None or embed_input == []:
        return openai_error(400, "invalid input")
    model = request.get("model", "")
    fields: dict[str, Any] = {"model": model, "input": embed_input}
    if request.get("dimensions"):
        fields["dimensions"] = request["dimensions"]
    fields["options"] = None
    return NativeRequest(
        path=NATIVE_PATH,
        body=ordered_body(NATIVE_PATH, fields),
        reply=EmbeddingReply(model=model, encoding_format=encoding_format),
        stream=False,
        model=model,
    )


def response_headers(stream: bool = False) -> dict[str, str]:
    """The headers Ollama's reply carries (besides Date and Content-Length)."""
    return dict(JSON_HEADERS)


def error_from_native(status: int, body: bytes, request: NativeRequest[EmbeddingReply]) -> CompatError:
    """A native error answer (status not 200) as this route sends it."""
    return openai_native_error(status, body)


def from_native(native: Mapping[str, Any], request: NativeRequest[EmbeddingReply]) -> dict[str, Any]:
    """``ToEmbeddingList``: a native ``/api/embed`` answer as an OpenAI embedding list."""
    embeddings = native.get("embeddings")
    if not isinstance(embeddings, list):
        return {"object": "", "data": None, "model": "", "usage": {"prompt_tokens": 0, "total_tokens": 0}}
    as_base64 = request.reply.encoding_format.lower() == "base64"
    data = [
        {"object": "embedding", "embedding": _float32_base64(vector) if as_base64 else vector, "index": index}
        for index, vector in enumerate(embeddings)
    ]
    tokens = native.get("prompt_eval_count")
    tokens = tokens if isinstance(tokens, int) else 0
    return {
        "object": "list",
        "data": data or None,
        "model": request.reply.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _float32_base64(vector: Any) -> str:
    values = [float(v) for v in vector] if isinstance(vector, list) else []
    return base64.b64encode(binary.pack(f"<{len(values)}f", *values)).decode("ascii")
