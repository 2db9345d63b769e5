"""``ollama-governor``: serve, check a config, and the other commands users run."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from policies.memory import format_bytes
from proxy import __version__
from proxy.config import Config, ConfigError, load_config, parse_listen, parse_upstream
from proxy.config.reader import duration_text
from proxy.config.settings import DEFAULT_MEMINFO_PATH, DEFAULT_SYSFS_ROOT
from proxy.govern.rules import Governor
from proxy.ledger.store import default_state_dir
from proxy.logs import configure_logging
from proxy.plan.command import add_arguments as add_plan_arguments

T = TypeVar("T")
STATE_DIR_ENV = "OLLAMA_GOVERNOR_STATE_DIR"
"""Where results and calibrations live when neither --state-dir nor the config says."""
LOOP_ENV = "OLLAMA_GOVERNOR_LOOP"
"""``asyncio`` runs the governor on asyncio's own loop even when uvloop is installed."""


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line on stderr and exit status 2, like every other error here."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ollama-governor").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"ollama-governor: error: {where}{message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ollama-governor",
        description="A transparent proxy in front of Ollama that keeps models on the GPU.",
    )
    parser.add_argument("--version", action="version", version=f"ollama-governor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the proxy")
    _config_arg(serve)
    serve.add_argument("--listen", help="host:port to listen on (default 127.0.0.1:11435)")
    serve.add_argument("--upstream", help="Ollama's URL (default http://127.0.0.1:11434)")
    serve.add_argument("--dry-run", action="store_true", help="log decisions, forward bodies unchanged")
    serve.add_argument(
        "--pass-through",
        action="store_true",
        help="govern nothing: forward every request as sent (the config's rules are ignored)",
    )
    serve.add_argument("--log-format", choices=("auto", "json", "console"), help="log rendering")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.add_argument(
        "--state-dir",
        type=Path,
        help="where results and calibrations are kept (default $OLLAMA_GOVERNOR_STATE_DIR, else "
        "$XDG_STATE_HOME/ollama-governor)",
    )

    check = commands.add_parser("check", help="validate a config file and print its rules")
    _config_arg(check)

    warm = commands.add_parser(
        "warm", help="preload models with the governor's decision so the first request skips the load"
    )
    warm.add_argument("models", nargs="+", metavar="MODEL")
    _config_arg(warm)
    warm.add_argument("--upstream", help="Ollama's URL (default: from the config)")
    warm.add_argument("--state-dir", type=Path, help="where calibrations are kept")

    report = commands.add_parser(
        "report", help="what every change did: load time and tokens/s, from the results store"
    )
    _config_arg(report)
    report.add_argument("--state-dir", type=Path, help="the directory serve keeps results in")
    report.add_argument("--model", metavar="GLOB", help="only models matching this glob")
    report.add_argument("--since", metavar="AGE", help="only the last AGE, e.g. 7d, 12h, 30m")
    report.add_argument("--json", action="store_true", help="machine-readable JSON")

    plan = commands.add_parser(
        "plan", help="what fits and what Ollama will do with a model, before anything loads (docs/plan.md)"
    )
    _config_arg(plan)
    add_plan_arguments(plan)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config (default: $OLLAMA_GOVERNOR_CONFIG, else built-in defaults)",
    )


def _with_overrides(config: Config, args: argparse.Namespace) -> Config:
    changes: dict[str, object] = {}
    try:
        if getattr(args, "listen", None):
            changes["listen_host"], changes["listen_port"] = parse_listen(args.listen)
        if getattr(args, "upstream", None):
            changes["upstream"] = parse_upstream(args.upstream)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"command line: {exc}") from None
    if getattr(args, "dry_run", False):
        changes["dry_run"] = True
    if getattr(args, "pass_through", False):
        changes["rules"], changes["default_rules"] = (), False
    for name in ("log_format", "log_level", "state_dir"):
        if getattr(args, name, None):
            changes[name] = getattr(args, name)
    config = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
    if config.state_dir is None:
        env = os.environ.get(STATE_DIR_ENV)
        config = dataclasses.replace(config, state_dir=Path(env) if env else default_state_dir())
    return config


