"""The typed keys of the application's long-lived components (``web.AppKey``), one per resource.

The composition root (``proxy.app``) fills them, each in its own ``cleanup_ctx``; handlers and
views read ``request.app[KEY]``. Nothing lives in module globals.
"""

from __future__ import annotations

from aiohttp import web

from proxy.facts.context import ContextFactory
from proxy.facts.memory.sampler import GpuSampler
from proxy.facts.ollama import Facts
from proxy.govern.pipeline import Pipeline
from proxy.ledger.ledger import Ledger
from proxy.upstream.client import Upstream
from proxy.views.metrics import GovernorMetrics

UPSTREAM = web.AppKey("upstream", Upstream)
MEMORY = web.AppKey("memory", GpuSampler)
FACTS = web.AppKey("facts", Facts)
CONTEXTS = web.AppKey("contexts", ContextFactory)
METRICS = web.AppKey("metrics", GovernorMetrics)
LEDGER = web.AppKey("ledger", Ledger)
PIPELINE = web.AppKey("pipeline", Pipeline)
