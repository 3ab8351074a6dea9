"""Device load and the log audit shared by the bridge outage tests.

Devices publish numbered QoS 1 messages ("<n>" on a few topics) through the gateway and note which were
acknowledged (PUBACK). The audit then reads the upstream log and checks the bridge's promise: every
acknowledged message is there exactly once, in per-topic order; an unacknowledged one (in flight when the
gateway died) may be there, but at most once; nothing else is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import trio

from edgebus.client_trio import ConnectError, connect_mqtt
from edgebus.core.client import ClientOptions, MqttClient, PublishAcknowledged
from edgebus.core.client import Event as ClientEvent
from edgebus.protocol.enums import MQTT_3_1_1

TOPICS = ("sensors/a", "sensors/b/x", "sensors/c")


@dataclass
class DeviceLoad:
    """What the devices published: per topic, the numbers acknowledged and those sent without an answer."""

    acked: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TOPICS})
    unanswered: set[tuple[str, int]] = field(default_factory=set)
    connections: int = 0

    @property
    def acked_count(self) -> int:
        return sum(len(numbers) for numbers in self.acked.values())

    async def run(
        self, host: str, port: int, rate: float, stop: trio.Event, client_id: str = "device"
    ) -> None:
        """Publish round-robin over TOPICS at ``rate`` messages/s until ``stop``; reconnect when the gateway
        goes away (a restarted gateway keeps the numbering going)."""
        counters = dict.fromkeys(TOPICS, 0)
        interval = 1.0 / rate
        turn = 0
        while not stop.is_set():
            client = MqttClient(ClientOptions(client_id, protocol_level=MQTT_3_1_1, keep_alive=5))
            in_flight: set[tuple[str, int]] = set()

            def on_event(event: ClientEvent, in_flight: set[tuple[str, int]] = in_flight) -> None:
                if isinstance(event, PublishAcknowledged) and event.success:
                    topic, number = cast(tuple[str, int], event.token)
                    in_flight.discard((topic, number))
                    self.acked[topic].append(number)

            try:
                async with trio.open_nursery() as nursery:
                    connection = await connect_mqtt(
                        nursery, host, port, client, on_event=on_event, connect_timeout=2
                    )
                    self.connections += 1
                    while not stop.is_set() and not connection.closed.is_set():
                        topic = TOPICS[turn % len(TOPICS)]
                        turn += 1
                        counters[topic] += 1
                        number = counters[topic]
                        in_flight.add((topic, number))
                        connection.publish(topic, str(number).encode(), qos=1, token=(topic, number))
                        await trio.sleep(interval)
                    if not connection.closed.is_set():
                        with trio.move_on_after(5):
                            while in_flight and not connection.closed.is_set():  # noqa: ASYNC110 - set by callbacks
                                await trio.sleep(0.02)
                        connection.disconnect()
                        await connection.wait_closed()
                    nursery.cancel_scope.cancel()
            except* ConnectError:  # the gateway is down (restarting): try again shortly
                await trio.sleep(0.1)
            self.unanswered |= in_flight
            for topic, numbers in self.acked.items():  # PUBACKs are in order per connection
                numbers.sort()
                assert len(numbers) == len(set(numbers)), f"{topic}: a number acknowledged twice"


@dataclass
class Verdict:
    lost: list[tuple[str, int]]
    duplicated: list[tuple[str, int]]
    reordered: list[tuple[str, int, int]]
    unexpected: list[tuple[str, int]]
    total: int
    exactly_once: bool = True  # False: duplicates are counted (QoS-1-only upstreams), not failures
    copies: int = 0  # log entries beyond each message's first

    @property
    def ok(self) -> bool:
        duplicated = self.duplicated if self.exactly_once else []
        return not (self.lost or duplicated or self.reordered or self.unexpected)


def audit(load: DeviceLoad, log: list[tuple[str, int]], exactly_once: bool = True) -> Verdict:
    """``log``: (local topic, number) in the upstream log's order. ``exactly_once=False`` (at least once):
    duplicates are allowed and counted; order is checked on each message's first arrival."""
    counts = Counter(log)
    acked = {(topic, n) for topic, numbers in load.acked.items() for n in numbers}
    lost = sorted(acked - counts.keys())
    duplicated = sorted(key for key, count in counts.items() if count > 1)
    unexpected = sorted(key for key in counts if key not in acked and key not in load.unanswered)
    reordered: list[tuple[str, int, int]] = []
    last: dict[str, int] = {}
    first_arrivals = log if exactly_once else list(dict.fromkeys(log))
    for topic, number in first_arrivals:
        if number <= last.get(topic, 0):
            reordered.append((topic, last[topic], number))
        last[topic] = max(number, last.get(topic, 0))
    copies = len(log) - len(counts)
    return Verdict(lost, duplicated, reordered, unexpected, len(log), exactly_once, copies)


async def wait_for_log(
    read_log: Callable[[], Awaitable[list[tuple[str, int]]]],
    load: DeviceLoad,
    within_s: float,
    count: Callable[[], Awaitable[int]] | None = None,
) -> list[tuple[str, int]]:
    """Read the log until it holds every acknowledged message (or ``within_s``), then once more after a
    pause, so late duplicates are seen too. ``count``, if given, is a cheap size of the log to poll first."""
    acked = {(topic, n) for topic, numbers in load.acked.items() for n in numbers}
    with trio.move_on_after(within_s):
        while True:
            if count is not None and await count() < len(acked):
                await trio.sleep(0.2)
                continue
            if acked <= set(await read_log()):
                break
            await trio.sleep(0.25)
    await trio.sleep(1.0)
    return await read_log()
