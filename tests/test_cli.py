"""The ``ollama-governor`` command: check, start-up errors, and serve with SIGHUP/SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartFake, eventually, free_port
from tests.fake_ollama import gemma3_4b, gemma3_270m

ROOT = Path(__file__).resolve().parent.parent


def governor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def static_config(num_ctx: int) -> str:
    return f'[[rules]]\nmodels = ["*"]\npolicies = [{{ use = "static", num_ctx = {num_ctx} }}]\n'


def test_serve_does_not_load_the_gguf_reader() -> None:
    """Only ``plan`` reads GGUF files: the command line and the app leave llama.cpp's gguf package
    and numpy (~16 MB of a serving process) unloaded."""
    code = (
        "import sys, proxy.cli, proxy.app, proxy.server; print(sorted({'gguf', 'numpy'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class TestCheck:
    def test_prints_the_rules(self, tmp_path: Path) -> None:
        """check validates the file and lists what each rule would apply."""
        path = tmp_path / "c.toml"
        path.write_text(
            '[[rules]]\nmodels = ["llama3.1:*"]\npolicies = [{ use = "static", num_ctx = 8192, keep_alive = "30m" }]\n'
            '[[rules]]\nmodels = ["*"]\npolicies = []\n'
        )
        done = governor("check", "--config", str(path))
        assert done.returncode == 0, done.stderr
        assert "rule 1: models llama3.1:*\n  - static (num_ctx=8192, keep_alive='30m')" in done.stdout
        assert "rule 2: models *\n  (no policies: forwarded unchanged)" in done.stdout
        assert done.stdout.endswith("ok\n")

    def test_no_config_shows_the_default_rule(self) -> None:
        """Without a config the built-in rule governs every model, and check says how to turn it off."""
        done = governor("check", env={"OLLAMA_GOVERNOR_CONFIG": ""})
        assert done.returncode == 0, done.stderr
        assert "rules: the built-in default" in done.stdout
        assert "rule 1: models *\n  - headroom\n  - keep_alive (under_pressure='2m'" in done.stdout

    def test_pass_through_overrides_the_rules(self, tmp_path: Path) -> None:
        """``serve --pass-through`` governs nothing, whatever the config says."""
        from proxy.cli import _parser, _with_overrides
        from proxy.config import load_config

        path = tmp_path / "c.toml"
        path.write_text(static_config(8192))
        args = _parser().parse_args(["serve", "--config", str(path), "--pass-through"])
        config = _with_overrides(load_config(path), args)
        assert config.rules == () and not config.default_rules

    def test_bad_policy_stops_start_up(self, tmp_path: Path) -> None:
        """A policy that cannot load is one line on stderr and exit status 2; nothing listens."""
        path = tmp_path / "c.toml"
        path.write_text('[[rules]]\nmodels = ["*"]\npolicies = [{ use = "acme:Clamp" }]\n')
        for command in ("check", "serve"):
            done = governor(command, "--config", str(path))
            assert done.returncode == 2
            assert done.stderr == "ollama-governor: error: policy 'acme:Clamp': no module named 'acme'\n"

    def test_config_from_environment(self, tmp_path: Path) -> None:
        """$OLLAMA_GOVERNOR_CONFIG is read when --config is absent."""
        path = tmp_path / "c.toml"
        path.write_text('listen = "127.0.0.1:9999"\n')
        done = governor("check", env={"OLLAMA_GOVERNOR_CONFIG": str(path)})
        assert "listen: 127.0.0.1:9999" in done.stdout


class Served:
    """A real ``ollama-governor serve`` process and the JSON log lines it printed."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.logs: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"event": "non-json", "line": line.decode(errors="replace")})

    async def wait_for(self, event: str, count: int = 1) -> dict[str, Any]:
        def found() -> list[dict[str, Any]]:
            return [e for e in self.logs if e.get("event") == event]

        await eventually(lambda: len(found()) >= count, timeout_s=10.0, what=f"{event!r} in {self.logs}")
        return found()[count - 1]


