"""The fake Ollama at version 0.33.0-rc2 against the recorded exchanges in tests/data/ollama-0.33/.

Why: the maintainers check the proxy against a real Ollama 0.33; every proxy test that uses
this fake is only as good as its likeness to those recordings (wire shapes, reload rules,
default context, memory, truncation, embeddings).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import ollama
import pytest

from tests.conftest import OllamaClients, StartFake
from tests.fake_ollama import (
    FakeModel,
    FakeOllama,
    gemma3_270m,
    gemma3_270m_8k,
    gemma3_270m_b,
    lfm2_1_2b,
    llama3_1_8b,
    llama_tiny,
    nomic_embed_text,
)
from tests.transcripts import Exchange, exchange, exchanges, matrix_rows, reload_steps, shape

V033 = "0.33.0-rc2"
GiB = 1 << 30


def transcript_models() -> list[FakeModel]:
    """The four models of the 0.33 recordings."""
    return [gemma3_270m(), gemma3_270m_b(), gemma3_270m_8k(), llama_tiny()]


async def send(
    http: aiohttp.ClientSession, fake: FakeOllama, method: str, path: str, body: str | None = None
) -> tuple[int, dict[str, str], str]:
    """Replay a request as recorded (the raw body text) and return status, headers and body."""
    url = fake.url + path  # type: ignore[attr-defined]
    data = None if body is None else body.encode()
    async with http.request(method, url, data=data) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def replay(
    http: aiohttp.ClientSession, fake: FakeOllama, ex: Exchange
) -> tuple[int, dict[str, str], str]:
    return await send(http, fake, ex.method, ex.path, ex.request_body)


def fake_033(**options: Any) -> dict[str, Any]:
    return {"version": V033, "models": transcript_models(), **options}


class TestStatusRoutes:
    async def test_version_root_head_and_status_match_the_recordings(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """/api/version, GET and HEAD /, and /api/status answer byte for byte as recorded."""
        fake = await start_fake(**fake_033())
        for name in ("version.txt", "root.txt", "head_root.txt", "status.txt"):
            ex = exchange(name)
            status, headers, body = await replay(http, fake, ex)
            assert (status, headers["Content-Type"], headers["Content-Length"], body) == (
                ex.status,
                ex.headers["Content-Type"],
                ex.headers["Content-Length"],
                ex.body,
            ), name

    async def test_status_route_is_absent_before_033(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """/api/status is new in 0.33; the older fake answers it like any unknown path."""
        fake = await start_fake(version="0.32.15")
        assert (await send(http, fake, "GET", "/api/status"))[0] == 404


class TestListings:
    async def test_ps_tags_and_show_have_the_recorded_shapes(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """/api/ps (empty and loaded), /api/tags and /api/show carry the recorded keys and types."""
        fake = await start_fake(**fake_033())
        ex = exchange("ps_empty.txt")
        assert (await replay(http, fake, ex))[2] == ex.body
        await send(http, fake, "POST", "/api/generate", '{"model":"gemma3-270m"}')
        _, headers, body = await send(http, fake, "GET", "/api/ps")
        assert shape(json.loads(body)) == shape(exchange("ps_loaded.txt").json())
        assert headers["Content-Type"] == exchange("ps_loaded.txt").headers["Content-Type"]
        tags = json.loads((await send(http, fake, "GET", "/api/tags"))[2])
        assert shape(tags) == shape(exchange("tags.txt").json())
        recorded = exchange("show.txt").json()
        show = json.loads((await replay(http, fake, exchange("show.txt")))[2])
        assert list(show) == list(recorded)
        assert show["details"] == recorded["details"]
        assert shape(show["tensors"][0]) == shape(recorded["tensors"][0])
        assert {k: show["model_info"][k] for k in recorded["model_info"] if k in show["model_info"]} == {
            k: v for k, v in recorded["model_info"].items() if k in show["model_info"]
        }
        assert show["modelfile"].split("\n")[4] == recorded["modelfile"].split("\n")[4]  # FROM the GGUF blob

    async def test_tags_list_newest_first_with_context_length(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """/api/tags and /v1/models list the newest model first, as recorded."""
        fake = await start_fake(version=V033, models=[gemma3_270m()])
        for m in (gemma3_270m_b(), gemma3_270m_8k()):
            fake._add_model(m)
        names = [m["name"] for m in json.loads((await send(http, fake, "GET", "/api/tags"))[2])["models"]]
        recorded = [m["name"] for m in exchange("tags.txt").json()["models"]]
        assert names == recorded
        ids = [m["id"] for m in json.loads((await send(http, fake, "GET", "/v1/models"))[2])["data"]]
        assert ids == [m["id"] for m in exchange("v1_models.txt").json()["data"]]
        details = json.loads((await send(http, fake, "GET", "/api/tags"))[2])["models"][0]["details"]
        assert (details["context_length"], details["embedding_length"]) == (32768, 640)


class TestNativeWireFormat:
    @pytest.mark.parametrize(
        "name",
        [
            "generate_nostream.txt",
            "chat_nostream.txt",
            "chat_preload.txt",
            "chat_unload.txt",
            "generate_preload.txt",
            "generate_preload_no_prompt_field.txt",
            "generate_unload.txt",
            "error_numctx_1e30.txt",
            "error_numctx_float_8192_5.txt",
            "numctx_1.txt",
        ],
    )
    async def test_bodies_have_the_recorded_shape(
        self, name: str, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """Non-streamed native answers have the recorded status, content type and keys in order."""
        fake = await start_fake(**fake_033(reply_tokens=16))
        ex = exchange(name)
        if "unload" in name:
            await send(http, fake, "POST", "/api/generate", '{"model":"gemma3-270m"}')
        status, headers, body = await replay(http, fake, ex)
        assert (status, headers["Content-Type"]) == (ex.status, ex.headers["Content-Type"])
        assert shape(json.loads(body)) == shape(ex.json())

    @pytest.mark.parametrize("name", ["generate_stream.txt", "chat_stream.txt"])
    async def test_streams_have_the_recorded_lines(
        self, name: str, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """Streamed answers are NDJSON: the recorded chunk shape, then the recorded final shape."""
        fake = await start_fake(**fake_033(reply_tokens=16))
        ex = exchange(name)
        status, headers, body = await replay(http, fake, ex)
        lines = [json.loads(x) for x in body.splitlines()]
        recorded = [json.loads(x) for x in ex.lines]
        assert (status, headers["Content-Type"]) == (ex.status, ex.headers["Content-Type"])
        assert len(lines) == len(recorded)
        assert [shape(x) for x in lines] == [shape(x) for x in recorded]

    @pytest.mark.parametrize(
        "name",
        [
            "error_invalid_json.txt",
            "error_keep_alive_5_minutes.txt",
            "error_numctx_nan_literal.txt",
            "error_numctx_string.txt",
            "error_unknown_model.txt",
        ],
    )
    async def test_errors_match_the_recordings(
        self, name: str, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """Every recorded error comes back with its status, content type and body (request ids aside)."""
        fake = await start_fake(**fake_033())
        for ex in exchanges(name):
            status, headers, body = await replay(http, fake, ex)
            assert (status, headers["Content-Type"]) == (ex.status, ex.headers["Content-Type"]), ex.path
            if ex.path == "/v1/messages":
                got, want = json.loads(body), ex.json()
                assert got["request_id"].startswith("req_") and len(got["request_id"]) == 28
                assert {**got, "request_id": ""} == {**want, "request_id": ""}
                assert body.endswith("\n") == ex.body.endswith("\n")
            else:
                assert body == ex.body, ex.path

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            (b'"x":' + b"[" * 10_000 + b"]" * 10_000, "invalid character '[' exceeded max depth"),
            (
                b'"options":{"temperature":1e400}',
                "json: cannot unmarshal number 1e400 into Go value of type float64",
            ),
        ],
        ids=["past Go's depth", "past float64"],
    )
    async def test_bodies_gos_decoder_refuses_are_400(
        self, start_fake: StartFake, http: aiohttp.ClientSession, extra: bytes, message: str
    ) -> None:
        """encoding/json refuses nesting past 10 000 levels and numbers past float64 (the field's
        struct context aside), so Ollama's bind fails with 400; Python's parser must not decide."""
        fake = await start_fake(**fake_033())
        raw = b'{"model":"gemma3-270m","prompt":"hi",' + extra + b"}"
        async with http.post(fake.url + "/api/generate", data=raw) as response:  # type: ignore[attr-defined]
            assert (response.status, (await response.json())["error"]) == (400, message)

    async def test_nesting_go_reads_is_read(self, start_fake: StartFake, http: aiohttp.ClientSession) -> None:
        """10 000 levels (the object and 9 999 arrays) are within Go's limit, and beyond Python's
        default recursion: answered."""
        fake = await start_fake(**fake_033())
        raw = b'{"model":"gemma3-270m","prompt":"hi","stream":false,"x":' + b"[" * 9_999 + b"]" * 9_999 + b"}"
        async with http.post(fake.url + "/api/generate", data=raw) as response:  # type: ignore[attr-defined]
            answer = await response.json()
            assert response.status == 200 and answer["done"] is True, answer

    async def test_odd_num_ctx_values_load_as_recorded(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """num_ctx 1e30 and 1 load at 4 and 8192.5 at 8192; /api/ps then says context_length 4."""
        fake = await start_fake(**fake_033())
        for name, ctx in (
            ("error_numctx_1e30.txt", 4),
            ("error_numctx_float_8192_5.txt", 8192),
            ("numctx_1.txt", 4),
        ):
            await replay(http, fake, exchange(name))
            assert fake.loads[-1] == ("gemma3-270m:latest", ctx)
        ps = json.loads((await send(http, fake, "GET", "/api/ps"))[2])
        assert (
            ps["models"][0]["context_length"]
            == exchange("ps_after_numctx_1.txt").json()["models"][0]["context_length"]
        )


class TestEmbeddings:
    async def test_a_completion_model_is_loaded_then_refused(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """/api/embed (501) and /api/embeddings (500) refuse gemma3-270m as recorded, after loading it."""
        fake = await start_fake(**fake_033())
        for name in ("embed.txt", "embeddings_legacy.txt", "v1_embeddings.txt"):
            ex = exchange(name)
            status, headers, body = await replay(http, fake, ex)
            assert (status, headers["Content-Type"], body) == (ex.status, ex.headers["Content-Type"], ex.body)
        assert fake.loads == [("gemma3-270m:latest", 4096)]

    async def test_an_embedding_model_loads_with_one_slot_and_a_capped_batch(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """nomic-embed-text loads with P=1 and num_batch min(2048, num_ctx), honouring keep_alive."""
        fake = await start_fake(version=V033, models=[nomic_embed_text()], num_parallel=4)
        client = ollama_client(fake.url)  # type: ignore[attr-defined]
        reply = await client.embed(
            model="nomic-embed-text", input=["a", "b"], keep_alive="10m", options={"num_ctx": 1024}
        )
        assert len(reply.embeddings) == 2 and len(reply.embeddings[0]) == 768
        assert reply.load_duration and reply.prompt_eval_count == 2
        event = fake.load_events[-1]
        assert (event.parallel, event.num_batch, event.num_ctx) == (1, 1024, 1024)
        assert fake.loaded()["nomic-embed-text:latest"].keep_alive_ns == 600 * 10**9
        await client.embed(model="nomic-embed-text", input="c", keep_alive=0, options={"num_ctx": 1024})
        assert fake.loaded() == {} and len(fake.loads) == 1

    async def test_legacy_embeddings_and_the_openai_list(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """/api/embeddings answers {"embedding"}; /v1/embeddings the OpenAI list with usage."""
        fake = await start_fake(version=V033, models=[nomic_embed_text()])
        legacy = json.loads(
            (await send(http, fake, "POST", "/api/embeddings", '{"model":"nomic-embed-text","prompt":"hi"}'))[
                2
            ]
        )
        assert list(legacy) == ["embedding"] and len(legacy["embedding"]) == 768
        status, headers, body = await send(
            http, fake, "POST", "/v1/embeddings", '{"model":"nomic-embed-text","input":["hi","there"]}'
        )
        listing = json.loads(body)
        assert (status, headers["Content-Type"], body.endswith("\n")) == (200, "application/json", True)
        assert [list(listing), list(listing["data"][0])] == [
            ["object", "data", "model", "usage"],
            ["object", "embedding", "index"],
        ]
        assert listing["usage"] == {"prompt_tokens": 3, "total_tokens": 3}  # "hi" 1 + "there" 2


class TestDefaultContext:
    @pytest.mark.parametrize(
        ("vram_gib", "overhead_gib", "expected"),
        [(None, 0, 4096), (16, 0, 4096), (24, 0, 32768), (24, 2, 4096), (48, 0, 131072), (80, 0, 131072)],
    )
    async def test_the_vram_tier_sets_the_default(
        self,
        vram_gib: int | None,
        overhead_gib: int,
        expected: int,
        start_fake: StartFake,
        ollama_client: OllamaClients,
    ) -> None:
        """No num_ctx: 4096 below 23 GiB, 32768 below 47 GiB, else 262144 clamped to the trained length."""
        fake = await start_fake(
            version=V033,
            models=[llama3_1_8b()],
            gpu_overhead_bytes=overhead_gib * GiB,
            vram_bytes=None if vram_gib is None else vram_gib * GiB,
        )
        await ollama_client(fake.url).generate(model="llama3.1:8b", prompt="hi")  # type: ignore[attr-defined]
        assert fake.loads == [("llama3.1:8b", expected)]

    async def test_env_and_modelfile_override_the_tier(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """OLLAMA_CONTEXT_LENGTH replaces the tier; a Modelfile num_ctx replaces both."""
        fake = await start_fake(
            version=V033,
            models=[gemma3_270m(), gemma3_270m_8k()],
            context_length_env=2048,
            vram_bytes=48 * GiB,
        )
        client = ollama_client(fake.url)  # type: ignore[attr-defined]
        await client.generate(model="gemma3-270m", prompt="hi")
        await client.generate(model="gemma3-270m-8k", prompt="hi")
        assert fake.loads == [("gemma3-270m:latest", 2048), ("gemma3-270m-8k:latest", 8192)]


class TestReloadExperiments:
    """Replays of the recorded reload experiments: same requests, same runner starts, same /api/ps."""

    async def check(self, http: aiohttp.ClientSession, fake: FakeOllama, name: str) -> None:
        for step in reload_steps(name):
            before = len(fake.load_events)
            status, _, _ = await send(http, fake, "POST", step.route, json.dumps(step.sent))
            assert status == step.status, step.step
            started = len(fake.load_events) > before
            assert started == step.runner_started, step.step
            if started:
                assert fake.load_events[-1].num_ctx == step.started_ctx, step.step
            ps = json.loads((await send(http, fake, "GET", "/api/ps"))[2])["models"]
            got = {m["name"]: m for m in ps}
            assert set(got) == {e[0] for e in step.loaded}, step.step
            for name_, ctx, size, expires in step.loaded:
                entry = got[name_]
                assert entry["context_length"] == ctx, step.step
                assert abs(entry["size"] - size) / size < 0.01, (step.step, entry["size"], size)
                recorded_left = _seconds_between(step.at, expires)
                fake_left = _seconds_between(
                    datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), entry["expires_at"]
                )
                if recorded_left is None:  # keep_alive -1: ~292 years ahead
                    assert fake_left is None, step.step
                else:
                    assert fake_left == pytest.approx(recorded_left, abs=5), step.step

    async def test_num_ctx_sequence_keep_alive_and_v1_routes(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """reload_a/b/c: every effective num_ctx change reloads, keep_alive never does, /v1 reloads to 4096."""
        fake = await start_fake(**fake_033(reply_tokens=2))
        for name in (
            "reload_a_numctx_sequence.txt",
            "reload_b_same_numctx_keep_alive.txt",
            "reload_c_v1_after_numctx_8192.txt",
        ):
            await self.check(http, fake, name)

    async def test_default_context_without_env(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """reload_d part 1: omitted num_ctx and /v1 both run at this CPU host's 4096."""
        await self.check(
            http, await start_fake(**fake_033(reply_tokens=2)), "reload_d_default_context_part1_no_env.txt"
        )

    async def test_default_context_with_ollama_context_length(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """reload_d part 2: OLLAMA_CONTEXT_LENGTH=8192 applies to /api and /v1 and is not automatic."""
        await self.check(
            http,
            await start_fake(**fake_033(reply_tokens=2, context_length_env=8192)),
            "reload_d_default_context_part2_OLLAMA_CONTEXT_LENGTH_8192.txt",
        )

    @pytest.mark.parametrize("name", ["reload_e_three_model_names.txt", "reload_f_two_different_blobs.txt"])
    async def test_names_sharing_a_blob_share_a_runner(
        self, name: str, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """reload_e/f: same blob and context share one runner (ps keeps the first name); blobs differ: both stay."""
        await self.check(http, await start_fake(**fake_033(reply_tokens=2)), name)


def _seconds_between(start: str, expires_at: str) -> float | None:
    """Seconds from ``start`` to ``expires_at`` (RFC 3339), None when it is "forever" (> 20 years)."""
    delta = _parse(expires_at) - _parse(start)
    return None if delta > 20 * 365 * 86400 else delta


def _parse(stamp: str) -> float:
    head, _, frac = stamp.rstrip("Z").partition(".")
    whole = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return whole + float(f"0.{frac or 0}")


class TestReloadRules:
    @pytest.mark.parametrize(
        ("first", "second", "reloads", "changed"),
        [
            ({}, {"num_batch": 512}, False, ()),
            ({"num_batch": 256}, {"num_batch": 256}, False, ()),
            ({"num_batch": 256}, {}, True, ("num_batch",)),
            ({}, {"num_gpu": -1}, False, ()),
            ({}, {"num_gpu": 10}, True, ("num_gpu",)),
            ({"num_gpu": 10}, {"num_gpu": -1}, False, ()),
            ({}, {"main_gpu": 0}, True, ("main_gpu",)),
            ({}, {"use_mmap": False}, True, ("use_mmap",)),
            ({}, {"num_thread": 4}, True, ("num_thread",)),
            ({"num_ctx": 4096}, {}, False, ()),
            ({"num_ctx": 99999}, {"num_ctx": 32768}, False, ()),
            ({"num_ctx": 2048}, {"num_ctx": 2048.9}, False, ()),
            ({}, {"temperature": 0.1, "top_k": 3}, False, ()),
        ],
    )
    async def test_needs_reload_compares_load_time_options(
        self,
        first: dict[str, Any],
        second: dict[str, Any],
        reloads: bool,
        changed: tuple[str, ...],
        start_fake: StartFake,
        ollama_client: OllamaClients,
    ) -> None:
        """sched.go needsReload: only runner options differ after normalisation reload the model."""
        fake = await start_fake(**fake_033())
        client = ollama_client(fake.url)  # type: ignore[attr-defined]
        await client.generate(model="gemma3-270m", prompt="hi", options=first)
        await client.generate(model="gemma3-270m", prompt="hi", options=second)
        assert len(fake.loads) == (2 if reloads else 1)
        assert fake.load_events[-1].changed == changed
        assert fake.load_events[-1].reason == ("reload" if reloads else "load")

    async def test_keep_alive_persists_and_never_reloads(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """A keep_alive sticks to the runner for later requests that omit it; none of it reloads."""
        fake = await start_fake(**fake_033())
        client = ollama_client(fake.url)  # type: ignore[attr-defined]
        await client.generate(model="gemma3-270m", prompt="hi", keep_alive="30s")
        await client.generate(model="gemma3-270m", prompt="hi")
        assert fake.loaded()["gemma3-270m:latest"].keep_alive_ns == 30 * 10**9
        await client.generate(model="gemma3-270m", prompt="hi", keep_alive=-1)
        assert len(fake.loads) == 1

    async def test_shift_false_reloads(self, start_fake: StartFake, http: aiohttp.ClientSession) -> None:
        """A request's shift:false launches llama-server without context shift: a reload."""
        fake = await start_fake(**fake_033())
        await send(
            http, fake, "POST", "/api/generate", '{"model":"gemma3-270m","prompt":"hi","stream":false}'
        )
        await send(
            http,
            fake,
            "POST",
            "/api/generate",
            '{"model":"gemma3-270m","prompt":"hi","stream":false,"shift":false}',
        )
        assert fake.load_events[-1].changed == ("context_shift",)


class TestParallelAndMemory:
    @pytest.mark.parametrize("row", matrix_rows("A"), ids=lambda r: f"{r['setting (env)']}-{r['num_ctx']}")
    def test_gemma3_270m_matches_the_memory_matrix(self, row: dict[str, str]) -> None:
        """-c, -b/-ub, the KV buffers and /api/ps size follow memory-matrix.txt part A (size within 1%)."""
        p = int(row["-np"])
        fake = FakeOllama(
            version=V033, num_parallel=p, kv_cache_type="q8_0" if "q8_0" in row["setting (env)"] else "f16"
        )
        plan = fake.plan(gemma3_270m(), int(row["num_ctx"]))
        assert (plan.num_ctx * plan.parallel, plan.parallel) == (int(row["-c"]), p)
        assert f"{plan.num_batch}/{plan.num_batch}" == row["-b/-ub"]
        assert plan.footprint.kv_full / (1 << 20) == pytest.approx(
            float(row["KV full MiB"].split()[0]), abs=0.01
        )
        assert plan.footprint.kv_swa / (1 << 20) == pytest.approx(
            float(row["KV SWA MiB"].split()[0]), abs=0.01
        )
        assert plan.footprint.compute / (1 << 20) == pytest.approx(float(row["compute MiB"]), rel=0.05)
        assert plan.footprint.reported == pytest.approx(int(row["ps.size B"]), rel=0.01)

    @pytest.mark.parametrize("row", matrix_rows("B"), ids=lambda r: f"{r['setting (env)']}-{r['num_ctx']}")
    def test_llama_tiny_matches_the_memory_matrix(self, row: dict[str, str]) -> None:
        """A model without sliding window: KV counted in /api/ps, num_ctx clamped to the trained 8192."""
        p = int(row["-np"])
        fake = FakeOllama(
            version=V033, num_parallel=p, kv_cache_type="q8_0" if "q8_0" in row["setting (env)"] else "f16"
        )
        plan = fake.plan(llama_tiny(), int(row["num_ctx"]))
        assert (plan.num_ctx * plan.parallel, f"{plan.num_batch}/{plan.num_batch}") == (
            int(row["-c"]),
            row["-b/-ub"],
        )
        assert (plan.footprint.kv_full + plan.footprint.kv_swa) / (1 << 20) == pytest.approx(
            float(row["KV MiB"].split()[0]), abs=0.01
        )
        assert plan.footprint.reported == pytest.approx(int(row["ps.size B"]), rel=0.02)

    async def test_parallel_slots_scale_kv_but_not_context_length(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """OLLAMA_NUM_PARALLEL 3 launches -c 3*num_ctx; /api/ps still says num_ctx."""
        fake = await start_fake(version=V033, models=[llama_tiny()], num_parallel=3)
        client = ollama_client(fake.url)  # type: ignore[attr-defined]
        await client.generate(model="llama-tiny", prompt="hi", options={"num_ctx": 2048})
        (entry,) = (await client.ps()).models
        assert (entry.context_length, fake.load_events[-1].parallel) == (2048, 3)
        single = FakeOllama(version=V033, models=[llama_tiny()]).plan(llama_tiny(), 2048).footprint.kv_full
        assert fake.plan(llama_tiny(), 2048).footprint.kv_full == 3 * single

    @pytest.mark.parametrize("model", [lfm2_1_2b, nomic_embed_text])
    def test_some_models_always_get_one_slot(self, model: Any) -> None:
        """Embedding models and single-parallel architectures (lfm2, qwen3next, ...) run with P=1."""
        assert FakeOllama(version=V033, num_parallel=4).parallel_for(model()) == 1
        assert FakeOllama(version=V033, num_parallel=4).parallel_for(llama_tiny()) == 4

    def test_hybrid_layers_without_kv_hold_no_cache(self) -> None:
        """lfm2's conv layers (head_count_kv 0) hold no KV cache: 6 attention layers do."""
        fake = FakeOllama(version=V033)
        plan = fake.plan(lfm2_1_2b(), 4096)
        assert (
            plan.footprint.kv_full == 6 * 4096 * 8 * (64 + 64) * 2
        )  # layers x cells x KV heads x (k+v) x f16


class TestPromptTruncation:
    async def test_generate_keeps_num_keep_and_cuts_the_middle(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """609 tokens at num_ctx 256 become 131 (truncate default or true), as recorded."""
        fake = await start_fake(**fake_033())
        recorded = exchange("truncate_true_prompt_longer_than_numctx.txt").json()
        for truncate in ({}, {"truncate": True}):
            body = json.dumps(
                {
                    "model": "gemma3-270m",
                    "prompt": "x" * (608 * 4),
                    "stream": False,
                    **truncate,
                    "options": {"num_ctx": 256, "num_predict": 4},
                }
            )
            reply = json.loads((await send(http, fake, "POST", "/api/generate", body))[2])
            assert reply["prompt_eval_count"] == recorded["prompt_eval_count"]
            assert len(reply["context"]) == len(recorded["context"])
        assert fake.truncated == ["/api/generate"] * 2

    @pytest.mark.parametrize(
        ("path", "name"),
        [
            ("/api/generate", "truncate_false_prompt_longer_than_numctx.txt"),
            ("/api/chat", "truncate_false_chat_prompt_longer_than_numctx.txt"),
        ],
    )
    async def test_truncate_false_is_llama_servers_400(
        self, path: str, name: str, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """truncate:false with 609 tokens at 256 answers the recorded 400 body."""
        fake = await start_fake(**fake_033())
        text = "x" * (608 * 4)
        prompt = (
            {"prompt": text} if path == "/api/generate" else {"messages": [{"role": "user", "content": text}]}
        )
        body = json.dumps(
            {
                "model": "gemma3-270m",
                **prompt,
                "stream": False,
                "truncate": False,
                "options": {"num_ctx": 256, "num_predict": 4},
            }
        )
        status, _, reply = await send(http, fake, "POST", path, body)
        assert (status, reply) == (400, exchange(name).body)

    async def test_chat_drops_the_oldest_messages_first(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """Chat history over num_ctx loses its oldest non-system messages; system and last stay."""
        fake = await start_fake(**fake_033())
        messages = [{"role": "system", "content": "s" * 40}] + [
            {"role": "user" if i % 2 == 0 else "assistant", "content": "m" * 400} for i in range(6)
        ]
        reply = await ollama_client(fake.url).chat(  # type: ignore[attr-defined]
            model="gemma3-270m", messages=messages, options={"num_ctx": 256}
        )
        assert reply.prompt_eval_count == 10 + 2 * 100 + 1  # system + the two newest + BOS
        assert fake.truncated == ["/api/chat"] and fake.completions[-1].truncated

    async def test_without_context_shift_a_long_prompt_is_refused(
        self, start_fake: StartFake, http: aiohttp.ClientSession
    ) -> None:
        """With shift:false a prompt over num_ctx-1 tokens is a 400 instead of a cut."""
        fake = await start_fake(**fake_033())
        body = json.dumps(
            {
                "model": "gemma3-270m",
                "prompt": "x" * 2000,
                "stream": False,
                "shift": False,
                "options": {"num_ctx": 256},
            }
        )
        status, _, reply = await send(http, fake, "POST", "/api/generate", body)
        assert status == 400 and json.loads(reply)["error"].startswith(
            "the prompt is longer than the context"
        )


class TestOlderVersions:
    async def test_before_033_names_do_not_share_runners(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """The older fake keys runners by name: two names with one blob load twice."""
        fake = await start_fake(version="0.32.15", models=[gemma3_270m(), gemma3_270m_b()])
        client = ollama_client(fake.url)  # type: ignore[attr-defined]
        await client.generate(model="gemma3-270m", prompt="hi")
        await client.generate(model="gemma3-270m-b", prompt="hi")
        assert [n for n, _ in fake.loads] == ["gemma3-270m:latest", "gemma3-270m-b:latest"]

    async def test_ollama_client_reads_033_ps(
        self, start_fake: StartFake, ollama_client: OllamaClients
    ) -> None:
        """The official client parses the 0.33 /api/ps, including context_length."""
        fake = await start_fake(**fake_033())
        client = ollama_client(fake.url)  # type: ignore[attr-defined]
        await client.generate(model="gemma3-270m", prompt="hi", options={"num_ctx": 8192})
        (entry,) = (await client.ps()).models
        assert isinstance(entry, ollama.ProcessResponse.Model)
        assert (entry.model, entry.context_length, entry.size_vram) == ("gemma3-270m:latest", 8192, 0)
