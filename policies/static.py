"""The ``static`` policy: fixed values per rule, the simplest way to stop reload thrash."""

from __future__ import annotations

from policies.context import Context
from policies.decision import Decision
from policies.duration import KeepAlive, validate_keep_alive


class Static:
    """Set ``num_ctx`` and/or ``keep_alive`` to fixed values.

    Clients that send different ``num_ctx`` values make Ollama reload the model each time;
    pinning one value per model ends that. With ``respect_client`` a value the client set
    itself is left alone.
    """

    def __init__(
        self,
        num_ctx: int | None = None,
        keep_alive: KeepAlive | None = None,
        respect_client: bool = False,
    ) -> None:
        if num_ctx is not None and (isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx < 1):
            raise ValueError(f"num_ctx must be a positive integer, not {num_ctx!r}")
        if keep_alive is not None:
            validate_keep_alive(keep_alive)
        if not isinstance(respect_client, bool):
            raise ValueError(f"respect_client must be true or false, not {respect_client!r}")
        self.num_ctx = num_ctx
        self.keep_alive = keep_alive
        self.respect_client = respect_client

    async def __call__(self, ctx: Context, decision: Decision) -> Decision:
        if self.num_ctx is not None and not (self.respect_client and ctx.client_num_ctx is not None):
            decision = decision.replace(num_ctx=self.num_ctx, reason=f"static: num_ctx {self.num_ctx}")
        if self.keep_alive is not None and not (self.respect_client and ctx.client_keep_alive is not None):
            decision = decision.replace(
                keep_alive=self.keep_alive, reason=f"static: keep_alive {self.keep_alive}"
            )
        return decision
