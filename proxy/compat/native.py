"""The native request a compatibility request becomes, and what every translator shares.

A translated request is sent to ``/api/chat``, ``/api/generate`` or ``/api/embed``, where it can
carry ``options.num_ctx`` and ``keep_alive`` (the ``/v1`` bodies cannot). The governor decides
those two after translation and sets them with :meth:`NativeRequest.with_governance`; the reply
translators read the rest of what they need from :attr:`NativeRequest.reply`.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, Protocol, TypeVar

from proxy.compat.gojson import dumps

NativePath = Literal["/api/chat", "/api/generate", "/api/embed"]

NUM_CTX_FIELD: tuple[str, str] = ("options", "num_ctx")
"""Where a native body carries the context size the governor sets."""
KEEP_ALIVE_FIELD: tuple[str] = ("keep_alive",)
"""Where a native body carries the keep-alive the governor sets."""

GO_ZERO_UNIX = -62135596800
"""``time.Time{}.Unix()``: what Ollama reports as ``created`` when a native reply had no time."""

_FIELD_ORDER: dict[str, tuple[str, ...]] = {
    "/api/chat": (
        "model",
        "messages",
        "stream",
        "format",
        "keep_alive",
        "tools",
        "options",
        "think",
        "truncate",
        "shift",
        "_debug_render_only",
        "logprobs",
        "top_logprobs",
    ),
    "/api/generate": (
        "model",
        "prompt",
        "suffix",
        "system",
        "template",
        "context",
        "stream",
        "raw",
        "format",
        "keep_alive",
        "images",
        "options",
        "think",
        "truncate",
        "shift",
        "_debug_render_only",
        "logprobs",
        "top_logprobs",
    ),
    "/api/embed": ("model", "input", "keep_alive", "truncate", "dimensions", "options"),
}
"""Go struct field order of ``api.ChatRequest``, ``api.GenerateRequest``, ``api.EmbedRequest``."""


@dataclass(frozen=True)
class Unsupported:
    """A request Ollama serves by means the governor cannot reproduce (its built-in web search).

    Forward such a request to Ollama untranslated; it runs ungoverned.
    """

    reason: str


Clock = Callable[[], float]
"""Seconds since the epoch; ``time.time`` unless a test pins it."""

R = TypeVar("R")


class IdSource(Protocol):
    """Randomness for the ids Ollama mints; tests pass a fixed one."""

    def intn(self, n: int) -> int:
        """Go's ``rand.Intn(n)``: an int in ``[0, n)``."""
        ...

    def hex_bytes(self, n: int) -> str:
        """``n`` random bytes in lower-case hex (Anthropic ids use 12)."""
        ...


class RandomIds:
    """The real :class:`IdSource`: Go's ``math/rand`` and ``crypto/rand`` equivalents."""

    def __init__(self) -> None:
        self._random = random.Random()

    def intn(self, n: int) -> int:
        """An int in ``[0, n)``."""
        return self._random.randrange(n)

    def hex_bytes(self, n: int) -> str:
        """``n`` bytes from the OS random source, hex-encoded."""
        return secrets.token_hex(n)


@dataclass(frozen=True)
class NativeRequest(Generic[R]):
    """A compatibility request translated: where to send it, what to send, how to answer.

    ``body`` keys are in Go's struct order (``options`` is a Go map, so its keys are sorted);
    treat it as read-only and derive changed copies with :meth:`with_governance`.
    """

    path: NativePath
    body: Mapping[str, Any]
    reply: R
    """Route-specific facts the reply translator needs (ids, stream flag, echoed fields)."""
    stream: bool
    """Whether the client asked for a stream (and so the native request streams too)."""
    model: str
    """The model as the client named it."""
    relax_thinking: bool = False
    """Ollama's ``/v1/messages`` drops ``think`` for models that cannot think; a plain
    ``/api/chat`` answers 400 instead. See :func:`is_thinking_unsupported`."""

    def with_governance(
        self, *, num_ctx: int | None = None, keep_alive: str | int | float | None = None
    ) -> NativeRequest[R]:
        """A copy with ``options.num_ctx`` and/or ``keep_alive`` set (None leaves each alone)."""
        body = dict(self.body)
        if num_ctx is not None:
            options = dict(body.get("options") or {})
            options["num_ctx"] = num_ctx
            body["options"] = {key: options[key] for key in sorted(options)}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return replace(self, body=ordered_body(self.path, body))

    def without_think(self) -> NativeRequest[R]:
        """A copy with ``think`` removed, what Ollama does under ``relax_thinking``."""
        body = {key: value for key, value in self.body.items() if key != "think"}
        return replace(self, body=body)

    def encode(self) -> bytes:
        """The body as Go's encoder writes it (what Ollama's middleware hands the handler)."""
        return dumps(dict(self.body)) + b"\n"


def ordered_body(path: NativePath, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` in the Go struct order of the native request type for ``path``."""
    order = _FIELD_ORDER[path]
    known = {name: fields[name] for name in order if name in fields}
    extra = {name: value for name, value in fields.items() if name not in known}
    return {**known, **extra}


def options_map(options: Mapping[str, Any]) -> dict[str, Any]:
    """An ``options`` map with sorted keys, as Go encodes ``map[string]any``."""
    return {key: options[key] for key in sorted(options)}


def is_thinking_unsupported(status: int, body: bytes, model: str) -> bool:
    """Whether a native answer is the 400 ``"<model>" does not support thinking``.

    Ollama relaxes that for ``/v1/messages`` (it drops ``think`` and carries on); a proxy that
    gets this answer for a request with ``relax_thinking`` resends :meth:`without_think`.
    """
    if status != 400:
        return False
    try:
        decoded = json.loads(body)
    except ValueError:
        return False
    message = decoded.get("error") if isinstance(decoded, dict) else None
    return isinstance(message, str) and message == f"{json.dumps(model)} does not support thinking"


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def unix_seconds(created_at: Any) -> int | None:
    """``time.Time.Unix()`` of a native ``created_at``; None for Go's zero time or no time.

    Go's ``CreatedAt.IsZero()`` is true for ``0001-01-01T00:00:00Z`` and for a field that was
    missing, and several writers substitute "now" in that case, so None tells them to.
    """
    if not isinstance(created_at, str):
        return None
    match = _RFC3339.match(created_at)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7) or ""
    try:
        stamp = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        if match.group(9):
            offset = timedelta(hours=int(match.group(10)), minutes=int(match.group(11)))
            stamp -= offset if match.group(9) == "+" else -offset
    except (ValueError, OverflowError):
        return None
    if stamp == datetime(1, 1, 1, tzinfo=UTC) and not fraction.strip("0"):
        return None
    return (stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)


def now_seconds(clock: Clock) -> int:
    """``time.Now().Unix()`` by ``clock``."""
    return int(clock() // 1)


def default_clock() -> float:
    """The wall clock."""
    return time.time()