@pytest.fixture
async def serve_process(tmp_path: Path) -> Any:
    started: list[Served] = []

    async def start(*args: str) -> Served:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--log-format",
            "json",
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        served = Served(process)
        started.append(served)
        await served.wait_for("listening")
        return served

    yield start
    for served in started:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()
        await served.reader


async def test_serve_reloads_on_sighup_without_dropping_streams(
    start_fake: StartFake, serve_process: Any, tmp_path: Path
) -> None:
    """HUP re-reads config and policies (keeping --upstream); an in-flight stream finishes;
    a bad new config is rejected and the old one stays; TERM stops cleanly."""
    fake = await start_fake(models=[gemma3_270m(), gemma3_4b()])
    fake.hold = asyncio.Event()
    config = tmp_path / "config.toml"
    config.write_text(static_config(2048))
    port = free_port()
    served = await serve_process(
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        fake.url,
        "--state-dir",
        str(tmp_path),
    )
    base = f"http://127.0.0.1:{port}"
    chat = {"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        held = await http.post(base + "/api/chat", json=chat)
        first_line = await asyncio.wait_for(held.content.readline(), timeout=10)

        config.write_text(static_config(4096))
        served.process.send_signal(signal.SIGHUP)
        reloaded = await served.wait_for("reloaded")
        assert reloaded["upstream"] == fake.url
        async with http.post(
            base + "/api/generate", json={"model": "gemma3:4b", "prompt": "x", "stream": False}
        ) as r:
            assert r.status == 200

        config.write_text("bogus = 1\n" + static_config(4096))
        served.process.send_signal(signal.SIGHUP)
        failed = await served.wait_for("reload_failed")
        assert failed["error"] == f"{config}: unknown key 'bogus' in the top level"
        async with http.post(
            base + "/api/generate", json={"model": "gemma3:4b", "prompt": "y", "stream": False}
        ) as r:
            assert r.status == 200

        fake.hold.set()
        rest = await asyncio.wait_for(held.read(), timeout=10)
        held.release()
    lines = [json.loads(line) for line in (first_line + rest).splitlines()]
    assert lines[-1]["done"] is True
    assert [b["options"]["num_ctx"] for b in fake.bodies("/api/chat")] == [2048]
    assert [b["options"]["num_ctx"] for b in fake.bodies("/api/generate")] == [4096, 4096]

    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), timeout=20) == 0
    await served.wait_for("stopped")


async def test_warm_preloads_with_the_governors_decision(start_fake: StartFake, tmp_path: Path) -> None:
    """``warm MODEL`` sends Ollama's preload call (empty prompt) with the decided num_ctx and keep_alive."""
    fake = await start_fake(models=[gemma3_4b()])
    config = tmp_path / "config.toml"
    config.write_text(
        '[[rules]]\nmodels = ["gemma3:*"]\npolicies = [{ use = "static", num_ctx = 8192, keep_alive = "30m" }]\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "warm",
        "gemma3:4b",
        "--config",
        str(config),
        "--upstream",
        fake.url,
        "--state-dir",
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().startswith("gemma3:4b: loaded with num_ctx 8192, keep_alive 30m in ")
    assert fake.bodies("/api/generate") == [
        {
            "model": "gemma3:4b",
            "prompt": "",
            "stream": False,
            "keep_alive": "30m",
            "options": {"num_ctx": 8192},
        }
    ]
    assert fake.loads == [("gemma3:4b", 8192)]


async def test_warm_reports_failure(start_fake: StartFake, tmp_path: Path) -> None:
    """An unknown model makes warm exit 1 with the error logged."""
    fake = await start_fake()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "warm",
        "no-such-model",
        "--upstream",
        fake.url,
        "--state-dir",
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 1
    assert "warm_failed" in stderr.decode() and "no-such-model" in stderr.decode()
