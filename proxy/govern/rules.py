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


@dataclass(frozen=True, slots=True)
class Governor:
    """Everything a request needs to be decided. Immutable: a reload builds a new one."""

    config: Config
    rules: tuple[Rule, ...]
    _by_model: dict[str, Rule | None] = field(default_factory=dict, compare=False, repr=False)
    """Which rule a model name maps to: globbing once per name, not once per request."""

    @classmethod
    def build(cls, config: Config) -> Governor:
        """Load every policy of every rule now, so a bad spec stops start-up or a reload."""
        rules = tuple(Rule(rule, tuple(load_policy(spec) for spec in rule.policies)) for rule in config.rules)
        return cls(config, rules)

    def rule_for(self, model_name: str) -> Rule | None:
        """The first rule whose globs match the model, or None."""
        try:
            return self._by_model[model_name]
        except KeyError:
            pass
        found = next((rule for rule in self.rules if rule.config.matches(model_name)), None)
        if len(self._by_model) < MAX_CACHED_NAMES:  # names come from clients: keep it bounded
            self._by_model[model_name] = found
        return found

    def policies_for(self, model_name: str) -> tuple[LoadedPolicy, ...]:
        """The policies that govern this model (empty: forward as sent)."""
        rule = self.rule_for(model_name)
        return rule.policies if rule is not None else ()
