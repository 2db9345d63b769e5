"""``python -m bench faults``: hostile clients, broken upstreams, bad policies and bad inputs
thrown at a served governor while it carries a steady load.

Everything is real and on loopback: the aiohttp fake Ollama of the tests (following 0.33.0-rc2)
and a hostile upstream (a plain asyncio server that speaks broken HTTP on purpose) run in this
process; ``ollama-governor serve`` runs as subprocesses in front of them, with short limits so
each timeout fires in about a second. Every request carries secrets (a prompt, a bearer token,
a query string) where it can. While the faults run, a steady load of governed chats goes on.

One row per fault: what was tried, what happened, pass or fail. The last rows check the whole
run: SIGTERM with streams in flight (the drain), every governed request with exactly one result
in the log and in the store, and no secret anywhere in what the governors wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from proxy.ledger.store import DB_FILENAME
from proxy.upstream.inflight import SHUTTING_DOWN
from tests.conftest import start_app
from tests.fake_ollama import FakeOllama, gemma3_270m
from tests.faultkit import (
    NDJSON_HEAD,
    Governor,
    address,
    chunk,
    closed_within,
    done_line,
    exchange,
    first_response,
    read_head,
    served_governor,
    status_of,
)

SECRET_PROMPT = "PROMPT-a41c"
SECRET_TOKEN = "TOKEN-0b9e"
SECRET_QUERY = "QUERY-77f3"
SECRETS = (SECRET_PROMPT, SECRET_TOKEN, SECRET_QUERY)
AUTH = {"Authorization": f"Bearer {SECRET_TOKEN}"}
QUERY = f"?key={SECRET_QUERY}"
MODEL = "gemma3-270m"
DRAIN_S = 3.0
BAD_POLICIES = {
    "exits": "exits",
    "stray-cancel": "stray_cancel",
    "bad-value": "bad_value",
    "junk": "not_a_decision",
    "swallows": "swallows_cancel",
    "blocks-loop": "blocks_loop",
}
"""Model name -> the misbehaving policy (``tests.fault_policies``) its rule runs first."""


def governor_config(*, bad_policies: bool, client_s: float, upstream_s: float) -> str:
    """Short limits (``client_s`` for the client's head and body, ``upstream_s`` for Ollama's
    answer), an admin token, one rule per misbehaving policy, then static for the rest."""
    rules = []
    if bad_policies:
        for model, policy in BAD_POLICIES.items():
            rules.append(
                f'[[rules]]\nmodels = ["{model}"]\npolicies = [{{ use = "tests.fault_policies:{policy}" }}, '
                '{ use = "static", num_ctx = 4096 }]\n'
            )
        rules.append(
            '[[rules]]\nmodels = ["threaded"]\npolicies = [{ use = "tests.fault_policies:BlockingButThreaded", '
            "threaded = true, num_ctx = 4096 }]\n"
        )
    rules.append('[[rules]]\nmodels = ["*"]\npolicies = [{ use = "static", num_ctx = 4096 }]\n')
    limits = (
        f'[limits]\nheader_timeout = "{client_s:g}s"\nbody_timeout = "{client_s:g}s"\n'
        f'first_byte_timeout = "{upstream_s:g}s"\nstream_idle_timeout = "{upstream_s:g}s"\n'
        f'drain_timeout = "{DRAIN_S:g}s"\nmax_governed_body = "256KiB"\n'
    )
    return 'admin_token = "admin-7"\npolicy_timeout = "600ms"\n' + limits + "".join(rules)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one fault did: a short account and whether the governor held."""

    happened: str
    passed: bool


@dataclass
class Env:
    """What the faults act on, and the count of results the run must end with."""

    main: Governor
    hostile: Governor
    fake: FakeOllama
    http: aiohttp.ClientSession
    restart_fake: Callable[[float, asyncio.Event], Awaitable[None]]
    """Stop the fake Ollama, set the event once it is down, start it again that many seconds later."""
    ollama_url: str
    governed_requests: int = 0
    """Requests to the main governor that must each leave exactly one result."""
    bad_inputs: int = 0


