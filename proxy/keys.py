"""The typed keys of the application's long-lived components (``web.AppKey``), one per resource.

The composition root (``proxy.app``) fills them, each in its own ``cleanup_ctx``; handlers and
views read ``request.app[KEY]``. Nothing lives in module globals.
"""

from __future__ import annotations

from aiohttp import web

from proxy.balancer.agent import AgentResponder
from proxy.config import LimitsSettings
from proxy.facts.context import ContextFactory
from proxy.facts.memory.sampler import GpuSampler
from proxy.facts.ollama import Facts
from proxy.govern.pipeline import Pipeline
from proxy.govern.stall import StallMonitor
from proxy.ledger.ledger import Ledger
from proxy.upstream.client import Upstream
from proxy.upstream.inflight import InFlight
from proxy.views.metrics import GovernorMetrics

UPSTREAM = web.AppKey("upstream", Upstream)
MEMORY = web.AppKey("memory", GpuSampler)
FACTS = web.AppKey("facts", Facts)
CONTEXTS = web.AppKey("contexts", ContextFactory)
METRICS = web.AppKey("metrics", GovernorMetrics)
LEDGER = web.AppKey("ledger", Ledger)
PIPELINE = web.AppKey("pipeline", Pipeline)
LIMITS = web.AppKey("limits", LimitsSettings)
"""The running ``[limits]`` (fixed at start: the runner's header timeout is set from them)."""
INFLIGHT = web.AppKey("inflight", InFlight)
"""The relays in progress; its ``draining`` flag is true from the stop signal on."""
STALLS = web.AppKey("stalls", StallMonitor)
AGENT = web.AppKey("agent", AgentResponder)
"""The HAProxy agent-check responder; present only when ``[balancer] agent_listen`` is set."""
