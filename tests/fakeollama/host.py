"""What the fake's mixins call on one another, declared once for the type checker.

``FakeOllama`` (server.py) is assembled from mixins: the routes (native, openai, anthropic,
management) call the engine, the options and the scheduler, and the engine calls the scheduler.
Each mixin inherits ``Host``, which is a Protocol of those calls while type checking and plain
``object`` at run time, so the signatures live here instead of in a stub block per mixin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from tests.fakeollama.engine import Gen, Renderer
    from tests.fakeollama.models import FakeModel
    from tests.fakeollama.records import LoadedState, RunnerRequest
    from tests.fakeollama.simtime import LoadTiming

    class Host(Protocol):
        """The calls that cross from one mixin of FakeOllama into another."""

        # server.py: the request's body and model, Ollama's version
        async def _body(self, request: web.Request) -> dict[str, Any]: ...

        def _model(self, body: dict[str, Any], key: str = "model") -> tuple[str, FakeModel]: ...

        def _find(self, name: str) -> FakeModel | None: ...

        def _add_model(self, m: FakeModel, ts: int | None = None) -> None: ...

        def _at_least_030(self) -> bool: ...

        # options.py: what a request asks of its runner
        def _keep_alive(self, body: dict[str, Any]) -> int | None: ...

        def _options(self, body: dict[str, Any]) -> dict[str, Any]: ...

        def _merged(self, model: FakeModel, opts: dict[str, Any]) -> dict[str, Any]: ...

        def _runner_request(
            self, model: FakeModel, opts: dict[str, Any], keep_alive: int | None, shift: Any = None
        ) -> RunnerRequest: ...

        def clamp_ctx(self, model: FakeModel, num_ctx: int) -> int: ...

        # engine.py: one generation, served
        def _new_gen(
            self,
            flavour: str,
            renderer: Renderer,
            path: str,
            req_model: str,
            runner: RunnerRequest,
            parts: list[tuple[str, int]],
            num_predict: Any,
            stream: bool,
            t0: int,
            *,
            stop: list[str] | None = None,
            json_format: bool = False,
            tool_calls: list[dict[str, Any]] | None = None,
        ) -> Gen: ...

        async def _run(self, request: web.Request, g: Gen) -> web.StreamResponse: ...

        # openai.py: the compat middleware's binding, shared with anthropic.py
        async def _compat_body(self, request: web.Request) -> dict[str, Any]: ...

        def _compat_model(self, body: dict[str, Any]) -> tuple[str, FakeModel]: ...

        # scheduler.py: runners
        async def _acquire(self, req: RunnerRequest, timing: LoadTiming | None = None) -> LoadedState: ...

        def _release(self, state: LoadedState) -> None: ...

        def _unload_model(self, model: FakeModel) -> None: ...

        def loaded(self) -> dict[str, LoadedState]: ...

else:
    Host = object
