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
from typing import Any, get_args
from urllib.parse import urlsplit

from policies.context import Endpoint
from proxy.config.reader import (
    ConfigError,
    Table,
    as_bool,
    as_model_list,
    as_seconds,
    as_str,
    duration_text,
    kind,
    one_of,
)
from proxy.config.settings import (
    BalancerSettings,
    GpuSettings,
    LimitsSettings,
    OllamaSettings,
    StoreSettings,
    parse_balancer_section,
    parse_gpu_section,
    parse_limits_section,
    parse_ollama_section,
    parse_store_section,
)
from proxy.names import canonical_model

DEFAULT_LISTEN = "127.0.0.1:11435"
DEFAULT_UPSTREAM = "http://127.0.0.1:11434"
CONFIG_ENV = "OLLAMA_GOVERNOR_CONFIG"
ENDPOINTS: tuple[str, ...] = get_args(Endpoint)
"""Every route a rule's ``endpoints`` globs can name: Ollama's native ones and the ``/v1`` ones."""


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One ``{ use = "...", option = value }`` entry of a rule."""

    use: str
    options: Mapping[str, Any]
    where: str


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Model globs, the routes the rule applies to, and the policies that govern them."""

    models: tuple[str, ...]
    policies: tuple[PolicySpec, ...]
    where: str
    endpoints: tuple[str, ...] = ("*",)
    """Globs over ``ENDPOINTS`` (``"chat"``, ``"openai.*"``); the default is every route."""

    def matches(self, model_name: str) -> bool:
        """Glob match on the name as sent, also as ``name:latest`` when it has no tag."""
        name = model_name.lower()
        names = {name, canonical_model(name)}
        return any(fnmatch.fnmatchcase(n, g) for g in self.models for n in names)

    def endpoint_set(self) -> frozenset[str]:
        """The routes this rule applies to, its globs expanded over ``ENDPOINTS``."""
        return frozenset(e for e in ENDPOINTS if any(fnmatch.fnmatchcase(e, g) for g in self.endpoints))


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
    default_rules: bool = False
    """The rules are the built-in default (the config names none); see ``default_rules``."""
    gpu: GpuSettings = field(default_factory=GpuSettings)
    ollama: OllamaSettings = field(default_factory=OllamaSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    balancer: BalancerSettings = field(default_factory=BalancerSettings)

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


DEFAULT_RULES_WHERE = "the built-in default rule"


def default_rules(ollama: OllamaSettings) -> tuple[RuleConfig, ...]:
    """What governs when the config names no rules: every model, with safe defaults.

    ``headroom`` with its defaults sends what the prompt needs or the server's default context,
    whichever is larger, keeps a loaded context that has room (no reload) and, when the memory
    budget is known, never more than fits; it never inflates a request to everything that fits.
    ``keep_alive`` changes nothing unless memory is short (under 1 GiB free: idle models are let
    go after 2 minutes), and then restores the server's own value (``[ollama] keep_alive``).
    Pass-through is one line away: ``rules = []`` in the config, or ``--pass-through``.
    """
    return (
        RuleConfig(
            models=("*",),
            policies=(
                PolicySpec("headroom", {}, DEFAULT_RULES_WHERE),
                PolicySpec(
                    "keep_alive",
                    {"under_pressure": "2m", "pressure_below": "1GiB", "restore": ollama.keep_alive},
                    DEFAULT_RULES_WHERE,
                ),
            ),
            where=DEFAULT_RULES_WHERE,
        ),
    )


def _check_glob(pattern: str, what: str = "model") -> str:
    if not pattern:
        raise ValueError(f"a {what} glob must not be empty")
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
    endpoints = _parse_endpoints(table)
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
    return RuleConfig(models=tuple(models), policies=tuple(policies), where=table.path, endpoints=endpoints)


def _parse_endpoints(table: Table) -> tuple[str, ...]:
    """A rule's ``endpoints``: globs that each name at least one route (a typo would match none)."""
    if "endpoints" not in table.data:
        return ("*",)
    raw = table.data.pop("endpoints")
    if raw == []:
        raise table.error(
            "endpoints", "is empty, so the rule would apply to nothing; leave it out for every route"
        )
    if not isinstance(raw, list):
        raise table.error(
            "endpoints", f'expected an array of route globs such as ["chat", "openai.*"], got {kind(raw)}'
        )
    globs = []
    for i, pattern in enumerate(raw):
        if not isinstance(pattern, str):
            raise table.error(f"endpoints[{i}]", f"expected a route glob string, got {kind(pattern)}")
        try:
            glob = _check_glob(pattern, "route")
        except ValueError as exc:
            raise table.error(f"endpoints[{i}]", str(exc)) from None
        if not any(fnmatch.fnmatchcase(endpoint, glob) for endpoint in ENDPOINTS):
            raise table.error(
                f"endpoints[{i}]", f"{pattern!r} matches no route; the routes are {', '.join(ENDPOINTS)}"
            )
        globs.append(glob)
    return tuple(globs)


def parse_config(data: Mapping[str, Any], source: str = "<defaults>") -> Config:
    """Validate a parsed TOML document into a Config."""
    top = Table(source, dict(data), "")
    host, port = top.get("listen", parse_listen, ("127.0.0.1", 11435))
    rules_written = "rules" in top.data
    raw_rules = top.data.pop("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: rules: expected an array of tables ([[rules]]), got {kind(raw_rules)}")
    state_dir = top.get("state_dir", as_str, None)

    def section(name: str) -> Table:
        return Table(source, top.data.pop(name, {}), name)

    ollama = parse_ollama_section(section("ollama"))
    limits = parse_limits_section(section("limits"))
    balancer = parse_balancer_section(section("balancer"))
    if balancer.announce_s >= limits.drain_timeout_s:
        raise ConfigError(
            f"{source}: balancer.announce: must be shorter than [limits] drain_timeout "
            f"({duration_text(limits.drain_timeout_s)}): the announcement is part of the drain"
        )
    rules = tuple(_parse_rule(source, rule, i) for i, rule in enumerate(raw_rules))
    config = Config(
        listen_host=host,
        listen_port=port,
        upstream=top.get("upstream", parse_upstream, DEFAULT_UPSTREAM),
        rules=rules if rules_written else default_rules(ollama),
        default_rules=not rules_written,
        dry_run=top.get("dry_run", as_bool, False),
        policy_timeout_s=top.get("policy_timeout", as_seconds, 0.25),
        log_format=top.get("log_format", one_of("auto", "json", "console"), "auto"),
        log_level=top.get("log_level", one_of("debug", "info", "warning", "error"), "info"),
        state_dir=Path(state_dir).expanduser() if state_dir else None,
        warm=top.get("warm", as_model_list, ()),
        admin_token=top.get("admin_token", as_str, None) or None,
        source=source,
        gpu=parse_gpu_section(section("gpu")),
        ollama=ollama,
        store=parse_store_section(section("store")),
        limits=limits,
        balancer=balancer,
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