def describe(governor: Governor) -> str:
    """The rules a config applies, as ``check`` prints them."""
    config = governor.config
    lines = [
        f"config: {config.source}",
        f"listen: {config.listen}",
        f"upstream: {config.upstream}",
        f"dry run: {'yes' if config.dry_run else 'no'}",
        f"policy timeout: {config.policy_timeout_s * 1000:.0f} ms",
        f"state dir: {config.state_dir or '(none: results are only logged)'}",
        f"admin token: {'set' if config.admin_token else 'not set'}",
    ]
    ollama, gpu = config.ollama, config.gpu
    lines.append(
        f"ollama: num_parallel {ollama.num_parallel}, kv_cache_type {ollama.kv_cache_type}, "
        f"version {'.'.join(map(str, ollama.version)) if ollama.version else 'from /api/version'}"
    )
    lines.append(
        f"gpu: source {gpu.source}, reserve {format_bytes(gpu.reserve_bytes)}"
        + (f", devices {', '.join(gpu.devices)}" if gpu.devices else "")
        + (
            f", vram_total {', '.join(map(format_bytes, gpu.vram_total_bytes))}"
            if gpu.vram_total_bytes
            else ""
        )
        + (f", sysfs_root {gpu.sysfs_root}" if gpu.sysfs_root != DEFAULT_SYSFS_ROOT else "")
        + (f", meminfo_path {gpu.meminfo_path}" if gpu.meminfo_path != DEFAULT_MEMINFO_PATH else "")
    )
    limits = config.limits
    bounds = ", ".join(
        f"{name} {duration_text(seconds)}"
        for name, seconds in (
            ("header", limits.header_timeout_s),
            ("body", limits.body_timeout_s),
            ("first byte", limits.first_byte_timeout_s),
            ("stream idle", limits.stream_idle_timeout_s),
            ("drain", limits.drain_timeout_s),
        )
    )
    lines.append(f"limits: {bounds}, governed bodies up to {format_bytes(limits.max_governed_body_bytes)}")
    balancer = config.balancer
    lines.append(
        f"balancer: agent {balancer.agent_listen or 'off'}, announce {duration_text(balancer.announce_s)}"
        + (f", min weight {balancer.min_weight_pct}%" if balancer.agent_listen else "")
    )
    if config.warm:
        lines.append(f"warm at start: {', '.join(config.warm)}")
    if not governor.rules:
        lines.append("rules: none (every request is forwarded unchanged)")
    elif config.default_rules:
        lines.append(
            "rules: the built-in default (the config names none; "
            "`rules = []` or --pass-through to govern nothing)"
        )
    for index, rule in enumerate(governor.rules, 1):
        routes = "" if rule.config.endpoints == ("*",) else f"; endpoints {', '.join(rule.config.endpoints)}"
        lines.append(f"rule {index}: models {', '.join(rule.config.models)}{routes}")
        if not rule.config.policies:
            lines.append("  (no policies: forwarded unchanged)")
        for spec in rule.config.policies:
            options = ", ".join(f"{k}={v!r}" for k, v in spec.options.items())
            lines.append(f"  - {spec.use}" + (f" ({options})" if options else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ollama-governor`` command."""
    args = _parser().parse_args(argv)

    def configured() -> Config:
        return _with_overrides(load_config(args.config), args)

    try:
        config = configured()
        governor = Governor.build(config)
    except ConfigError as exc:
        print(f"ollama-governor: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(describe(governor))
        # What the memory source reads is printed below; its log lines would repeat it.
        configure_logging("console" if sys.stderr.isatty() else "json", "error", sys.stderr)
        from proxy.facts.memory.probe import check_memory

        print("\n".join(_run(check_memory(config.gpu, config.upstream))))
        print("ok")
        return 0
    if args.command == "report":
        return _report(config.state_dir, args)
    if args.command == "plan":
        from proxy.plan.command import run_plan

        return _run(run_plan(config, governor, args))
    if args.command == "warm":
        configure_logging("console" if sys.stderr.isatty() else "json", config.log_level, sys.stderr)
        from proxy.warm import warm_once

        return _run(warm_once(governor, args.models))
    configure_logging(config.log_format, config.log_level)
    from proxy.balancer.agent import AgentError
    from proxy.server import serve

    try:
        _run(serve(governor, load_config=configured))
    except AgentError as exc:
        print(f"ollama-governor: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _report(state_dir: Path | None, args: argparse.Namespace) -> int:
    from proxy.ledger.report import build_report, parse_since, render_text, report_to_json
    from proxy.ledger.store import DB_FILENAME

    assert state_dir is not None
    db_path = state_dir / DB_FILENAME
    if not db_path.exists():
        print(
            f"ollama-governor: error: no results store at {db_path} (serve with --state-dir {state_dir})",
            file=sys.stderr,
        )
        return 2
    try:
        since_s = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"ollama-governor: error: --since: {exc}", file=sys.stderr)
        return 2
    report = build_report(db_path, model_glob=args.model, since_s=since_s)
    if args.json:
        print(json.dumps(report_to_json(report), indent=2))
    else:
        print(render_text(report))
    return 0


def _run(main_coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (faster I/O), else on asyncio's loop.

    ``OLLAMA_GOVERNOR_LOOP=asyncio`` forces asyncio's loop (the benchmarks measure both).
    """
    if os.environ.get(LOOP_ENV) != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main_coro)
    return asyncio.run(main_coro)


if __name__ == "__main__":
    raise SystemExit(main())
