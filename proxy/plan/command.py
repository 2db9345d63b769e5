"""``ollama-governor plan``: its flags, and the run from the command line to the printed plan."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from policies.memory import parse_size
from policies.model import parse_version
from proxy.config import Config
from proxy.config.settings import KV_CACHE_TYPES
from proxy.govern.rules import Governor
from proxy.logs import configure_logging
from proxy.plan.build import DEFAULT_PROMPT_TOKENS, Plan, PlanError, build_plan
from proxy.plan.inputs import PlanRequest, gather
from proxy.plan.render import plan_json, render_text


def add_arguments(plan: argparse.ArgumentParser) -> None:
    """The flags of ``plan`` (docs/plan.md); each bad value is one line on stderr."""
    plan.add_argument(
        "models", nargs="+", metavar="MODEL", help="a model name Ollama knows, or the path of a .gguf file"
    )
    plan.add_argument("--upstream", help="Ollama's URL, for names (default: from the config)")
    plan.add_argument("--state-dir", type=_path, help="where calibrations are kept (default: as serve)")
    plan.add_argument("--vram", type=_size, metavar="SIZE", help="plan for one GPU of this total, e.g. 24GiB")
    plan.add_argument("--free", type=_size, metavar="SIZE", help="free memory on it now (default: --vram)")
    plan.add_argument(
        "--reserve", type=_size, metavar="SIZE", help="kept free by the governor (default: [gpu])"
    )
    plan.add_argument(
        "--parallel", type=_positive, metavar="N", help="OLLAMA_NUM_PARALLEL (default: [ollama])"
    )
    plan.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, help="OLLAMA_KV_CACHE_TYPE")
    plan.add_argument("--flash-attention", choices=("on", "off", "auto"), help="OLLAMA_FLASH_ATTENTION")
    plan.add_argument(
        "--max-loaded-models", type=_count, metavar="N", help="OLLAMA_MAX_LOADED_MODELS (0: auto)"
    )
    plan.add_argument("--ctx", type=_contexts, metavar="N,N,...", help="contexts to plan (default: a ladder)")
    plan.add_argument("--ollama-version", type=_version, metavar="X.Y.Z", help="plan for this Ollama version")
    plan.add_argument(
        "--prompt-tokens",
        type=_count,
        metavar="N",
        default=DEFAULT_PROMPT_TOKENS,
        help=f"the prompt headroom sizes for (default {DEFAULT_PROMPT_TOKENS})",
    )
    plan.add_argument(
        "--json", action="store_true", help="machine-readable JSON (plan_version 1, docs/plan.md)"
    )


async def run_plan(config: Config, governor: Governor, args: argparse.Namespace) -> int:
    """Gather, compute and print the plan; a failure is one ``ollama-governor: error:`` line, exit 2."""
    configure_logging("json", "error", sys.stderr, cache=False)  # warnings would add lines to stderr
    try:
        plan = await make_plan(config, governor, args)
    except PlanError as error:
        print(f"ollama-governor: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan_json(plan), indent=2))
    else:
        print(render_text(plan), end="")
    return 0


async def make_plan(config: Config, governor: Governor, args: argparse.Namespace) -> Plan:
    """The plan the command line asks for; ``PlanError`` says why there is none."""
    return build_plan(await gather(config, governor, plan_request(config, args)))


def plan_request(config: Config, args: argparse.Namespace) -> PlanRequest:
    """The command line's ``plan`` flags over the config's ``[ollama]`` settings."""
    overrides = {
        "num_parallel": args.parallel,
        "kv_cache_type": args.kv_cache_type,
        "flash_attention": args.flash_attention,
        "max_loaded_models": args.max_loaded_models,
        "version": args.ollama_version,
    }
    if args.vram is not None and args.free is not None and args.free > args.vram:
        raise PlanError(f"--free ({args.free} B) is more than --vram ({args.vram} B)")
    return PlanRequest(
        models=tuple(args.models),
        settings=dataclasses.replace(config.ollama, **{k: v for k, v in overrides.items() if v is not None}),
        version_from_flag=args.ollama_version is not None,
        vram_bytes=args.vram,
        free_bytes=args.free,
        reserve_bytes=args.reserve,
        contexts=args.ctx,
        prompt_tokens=args.prompt_tokens,
        ask_ollama=args.upstream is not None,
    )


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    number = _count(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return number


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def _contexts(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return tuple(int(part) for part in parts)


def _version(text: str) -> tuple[int, int, int]:
    try:
        return parse_version(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _path(text: str) -> Path:
    return Path(text)
