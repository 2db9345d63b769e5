"""TOML in, one frozen ``Config`` out, or one exact error naming the file, key and reason."""

from proxy.config.config import (
    CONFIG_ENV,
    DEFAULT_LISTEN,
    DEFAULT_UPSTREAM,
    Config,
    PolicySpec,
    RuleConfig,
    load_config,
    parse_config,
    parse_listen,
    parse_upstream,
)
from proxy.config.reader import ConfigError, Table
from proxy.config.settings import BalancerSettings, GpuSettings, LimitsSettings, OllamaSettings, StoreSettings

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_LISTEN",
    "DEFAULT_UPSTREAM",
    "BalancerSettings",
    "Config",
    "ConfigError",
    "GpuSettings",
    "LimitsSettings",
    "OllamaSettings",
    "PolicySpec",
    "RuleConfig",
    "StoreSettings",
    "Table",
    "load_config",
    "parse_config",
    "parse_listen",
    "parse_upstream",
]
