"""The processes a benchmark run starts: the fake upstream, the governor, nginx, the load
generator; and what is read from ``/proc`` about them (CPU time, peak RSS).

Each is a real separate process on loopback, started the way a user starts it (the governor
with ``python -m proxy serve``), so the numbers include everything a deployment pays.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.upstream import raise_fd_limit

PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a child gets when its parent dies."""
ROOT = Path(__file__).resolve().parent.parent
"""The repository root: ``python -m proxy`` and ``python -m bench.*`` run from here."""
HOST = "127.0.0.1"

GOVERNOR_CONFIG = """\
# The benchmark's governor: one rule for every model, the two built-in policies a GPU host
# would run, and the "ollama" GPU source (24 GiB minus what the fake's /api/ps says is held).
listen = "{listen}"
upstream = "{upstream}"
log_format = "json"
log_level = "{log_level}"

[gpu]
source = "ollama"
vram_total = "24GiB"

[store]
enabled = {store}

[[rules]]
models = ["*"]
policies = [{policies}]
"""
POLICIES = '\n  { use = "headroom" },\n  { use = "keep_alive", default = "30m" },\n'


def governor_config(
    listen: str, upstream: str, *, policies: bool = True, log_level: str = "info", store: bool = True
) -> str:
    """The benchmark's config; the switches turn parts off to see what each costs."""
    return GOVERNOR_CONFIG.format(
        listen=listen,
        upstream=upstream,
        log_level=log_level,
        store="true" if store else "false",
        policies=POLICIES if policies else "",
    )


NGINX_CONFIG = """\
# A reference reverse proxy set up for streaming, as one would put in front of Ollama.
{user}
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream ollama {{ server {upstream}; keepalive 1024; }}
  server {{
    listen {listen};
    client_max_body_size 0;
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://ollama;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $proxy_host;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
}}
"""


def free_port() -> int:
    """A loopback port nothing listens on (yet)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[Any], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} after {timeout_s:.0f} s")


def _clk_tck() -> int:
    return os.sysconf("SC_CLK_TCK")


@dataclass
class Process:
    """A started process and how to read its costs."""

    name: str
    popen: subprocess.Popen[Any]
    port: int = 0
    log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_s(self) -> float:
        """User + system CPU seconds so far (all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _clk_tck()

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def rss_bytes(self) -> int:
        return self._status("VmRSS")

    def peak_rss_bytes(self) -> int:
        """The high-water mark since start or since ``reset_peak``."""
        return self._status("VmHWM")

    def reset_peak(self) -> bool:
        """Restart the high-water mark at the current RSS (Linux ``clear_refs`` 5); False if refused."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def uses_uvloop(self) -> bool:
        """Whether uvloop's extension is mapped in: proves which loop a governor really runs."""
        try:
            return "uvloop/loop." in Path(f"/proc/{self.pid}/maps").read_text()
        except OSError:
            return False

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        if self.log is not None:
            self.log.close()


def _child_setup() -> None:
    """In the child before exec: enough descriptors for 1000 streams, and die with the parent,
    so that a benchmark killed mid-run (a CI timeout) leaves no server behind."""
    raise_fd_limit()
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _python(*args: str, under: tuple[str, ...] = (), cwd: Path = ROOT, **popen: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen([*under, sys.executable, *args], cwd=cwd, preexec_fn=_child_setup, **popen)


def start_upstream() -> Process:
    """The fast fake Ollama; it prints its port once it listens."""
    popen = _python("-m", "bench.upstream", stdout=subprocess.PIPE, text=True)
    assert popen.stdout is not None
    line = popen.stdout.readline()
    if not line.startswith("ready "):
        popen.kill()
        raise RuntimeError(f"the fake upstream did not start: {line!r}")
    return Process("upstream", popen, int(line.split()[1]))


def launch_governor(
    name: str,
    upstream_port: int,
    workdir: Path,
    *,
    loop: str,
    profile: Path | None = None,
    under: tuple[str, ...] = (),
    checkout: Path = ROOT,
    **switches: Any,
) -> Process:
    """Start ``python -m proxy serve`` with the benchmark's config, without waiting for it; its JSON
    log goes to a file. ``ready`` waits for it, so several can start at once. With ``profile`` it
    runs under cProfile, which writes there when the process stops; ``under`` is a command to run
    it under (valgrind); ``checkout`` serves another checkout's governor (its ``proxy/``), with
    this benchmark's config and upstream, to compare two commits."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.toml"
    config.write_text(governor_config(f"{HOST}:{port}", f"http://{HOST}:{upstream_port}", **switches))
    env = {**os.environ, "OLLAMA_GOVERNOR_LOOP": loop}
    log = (workdir / "governor.log").open("wb")
    profiler = ("-m", "cProfile", "-o", str(profile)) if profile is not None else ()
    popen = _python(
        *profiler, "-m", "proxy", "serve", "--config", str(config), "--state-dir", str(workdir / "state"),
        under=under, cwd=checkout, stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    return Process(name, popen, port, log)


def ready(process: Process, timeout_s: float = 20.0) -> Process:
    """Wait until a launched governor listens and has reached the upstream."""
    _wait_for_port(process.port, process.popen, timeout_s)
    _wait_healthy(process.port, max(10.0, timeout_s / 2))
    return process


def start_governor(name: str, upstream_port: int, workdir: Path, *, loop: str, **switches: Any) -> Process:
    """``launch_governor`` and wait until it is ready."""
    return ready(launch_governor(name, upstream_port, workdir, loop=loop, **switches))


def _wait_healthy(port: int, timeout_s: float = 10.0) -> None:
    """The governor answers health once it has reached the upstream."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/governor/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the governor did not become healthy")


def nginx_binary() -> str | None:
    """nginx on PATH (or in /usr/sbin, which a non-root PATH may lack)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def start_nginx(upstream_port: int, workdir: Path) -> Process:
    """nginx as one foreground process (no master), the same shape as one governor process."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        NGINX_CONFIG.format(
            user="user root;" if os.geteuid() == 0 else "",
            tmp=workdir,
            upstream=f"{HOST}:{upstream_port}",
            listen=f"{HOST}:{port}",
        )
    )
    log = (workdir / "nginx.out").open("wb")
    popen = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx-error.log")],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=_child_setup,
    )  # fmt: skip
    process = Process("nginx", popen, port, log)
    _wait_for_port(port, popen)
    return process


def nginx_version() -> str | None:
    binary = nginx_binary()
    if binary is None:
        return None
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().rpartition("/")[2] or None


class LoadGen(Process):
    """The load generator process: one JSON job in, one JSON result out."""

    @classmethod
    def start(cls) -> LoadGen:
        popen = _python("-m", "bench.loadgen", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return cls("loadgen", popen)

    def run(self, job: str, **params: Any) -> dict[str, Any]:
        stdin, stdout = self.popen.stdin, self.popen.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps({"job": job, **params}) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator died during {job}")
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        super().stop()
