"""Config files: the documented shape loads, and each mistake is one exact start-up error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.config import CONFIG_ENV, ConfigError, load_config

ISSUE_EXAMPLE = """
listen = "127.0.0.1:11435"
upstream = "http://127.0.0.1:11434"

[[rules]]                       # the first rule whose glob matches the model name wins
models = ["llama3.1:*", "qwen2.5:*"]
policies = [
  { use = "static", num_ctx = 8192, keep_alive = "30m" },
  { use = "my_policies:NightShift", max_ctx = 65536 },
]

[[rules]]
models = ["*"]
policies = []
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    return path


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: ") :]


class TestShape:
    def test_issue_example_loads(self, tmp_path: Path) -> None:
        """The config shape from the README/issue parses into two rules, in order."""
        config = load_config(write(tmp_path, ISSUE_EXAMPLE))
        assert (config.listen_host, config.listen_port) == ("127.0.0.1", 11435)
        assert config.upstream == "http://127.0.0.1:11434"
        assert [r.models for r in config.rules] == [("llama3.1:*", "qwen2.5:*"), ("*",)]
        first = config.rules[0].policies
        assert [p.use for p in first] == ["static", "my_policies:NightShift"]
        assert dict(first[0].options) == {"num_ctx": 8192, "keep_alive": "30m"}
        assert dict(first[1].options) == {"max_ctx": 65536}

    def test_defaults_without_file(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no --config and no environment variable the built-in defaults apply."""
        monkeypatch.delenv(CONFIG_ENV, raising=False)
        config = load_config(None)
        assert config.listen == "127.0.0.1:11435"
        assert config.upstream == "http://127.0.0.1:11434"
        assert config.default_rules is True
        [rule] = config.rules
        assert rule.models == ("*",)
        assert [spec.use for spec in rule.policies] == ["headroom", "keep_alive"]
        assert dict(rule.policies[1].options) == {
            "under_pressure": "2m",
            "pressure_below": "1GiB",
            "restore": "5m",
        }

    def test_a_config_without_rules_gets_the_default_rule(self, tmp_path: Path) -> None:
        """Settings alone keep the built-in rule; its keep_alive restores the server's own value."""
        config = load_config(write(tmp_path, '[ollama]\nkeep_alive = "30m"'))
        assert config.default_rules and config.rules[0].policies[1].options["restore"] == "30m"

    def test_empty_rules_are_a_pass_through(self, tmp_path: Path) -> None:
        """``rules = []`` governs nothing: one line away from the default."""
        config = load_config(write(tmp_path, "rules = []"))
        assert config.rules == () and not config.default_rules

    def test_environment_variable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """$OLLAMA_GOVERNOR_CONFIG names the file when --config is absent."""
        monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, 'listen = "0.0.0.0:11434"')))
        assert load_config(None).listen == "0.0.0.0:11434"

    def test_rule_globs_match_untagged_names_as_latest(self, tmp_path: Path) -> None:
        """``llama3.1:*`` covers a client asking for plain ``llama3.1`` (that is :latest)."""
        rule = load_config(write(tmp_path, ISSUE_EXAMPLE)).rules[0]
        assert rule.matches("llama3.1")
        assert rule.matches("Llama3.1:8B")
        assert not rule.matches("llama3.2:3b")

    def test_ipv6_listen_and_durations(self, tmp_path: Path) -> None:
        """IPv6 listen addresses and Go-style durations are understood."""
        config = load_config(write(tmp_path, 'listen = "[::1]:9000"\npolicy_timeout = "50ms"'))
        assert (config.listen_host, config.listen_port, config.listen) == ("::1", 9000, "[::1]:9000")
        assert config.policy_timeout_s == pytest.approx(0.05)


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ('lisen = "x:1"', "unknown key 'lisen' in the top level"),
            ("listen = 11435", "listen: expected a string, got an integer"),
            (
                'listen = "localhost"',
                "listen: expected host:port such as \"127.0.0.1:11435\", got 'localhost'",
            ),
            ('listen = "127.0.0.1:99999"', "listen: port 99999 is out of range"),
            (
                'upstream = "ftp://x"',
                "upstream: expected an http:// or https:// URL such as 'http://127.0.0.1:11434', got 'ftp://x'",
            ),
            ("dry_run = 1", "dry_run: expected true or false, got an integer"),
            ('policy_timeout = "soon"', "policy_timeout: invalid duration 'soon'"),
            ('log_format = "xml"', "log_format: expected one of 'auto', 'json', 'console', got 'xml'"),
            ('rules = "all"', "rules: expected an array of tables ([[rules]]), got a string"),
            (
                "[[rules]]\npolicies = []",
                'rules[0].models: missing; give a list of model globs such as ["llama3.1:*"]',
            ),
            (
                "[[rules]]\nmodels = []",
                "rules[0].models: expected a non-empty array of glob strings, got an array",
            ),
            (
                '[[rules]]\nmodels = "x"',
                "rules[0].models: expected a non-empty array of glob strings, got a string",
            ),
            ("[[rules]]\nmodels = [1]", "rules[0].models[0]: expected a glob string, got an integer"),
            ('[[rules]]\nmodels = ["llama[3"]', "rules[0].models[0]: bad glob 'llama[3': unclosed '['"),
            ('[[rules]]\nmodels = [""]', "rules[0].models[0]: a model glob must not be empty"),
            ('[[rules]]\nmodels = ["*"]\nmodel = 1', "unknown key 'model' in [rules[0]]"),
            (
                '[[rules]]\nmodels = ["*"]\npolicies = "static"',
                "rules[0].policies: expected an array of tables, got a string",
            ),
            (
                '[[rules]]\nmodels = ["*"]\npolicies = ["static"]',
                'rules[0].policies[0]: expected a table such as { use = "static" }, got a string',
            ),
            (
                '[[rules]]\nmodels = ["*"]\npolicies = [{ num_ctx = 1 }]',
                'rules[0].policies[0].use: missing; name the policy, e.g. use = "static"',
            ),
        ],
    )
    def test_each_mistake_has_one_message(self, tmp_path: Path, text: str, expected: str) -> None:
        """A bad key, type or glob names the file, the key and the reason."""
        assert error_for(tmp_path, text) == expected

    def test_not_toml(self, tmp_path: Path) -> None:
        """A syntax error says the file is not valid TOML, with the parser's position."""
        assert error_for(tmp_path, "listen = ").startswith("not valid TOML: ")

    def test_missing_file(self, tmp_path: Path) -> None:
        """A --config path that does not exist is reported as such."""
        with pytest.raises(ConfigError, match=r"nope\.toml: no such file$"):
            load_config(tmp_path / "nope.toml")


