"""What a policy is: the one shape the loader accepts and the chain calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from policies.context import Context
from policies.decision import Decision

Policy = Callable[[Context, Decision], Decision | Awaitable[Decision]]
"""A callable taking the request's context and the decision so far and returning a new decision.

Accepted forms, named in the config with ``use = ...``:

* a plain function ``def policy(ctx, decision) -> Decision`` (it takes no options);
* an async function ``async def policy(ctx, decision) -> Decision``;
* a class whose ``__init__`` takes the options written in the config table and whose instances
  are one of the above (``__call__``); it is instantiated once per config load.

A policy runs on the proxy's event loop and must not block it: no file or network I/O, no
``time.sleep``. One that must block declares ``blocking = True`` (a class attribute) or is
configured with ``threaded = true``; it then runs in a worker thread, under the same timeout.
"""