Run = Callable[[Env], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class Fault:
    """One thing a hostile world can do, and how to try it."""

    kind: str
    name: str
    run: Run


@dataclass
class Row:
    kind: str
    fault: str
    happened: str
    passed: bool


@dataclass
class Load:
    """A steady load of governed chats on the main governor while the faults run."""

    workers: int
    answered: int = 0
    failed: list[str] = field(default_factory=list)
    running: bool = True


# ------------------------------------------------------------------ helpers


async def post(env: Env, path: str, body: Any, *, governor: Governor | None = None) -> tuple[int, bytes]:
    target = governor or env.main
    async with env.http.post(target.url + path + QUERY, json=body, headers=AUTH) as response:
        return response.status, await response.read()


async def post_raw(env: Env, raw: bytes) -> int:
    headers = {**AUTH, "Content-Type": "application/json"}
    async with env.http.post(env.main.url + "/api/generate" + QUERY, data=raw, headers=headers) as response:
        await response.read()
        return response.status


async def direct_status(env: Env, raw: bytes) -> int:
    url = env.ollama_url + "/api/generate"
    async with env.http.post(url, data=raw, headers={"Content-Type": "application/json"}) as response:
        await response.read()
        return response.status


def last_options(env: Env) -> dict[str, Any]:
    """The options of the last generate body that reached Ollama (``FakeOllama.bodies`` would
    parse every body it kept, the 100k-deep one included)."""
    body = next(r.body for r in reversed(env.fake.requests) if r.path == "/api/generate")
    options = json.loads(body).get("options")
    return options if isinstance(options, dict) else {}


def last_line(body: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(body.splitlines()[-1])
    return decoded


def generate(model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": SECRET_PROMPT, "stream": False, **extra}


# ------------------------------------------------------------------ bad inputs


def bad_body(name: str, raw: bytes, *, governed: bool) -> Fault:
    """A body Ollama must answer itself: the client gets what Ollama says, never our 500."""

    async def run(env: Env) -> Outcome:
        env.bad_inputs += 1
        env.governed_requests += governed
        direct, proxied = await direct_status(env, raw), await post_raw(env, raw)
        # A governed body is sent with the policy's valid num_ctx; any other is Ollama's to answer.
        return Outcome(f"{proxied} (Ollama alone: {direct})", proxied == (200 if governed else direct))

    return Fault("bad input", name, run)


BAD_BODIES = [
    bad_body(
        "NaN in options",
        b'{"model":"gemma3-270m","prompt":"x","stream":false,"options":{"num_ctx":NaN}}',
        governed=False,
    ),
    bad_body(
        "Infinity in options",
        b'{"model":"gemma3-270m","prompt":"x","stream":false,"options":{"num_ctx":Infinity}}',
        governed=False,
    ),
    bad_body(
        "1e400 in options",
        b'{"model":"gemma3-270m","prompt":"x","stream":false,"options":{"num_ctx":1e400}}',
        governed=False,
    ),
    bad_body(
        "num_ctx 1e30",
        b'{"model":"gemma3-270m","prompt":"x","stream":false,"options":{"num_ctx":1e30}}',
        governed=True,
    ),
    bad_body(
        "num_ctx a string",
        b'{"model":"gemma3-270m","prompt":"x","stream":false,"options":{"num_ctx":"8k"}}',
        governed=False,
    ),
    bad_body(
        "nested 100k deep",
        b'{"model":"gemma3-270m","prompt":"x","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        governed=False,
    ),
    bad_body("lone surrogate", b'{"model":"gemma3-270m","prompt":"\\ud800","stream":false}', governed=True),
    bad_body("not JSON", b"{not json", governed=False),
    bad_body("empty body", b"", governed=False),
    bad_body("JSON array", b"[1,2,3]", governed=False),
    bad_body(
        "bad keep_alive",
        b'{"model":"gemma3-270m","prompt":"x","stream":false,"keep_alive":"5 minutes"}',
        governed=False,
    ),
]


async def _oversized_body(env: Env) -> Outcome:
    env.bad_inputs += 1
    body = generate(prompt=SECRET_PROMPT * 40_000)
    status, _ = await post(env, "/api/generate", body)
    ungoverned = "num_ctx" not in last_options(env)
    return Outcome(f"{status}, relayed ungoverned: {ungoverned}", status == 200 and ungoverned)


async def _bad_admin_token(env: Env) -> Outcome:
    env.bad_inputs += 1
    raw = (
        b"GET /governor/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe" + SECRET_TOKEN.encode()
    )
    status = status_of(await exchange(env.main.url, raw + b"\r\nConnection: close\r\n\r\n"))
    return Outcome(str(status), status == 401)


async def _absolute_target(env: Env) -> Outcome:
    env.bad_inputs += 1
    raw = b"GET http://203.0.113.9:1/api/tags HTTP/1.1\r\nHost: 203.0.113.9\r\nConnection: close\r\n\r\n"
    status = status_of(await exchange(env.main.url, raw))
    return Outcome(f"{status} from the configured Ollama", status == 200)


# ------------------------------------------------------------------ client framing


def framing(name: str, raw: bytes, expected: int) -> Fault:
    async def run(env: Env) -> Outcome:
        env.bad_inputs += 1
        status = status_of(await exchange(env.main.url, raw))
        return Outcome(str(status), status == expected)

    return Fault("client", name, run)


_CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"
_AUTH_LINE = b"Authorization: Bearer " + SECRET_TOKEN.encode() + b"\r\n"
FRAMINGS = [
    framing(
        "bad chunk size",
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\n"
        + _AUTH_LINE
        + _CHUNKED
        + b"Z"
        + SECRET_PROMPT.encode()
        + b"\r\n0\r\n\r\n",
        400,
    ),
    framing(
        "control byte in a header",
        b"GET /api/tags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET_TOKEN.encode()
        + b"\x01\r\n\r\n",
        400,
    ),
    framing("DEL in the URL", b"GET /api/tags" + QUERY.encode() + b"\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    framing(
        "Transfer-Encoding + Content-Length",
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" + _CHUNKED + b"0\r\n\r\n",
        400,
    ),
    framing(
        "two Content-Lengths",
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        400,
    ),
    framing("bad method", b"G\x01T /api/tags HTTP/1.1\r\n\r\n", 400),
    framing(
        "500 headers",
        b"GET /api/tags HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(500)) + b"\r\n",
        400,
    ),
    framing(
        "100 KB header line",
        b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-A: " + SECRET_TOKEN.encode() * 10_000 + b"\r\n\r\n",
        400,
    ),
]


async def _pipelined(env: Env) -> Outcome:
    env.governed_requests += 1
    body = json.dumps(generate()).encode()
    raw = (
        b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (len(body), body)
    )
    answers = (await exchange(env.main.url, raw)).count(b"HTTP/1.1 200 OK")
    return Outcome(f"{answers} of 3 answered, in order", answers == 3)


async def _expect_continue(env: Env) -> Outcome:
    env.governed_requests += 1
    body = json.dumps(generate()).encode()
    reader, writer = await asyncio.open_connection(*address(env.main.url))
    try:
        writer.write(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(body)
        final, _ = await asyncio.wait_for(read_head(reader), 5)
    finally:
        writer.close()
    ok = interim.startswith(b"HTTP/1.1 100") and status_of(final) == 200
    return Outcome(f"{interim.split(b' ', 2)[1].decode()} then {status_of(final)}", ok)


async def _slowloris(env: Env) -> Outcome:
    reader, writer = await asyncio.open_connection(*address(env.main.url))

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

    task = asyncio.create_task(trickle())
    started = time.monotonic()
    try:
        closed = await closed_within(reader, 10)
    finally:
        task.cancel()
        writer.close()
    return Outcome(f"closed after {time.monotonic() - started:.1f} s", closed)


async def _idle_connection(env: Env) -> Outcome:
    reader, writer = await asyncio.open_connection(*address(env.main.url))
    started = time.monotonic()
    try:
        closed = await closed_within(reader, 10)
    finally:
        writer.close()
    return Outcome(f"closed after {time.monotonic() - started:.1f} s", closed)


async def _stalled_body(env: Env) -> Outcome:
    raw = (
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b'{"model":"x","prompt":"'
    )
    status = status_of(await first_response(env.main.url, raw))
    return Outcome(str(status), status == 408)


async def _client_abort(env: Env) -> Outcome:
    env.governed_requests += 1
    before = len(env.main.events("result"))

    def aborted() -> list[dict[str, Any]]:
        return [r for r in env.main.events("result")[before:] if r.get("status") == 499]

    env.fake.hold = asyncio.Event()
    try:
        response = await env.http.post(env.main.url + "/api/chat" + QUERY, json=chat(), headers=AUTH)
        await asyncio.wait_for(response.content.readline(), 5)
        response.close()  # the client hangs up mid-stream
        deadline = time.monotonic() + 5
        while not aborted() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        env.fake.hold.set()
        env.fake.hold = None
    found = aborted()
    return Outcome(
        f"result {found[0]['status']}, completed {found[0]['completed']}" if found else "no result",
        bool(found),
    )


def chat(model: str = MODEL) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": SECRET_PROMPT}]}


# ------------------------------------------------------------------ policies


def bad_policy(model: str) -> Fault:
    async def run(env: Env) -> Outcome:
        env.governed_requests += 1
        before = len(env.main.events("policy_error"))
        status, _ = await post(env, "/api/generate", generate(model))
        errors = env.main.events("policy_error")[before:]
        applied = last_options(env).get("num_ctx")
        return Outcome(
            f"{status}, skipped ({len(errors)} policy_error), next policy applied",
            status == 200 and applied == 4096,
        )

    return Fault("policy", f"policy {BAD_POLICIES[model]}", run)


async def _blocking_policy(env: Env) -> Outcome:
    env.governed_requests += 1
    before = len(env.main.events("loop_stall"))
    status, _ = await post(env, "/api/generate", generate("blocks-loop"))
    deadline = time.monotonic() + 3
    while len(env.main.events("loop_stall")) == before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    named = [e.get("step") for e in env.main.events("loop_stall")[before:]]
    ok = status == 200 and "policy tests.fault_policies:blocks_loop" in named
    return Outcome(f"{status}, loop_stall names {named[-1] if named else 'nothing'}", ok)


async def _threaded_policy(env: Env) -> Outcome:
    env.governed_requests += 1
    before = len(env.main.events("policy_blocked_loop"))
    status, _ = await post(env, "/api/generate", generate("threaded"))
    blocked = len(env.main.events("policy_blocked_loop")) - before
    return Outcome(f"{status}, loop never blocked", status == 200 and blocked == 0)


# ------------------------------------------------------------------ upstream


async def _ollama_restarts(env: Env) -> Outcome:
    env.governed_requests += 1
    down = asyncio.Event()
    comeback = asyncio.create_task(env.restart_fake(0.5, down))
    await down.wait()  # sent while Ollama is down: refused, so safe to retry until it is back
    status, _ = await post(env, "/api/generate", generate())
    await comeback
    return Outcome(f"{status} after riding over the restart", status == 200)


def hostile(
    name: str, model: str, check: Callable[[int, bytes], tuple[str, bool]], *, stream: bool = True
) -> Fault:
    """A request through the governor in front of the hostile upstream, which misbehaves as ``model`` says."""

    async def run(env: Env) -> Outcome:
        status, body = await post(env, "/api/generate", generate(model, stream=stream), governor=env.hostile)
        happened, passed = check(status, body)
        return Outcome(happened, passed)

    return Fault("upstream", name, run)


def _error_line(status: int, body: bytes) -> tuple[str, bool]:
    error = str(last_line(body).get("error", ""))
    shown = error.removeprefix("upstream closed the stream: ")
    passed = status == 200 and error.startswith("upstream closed the stream")
    return f"{status}, then the error line ({shown})", passed


def _ollama_shaped(expected: int) -> Callable[[int, bytes], tuple[str, bool]]:
    def check(status: int, body: bytes) -> tuple[str, bool]:
        error = str(json.loads(body).get("error", "")) if body.startswith(b"{") else ""
        shown = error.split(" ", 4)[-1]  # without "upstream Ollama at http://host:port"
        return f"{status} ({shown})", status == expected and bool(error) and "UPSTREAMSECRET" not in error

    return check


def _whole(status: int, body: bytes) -> tuple[str, bool]:
    return f"{status}, {len(body)} bytes", status == 200 and body.endswith(b"\n")


UPSTREAM_FAULTS = [
    hostile("dies mid-stream", "die", _error_line),
    hostile("stalls mid-stream", "stall", _error_line),
    hostile("bad chunk mid-stream", "badchunk", _error_line),
    hostile("never answers", "silent", _ollama_shaped(504), stream=False),
    hostile("never-ending headers", "headers", lambda s, b: (f"{s}", s in (502, 504)), stream=False),
    hostile("header line too long", "hugeheader", _ollama_shaped(502), stream=False),
    hostile(
        "103 Early Hints first",
        "hints",
        lambda s, b: (f"{s}", s == 200 and b'"done": true' in b),
        stream=False,
    ),
    hostile(
        "no Content-Type", "notype", lambda s, b: (f"{s}, {b!r}", (s, b) == (200, b"hello")), stream=False
    ),
    hostile(
        "invalid final object", "badfinal", lambda s, b: (f"{s}, relayed", s == 200 and b.endswith(b"tru\n"))
    ),
    hostile("40 MiB single line", "hugeline", _whole),
]


async def hostile_ollama(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each relayed request the broken way its ``model`` names; the governor's own calls get 404."""
    try:
        head, body = await read_head(reader)
        try:
            model = json.loads(body).get("model", "") if body else ""
        except ValueError:
            model = ""
        first = chunk(b'{"model":"m","response":"a","done":false}\n')
        if b"ollama-governor/" in head or not model:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        elif model == "die":
            writer.write(NDJSON_HEAD + first)
            await writer.drain()
            writer.transport.abort()
            return
        elif model == "stall":
            writer.write(NDJSON_HEAD + first)
            await writer.drain()
            await asyncio.sleep(30)
        elif model == "badchunk":
            writer.write(NDJSON_HEAD + first)
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"ZZ-UPSTREAMSECRET\r\n")
        elif model == "silent":
            await asyncio.sleep(30)
        elif model == "headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(600):
                writer.write(b"X-More: yes\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif model == "hugeheader":
            writer.write(
                b"HTTP/1.1 200 OK\r\nX-Huge: "
                + b"UPSTREAMSECRET" * 10_000
                + b"\r\nContent-Length: 2\r\n\r\n{}"
            )
        elif model == "hints":
            final = done_line()
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(final), final)
            )
        elif model == "notype":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        elif model == "badfinal":
            writer.write(NDJSON_HEAD + first + chunk(b'{"done": tru\n') + b"0\r\n\r\n")
        elif model == "hugeline":
            writer.write(NDJSON_HEAD)
            line = b'{"model":"m","response":"' + b"x" * (40 << 20) + b'","done":false}\n'
            for start in range(0, len(line), 1 << 20):
                writer.write(chunk(line[start : start + (1 << 20)]))
                await writer.drain()
            writer.write(chunk(done_line()) + b"0\r\n\r\n")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except asyncio.CancelledError:
        return  # the run is over and a stall is still sleeping: asyncio would print the cancel
    finally:
        writer.close()


# ------------------------------------------------------------------ load, reload


async def _burst(env: Env, count: int) -> Outcome:
    env.governed_requests += count
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(i: int) -> bool:
            async with http.post(env.main.url + "/api/chat" + QUERY, json=chat(), headers=AUTH) as response:
                body = await response.read()
                return response.status == 200 and last_line(body).get("done") is True

        answered = sum(await asyncio.gather(*(one(i) for i in range(count))))
    return Outcome(f"{answered}/{count} complete", answered == count)


async def _reloads(env: Env) -> Outcome:
    before = len(env.main.events("reloaded"))
    for _ in range(10):
        env.main.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 5
    while len(env.main.events("reloaded")) - before < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    done = len(env.main.events("reloaded")) - before
    return Outcome(f"{done} reloads under load", done == 10)


async def keep_loaded(env: Env, load: Load) -> None:
    """One worker of the steady load: governed chats, one after another, until told to stop."""
    while load.running:
        env.governed_requests += 1
        try:
            async with env.http.post(
                env.main.url + "/api/chat" + QUERY, json=chat(), headers=AUTH
            ) as response:
                body = await response.read()
            if response.status == 200 and last_line(body).get("done") is True:
                load.answered += 1
            else:
                load.failed.append(str(response.status))
        except (aiohttp.ClientError, ValueError) as exc:
            load.failed.append(type(exc).__name__)


# ------------------------------------------------------------------ the run


def faults(*, smoke: bool) -> list[Fault]:
    """Every fault, in the order they run."""
    return [
        *BAD_BODIES,
        Fault("bad input", "body above max_governed_body", _oversized_body),
        Fault("bad input", "non-UTF-8 admin token", _bad_admin_token),
        Fault("bad input", "absolute-form target", _absolute_target),
        *FRAMINGS,
        Fault("client", "pipelined requests", _pipelined),
        Fault("client", "Expect: 100-continue", _expect_continue),
        Fault("client", "slowloris headers", _slowloris),
        Fault("client", "idle connection", _idle_connection),
        Fault("client", "stalled body", _stalled_body),
        Fault("client", "abort mid-stream", _client_abort),
        *(bad_policy(model) for model in BAD_POLICIES if model != "blocks-loop"),
        Fault("policy", "policy blocks the loop", _blocking_policy),
        Fault("policy", "threaded blocking policy", _threaded_policy),
        Fault("upstream", "Ollama restarts", _ollama_restarts),
        *UPSTREAM_FAULTS,
        Fault(
            "load",
            f"{100 if smoke else 1000} concurrent requests",
            lambda env: _burst(env, 100 if smoke else 1000),
        ),
        Fault("load", "10 SIGHUP reloads", _reloads),
    ]


async def _drain(env: Env) -> Row:
    """SIGTERM with streams in flight: the exit within drain_timeout, every stream ended."""
    env.fake.hold = asyncio.Event()
    streams = []
    for _ in range(5):
        env.governed_requests += 1
        response = await env.http.post(env.main.url + "/api/chat" + QUERY, json=chat(), headers=AUTH)
        await asyncio.wait_for(response.content.readline(), 10)
        streams.append(response)
    sent = time.monotonic()
    env.main.process.send_signal(signal.SIGTERM)
    tails = [await asyncio.wait_for(response.read(), 15) for response in streams]
    status = await env.main.finished()
    took_s = time.monotonic() - sent
    ended = sum(last_line(tail) == {"error": SHUTTING_DOWN} for tail in tails)

    passed = status == 0 and took_s < DRAIN_S and ended == len(streams)
    happened = f"exit {status} in {took_s:.2f} s (bound {DRAIN_S:g} s), {ended}/{len(streams)} streams got the error line"
    return Row("shutdown", "SIGTERM with 5 streams in flight", happened, passed)


def stored_results(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / DB_FILENAME) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


async def run_async(smoke: bool, workdir: Path) -> dict[str, Any]:
    """Start the upstreams and governors, run every fault under load, stop, and check the whole."""
    models = [gemma3_270m(), *(gemma3_270m(name) for name in (*BAD_POLICIES, "threaded"))]
    fake = FakeOllama(version="0.33.0-rc2", models=models, num_parallel=64)
    ollama = await start_app(fake.app)
    port = address(ollama.url)[1]
    hostile_server = await asyncio.start_server(hostile_ollama, "127.0.0.1", 0)
    hostile_url = f"http://127.0.0.1:{hostile_server.sockets[0].getsockname()[1]}"
    running = {"ollama": ollama}

    async def restart_fake(down_s: float, down: asyncio.Event) -> None:
        await running["ollama"].runner.cleanup()
        down.set()
        await asyncio.sleep(down_s)
        running["ollama"] = await start_app(fake.app, port)

    rows: list[Row] = []
    load = Load(workers=4 if smoke else 16)
    (workdir / "main").mkdir(parents=True, exist_ok=True)
    (workdir / "hostile").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # The main governor carries the load (its waits are generous, its streams outlive the drain's
    # wait); the hostile one's timeouts fire in a second.
    main_config = governor_config(bad_policies=True, client_s=3, upstream_s=30)
    hostile_config = governor_config(bad_policies=False, client_s=3, upstream_s=1)
    try:
        async with (
            served_governor(main_config, ollama.url, workdir / "main") as main,
            served_governor(hostile_config, hostile_url, workdir / "hostile") as hostile_gov,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        ):
            env = Env(main, hostile_gov, fake, http, restart_fake, ollama.url)
            workers = [asyncio.create_task(keep_loaded(env, load)) for _ in range(load.workers)]
            for fault in faults(smoke=smoke):
                try:
                    outcome = await asyncio.wait_for(fault.run(env), 60)
                except Exception as exc:  # the row says what broke; the run goes on
                    outcome = Outcome(f"raised {type(exc).__name__}", False)
                rows.append(Row(fault.kind, fault.name, outcome.happened, outcome.passed))
            load.running = False
            await asyncio.gather(*workers)
            rows.append(
                Row(
                    "load",
                    f"steady load ({load.workers} clients)",
                    f"{load.answered} answered, {len(load.failed)} failed"
                    + (f" ({', '.join(sorted(set(load.failed)))})" if load.failed else ""),
                    not load.failed,
                )
            )
            rows.append(await _drain(env))
            hostile_gov.process.send_signal(signal.SIGTERM)
            await hostile_gov.finished()
            logged = len(main.events("result"))
            stored = stored_results(workdir / "main" / "state")
            lost = env.governed_requests - logged
            rows.append(
                Row(
                    "whole run",
                    "one result per governed request",
                    f"{env.governed_requests} sent, {logged} in the log, {stored} in the store",
                    lost == 0 and stored == logged,
                )
            )
            output = bytes(main.output) + bytes(hostile_gov.output)
            leaked = [secret for secret in SECRETS if secret.encode() in output]
            lines = output.count(b"\n")
            rows.append(
                Row(
                    "whole run",
                    "no secret in any log line",
                    f"{lines} lines, {len(leaked)} with a secret",
                    not leaked,
                )
            )
            bad_inputs = env.bad_inputs
    finally:
        hostile_server.close()
        await running["ollama"].runner.cleanup()
    survived = sum(row.passed for row in rows if row.kind not in ("whole run",))
    tried = sum(row.kind not in ("whole run",) for row in rows)
    return {
        "rows": [vars(row) for row in rows],
        "summary": {
            "load_held": not load.failed,
            "load_answered": load.answered,
            "faults_survived": survived,
            "faults_tried": tried,
            "bad_inputs_tried": bad_inputs,
            "governed_requests": env.governed_requests,
            "results_logged": logged,
            "results_stored": stored,
            "nothing_lost": lost == 0 and stored == logged,
            "secrets_leaked": leaked,
            "passed": all(row.passed for row in rows),
        },
        "duration_s": round(time.monotonic() - started, 1),
    }


def run(smoke: bool, workdir: Path) -> dict[str, Any]:
    """``run_async`` on a fresh event loop."""
    return asyncio.run(run_async(smoke, workdir))


def render(result: dict[str, Any], *, markdown: bool = False) -> str:
    """The table of faults and the summary line."""
    header = ["kind", "fault tried", "what happened", "result"]
    rows = [[r["kind"], r["fault"], r["happened"], "pass" if r["passed"] else "FAIL"] for r in result["rows"]]
    summary = result["summary"]
    line = (
        f"load held: {'yes' if summary['load_held'] else 'NO'} ({summary['load_answered']} answered); "
        f"faults survived: {summary['faults_survived']}/{summary['faults_tried']}; "
        f"bad inputs tried: {summary['bad_inputs_tried']}; "
        f"nothing lost: {'yes' if summary['nothing_lost'] else 'NO'} "
        f"({summary['governed_requests']} governed requests, {summary['results_logged']} results logged, "
        f"{summary['results_stored']} stored); secrets in the log: {len(summary['secrets_leaked'])}"
    )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return "\n".join(lines) + "\n\n" + line
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    text = [
        " ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(text) + "\n\n" + line
