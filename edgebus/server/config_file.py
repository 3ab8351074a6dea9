"""The configuration file read the way a start reads it, for every reload too (SIGHUP and the HTTP API's
reload share this, so a file is refused for the same reasons everywhere): loaded and validated (ConfigError,
file:line), the command line's overrides applied, then checked for what would stop the broker."""

from __future__ import annotations

import os
from collections.abc import Callable

from edgebus.auth import AclError, PasswordFileError, read_acl_file, read_password_file
from edgebus.bridge.transform import require_cbor, require_kafka, require_nats, require_redis, require_rstream
from edgebus.config import Config, load_config
from edgebus.http.auth import TokenFileError, read_token_file
from edgebus.transport.listener import HTTP_TYPES, listener_problems


class StartupProblems(ValueError):
    """A configuration that loads but cannot run; ``problems`` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def startup_problems(config: Config) -> list[str]:
    """What would stop the broker: unreadable password, ACL, TLS or token files, a bridge's missing
    package."""
    problems = listener_problems(config)
    security = config.security
    try:
        if security.password_file:
            read_password_file(security.password_file)
        if security.acl_file:
            read_acl_file(security.acl_file)
    except (PasswordFileError, AclError) as exc:
        problems.append(str(exc))
    for listener in config.listener:
        if listener.type in HTTP_TYPES and listener.token_file:
            try:
                read_token_file(listener.token_file)
            except TokenFileError as exc:
                problems.append(str(exc))
    for bridge in config.bridge:
        try:
            if bridge.kind == "nats-jetstream":
                require_nats()
            if bridge.kind == "redis-stream":
                require_redis()
            if bridge.kind == "rabbitmq-stream":
                require_rstream()
            if bridge.kind == "kafka":
                require_kafka()
            if any(rule.transform == "cbor-json" for rule in bridge.topics):
                require_cbor()
        except RuntimeError as exc:
            problems.append(f"bridge {bridge.name}: {exc}")
        for key in ("cafile", "certfile", "keyfile"):
            path = getattr(bridge, key)
            if path and not os.access(path, os.R_OK):
                problems.append(f"bridge {bridge.name}: {key} {path!r} cannot be read")
    return problems


def checked(config: Config) -> Config:
    """``config`` if it can run; raises StartupProblems."""
    problems = startup_problems(config)
    if problems:
        raise StartupProblems(problems)
    return config


def read_config_file(path: str | None, overrides: Callable[[Config], Config] | None = None) -> Config:
    """``path`` (None: the built-in defaults) loaded, ``overrides`` applied, checked. Raises ConfigError
    (file:line problems) or StartupProblems; the same on start and on every reload."""
    config = load_config(path) if path else Config()
    return checked(overrides(config) if overrides is not None else config)


def reread(config: Config) -> Config:
    """What a reload of a broker started without a reader (in-process, no command line) applies: the file
    ``config`` was loaded from, again; or, built in code, ``config`` itself (its files are re-read)."""
    return read_config_file(config.source) if config.source else checked(config)
