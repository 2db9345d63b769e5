"""Checks for the systemd packaging in systemd/.

* ``systemd-analyze verify`` on the unit, alone and with the "take over 11434"
  drop-ins applied (skipped locally when systemd-analyze is missing, but a
  failure in CI, i.e. when CI=true).
* A static parse of the unit / drop-ins asserting the directives that matter.
* config.example.toml parses and has the documented shape.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD_DIR / "ollama-governor.service"
GOVERNOR_TAKEOVER = SYSTEMD_DIR / "ollama-governor-takeover.conf"
OLLAMA_TAKEOVER = SYSTEMD_DIR / "ollama-takeover.conf"
CONFIG_EXAMPLE = SYSTEMD_DIR / "config.example.toml"

INSTALLED_EXE = "/opt/ollama-governor/bin/ollama-governor"
CONFIG_PATH = "/etc/ollama-governor/config.toml"

# What the official Ollama installer writes to /etc/systemd/system/ollama.service
# (ExecStart is replaced by an executable that exists on this machine).
OLLAMA_STUB = """\
[Unit]
Description=Ollama Service (test stub)
After=network-online.target

[Service]
ExecStart={exe} serve
User=ollama
Group=ollama
Restart=always
RestartSec=3

[Install]
WantedBy=default.target
"""

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


# --------------------------------------------------------------------------- helpers


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Parse a systemd unit file into {section: [(key, value), ...]}.

    Keeps duplicate keys in order (configparser cannot), handles comments and
    backslash line continuations as systemd does.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: str | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"assignment outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def effective(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str | None:
    """The value that wins for a single-valued setting (the last assignment)."""
    vals = values(unit, section, key)
    return vals[-1] if vals else None


def is_true(value: str | None) -> bool:
    return value is not None and value.lower() in _TRUE


def list_setting(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    """A list setting (After=, Wants=...): all assignments, an empty one resets."""
    out: list[str] = []
    for v in values(unit, section, key):
        out = [] if v == "" else out + v.split()
    return out


def exec_argv(value: str) -> list[str]:
    # Strip systemd's executable prefixes (-, @, :, +, !) and split like a shell.
    return shlex.split(value.lstrip("-@:+!"))


def _exe_for_verify() -> str:
    """An executable that exists here, to stand in for INSTALLED_EXE."""
    candidates = [
        Path(sys.executable).parent / "ollama-governor",
        Path(shutil.which("ollama-governor") or "/nonexistent"),
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c.absolute())
    return str(Path(sys.executable).absolute())


def _quote_for_unit(path: str) -> str:
    path = path.replace("%", "%%")  # % starts a specifier
    return f'"{path}"' if re.search(r"\s", path) else path


def _retarget(text: str, exe: str) -> str:
    """Point every Exec*= that runs INSTALLED_EXE at `exe`, leaving everything else verbatim."""
    out = re.sub(
        rf"^(Exec[A-Za-z]*=[-@:+!]*){re.escape(INSTALLED_EXE)}(?=\s|$)",
        lambda m: m.group(1) + _quote_for_unit(exe),
        text,
        flags=re.MULTILINE,
    )
    assert out != text, "no Exec*= line with the installed path found"
    return out


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in _TRUE


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        msg = (
            "systemd-analyze not found (install it with: apt-get install -y --no-install-recommends systemd)"
        )
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def _verify(tmp_path: Path, *units: Path) -> None:
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="info", SYSTEMD_LOG_COLOR="0", LC_ALL="C")
    env.pop("SYSTEMD_UNIT_PATH", None)  # default search path + the units' own directory
    proc = subprocess.run(
        [_systemd_analyze(), "verify", *map(str, units)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    # Ignore complaints about unrelated units of the host system; fail on any
    # line about our units, drop-ins or the temporary directory.
    ours = ("ollama-governor", "ollama.service", "governor.conf", "takeover.conf", str(tmp_path))
    problems = [line for line in output.splitlines() if any(s in line for s in ours)]
    assert proc.returncode == 0, f"systemd-analyze verify exited {proc.returncode}:\n{output}"
    assert not problems, "systemd-analyze verify warned about our units:\n" + "\n".join(problems)


# ------------------------------------------------------------------ systemd-analyze


def test_verify_unit(tmp_path: Path) -> None:
    exe = _exe_for_verify()
    unit = tmp_path / UNIT.name
    unit.write_text(_retarget(UNIT.read_text(), exe))
    (tmp_path / "ollama.service").write_text(OLLAMA_STUB.format(exe=_quote_for_unit(exe)))
    _verify(tmp_path, unit)


def test_verify_takeover_dropins(tmp_path: Path) -> None:
    exe = _exe_for_verify()
    unit = tmp_path / UNIT.name
    unit.write_text(_retarget(UNIT.read_text(), exe))
    dropins = tmp_path / f"{UNIT.name}.d"
    dropins.mkdir()
    (dropins / "takeover.conf").write_text(_retarget(GOVERNOR_TAKEOVER.read_text(), exe))

    ollama = tmp_path / "ollama.service"
    ollama.write_text(OLLAMA_STUB.format(exe=_quote_for_unit(exe)))
    (tmp_path / "ollama.service.d").mkdir()
    (tmp_path / "ollama.service.d" / "governor.conf").write_text(OLLAMA_TAKEOVER.read_text())
    _verify(tmp_path, unit, ollama)


# ------------------------------------------------------------------- static checks


def test_unit_directives() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}

    # Ordering / dependencies.
    after = list_setting(unit, "Unit", "After")
    assert "network-online.target" in after
    assert "ollama.service" in after
    assert "ollama.service" in list_setting(unit, "Unit", "Wants")
    assert "multi-user.target" in list_setting(unit, "Install", "WantedBy")

    # Command lines.
    start = values(unit, "Service", "ExecStart")
    assert len(start) == 1
    argv = exec_argv(start[0])
    assert argv[0] == INSTALLED_EXE
    assert argv[1] == "serve"
    assert argv[argv.index("--config") + 1] == CONFIG_PATH
    assert argv[argv.index("--state-dir") + 1] == "${STATE_DIRECTORY}"
    # `systemctl reload`: optionally validate the config, then always SIGHUP the main process.
    reloads = [exec_argv(v) for v in values(unit, "Service", "ExecReload")]
    assert reloads, "ExecReload= missing"
    *checks, hup = reloads
    assert hup[0].startswith("/") and hup[0].endswith("/kill")
    assert hup[1:] == ["-HUP", "$MAINPID"]
    for check in checks:
        assert check == [INSTALLED_EXE, "check", "--config", CONFIG_PATH]

    # Lifecycle and logging.
    assert effective(unit, "Service", "Restart") == "on-failure"
    assert effective(unit, "Service", "RestartSec")
    assert effective(unit, "Service", "KillSignal") == "SIGTERM"
    assert effective(unit, "Service", "TimeoutStopSec")
    assert effective(unit, "Service", "StandardOutput") == "journal"

    # Identity, directories, hardening.
    for key in (
        "DynamicUser",
        "ProtectHome",
        "PrivateTmp",
        "NoNewPrivileges",
        "LockPersonality",
        "RestrictRealtime",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "MemoryDenyWriteExecute",
    ):
        assert is_true(effective(unit, "Service", key)), f"{key}= is not enabled"
    assert effective(unit, "Service", "ProtectSystem") == "strict"
    assert effective(unit, "Service", "StateDirectory") == "ollama-governor"
    assert effective(unit, "Service", "ConfigurationDirectory") == "ollama-governor"
    assert effective(unit, "Service", "CapabilityBoundingSet") == ""
    assert effective(unit, "Service", "SystemCallArchitectures") == "native"
    assert sorted(list_setting(unit, "Service", "RestrictAddressFamilies")) == [
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
    ]

    # NVML must still reach the NVIDIA device nodes.
    private_devices = effective(unit, "Service", "PrivateDevices")
    assert private_devices is None or private_devices.lower() in _FALSE
    assert effective(unit, "Service", "DevicePolicy") == "closed"
    allow = dict(v.split() for v in values(unit, "Service", "DeviceAllow"))
    assert set("rw") <= set(allow.get("char-nvidia-frontend", "")), allow
    assert set("rw") <= set(allow.get("char-nvidia", "")), allow
    assert set("rw") <= set(allow.get("char-nvidia-uvm", "")), allow
    assert "r" in allow.get("char-nvidia-caps", ""), allow
    assert not any("m" in perms for perms in allow.values()), "no mknod needed"


def test_takeover_dropins_match() -> None:
    ollama = parse_unit(OLLAMA_TAKEOVER.read_text())
    env = dict(
        item.split("=", 1) for v in values(ollama, "Service", "Environment") for item in shlex.split(v)
    )
    ollama_host = env["OLLAMA_HOST"]
    assert ollama_host.startswith("127.0.0.1:"), "Ollama must stay on loopback"

    base = exec_argv(values(parse_unit(UNIT.read_text()), "Service", "ExecStart")[0])
    gov = parse_unit(GOVERNOR_TAKEOVER.read_text())
    starts = values(gov, "Service", "ExecStart")
    assert starts[0] == "", "ExecStart= must be reset before it is replaced"
    assert len(starts) == 2
    argv = exec_argv(starts[1])
    # Same command as the main unit plus the flags, so the two cannot drift apart.
    assert argv[: len(base)] == base
    extra = argv[len(base) :]
    flags = dict(zip(extra[::2], extra[1::2], strict=True))
    assert flags["--upstream"] == f"http://{ollama_host}"
    assert flags["--listen"].rsplit(":", 1)[1] == "11434"


def test_config_example_parses() -> None:
    """The shipped example loads with the governor's own loader, policies included."""
    from proxy.config import load_config
    from proxy.govern.rules import Governor

    governor = Governor.build(load_config(CONFIG_EXAMPLE))
    assert governor.config.listen == "127.0.0.1:11435"
    assert governor.config.upstream == "http://127.0.0.1:11434"
    assert governor.rules[-1].config.models == ("*",), "the last rule should be the catch-all"
    assert [p.name for p in governor.rules[0].policies] == ["headroom", "keep_alive"]


def test_stop_timeout_leaves_room_for_the_drain() -> None:
    """systemd's TimeoutStopSec stays a few seconds above the shipped config's drain bound, so
    SIGTERM's drain ends before SIGKILL could cut it short."""
    from proxy.config import load_config

    unit = parse_unit(UNIT.read_text())
    stop = effective(unit, "Service", "TimeoutStopSec")
    assert stop is not None and re.fullmatch(r"\d+s", stop), stop
    assert int(stop[:-1]) >= load_config(CONFIG_EXAMPLE).limits.drain_timeout_s + 5
