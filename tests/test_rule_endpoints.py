"""A rule's ``endpoints``: which routes it governs, read from the config with one exact error each.

Why: an operator may govern Ollama's own clients and leave OpenAI- or Anthropic-style ones as
Ollama serves them (or the other way round); a typo in a route name must stop start-up rather
than silently govern nothing.
"""

from __future__ import annotations

import pytest

from proxy.cli import describe
from proxy.config import ConfigError, parse_config
from proxy.config.config import ENDPOINTS
from proxy.govern.rules import Governor

STATIC = [{"use": "static", "num_ctx": 1024}]


def rules(*tables: dict[str, object]) -> Governor:
    """A governor for ``[[rules]]`` tables given as plain data."""
    return Governor.build(parse_config({"rules": list(tables)}, source="config.toml"))


def error_for(table: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"rules": [table]}, source="config.toml")
    return str(info.value)


class TestParsing:
    def test_every_route_by_default(self) -> None:
        """A rule without ``endpoints`` applies to every route, native and /v1."""
        [rule] = rules({"models": ["*"], "policies": STATIC}).rules
        assert rule.config.endpoints == ("*",) and rule.endpoints == frozenset(ENDPOINTS)

    def test_globs_expand_over_the_known_routes(self) -> None:
        """``openai.*`` names the four OpenAI-style routes; names are matched case-insensitively."""
        [rule] = rules({"models": ["*"], "endpoints": ["Chat", "openai.*"], "policies": STATIC}).rules
        assert rule.endpoints == {
            "chat",
            "openai.chat",
            "openai.completions",
            "openai.embeddings",
            "openai.responses",
        }

    @pytest.mark.parametrize(
        ("endpoints", "message"),
        [
            (
                [],
                "rules[0].endpoints: is empty, so the rule would apply to nothing; leave it out for every route",
            ),
            (
                "chat",
                'rules[0].endpoints: expected an array of route globs such as ["chat", "openai.*"], got a string',
            ),
            (["chat", 3], "rules[0].endpoints[1]: expected a route glob string, got an integer"),
            (["openai.[chat"], "rules[0].endpoints[0]: bad glob 'openai.[chat': unclosed '['"),
            ([""], "rules[0].endpoints[0]: a route glob must not be empty"),
            (
                ["openai.chats"],
                "rules[0].endpoints[0]: 'openai.chats' matches no route; the routes are generate, chat, "
                "embed, embeddings, openai.chat, openai.completions, openai.embeddings, openai.responses, "
                "anthropic.messages",
            ),
        ],
    )
    def test_each_mistake_is_one_exact_error(self, endpoints: object, message: str) -> None:
        """Wrong types, empty lists, bad globs and names that match no route stop start-up."""
        assert (
            error_for({"models": ["*"], "endpoints": endpoints, "policies": STATIC})
            == f"config.toml: {message}"
        )


class TestMatching:
    def test_the_first_rule_for_model_and_route_wins(self) -> None:
        """A rule applies when its models and its endpoints match; rules are tried in order."""
        governor = rules(
            {"models": ["llama3.1:*"], "endpoints": ["openai.*", "anthropic.messages"], "policies": STATIC},
            {"models": ["*"], "endpoints": ["chat", "generate"], "policies": []},
            {"models": ["*"], "policies": STATIC},
        )
        first, second, third = governor.rules
        assert governor.rule_for("llama3.1", "openai.chat") is first
        assert governor.rule_for("llama3.1", "anthropic.messages") is first
        assert governor.rule_for("llama3.1", "chat") is second
        assert governor.rule_for("gemma3", "openai.chat") is third
        assert governor.rule_for("gemma3", "embed") is third
        assert governor.policies_for("llama3.1", "generate") == ()

    def test_a_route_no_rule_applies_to_is_not_governed(self) -> None:
        """With rules for native routes only, the /v1 routes are governed for no model."""
        governor = rules({"models": ["*"], "endpoints": ["chat", "generate", "embed*"], "policies": STATIC})
        assert governor.policies_for("gemma3", "chat") != ()
        assert governor.policies_for("gemma3", "openai.chat") == ()
        assert governor.governs_route("embeddings") and not governor.governs_route("anthropic.messages")

    def test_a_rule_without_policies_governs_no_route(self) -> None:
        """``policies = []`` matches but governs nothing, on any route."""
        governor = rules({"models": ["*"], "policies": []})
        assert not any(governor.governs_route(endpoint) for endpoint in ENDPOINTS)


class TestCheck:
    def test_check_prints_a_rules_routes(self) -> None:
        """``ollama-governor check`` names the routes of a rule that does not apply to all."""
        governor = rules(
            {"models": ["*"], "endpoints": ["chat", "openai.*"], "policies": STATIC},
            {"models": ["gemma3:*"], "policies": STATIC},
        )
        lines = describe(governor).splitlines()
        assert "rule 1: models *; endpoints chat, openai.*" in lines
        assert "rule 2: models gemma3:*" in lines
