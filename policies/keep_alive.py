"""The ``keep_alive`` policy: keep chosen models loaded forever, and free the GPU sooner when it is full.

``keep_alive`` decides how long Ollama keeps a model in memory after its last request. Changing it
never reloads a model, but the value persists in the runner for later requests that omit it
(docs/ollama-rules.md), so a short value chosen under pressure lasts until something sets another.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Final

from policies.context import Context
from policies.decision import Decision
from policies.duration import KeepAlive, format_keep_alive, keep_alive_seconds, validate_keep_alive
from policies.memory import format_bytes, parse_size
from policies.outcome import Outcome

FOREVER: Final = -1
"""What a pinned model gets: Ollama reads any negative keep_alive as "never unload"."""
MAX_REMEMBERED: Final = 1024
"""Models whose shortened keep_alive is remembered for ``restore``."""


class KeepAlivePolicy:
    """Pin models in memory, shorten idle time when GPU memory runs low, or fill in a default.

    The rules, first match wins:

    1. **pin**: a model whose name matches one of the ``pin`` globs (``"gemma3:*"``, ``"qwen3"``)
       gets ``-1`` (forever), whatever the client asked: the operator chose it, and reloading a
       big model costs far more than any client saves by unloading it. A name without a tag
       matches as ``name:latest`` too, as in Ollama.
    2. **pressure**: when free GPU memory (summed over devices) is below ``pressure_below`` and
       ``under_pressure`` is set, a value longer than ``under_pressure`` (the one asked so far, or
       ``default`` when none was) is replaced by it, so idle models give their memory back
       sooner. Shorter values, ``0`` included, are left alone. No value at all counts as longer,
       since Ollama would then apply ``OLLAMA_KEEP_ALIVE`` (5m by default).
    3. **restore**: Ollama remembers the last keep_alive it was given, so a value shortened under
       pressure would outlast the pressure. With ``restore`` set (the server's own
       ``OLLAMA_KEEP_ALIVE``, say), a model this policy shortened gets ``restore`` on its next
       request that asks none once the pressure is over, and nothing is sent otherwise.
    4. **default**: when no value was asked, ``default`` is sent (on every such request).

    "Asked so far" is the decision's ``keep_alive``: the client's value unless an earlier policy
    changed it. When no rule changes the value, the decision is returned as it came, with no
    reason. (A request with a value Ollama would refuse, such as ``"300"``, is not governed at
    all, so the client gets Ollama's own 400.)
    Reasons start ``"keep_alive[pin]: "``, ``"keep_alive[pressure]: "`` or
    ``"keep_alive[default]: "``, a stable token for the proxy followed by the figures.
    """

    def __init__(
        self,
        default: KeepAlive | None = None,
        pin: Sequence[str] = (),
        under_pressure: KeepAlive | None = None,
        pressure_below: str | int = "4GiB",
        restore: KeepAlive | None = None,
    ) -> None:
        if default is not None:
            _checked("default", default)
        if isinstance(pin, str) or not isinstance(pin, Sequence):
            raise ValueError(
                f"keep_alive: pin must be a list of model name patterns such as ['gemma3:*'], not {pin!r}"
            )
        for pattern in pin:
            if not isinstance(pattern, str) or not pattern.strip():
                raise ValueError(
                    f"keep_alive: each pin must be a model name or glob such as 'gemma3:*', not {pattern!r}"
                )
        self.under_pressure_s: float | None = None
        if under_pressure is not None:
            self.under_pressure_s = _checked("under_pressure", under_pressure)
            if math.isinf(self.under_pressure_s):
                raise ValueError(
                    f"keep_alive: under_pressure must be a finite duration such as '2m', "
                    f"not {under_pressure!r} (forever)"
                )
        try:
            self.pressure_below_bytes = parse_size(pressure_below)
        except ValueError as error:
            raise ValueError(f"keep_alive: pressure_below: {error}") from None
        if restore is not None:
            _checked("restore", restore)
        self.restore = restore
        self._shortened: set[str] = set()
        """Models last sent the pressure value: the next request without one gets ``restore``."""
        self.default = default
        self.pin = tuple(pin)
        self.under_pressure = under_pressure
        self._pin_patterns = tuple(pattern.strip().lower() for pattern in pin)
        self._default_s = keep_alive_seconds(default) if default is not None else None

    async def __call__(self, ctx: Context, decision: Decision) -> Decision:
        return self.decide(ctx, decision)

    def decide(self, ctx: Context, decision: Decision) -> Decision:
        """The policy itself, synchronous: a function of ``ctx``, ``decision`` and, for
        ``restore``, which models it shortened before."""
        current = decision.keep_alive  # a decision only ever holds values Ollama accepts
        current_s = keep_alive_seconds(current) if current is not None else None
        current_text = _text(current)

        pattern = self.pinned_by(ctx.model_name)
        if pattern is not None:
            if current_s == math.inf:
                return decision
            return decision.replace(
                keep_alive=FOREVER,
                outcome=Outcome.PIN,
                reason=f"keep_alive[pin]: {ctx.model_name} matches pin {pattern!r}; "
                f"keep_alive {FOREVER} (forever) instead of {current_text}",
            )

        key = _key(ctx.model_name)
        if current is not None:
            self._shortened.discard(key)  # Ollama now remembers the value asked, not ours
        base: KeepAlive | None
        if current is None and self.default is not None:
            base, base_s, base_text = self.default, self._default_s, f"default {_text(self.default)}"
        else:
            base, base_s, base_text = current, current_s, current_text

        free_bytes = ctx.gpu.free_bytes if ctx.gpu is not None else None
        if (
            self.under_pressure is not None
            and self.under_pressure_s is not None
            and free_bytes is not None
            and free_bytes < self.pressure_below_bytes
            and (base_s is None or base_s > self.under_pressure_s)
        ):
            self._remember_shortened(ctx.model_name)
            return decision.replace(
                keep_alive=self.under_pressure,
                outcome=Outcome.PRESSURE,
                reason=f"keep_alive[pressure]: {format_bytes(free_bytes)} free on GPU, below "
                f"{format_bytes(self.pressure_below_bytes)}; keep_alive {_text(self.under_pressure)} "
                f"instead of {base_text}",
            )

        if self.restore is not None and current is None and key in self._shortened:
            self._shortened.discard(key)
            return decision.replace(
                keep_alive=self.restore,
                outcome=Outcome.DEFAULT,
                reason=f"keep_alive[restore]: pressure is over; keep_alive {_text(self.restore)} "
                f"instead of the {_text(self.under_pressure)} Ollama remembers",
            )
        if current is None and base is not None:
            return decision.replace(
                keep_alive=base,
                outcome=Outcome.DEFAULT,
                reason=f"keep_alive[default]: none asked; keep_alive {_text(base)}",
            )
        return decision

    def _remember_shortened(self, model_name: str) -> None:
        if self.restore is None:
            return
        if len(self._shortened) >= MAX_REMEMBERED:  # names come from clients: stay bounded
            self._shortened.pop()
        self._shortened.add(_key(model_name))

    def pinned_by(self, model_name: str) -> str | None:
        """The first ``pin`` pattern matching ``model_name`` (``name`` also as ``name:latest``)."""
        if not self._pin_patterns:
            return None
        forms = _name_forms(model_name)
        for pattern, original in zip(self._pin_patterns, self.pin, strict=True):
            if any(fnmatch.fnmatchcase(form, pattern) for form in forms):
                return original
        return None


def _name_forms(model_name: str) -> tuple[str, ...]:
    """The spellings Ollama treats as one model: ``llama3.1`` and ``llama3.1:latest``."""
    name = model_name.strip().lower()
    last_segment = name.rsplit("/", 1)[-1]
    if ":" not in last_segment:
        return (name, f"{name}:latest")
    if name.endswith(":latest"):
        return (name, name[: -len(":latest")])
    return (name,)


def _key(model_name: str) -> str:
    """One spelling per model, as Ollama resolves names (``llama3.1`` is ``llama3.1:latest``)."""
    name = model_name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _text(value: KeepAlive | None) -> str:
    return format_keep_alive(value) or "unset"


def _checked(option: str, value: object) -> float:
    """Seconds in a keep_alive option, or a ValueError naming the option."""
    try:
        validate_keep_alive(value)
        return keep_alive_seconds(value)
    except ValueError as error:
        raise ValueError(f"keep_alive: {option}: {error}") from None
