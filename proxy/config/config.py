"""The governor's configuration: TOML in, one frozen ``Config`` out, or one exact error.

Every mistake (unknown key, wrong type, bad glob) is reported with the file, the key and the
reason, so ``systemctl status`` tells an operator what to fix.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.config.reader import ConfigError, Table, as_bool, as_model_list, as_seconds, as_str, kind, one_of
from proxy.config.settings import (
    GpuSettings,
    LimitsSettings,
    OllamaSettings,
    StoreSettings,
    parse_gpu_section,
    parse_limits_section,
    parse_ollama_section,
    parse_store_section,
)
from proxy.names import canonical_model

DEFAULT_LISTEN = "127.0.0.1:11435"
DEFAULT_UPSTREAM = "http://127.0.0.1:11434"
CONFIG_ENV = "OLLAMA_GOVERNOR_CONFIG"


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One ``{ use = "...", option = value }`` entry of a rule."""

    use: str
    options: Mapping[str, Any]
    where: str


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Model globs and the policies that govern the models they match."""

    models: tuple[str, ...]
    policies: tuple[PolicySpec, ...]
    where: str

    def matches(self, model_name: str) -> bool:
        """Glob match on the name as sent, also as ``name:latest`` when it has no tag."""
        name = model_name.lower()
        names = {name, canonical_model(name)}
        return any(fnmatch.fnmatchcase(n, g) for g in self.models for n in names)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``serve`` needs. Built once per start or reload, never mutated."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 11435
    upstream: str = DEFAULT_UPSTREAM
    rules: tuple[RuleConfig, ...] = ()
    dry_run: bool = False
    policy_timeout_s: float = 0.25
    log_format: str = "auto"
    log_level: str = "info"
    state_dir: Path | None = None
    warm: tuple[str, ...] = ()
    admin_token: str | None = None
    source: str = "<defaults>"
    gpu: GpuSettings = field(default_factory=GpuSettings)
    ollama: OllamaSettings = field(default_factory=OllamaSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)

    @property
    def listen(self) -> str:
        """``host:port`` as written in the config."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


def parse_listen(value: object) -> tuple[str, int]:
    """``host:port`` (``[::1]:11435`` for IPv6) into its parts."""
    text = as_str(value).strip()
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\]:(?P<port>\d+)|(?P<host>[^:\[\]]*):(?P<port4>\d+)", text)
    if match is None:
        raise ValueError(f'expected host:port such as "127.0.0.1:11435", got {text!r}')
    host = match.group("v6") or match.group("host") or "0.0.0.0"
    port = int(match.group("port") or match.group("port4"))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, port


def parse_upstream(value: object) -> str:
    """An http(s) base URL of Ollama, without a trailing slash; a bare host:port gets http://."""
    text = as_str(value).strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL such as {DEFAULT_UPSTREAM!r}, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the upstream URL must not have a query or fragment, got {value!r}")
    return text


def _check_glob(pattern: str) -> str:
    if not pattern:
        raise ValueError("a model glob must not be empty")
    depth = 0
    for char in pattern:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        raise ValueError(f"bad glob {pattern!r}: unclosed '['")
    try:
        re.compile(fnmatch.translate(pattern))
    except re.error as exc:
        raise ValueError(f"bad glob {pattern!r}: {exc}") from None
    return pattern.lower()


def _parse_rule(source: str, data: object, index: int) -> RuleConfig:
    table = Table(source, data, f"rules[{index}]")
    if "models" not in table.data:
        raise table.error("models", 'missing; give a list of model globs such as ["llama3.1:*"]')
    raw_models = table.data.pop("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise table.error("models", f"expected a non-empty array of glob strings, got {kind(raw_models)}")
    models = []
    for i, pattern in enumerate(raw_models):
        if not isinstance(pattern, str):
            raise table.error(f"models[{i}]", f"expected a glob string, got {kind(pattern)}")
        try:
            models.append(_check_glob(pattern))
        except ValueError as exc:
            raise table.error(f"models[{i}]", str(exc)) from None
    raw_policies = table.data.pop("policies", [])
    if not isinstance(raw_policies, list):
        raise table.error("policies", f"expected an array of tables, got {kind(raw_policies)}")
    policies = []
    for i, entry in enumerate(raw_policies):
        where = table.key(f"policies[{i}]")
        if not isinstance(entry, dict):
            raise ConfigError(
                f'{source}: {where}: expected a table such as {{ use = "static" }}, got {kind(entry)}'
            )
        options = dict(entry)
        use = options.pop("use", None)
        if not isinstance(use, str) or not use.strip():
            raise ConfigError(f'{source}: {where}.use: missing; name the policy, e.g. use = "static"')
        policies.append(PolicySpec(use=use.strip(), options=options, where=f"{source}: {where}"))
    table.finish()
    return RuleConfig(models=tuple(models), policies=tuple(policies), where=table.path)


def parse_config(data: Mapping[str, Any], source: str = "<defaults>") -> Config:
    """Validate a parsed TOML document into a Config."""
    top = Table(source, dict(data), "")
    host, port = top.get("listen", parse_listen, ("127.0.0.1", 11435))
    raw_rules = top.data.pop("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: rules: expected an array of tables ([[rules]]), got {kind(raw_rules)}")
    state_dir = top.get("state_dir", as_str, None)

    def section(name: str) -> Table:
        return Table(source, top.data.pop(name, {}), name)

    config = Config(
        listen_host=host,
        listen_port=port,
        upstream=top.get("upstream", parse_upstream, DEFAULT_UPSTREAM),
        rules=tuple(_parse_rule(source, rule, i) for i, rule in enumerate(raw_rules)),
        dry_run=top.get("dry_run", as_bool, False),
        policy_timeout_s=top.get("policy_timeout", as_seconds, 0.25),
        log_format=top.get("log_format", one_of("auto", "json", "console"), "auto"),
        log_level=top.get("log_level", one_of("debug", "info", "warning", "error"), "info"),
        state_dir=Path(state_dir).expanduser() if state_dir else None,
        warm=top.get("warm", as_model_list, ()),
        admin_token=top.get("admin_token", as_str, None) or None,
        source=source,
        gpu=parse_gpu_section(section("gpu")),
        ollama=parse_ollama_section(section("ollama")),
        store=parse_store_section(section("store")),
        limits=parse_limits_section(section("limits")),
    )
    top.finish()
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """The config from ``path``, else ``$OLLAMA_GOVERNOR_CONFIG``, else the built-in defaults."""
    chosen = path if path is not None else os.environ.get(CONFIG_ENV) or None
    if chosen is None:
        return parse_config({})
    source = str(chosen)
    try:
        with open(chosen, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(data, source)
