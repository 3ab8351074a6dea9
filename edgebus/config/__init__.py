"""Load the broker's TOML configuration into frozen dataclasses; every error names the file, line and key.

The package, each module importing only those before it: ``schema`` (the checker framework: checks,
schema entries, errors), ``lines`` (where each key is written), ``addresses`` (``HOST:PORT``),
``bridge`` (the [[bridge]] schema), ``broker`` (the broker's sections and ``Config``), ``load`` (the
loader). Callers import from here.
"""

from __future__ import annotations

from edgebus.config.addresses import ListenAddress, ListenAddresses, OneListenAddress, parse_listen_address
from edgebus.config.bridge import BridgeConfig, BridgeTopic, TopicRules
from edgebus.config.broker import (
    Config,
    Durability,
    LimitsConfig,
    ListenerConfig,
    MqttConfig,
    QueueConfig,
    SecurityConfig,
    ServerConfig,
    StorageConfig,
    SysConfig,
)
from edgebus.config.lines import LineIndex, dotted
from edgebus.config.load import SettingInfo, iter_settings, load_config, parse_config
from edgebus.config.schema import (
    Boolean,
    Check,
    ConfigError,
    ConfigProblem,
    IntRange,
    Invalid,
    KeyPath,
    NumberRange,
    OneOf,
    Section,
    SectionArray,
    Setting,
    Text,
    TextList,
    section,
    section_array,
    setting,
    show,
)

__all__ = [
    "Boolean",
    "BridgeConfig",
    "BridgeTopic",
    "Check",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Durability",
    "IntRange",
    "Invalid",
    "KeyPath",
    "LimitsConfig",
    "LineIndex",
    "ListenAddress",
    "ListenAddresses",
    "ListenerConfig",
    "MqttConfig",
    "NumberRange",
    "OneListenAddress",
    "OneOf",
    "QueueConfig",
    "Section",
    "SectionArray",
    "SecurityConfig",
    "ServerConfig",
    "Setting",
    "SettingInfo",
    "StorageConfig",
    "SysConfig",
    "Text",
    "TextList",
    "TopicRules",
    "dotted",
    "iter_settings",
    "load_config",
    "parse_config",
    "parse_listen_address",
    "section",
    "section_array",
    "setting",
    "show",
]
