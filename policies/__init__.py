"""The public API for ollama-governor policy authors.

A policy is an async callable ``(ctx: Context, decision: Decision) -> Decision``: a plain
function, or a class whose ``__init__`` takes the options written in the config. The config
lists policies per rule; they run in that order, each receiving the decision so far.

    from policies import Context, Decision

    class NightShift:
        def __init__(self, max_ctx: int = 65536) -> None:
            self.max_ctx = max_ctx

        async def __call__(self, ctx: Context, decision: Decision) -> Decision:
            return decision.replace(num_ctx=self.max_ctx, reason="night shift")
"""

from policies.context import Context, Endpoint, FrozenJSON, GpuDevice, GpuSnapshot, LoadedModel
from policies.decision import Decision
from policies.duration import KeepAlive, keep_alive_seconds, parse_go_duration
from policies.headroom import Headroom
from policies.keep_alive import KeepAlivePolicy
from policies.memory import Calibration, estimate_bytes, format_bytes, parse_size
from policies.model import ModelFacts
from policies.outcome import Outcome
from policies.protocol import Policy
from policies.static import Static

__all__ = [
    "Calibration",
    "Context",
    "Decision",
    "Endpoint",
    "FrozenJSON",
    "GpuDevice",
    "GpuSnapshot",
    "Headroom",
    "KeepAlive",
    "KeepAlivePolicy",
    "LoadedModel",
    "ModelFacts",
    "Outcome",
    "Policy",
    "Static",
    "estimate_bytes",
    "format_bytes",
    "keep_alive_seconds",
    "parse_go_duration",
    "parse_size",
]
