"""The outermost middleware: every request that fails gets an answer in Ollama's shape.

A client whose body breaks mid-way (a bad chunk size, a connection cut) is answered 400, as
Ollama answers it, instead of aiohttp's 500 with the parser's message (which quotes the raw
bytes) in the log. A bug of ours that escapes a handler is logged as ``handler_error`` with its
class and frames only, and the client gets a 500 in Ollama's shape.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.redact import describe_chain, frames
from proxy.upstream.relay import BAD_BODY, error_response

log = structlog.get_logger("ollama_governor.request")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer what a handler could not, without quoting a byte of the request."""
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError, ConnectionError):
        raise
    except web.RequestPayloadError as exc:
        log.warning("bad_request", path=request.path, error=describe_chain(exc), status=400)
        failed = error_response(400, BAD_BODY)
    except Exception as exc:
        log.error("handler_error", path=request.path, error=describe_chain(exc), frames=frames(exc))
        failed = error_response(500, f"internal error in ollama-governor: {type(exc).__name__}")
    if request.writer.output_size > 0:
        raise ConnectionResetError("the response had started; the connection is closed")
    failed.force_close()
    return failed
