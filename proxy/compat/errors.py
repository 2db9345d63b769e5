"""Error replies in each route's own shape, byte for byte as Ollama sends them.

Two writers exist in Ollama and they differ on the wire: the middleware refuses a bad request
with gin's ``AbortWithStatusJSON`` (``Content-Type: application/json; charset=utf-8``, no
trailing newline), while an error the native handler answered passes through the route's
response writer (``json.NewEncoder``: ``Content-Type: application/json``, a trailing newline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.compat.gojson import dumps

Writer = Literal["middleware", "writer"]
"""Which Ollama code path produced the error, and so which bytes and headers it has."""

GIN_JSON = "application/json; charset=utf-8"
PLAIN_JSON = "application/json"
NO_MESSAGE = "something went wrong, please see the ollama server logs for details"
"""``api.StatusError.Error()`` when the native body said nothing."""


@dataclass(frozen=True)
class CompatError:
    """An error reply ready to send: status, headers and the exact body bytes."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""
    """The human message inside ``body``, for logs and tests."""


def openai_error_type(status: int) -> str:
    """``openai.NewError``: the ``type`` an OpenAI-style error gets for an HTTP status."""
    return {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")


def anthropic_error_type(status: int) -> str:
    """``anthropic.NewError``: the ``type`` an Anthropic-style error gets for an HTTP status."""
    types = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        503: "overloaded_error",
        529: "overloaded_error",
    }
    return types.get(status, "api_error")


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    """``{"error": {"message", "type", "param": null, "code": null}}``."""
    return {"error": {"message": message, "type": openai_error_type(status), "param": None, "code": None}}


def anthropic_error_body(status: int, message: str, request_id: str) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}, "request_id": "req_..."}``."""
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
        "request_id": request_id,
    }


def reply_error(
    status: int, payload: dict[str, Any], writer: Writer, extra_headers: dict[str, str] | None = None
) -> CompatError:
    """``payload`` written the way ``writer`` writes it."""
    if writer == "middleware":
        body, content_type = dumps(payload), GIN_JSON
    else:
        body, content_type = dumps(payload) + b"\n", PLAIN_JSON
    headers = {**(extra_headers or {}), "Content-Type": content_type}
    inner = payload.get("error")
    message = inner.get("message", "") if isinstance(inner, dict) else ""
    return CompatError(status=status, body=body, headers=dict(sorted(headers.items())), message=message)


def openai_error(status: int, message: str, writer: Writer = "middleware") -> CompatError:
    """An OpenAI-shaped error from the middleware (bad request) or the writer (native error)."""
    return reply_error(status, openai_error_body(status, message), writer)


def native_error_message(body: bytes) -> str:
    """What ``api.StatusError.Error()`` says after unmarshalling a native error body.

    The OpenAI writers decode ``{"error": "..."}`` into ``api.StatusError``; a body that is
    not such JSON becomes the message itself.
    """
    try:
        decoded = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace") or NO_MESSAGE
    if not isinstance(decoded, dict):
        return body.decode("utf-8", errors="replace")
    message = _case_insensitive(decoded, "error")
    status = _case_insensitive(decoded, "status")
    if message is not None and not isinstance(message, str):
        return body.decode("utf-8", errors="replace")
    message = message or ""
    status = status if isinstance(status, str) else ""
    if status and message:
        return f"{status}: {message}"
    return status or message or NO_MESSAGE


def openai_native_error(status: int, body: bytes, extra_headers: dict[str, str] | None = None) -> CompatError:
    """``BaseWriter.writeError``: a native error answer in OpenAI's shape and with its status."""
    message = native_error_message(body)
    return reply_error(status, openai_error_body(status, message), "writer", extra_headers)


def _case_insensitive(mapping: dict[str, Any], name: str) -> Any:
    if name in mapping:
        return mapping[name]
    found = None
    for key, value in mapping.items():
        if key.lower() == name:
            found = value
    return found
