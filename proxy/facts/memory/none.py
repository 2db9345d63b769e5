"""No memory source: the budget is unknown, and policies govern without one."""

from __future__ import annotations

from policies.context import GpuSnapshot


class NoGpuSource:
    """GPU state is always unknown, so policies leave ``num_ctx`` alone."""

    name = "none"

    def __init__(self, reason: str = "no GPU source configured") -> None:
        self.reason = reason

    async def read(self) -> GpuSnapshot:
        return GpuSnapshot(source=self.name, kind="unknown", error=self.reason)

    async def close(self) -> None:
        return None
