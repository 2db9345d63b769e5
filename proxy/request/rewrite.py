"""Apply a decision to the client's body: only ``options.num_ctx`` and ``keep_alive`` change."""

from __future__ import annotations

import json
from typing import Any

from policies.decision import Decision
from proxy.request.parse import ClientRequest

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""Made once: ``json.dumps`` with options builds an encoder per call."""


def encode_json(body: Any) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate (``"\\ud800"`` in the client's text) is escaped.

    Ollama reads both forms alike (Go's decoder turns a lone surrogate into U+FFFD), so the rare
    body that cannot be written as UTF-8 falls back to ASCII escapes instead of failing.
    """
    try:
        return _COMPACT.encode(body).encode()
    except UnicodeEncodeError:
        return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode()


def rewrite_body(request: ClientRequest, decision: Decision) -> bytes | None:
    """The body with the decision applied, or None when it equals what the client sent."""
    num_ctx_changed = decision.num_ctx != request.num_ctx
    keep_alive_changed = decision.keep_alive != request.keep_alive
    if not num_ctx_changed and not keep_alive_changed:
        return None
    body = dict(request.body)
    if num_ctx_changed:
        options = dict(body.get("options") or {})
        if decision.num_ctx is None:
            options.pop("num_ctx", None)
        else:
            options["num_ctx"] = decision.num_ctx
        body["options"] = options
    if keep_alive_changed:
        if decision.keep_alive is None:
            body.pop("keep_alive", None)
        else:
            body["keep_alive"] = decision.keep_alive
    return encode_json(body)
