"""What a configuration reload changes: the settings that need a restart, the running configuration after a
reload, and the report of what was applied. Pure: the broker (server.broker) does the applying."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from edgebus.config import Config

#: Settings a running broker cannot change: the store is open in data_dir under its durability, and the
#: gateway id is part of every bridged message id already issued. A reload keeps their running values.
RESTART_ONLY = ("server.data_dir", "server.gateway_id", "storage.durability")

#: The sections a reload compares as a whole, in report order (listeners and bridges are itemised).
SECTIONS = ("server", "mqtt", "queue", "storage", "sys", "security", "limits")


class ReloadRefused(Exception):
    """`Broker.reload_config` changed nothing: part of the new configuration cannot be used. ``problems``
    says what, one line each (``str(error)`` joins them)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class ReloadReport:
    """What a reload found and did. ``changed``: dotted keys / items that differ (``bridge cloud: changed``,
    ``listener tls 0.0.0.0:8883: added``); ``needs_restart``: keys whose new value was NOT applied (their
    running value stays until a restart); ``errors``: what failed while applying (a listener that could not
    bind); the rest of the reload is applied regardless."""

    source: str | None
    changed: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One log line."""
        changed = ", ".join(self.changed) if self.changed else "no setting changed"
        parts = [f"applied: {changed} (password, ACL and TLS files re-read)"]
        if self.needs_restart:
            parts.append("needs a restart: " + ", ".join(self.needs_restart))
        if self.errors:
            parts.append("failed: " + "; ".join(self.errors))
        return "; ".join(parts)


def _get(config: Config, dotted_key: str) -> object:
    section, key = dotted_key.split(".")
    return getattr(getattr(config, section), key)


def running_config(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The configuration to run after a reload: ``new``, with the restart-only settings kept at their ``old``
    values. Also returns the restart-only keys whose value differs (not applied)."""
    differing = [key for key in RESTART_ONLY if _get(old, key) != _get(new, key)]
    server = dataclasses.replace(new.server, data_dir=old.server.data_dir, gateway_id=old.server.gateway_id)
    storage = dataclasses.replace(new.storage, durability=old.storage.durability)
    return dataclasses.replace(new, server=server, storage=storage), differing


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted keys of [sections] whose value differs (``limits.max_connections``)."""
    changed: list[str] = []
    for name in SECTIONS:
        old_section, new_section = getattr(old, name), getattr(new, name)
        if old_section == new_section:
            continue
        changed += [
            f"{name}.{f.name}"
            for f in dataclasses.fields(old_section)
            if getattr(old_section, f.name) != getattr(new_section, f.name)
        ]
    return changed
