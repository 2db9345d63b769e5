"""The one client session to Ollama, and the only place that retries.

A connection refused before anything was sent is retried with a short, bounded backoff so a
restarting Ollama is ridden over. A request whose connection Ollama dropped before answering
(it restarted, so the pooled connection was gone) is sent once more, on a new connection, only
when that is what the client itself could do safely: a GET, or an inference request
(``REPLAY_SAFE_PATHS``) whose body is still in hand. Anything else that may have reached Ollama
is never sent twice.
"""

from __future__ import annotations

import errno
import json
from collections.abc import AsyncIterable, Callable, Mapping
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential
from yarl import URL

from proxy import __version__
from proxy.redact import describe_chain, describe_error

CONNECT_TIMEOUT_S = 10.0
OWN_USER_AGENT = f"ollama-governor/{__version__}"
"""Sent on the governor's own requests (facts, health, warm-up), never on relayed ones."""
OWN_HEADERS = {"User-Agent": OWN_USER_AGENT}


class UpstreamUnavailable(Exception):
    """Ollama could not be reached; the message names the upstream and the cause."""


IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REPLAY_SAFE_PATHS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
"""Requests Ollama answers without changing anything but which model is loaded; one that found
its connection dropped is sent again, as the client would, instead of failing with a 502."""
DROPPED_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE})


def _retry_rule(method: str, url: URL, data: object) -> Callable[[BaseException], bool]:
    """Which failures of this request to send again: any that never reached Ollama, and one
    dropped connection when the body can be sent again and the request is safe to repeat."""
    replays = int(
        isinstance(data, bytes | None) and (method in IDEMPOTENT_METHODS or url.path in REPLAY_SAFE_PATHS)
    )

    def retryable(exc: BaseException) -> bool:
        nonlocal replays
        if _never_sent(exc):
            return True
        if replays and _dropped(exc):
            replays -= 1  # once: a second drop is Ollama's answer, not a stale connection
            return True
        return False

    return retryable


def _never_sent(exc: BaseException) -> bool:
    """True for failures that happen before a single byte of the request left."""
    return isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError
    )


