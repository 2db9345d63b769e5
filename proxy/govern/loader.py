"""Turn a policy spec from the config into a ready callable, or one exact start-up error.

Three spellings, after uvicorn's ``import_from_string``: a built-in or entry-point name
(``static``), ``package.module:Attr``, or ``/path/to/file.py:Attr``. A class is instantiated
with the table's other keys as keyword options; a function takes no options. One key belongs
to the governor, not the policy: ``threaded = true`` runs a blocking policy in a worker thread.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from policies.protocol import Policy
from proxy.config import ConfigError, PolicySpec

ENTRY_POINT_GROUP = "ollama_governor.policies"

BUILTINS: Mapping[str, str] = {
    "static": "policies.static:Static",
    "headroom": "policies.headroom:Headroom",
    "keep_alive": "policies.keep_alive:KeepAlivePolicy",
}
"""Built-in policies by name; they resolve even when the package metadata is not installed."""


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A policy ready to run, with the name that logs and results use for it."""

    name: str
    call: Policy
    threaded: bool = False
    """Run it in a worker thread: it blocks (declared ``blocking = True`` or ``threaded = true``)."""


class PolicyLoadError(ConfigError):
    """A policy spec that cannot become a policy."""


def load_policy(spec: PolicySpec) -> LoadedPolicy:
    """Resolve, instantiate and check one policy spec."""
    name = spec.use
    options = dict(spec.options)
    threaded = options.pop("threaded", False)
    if not isinstance(threaded, bool):
        raise PolicyLoadError(f"policy {name!r}: threaded must be true or false, not {threaded!r}")
    target = _resolve(name)
    policy = _instantiate(name, target, options)
    if not callable(policy):
        raise PolicyLoadError(f"policy {name!r}: {type(policy).__name__} object is not callable")
    _check_signature(name, policy)
    threaded = threaded or getattr(policy, "blocking", False) is True
    if threaded and _is_async(policy):
        raise PolicyLoadError(
            f"policy {name!r}: an async policy cannot be threaded; only a blocking sync one"
        )
    return LoadedPolicy(name=name, call=policy, threaded=threaded)


def _is_async(policy: object) -> bool:
    """An async function, or an instance whose ``__call__`` is one."""
    call = policy if inspect.isfunction(policy) else type(policy).__call__
    return inspect.iscoroutinefunction(call)


def _resolve(name: str) -> object:
    if ":" not in name:
        return _named(name)
    location, _, attr = name.rpartition(":")
    if not location or not attr:
        raise PolicyLoadError(
            f"policy {name!r}: expected a built-in name, 'package.module:Attribute' "
            "or '/path/to/file.py:Attribute'"
        )
    if location.endswith(".py") or "/" in location or location.startswith("."):
        module = _module_from_file(name, Path(location))
        origin = f"file {location!r}"
    else:
        module = _import_module(name, location)
        origin = f"module {location!r}"
    try:
        value: object = module
        for part in attr.split("."):
            value = getattr(value, part)
    except AttributeError:
        raise PolicyLoadError(f"policy {name!r}: {origin} has no attribute {attr!r}") from None
    return value


def _named(name: str) -> object:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if found:
        try:
            return found[0].load()
        except Exception as exc:
            raise PolicyLoadError(
                f"policy {name!r}: entry point {found[0].value!r} failed to load: {exc}"
            ) from None
    if name in BUILTINS:
        return _resolve(BUILTINS[name])
    known = sorted({*BUILTINS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    raise PolicyLoadError(
        f"policy {name!r}: no built-in or installed policy of that name (known: {', '.join(known)}); "
        "use 'package.module:Attribute' or '/path/to/file.py:Attribute' for your own"
    )


def _import_module(name: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise PolicyLoadError(f"policy {name!r}: no module named {module_name!r}") from None
        raise PolicyLoadError(f"policy {name!r}: importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise PolicyLoadError(
            f"policy {name!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None


def _module_from_file(name: str, path: Path) -> Any:
    path = path.expanduser()
    if not path.is_file():
        raise PolicyLoadError(f"policy {name!r}: file '{path}' not found")
    module_name = f"ollama_governor_policy_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PolicyLoadError(f"policy {name!r}: '{path}' cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PolicyLoadError(
            f"policy {name!r}: executing '{path}' failed: {type(exc).__name__}: {exc}"
        ) from None
    return module


def _instantiate(name: str, target: object, options: Mapping[str, Any]) -> object:
    if not inspect.isclass(target):
        if options:
            raise PolicyLoadError(
                f"policy {name!r}: options {', '.join(map(repr, options))} given, but it is a "
                "function; only a class takes options"
            )
        return target
    try:
        inspect.signature(target).bind(**options)
    except TypeError:
        accepted = _accepted_options(target)
        unknown = [key for key in options if key not in accepted]
        detail = f"unknown option {', '.join(map(repr, unknown))}" if unknown else "missing required option"
        raise PolicyLoadError(
            f"policy {name!r}: {detail} (accepted: {', '.join(accepted) or 'none'})"
        ) from None
    except ValueError:
        pass  # no introspectable signature (a builtin); let the call decide
    try:
        return target(**options)
    except Exception as exc:
        raise PolicyLoadError(f"policy {name!r}: invalid options: {exc}") from None


def _accepted_options(cls: Callable[..., Any]) -> list[str]:
    try:
        params = inspect.signature(cls).parameters.values()
    except ValueError:
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_signature(name: str, policy: Callable[..., Any]) -> None:
    try:
        inspect.signature(policy).bind(None, None)
    except TypeError:
        raise PolicyLoadError(f"policy {name!r}: must accept (ctx, decision) and return a Decision") from None
    except ValueError:
        pass
