"""Ollama's model-management and status routes: /, /api/version, /api/status, /api/tags, /api/ps,
/api/show, /api/pull, /api/create, /api/copy, /api/delete and the blob upload routes.

Shapes as recorded (tests/data/ollama-0.33/tags.txt, ps_loaded.txt, show.txt, status.txt, ...).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from aiohttp import web

from tests.fakeollama.host import Host
from tests.fakeollama.models import FakeModel, gemma3_270m
from tests.fakeollama.wire import (
    ApiError,
    dumps,
    full_name,
    json_response,
    param_lines,
    parse_params,
    ts,
)

BLOB_DIR = "/usr/share/ollama/.ollama/models/blobs"
_DIGEST_CHARS = frozenset("0123456789abcdef")
_QUANT_TYPES = {
    "Q4_K_M": "Q4_K",
    "Q4_K_S": "Q4_K",
    "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K",
    "Q8_0": "Q8_0",
    "F16": "F16",
    "BF16": "BF16",
    "F32": "F32",
}


def tensors(m: FakeModel) -> list[dict[str, Any]]:
    """A plausible /api/show ``tensors`` list (0.33): names, GGML types and shapes per layer."""
    emb = int(m.info("embedding_length", 0))
    heads = m.info("attention.head_count", 1)
    heads = int(max(heads) if isinstance(heads, list) else heads) or 1
    kv = m.info("attention.head_count_kv", heads)
    kv = int(max(kv) if isinstance(kv, list) else kv)
    hd = int(m.info("attention.key_length", emb // heads))
    ffn = m.info("feed_forward_length", 4 * emb)
    ffn = int(max(ffn) if isinstance(ffn, list) else ffn)
    vocab = m.vocab_size or int(m.info("vocab_size", 32000) or 32000)
    q = _QUANT_TYPES.get(m.quantization_level, "Q4_K")
    out = [
        {"name": "output_norm.weight", "type": "F32", "shape": [emb]},
        {"name": "token_embd.weight", "type": q, "shape": [emb, vocab]},
    ]
    for il in range(int(m.info("block_count", 0))):
        out += [
            {"name": f"blk.{il}.{n}", "type": t, "shape": s}
            for n, t, s in (
                ("attn_k.weight", q, [emb, kv * hd]),
                ("attn_norm.weight", "F32", [emb]),
                ("attn_output.weight", q, [heads * hd, emb]),
                ("attn_q.weight", q, [emb, heads * hd]),
                ("attn_v.weight", q, [emb, kv * hd]),
                ("ffn_down.weight", q, [ffn, emb]),
                ("ffn_gate.weight", q, [emb, ffn]),
                ("ffn_norm.weight", "F32", [emb]),
                ("ffn_up.weight", q, [emb, ffn]),
            )
        ]
    return out


class ManagementRoutes(Host):
    """Store and status handlers; FakeOllama provides the state annotated here."""

    version: str
    modern: bool
    models: dict[str, FakeModel]
    registry: dict[str, FakeModel]
    blobs: set[str]
    blob_bytes_received: dict[str, int]
    _modified: dict[str, int]

    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"Ollama is running", headers={"Content-Type": "text/plain; charset=utf-8"})

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, body=b"404 page not found", headers={"Content-Type": "text/plain"})

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return json_response({"version": self.version})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        """0.33's /api/status: cloud models off, as with OLLAMA_NO_CLOUD=1 (status.txt)."""
        if not self.modern:
            return await self._not_found(request)
        return json_response({"cloud": {"disabled": True, "source": "env"}})

    def _details(self, m: FakeModel, *, tags: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "parent_model": "",
            "format": "gguf",
            "family": m.family,
            "families": [m.family],
            "parameter_size": m.parameter_size,
            "quantization_level": m.quantization_level,
        }
        if tags and self._at_least_030():
            d["context_length"] = m.context_length
            d["embedding_length"] = int(m.info("embedding_length", 0))
        return d

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        out = []
        for full, m in sorted(self.models.items(), key=lambda kv: -self._modified[kv[0]]):
            e: dict[str, Any] = {
                "name": full,
                "model": full,
                "modified_at": ts(self._modified[full]),
                "size": m.weights_bytes,
                "digest": m.digest,
                "details": self._details(m, tags=True),
            }
            if self._at_least_030():
                e["capabilities"] = list(m.capabilities)
            out.append(e)
        return json_response({"models": out})

    async def _ps(self, request: web.Request) -> web.StreamResponse:
        states = sorted(self.loaded().values(), key=lambda s: -(s.expires_at_ns // 10**9))
        return json_response(
            {
                "models": [
                    {
                        "name": s.name,
                        "model": s.name,
                        "size": s.size,
                        "digest": s.model.digest,
                        "details": self._details(s.model),
                        "expires_at": ts(s.expires_at_ns),
                        "size_vram": s.size_vram,
                        "context_length": s.num_ctx,
                    }
                    for s in states
                ]
            }
        )

    async def _show(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name = body.get("model") or body.get("name") or ""
        m = self._find(str(name))
        if m is None:
            raise ApiError(404, f"model '{full_name(str(name)) if self._at_least_030() else name}' not found")
        verbose = bool(body.get("verbose"))
        # getModelData: without verbose the GGUF reader skips every array (JSON null, as recorded)
        info = {
            k: (None if isinstance(v, list) and v and not verbose else v)
            for k, v in m.model_info.items()
            if k not in ("general.name", "tokenizer.chat_template")
        }
        params = parse_params(m.parameters)
        layer = m.blob if self.modern else m.digest
        modelfile = (
            f'# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this,'
            f" replace FROM with:\n# FROM {m.full_name}\n\nFROM {BLOB_DIR}/"
            f'sha256-{layer}\nTEMPLATE """{m.template}"""\n'
            + "".join(f"PARAMETER {k} {v}\n" for k, vs in params.items() for v in vs)
        )
        out: dict[str, Any] = {"modelfile": modelfile}
        if m.parameters:
            out["parameters"] = m.parameters
        out.update(template=m.template, details=self._details(m), model_info=info)
        if self.modern:
            out["tensors"] = tensors(m)
        out.update(capabilities=list(m.capabilities), modified_at=ts(self._modified[m.full_name]))
        return json_response(out)

    async def _status_stream(
        self, request: web.Request, body: dict[str, Any], statuses: list[dict[str, Any]], error: str | None
    ) -> web.StreamResponse:
        """Progress as NDJSON (stream absent = true); an error after the start is one more line."""
        if body.get("stream") is False:
            if error is not None:
                raise ApiError(500, error)
            return json_response(statuses[-1])
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for s in [*statuses, *([{"error": error}] if error is not None else [])]:
            await resp.write((dumps(s) + "\n").encode())
        await resp.write_eof()
        return resp

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name = str(body.get("model") or body.get("name") or "")
        m = self._find(name) or self.registry.get(full_name(name))
        if m is None:
            return await self._status_stream(
                request, body, [{"status": "pulling manifest"}], "pull model manifest: file does not exist"
            )
        self._add_model(m)
        w = m.weights_bytes
        return await self._status_stream(
            request,
            body,
            [
                {"status": "pulling manifest"},
                {
                    "status": f"pulling {m.digest[:12]}",
                    "digest": f"sha256:{m.digest}",
                    "total": w,
                    "completed": w,
                },
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ],
            None,
        )

    async def _create(self, request: web.Request) -> web.StreamResponse:
        """Derived models: ``from`` an existing model plus ``parameters`` (e.g. num_ctx); the
        derived model keeps the base's GGUF blob, so on 0.33 both names share a runner."""
        body = await self._body(request)
        name = str(body.get("model") or body.get("name") or "")
        if not name:
            raise ApiError(400, "invalid model name")
        files = body.get("files") or {}
        base = self._find(str(body.get("from") or ""))
        if base is None and not files:
            if body.get("from"):
                return await self._status_stream(
                    request,
                    body,
                    [{"status": "pulling manifest"}],
                    "pull model manifest: file does not exist",
                )
            raise ApiError(400, "neither 'from' or 'files' was specified")
        for digest in files.values() if isinstance(files, dict) else []:
            if str(digest).replace("-", ":") not in self.blobs:
                raise ApiError(400, f"blob {digest} not found")  # approximate wording
        base = base or gemma3_270m()  # a GGUF uploaded as a blob is served as the 270M model
        params = parse_params(base.parameters)
        for k, v in (body.get("parameters") or {}).items():
            params[k] = list(v) if isinstance(v, list) else [v]
        new = replace(
            base,
            name=name,
            digest=hashlib.sha256(name.encode()).hexdigest(),
            parameters=param_lines(params),
            template=str(body.get("template") or base.template),
        )
        self._add_model(new)
        return await self._status_stream(
            request,
            body,
            [
                {"status": f"using existing layer sha256:{base.digest}"},
                {"status": "writing manifest"},
                {"status": "success"},
            ],
            None,
        )

    async def _copy(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        src, dst = str(body.get("source") or ""), str(body.get("destination") or "")
        m = self._find(src)
        if m is None:
            raise ApiError(404, f"model {json.dumps(src)} not found")
        if not dst:
            raise ApiError(400, "invalid destination name")
        self._add_model(replace(m, name=dst))
        return web.Response(status=200)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        _, m = self._model(body)
        del self.models[m.full_name]
        return web.Response(status=200)

    async def _blob_head(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"].replace("-", ":")
        return web.Response(status=200 if digest in self.blobs else 404)

    async def _blob_post(self, request: web.Request) -> web.StreamResponse:
        """Stream the upload through sha256, counting bytes as they come; never buffer it."""
        digest = request.match_info["digest"]
        hexpart = digest[7:]
        if not (
            digest[:7] in ("sha256:", "sha256-") and len(hexpart) == 64 and set(hexpart) <= _DIGEST_CHARS
        ):
            raise ApiError(400, "invalid digest format")
        digest = digest.replace("-", ":")
        if digest in self.blobs:
            return web.Response(status=200)
        h = hashlib.sha256()
        self.blob_bytes_received[digest] = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            self.blob_bytes_received[digest] += len(chunk)
        if f"sha256:{h.hexdigest()}" != digest:
            raise ApiError(400, "digest mismatch")
        self.blobs.add(digest)
        return web.Response(status=201)
