"""``ollama-governor``: serve, check a config, and the other commands users run."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from proxy import __version__
from proxy.config import Config, ConfigError, load_config, parse_listen, parse_upstream
from proxy.governor import Governor
from proxy.logs import configure_logging

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollama-governor",
        description="A transparent proxy in front of Ollama that keeps models on the GPU.",
    )
    parser.add_argument("--version", action="version", version=f"ollama-governor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy")
    _config_arg(serve)
    serve.add_argument("--listen", help="host:port to listen on (default 127.0.0.1:11435)")
    serve.add_argument("--upstream", help="Ollama's URL (default http://127.0.0.1:11434)")
    serve.add_argument("--dry-run", action="store_true", help="log decisions, forward bodies unchanged")
    serve.add_argument("--log-format", choices=("auto", "json", "console"), help="log rendering")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--state-dir", type=Path, help="where results and calibration are kept")

    check = commands.add_parser("check", help="validate a config file and print its rules")
    _config_arg(check)

    warm = commands.add_parser(
        "warm", help="preload models with the governor's decision so the first request skips the load"
    )
    warm.add_argument("models", nargs="+", metavar="MODEL")
    _config_arg(warm)
    warm.add_argument("--upstream", help="Ollama's URL (default: from the config)")
    warm.add_argument("--state-dir", type=Path, help="where calibrations are kept")
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
    for name in ("log_format", "log_level", "state_dir"):
        if getattr(args, name, None):
            changes[name] = getattr(args, name)
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def describe(governor: Governor) -> str:
    """The rules a config applies, as ``check`` prints them."""
    config = governor.config
    lines = [
        f"config: {config.source}",
        f"listen: {config.listen}",
        f"upstream: {config.upstream}",
        f"dry run: {'yes' if config.dry_run else 'no'}",
        f"policy timeout: {config.policy_timeout_s * 1000:.0f} ms",
    ]
    if not governor.rules:
        lines.append("rules: none (every request is forwarded unchanged)")
    for index, rule in enumerate(governor.rules, 1):
        lines.append(f"rule {index}: models {', '.join(rule.config.models)}")
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
        print("ok")
        return 0
    if args.command == "warm":
        configure_logging("console" if sys.stderr.isatty() else "json", config.log_level, sys.stderr)
        from proxy.warm import warm_once

        return _run(warm_once(governor, args.models))
    configure_logging(config.log_format, config.log_level)
    from proxy.server import serve

    _run(serve(governor, load_config=configured))
    return 0


def _run(main_coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (faster I/O), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_coro)
    return uvloop.run(main_coro)


if __name__ == "__main__":
    raise SystemExit(main())
