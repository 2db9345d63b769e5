"""A loaded configuration: the rules with their policies instantiated, swapped whole on reload."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.config import Config, RuleConfig
from proxy.govern.loader import LoadedPolicy, load_policy

MAX_CACHED_NAMES = 1024


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule from the config with its policies ready to run."""

    config: RuleConfig
    policies: tuple[LoadedPolicy, ...]
    endpoints: frozenset[str]
    """The routes the rule applies to (its ``endpoints`` globs, expanded once at load)."""


@dataclass(frozen=True, slots=True)
class Governor:
    """Everything a request needs to be decided. Immutable: a reload builds a new one."""

    config: Config
    rules: tuple[Rule, ...]
    _by_model: dict[str, tuple[Rule, ...]] = field(default_factory=dict, compare=False, repr=False)
    """The rules whose globs match a model name: globbing once per name, not once per request."""

    @classmethod
    def build(cls, config: Config) -> Governor:
        """Load every policy of every rule now, so a bad spec stops start-up or a reload."""
        rules = tuple(
            Rule(rule, tuple(load_policy(spec) for spec in rule.policies), rule.endpoint_set())
            for rule in config.rules
        )
        return cls(config, rules)

    def rule_for(self, model_name: str, endpoint: str | None = None) -> Rule | None:
        """The first rule whose globs match the model and whose ``endpoints`` include
        ``endpoint`` (None: whatever the rule's endpoints), or None."""
        try:
            candidates = self._by_model[model_name]
        except KeyError:
            candidates = tuple(rule for rule in self.rules if rule.config.matches(model_name))
            if len(self._by_model) < MAX_CACHED_NAMES:  # names come from clients: keep it bounded
                self._by_model[model_name] = candidates
        return next((rule for rule in candidates if endpoint is None or endpoint in rule.endpoints), None)

    def policies_for(self, model_name: str, endpoint: str) -> tuple[LoadedPolicy, ...]:
        """The policies that govern this model on this route (empty: forward as sent)."""
        rule = self.rule_for(model_name, endpoint)
        return rule.policies if rule is not None else ()

    def governs_route(self, endpoint: str) -> bool:
        """Whether some rule with policies applies to ``endpoint``, for some model."""
        return any(rule.policies and endpoint in rule.endpoints for rule in self.rules)
