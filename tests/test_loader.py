"""Policy loading: three spellings work, and each failure is one exact start-up message."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from policies import Context, Decision
from policies.static import Static
from proxy.config import PolicySpec
from proxy.govern.loader import PolicyLoadError, load_policy


def spec(use: str, **options: Any) -> PolicySpec:
    return PolicySpec(use=use, options=options, where="test")


def error(use: str, **options: Any) -> str:
    with pytest.raises(PolicyLoadError) as info:
        load_policy(spec(use, **options))
    return str(info.value)


NIGHT_SHIFT = '''
from policies import Context, Decision

class NightShift:
    """Give long contexts at night, when nobody else needs the GPU."""
    def __init__(self, max_ctx: int = 65536) -> None:
        self.max_ctx = max_ctx
    async def __call__(self, ctx: Context, decision: Decision) -> Decision:
        return decision.replace(num_ctx=self.max_ctx, reason="night shift")

async def clamp(ctx, decision):
    return decision.replace(num_ctx=min(decision.num_ctx or 2048, 4096), reason="clamp")

not_a_policy = 42
'''


@pytest.fixture
def policy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "my_policies.py"
    path.write_text(textwrap.dedent(NIGHT_SHIFT))
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


async def decide(use: str, **options: Any) -> Decision:
    policy = load_policy(spec(use, **options))
    result = await policy.call(Context(endpoint="chat", model_name="m", body={}), Decision())
    assert isinstance(result, Decision)
    return result


class TestSpellings:
    async def test_builtin_name(self) -> None:
        """``static`` resolves to the built-in class and receives its options."""
        loaded = load_policy(spec("static", num_ctx=8192))
        assert isinstance(loaded.call, Static) and loaded.name == "static"
        assert (await decide("static", num_ctx=8192)).num_ctx == 8192

    async def test_module_class_with_options(self, policy_module: Path) -> None:
        """``module:Class`` instantiates the class with the table's other keys."""
        assert (await decide("my_policies:NightShift", max_ctx=32768)).num_ctx == 32768

    async def test_module_function(self, policy_module: Path) -> None:
        """A plain async function is a policy too."""
        assert (await decide("my_policies:clamp")).num_ctx == 2048

    async def test_file_path(self, tmp_path: Path) -> None:
        """``/path/to/file.py:Attr`` loads a file that is not on sys.path."""
        path = tmp_path / "elsewhere" / "night.py"
        path.parent.mkdir()
        path.write_text(textwrap.dedent(NIGHT_SHIFT))
        assert (await decide(f"{path}:NightShift")).num_ctx == 65536


class TestErrors:
    def test_missing_attribute(self, policy_module: Path) -> None:
        """The issue's exact wording for a module without the attribute."""
        assert (
            error("my_policies:Clamp")
            == "policy 'my_policies:Clamp': module 'my_policies' has no attribute 'Clamp'"
        )

    def test_missing_module(self) -> None:
        """A module that does not exist is named."""
        assert error("acme:Clamp") == "policy 'acme:Clamp': no module named 'acme'"

    def test_missing_file(self, tmp_path: Path) -> None:
        """A file path that does not exist is named."""
        path = tmp_path / "gone.py"
        assert error(f"{path}:X") == f"policy '{path}:X': file '{path}' not found"

    def test_unknown_builtin(self) -> None:
        """An unknown bare name lists the known ones and how to load your own."""
        message = error("nightshift")
        assert message.startswith(
            "policy 'nightshift': no built-in or installed policy of that name (known: "
        )
        assert "static" in message

    def test_bad_format(self) -> None:
        """A spec with an empty side of the colon is a format error."""
        assert error("acme:") == (
            "policy 'acme:': expected a built-in name, 'package.module:Attribute' or "
            "'/path/to/file.py:Attribute'"
        )

    def test_not_callable(self, policy_module: Path) -> None:
        """An attribute that is not callable cannot be a policy."""
        assert (
            error("my_policies:not_a_policy")
            == "policy 'my_policies:not_a_policy': int object is not callable"
        )

    def test_unknown_option(self) -> None:
        """An option the class does not take lists the accepted ones."""
        assert error("static", num_ctxx=1) == (
            "policy 'static': unknown option 'num_ctxx' (accepted: num_ctx, keep_alive, respect_client)"
        )

    def test_options_for_a_function(self, policy_module: Path) -> None:
        """Options given to a function are refused rather than silently dropped."""
        assert error("my_policies:clamp", max_ctx=1) == (
            "policy 'my_policies:clamp': options 'max_ctx' given, but it is a function; only a class takes options"
        )

    def test_invalid_option_value(self) -> None:
        """The policy's own validation surfaces at load time."""
        assert error("static", keep_alive="300") == "policy 'static': invalid options: invalid duration '300'"

    def test_module_that_fails_to_import(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An exception inside the user's module is reported as such, not as 'no module'."""
        (tmp_path / "broken_policy.py").write_text("import does_not_exist_anywhere\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        assert error("broken_policy:X") == (
            "policy 'broken_policy:X': importing 'broken_policy' failed: No module named 'does_not_exist_anywhere'"
        )

    def test_wrong_signature(self, tmp_path: Path) -> None:
        """A callable that cannot take (ctx, decision) is refused at load."""
        path = tmp_path / "sig.py"
        path.write_text("async def lonely(ctx):\n    return None\n")
        assert (
            error(f"{path}:lonely")
            == f"policy '{path}:lonely': must accept (ctx, decision) and return a Decision"
        )