class TestLimits:
    """``[limits]``: every bound on a wait or a body, typed, with one message per mistake."""

    def test_defaults(self, tmp_path: Path) -> None:
        """Without the table the documented defaults apply."""
        limits = load_config(write(tmp_path, "")).limits
        assert (
            limits.header_timeout_s,
            limits.body_timeout_s,
            limits.first_byte_timeout_s,
            limits.stream_idle_timeout_s,
            limits.drain_timeout_s,
            limits.max_governed_body_bytes,
        ) == (60.0, 60.0, 600.0, 300.0, 20.0, 16 * 1024 * 1024)

    def test_every_key(self, tmp_path: Path) -> None:
        """Durations are Go-style strings or seconds; the body limit a size; 0 turns a timeout off."""
        text = """
        [limits]
        header_timeout = "5s"
        body_timeout = 0
        first_byte_timeout = "15m"
        stream_idle_timeout = 90
        drain_timeout = "12s"
        max_governed_body = "4MiB"
        """
        limits = load_config(write(tmp_path, text)).limits
        assert (
            limits.header_timeout_s,
            limits.body_timeout_s,
            limits.first_byte_timeout_s,
            limits.stream_idle_timeout_s,
            limits.drain_timeout_s,
            limits.max_governed_body_bytes,
        ) == (5.0, 0.0, 900.0, 90.0, 12.0, 4 * 1024 * 1024)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                '[limits]\nheader_timeout = "0s"',
                "limits.header_timeout: expected a duration above zero such as \"30s\", got '0s'",
            ),
            (
                "[limits]\ndrain_timeout = 0",
                'limits.drain_timeout: expected a duration above zero such as "30s", got 0',
            ),
            (
                '[limits]\nbody_timeout = "-1s"',
                "limits.body_timeout: expected a duration of zero or more, got '-1s'",
            ),
            ('[limits]\nfirst_byte_timeout = "soon"', "limits.first_byte_timeout: invalid duration 'soon'"),
            (
                '[limits]\nmax_governed_body = "1KiB"',
                "limits.max_governed_body: expected at least 64KiB, got '1KiB'; bigger bodies are relayed ungoverned",
            ),
            ("[limits]\nmax_body = 1", "unknown key 'max_body' in [limits]"),
        ],
    )
    def test_each_mistake_has_one_message(self, tmp_path: Path, text: str, expected: str) -> None:
        """A bad limit names the file, the key and the reason."""
        assert error_for(tmp_path, text) == expected
