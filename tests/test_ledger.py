"""The results ledger end to end: requests through the proxy land in the store, spills are
detected from /api/ps, and `ollama-governor report` shows what the change did."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

from structlog.testing import capture_logs

from policies.memory import GIB
from proxy.app import reload
from proxy.facts.memory import NvmlSource
from proxy.keys import LEDGER
from proxy.ledger.store import DB_FILENAME
from tests.conftest import ROOT_DIR, OllamaClients, StartFake, StartProxy, settled
from tests.fake_nvml import following
from tests.fake_ollama import gemma3_27b


def static(num_ctx: int, state_dir: Path) -> str:
    return f"""
        state_dir = "{state_dir}"
        [[rules]]
        models = ["*"]
        policies = [{{ use = "static", num_ctx = {num_ctx}, keep_alive = "30m" }}]
    """


async def test_a_change_is_recorded_spill_detected_and_reported(
    start_fake: StartFake, start_proxy: StartProxy, ollama_client: OllamaClients, tmp_path: Path
) -> None:
    """8192 -> 131072 on gemma3:27b with 24 GiB: the second context spills; the store, the log
    and the report all say so, with before/after figures."""
    fake = await start_fake(
        vram_bytes=24 * GIB, models=[gemma3_27b()], token_delay_s=0.002, load_delay_s=0.05
    )
    proxy = await start_proxy(
        fake.url, static(8192, tmp_path), memory_source=NvmlSource(nvml=following(fake))
    )  # type: ignore[attr-defined]
    client = ollama_client(proxy.url)
    with capture_logs() as logs:
        for _ in range(3):
            await client.generate(model="gemma3:27b", prompt="hello there")
            await settled(proxy)
        config_path = next(tmp_path.glob("config*.toml"))
        config_path.write_text(static(131072, tmp_path))
        assert reload(proxy.app)
        for _ in range(3):
            await client.generate(model="gemma3:27b", prompt="hello there")
            await settled(proxy)
    await asyncio.to_thread(proxy.app[LEDGER].backend.flush)  # type: ignore[attr-defined]

    spills = [e for e in logs if e["event"] == "spill"]
    assert len(spills) == 1 and spills[0]["num_ctx"] == 131072 and spills[0]["size_vram"] < spills[0]["size"]
    changes = [e for e in logs if e["event"] == "change"]
    assert [(c["field"], c["from"], c["to"]) for c in changes] == [("num_ctx", 8192, 131072)]

    db = sqlite3.connect(tmp_path / DB_FILENAME)
    rows = db.execute("SELECT applied_num_ctx, spilled, reloaded FROM results ORDER BY id").fetchall()
    db.close()
    assert [r[0] for r in rows] == [8192] * 3 + [131072] * 3
    assert [r[1] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert [r[2] for r in rows] == [1, 0, 0, 1, 0, 0]  # a load at first and after the change, even a fast one

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "report",
        "--state-dir",
        str(tmp_path),
        "--json",
        cwd=ROOT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    change = report["changes"][-1]
    assert (change["from_num_ctx"], change["to_num_ctx"], change["spilled"]) == (8192, 131072, True)
    assert change["eval_tokens_per_s_ratio"] < 0.5  # the fake runs 10x slower when spilled

    text = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "report",
        "--state-dir",
        str(tmp_path),
        "--model",
        "gemma3:*",
        cwd=ROOT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await text.communicate()
    assert "num_ctx 8192 -> 131072" in out.decode()


async def test_report_without_a_store_says_where_it_looked(tmp_path: Path) -> None:
    """report on an empty state directory is a clear error, not a traceback."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "report",
        "--state-dir",
        str(tmp_path),
        cwd=ROOT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert stderr.decode() == (
        f"ollama-governor: error: no results store at {tmp_path / DB_FILENAME} (serve with --state-dir {tmp_path})\n"
    )
