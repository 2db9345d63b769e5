"""The shape of a policy, for type checkers and for the loader's signature check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from policies.context import Context
from policies.decision import Decision

Policy = Callable[[Context, Decision], Awaitable[Decision]]
"""An async callable taking the request's context and the decision so far, returning a new one."""