def _dropped(exc: BaseException) -> bool:
    """True when Ollama closed the connection under the request before answering it."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    if not isinstance(exc, aiohttp.ClientOSError):
        return False
    cause = exc.__cause__
    return exc.errno in DROPPED_ERRNOS or isinstance(cause, ConnectionResetError | BrokenPipeError)


def new_session(*, pooled: bool = True) -> aiohttp.ClientSession:
    """A session that passes bytes through untouched: no decompression, no default headers.
    Not ``pooled``: each request opens its own connection (for a replay)."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=None),
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, force_close=not pooled),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class Upstream:
    """Ollama at ``base_url``, reached through one shared session.

    One object for the life of the process, handed to everything that talks to Ollama. Its
    session is opened by the app's start-up (``open``) and closed at shutdown (``close``); the
    URL is fixed at start (a reload that changes ``upstream`` is logged and applies at restart),
    so no request ever depends on which config was current when it started.
    """

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession | None = None,
        retry_window_s: float = 5.0,
        *,
        first_byte_timeout_s: float = 0.0,
        stream_idle_timeout_s: float = 0.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._fresh: aiohttp.ClientSession | None = None
        """For sending again after a drop: a restarted Ollama leaves every pooled connection
        stale, and a replay on the next of them would be dropped too."""
        self.retry_window_s = retry_window_s
        self.first_byte_timeout_s = first_byte_timeout_s
        """How long a relayed request may wait for Ollama's answer to start (0: no bound)."""
        self.stream_idle_timeout_s = stream_idle_timeout_s
        """The longest pause between two pieces of a relayed answer (0: no bound)."""
        base = URL(self.base_url)
        if not base.is_absolute() or base.host is None:
            raise ValueError(f"upstream must be an absolute http(s) URL, got {base_url!r}")
        host = f"[{base.host}]" if ":" in base.host else base.host
        self._prefix = f"{base.scheme}://{host}:{base.port}{base.raw_path.rstrip('/')}"
        """Scheme, host, explicit port and path prefix: a request target appended to it can never
        read as another host (``http://ollama`` + ``@evil/`` could, without the port)."""

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session (only while the app runs)."""
        if self._session is None:
            raise RuntimeError("the upstream session is not open: the application is not running")
        return self._session

    def open(self) -> None:
        """Create the session (call on the event loop)."""
        if self._session is None or self._session.closed:
            self._session = new_session()

    async def close(self) -> None:
        """Close the session and every pooled connection."""
        if self._session is not None:
            await self._session.close()
        if self._fresh is not None:
            await self._fresh.close()

    def url(self, path_qs: str) -> URL:
        """The upstream URL for a client's raw path and query, kept byte for byte.

        Only the path and query of the request target are used: an absolute-form target
        (``GET http://elsewhere/api/tags``) keeps its path and loses its host, so the upstream
        host never depends on what a client wrote.
        """
        if not path_qs.startswith("/"):
            target = URL(path_qs, encoded=True)
            path_qs = target.raw_path_qs if target.raw_path_qs.startswith("/") else "/" + target.raw_path_qs
        return URL(self._prefix + path_qs, encoded=True)

    async def send(
        self,
        method: str,
        path_qs: str,
        *,
        headers: Mapping[str, str] | Any = None,
        data: bytes | AsyncIterable[bytes] | aiohttp.StreamReader | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request and return the response once its headers arrived.

        The caller owns the response and must ``release()`` or ``close()`` it.
        """
        url = self.url(path_qs)
        try:
            return await self._request(method, url, headers, data)
        except Exception as exc:
            retryable = _retry_rule(method, url, data)  # made on a failure only
            if not retryable(exc) or self.retry_window_s <= 0:
                raise self._unavailable(exc) from exc
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(retryable),
                wait=wait_exponential(multiplier=0.05, min=0.05, max=1.0),
                stop=stop_after_delay(self.retry_window_s),
                reraise=True,
            ):
                with attempt:
                    return await self._request(method, url, headers, data, fresh=True)
        except Exception as exc:
            raise self._unavailable(exc) from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _request(
        self, method: str, url: URL, headers: Any, data: Any, *, fresh: bool = False
    ) -> aiohttp.ClientResponse:
        """One attempt; ``fresh`` sends it on a new connection, so a drop is Ollama's answer."""
        session = self.session
        if fresh:
            if self._fresh is None or self._fresh.closed:
                self._fresh = new_session(pooled=False)
            session = self._fresh
        return await session.request(method, url, headers=headers, data=data, allow_redirects=False)

    async def get_json(self, path: str, timeout_s: float = 5.0) -> Any:
        """GET a JSON document from Ollama (for health and facts, never for client traffic)."""
        async with self.session.get(
            self.url(path), headers=OWN_HEADERS, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            response.raise_for_status()
            return await response.json(content_type=None)

    async def post_json(self, path: str, payload: Any, timeout_s: float = 30.0) -> Any:
        """POST JSON to Ollama and return the JSON answer (facts and warm-up calls)."""
        async with self.session.post(
            self.url(path), json=payload, headers=OWN_HEADERS, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            body = await response.read()
            if response.status >= 400:
                raise aiohttp.ClientResponseError(
                    response.request_info,
                    response.history,
                    status=response.status,
                    message=body.decode(errors="replace")[:500],
                )
            return json.loads(body) if body else None

    def _unavailable(self, exc: BaseException) -> UpstreamUnavailable:
        """The failure in words that quote nothing the client sent: aiohttp's own messages name
        the URL (query string included) or the bytes they failed on, so only a connect error's
        OS reason and the error's class are used."""
        connect_error = getattr(exc, "os_error", None)
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(connect_error, OSError):
            text = connect_error.strerror or describe_error(connect_error)
            return UpstreamUnavailable(f"upstream Ollama at {self.base_url} is unreachable: {text}")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            text = "it closed the connection before answering"
        else:
            text = describe_chain(exc)
        return UpstreamUnavailable(f"upstream Ollama at {self.base_url} failed: {text}")
