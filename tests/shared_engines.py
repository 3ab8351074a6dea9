"""The session's shared engines (`shared_rabbitmq`, `shared_kafka`) booted in the background as soon as the
selected tests are known to need them. An Erlang node takes 8-12 s to boot here (3-6 s of it RabbitMQ's MQTT
plugin waiting for cluster peers that never come) and a JVM about 6 s: time the first test using one would
otherwise spend waiting, while other tests can run. Whoever asks for an engine first waits for a start under
way (each `shared_*` holds a lock while it starts); a background start that fails is only logged, and the
first test then starts the engine itself, failing as before if it cannot."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

import pytest

__all__ = ["start_early", "wait_for_early_start"]

log = logging.getLogger(__name__)

#: Seconds the session's end waits for a background start still under way (it then stops what started).
JOIN_TIMEOUT_S = 180.0

_thread: threading.Thread | None = None


def _uses(item: pytest.Item, engine: str, shared: str) -> bool:
    """Whether ``item`` needs the shared ``engine``: named after it (test_kafka_sink, [rabbitmq-stream]) or
    its module calls ``shared``."""
    module = getattr(item, "module", None)
    return engine in item.nodeid or (module is not None and shared in vars(module))


def _engines_for(items: Sequence[pytest.Item]) -> list[Callable[[], object]]:
    starts: list[Callable[[], object]] = []
    # RabbitMQ first: its boot is mostly waiting, the JVM's is mostly computing.
    if any(_uses(item, "rabbitmq", "shared_rabbitmq") for item in items):
        from tests.bridge.rabbitmq_upstream import RABBITMQ_SERVER, shared_rabbitmq

        if os.access(RABBITMQ_SERVER, os.X_OK):
            starts.append(shared_rabbitmq)
    if any(_uses(item, "kafka", "shared_kafka") for item in items):
        from tests.bridge.kafka_upstream import kafka_available, shared_kafka

        if kafka_available():
            starts.append(shared_kafka)
    return starts


def _start_all(starts: list[Callable[[], object]]) -> None:
    for start in starts:
        try:
            start()
        except Exception as error:  # the first test to use it tries again and reports
            log.warning("starting %s in the background failed: %s", start.__name__, error)


def start_early(items: Sequence[pytest.Item]) -> None:
    """Start, on one background thread, the shared engines ``items`` need (one after the other)."""
    global _thread
    starts = _engines_for(items)
    if starts and _thread is None:
        _thread = threading.Thread(target=_start_all, args=(starts,), name="shared-engines", daemon=True)
        _thread.start()


def wait_for_early_start() -> None:
    """At the session's end: let a start under way finish, so that its engine is stopped at exit."""
    if _thread is not None:
        _thread.join(JOIN_TIMEOUT_S)
