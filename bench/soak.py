"""Soak: hours of mixed MQTT traffic against one broker, printing its RSS and open file descriptors every
minute, to show that nothing grows without bound (issue 11, item 5). Not part of the test suite.

    python -m bench.soak                         # edgebus, one hour
    python -m bench.soak --minutes 10 --broker mosquitto

The traffic, all at once, for the whole run:
- publishers: QoS 0, 1 and 2 messages at ``--rate`` in all, on MQTT 3.1.1 and 5.0, each publisher
  reconnecting every minute or two;
- persistent subscribers (5.0, Session Expiry 120 s, and 3.1.1 CleanSession 0) that go offline for a few
  seconds at a time, sometimes without DISCONNECT, so their queues fill and drain;
- connection churn: short-lived clients with a will, drawn from a pool of ids, that subscribe, publish
  and then leave, half of them without DISCONNECT (the will is published);
- takeovers: a second connection with the id of a live one, with every clean/persistent mix;
- retained churn: retained messages set, replaced and cleared on a bounded set of topics, and clients
  that subscribe to all of them and leave.

The sets of ids and topics are bounded, so a broker whose memory keeps growing is leaking. The verdict
compares the RSS after the warm-up with the RSS at the end and fits a line through the minutes after
the warm-up.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.run import DEFAULT_WORK_ROOT, HOST, BrokerProcess, EdgebusBroker, MosquittoBroker
from edgebus.client_trio import ConnectError, MqttConnection, connect_mqtt
from edgebus.core.client import ClientOptions, MqttClient
from edgebus.core.client_events import MessageReceived
from edgebus.protocol.enums import MQTT_3_1_1, MQTT_5
from edgebus.protocol.packets import Subscription, Will

PUBLISHERS = 12
PERSISTENT_SUBSCRIBERS = 6
CHURN_IDS = 300
TAKEOVER_IDS = 20
RETAINED_TOPICS = 1000
CHURN_INTERVAL_S = 0.1
TAKEOVER_INTERVAL_S = 1.0
RETAINED_INTERVAL_S = 0.02
RETAINED_READER_INTERVAL_S = 5.0
#: A line through the minutes after the warm-up that climbs more than this per hour is growth.
GROWTH_LIMIT_MB_PER_HOUR = 2.0


@dataclass
class Counters:
    published: int = 0
    delivered: int = 0
    connects: int = 0
    aborts: int = 0
    takeovers: int = 0
    closed_by_broker: int = 0
    retained_set: int = 0
    errors: int = 0
    last_error: str = ""


@dataclass
class Sample:
    minute: int
    rss_mb: float
    fds: int
    threads: int
    data_mb: float
    counters: dict[str, int] = field(default_factory=dict)


class Traffic:
    def __init__(self, port: int, rate: float, seed: int) -> None:
        self.port = port
        self.rate = rate
        self.random = random.Random(seed)
        self.counters = Counters()

    def _on_event(self, event: object) -> None:
        if isinstance(event, MessageReceived):
            self.counters.delivered += 1

    async def _connect(self, nursery: trio.Nursery, options: ClientOptions) -> MqttConnection | None:
        try:
            connection = await connect_mqtt(
                nursery, HOST, self.port, MqttClient(options), on_event=self._on_event, connect_timeout=10
            )
        except ConnectError as exc:
            self.counters.errors += 1
            self.counters.last_error = str(exc)
            return None
        self.counters.connects += 1
        return connection

    async def _leave(self, connection: MqttConnection, abort: bool) -> None:
        if abort:
            self.counters.aborts += 1
            connection.abort("soak: dropped without DISCONNECT")
        else:
            connection.disconnect()
        with trio.move_on_after(5):
            await connection.wait_closed()

    async def _session(
        self, options: ClientOptions, body: Callable[[MqttConnection], Awaitable[bool]]
    ) -> None:
        """One connection with its own nursery: ``body`` runs while it is up and says whether to leave
        without DISCONNECT."""
        async with trio.open_nursery() as nursery:
            connection = await self._connect(nursery, options)
            if connection is not None:
                try:
                    abort = await body(connection)
                except ConnectError:  # closed by the broker: taken over by a client with the same id
                    self.counters.closed_by_broker += 1
                    abort = False
                if not connection.closed.is_set():
                    await self._leave(connection, abort)
            nursery.cancel_scope.cancel()

    async def publisher(self, index: int) -> None:
        interval = PUBLISHERS / self.rate
        level = MQTT_5 if index % 2 else MQTT_3_1_1
        while True:
            stay_s = self.random.uniform(60, 120)

            async def publish(connection: MqttConnection, stay_s: float = stay_s) -> bool:
                deadline = trio.current_time() + stay_s
                seq = 0
                while trio.current_time() < deadline and not connection.closed.is_set():
                    seq += 1
                    topic = f"soak/data/{index}/{seq % 10}"
                    if connection.publish(topic, os.urandom(self.random.randint(16, 256)), qos=seq % 3):
                        self.counters.published += 1
                    await trio.sleep(interval)
                return False

            options = ClientOptions(f"soak-pub-{index}", protocol_level=level, keep_alive=30)
            await self._session(options, publish)
            await trio.sleep(0.5)

    async def persistent_subscriber(self, index: int) -> None:
        v5 = index % 2 == 0
        options = ClientOptions(
            f"soak-sub-{index}",
            protocol_level=MQTT_5 if v5 else MQTT_3_1_1,
            clean_start=False,
            session_expiry_interval=120 if v5 else 0,
            keep_alive=30,
        )
        first = True
        while True:
            online_s = self.random.uniform(5, 20)

            async def listen(connection: MqttConnection, online_s: float = online_s) -> bool:
                nonlocal first
                if first:
                    await connection.subscribe([Subscription(f"soak/data/{index}/#", qos=2),
                                                Subscription("soak/will/#", qos=1)])
                    first = False
                await trio.sleep(online_s)
                return self.random.random() < 0.3

            await self._session(options, listen)
            await trio.sleep(self.random.uniform(2, 10))  # offline: the session queues

    async def churn(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                nursery.start_soon(self._churn_client, self.random.randrange(CHURN_IDS))
                await trio.sleep(CHURN_INTERVAL_S)

    async def _churn_client(self, number: int) -> None:
        v5 = number % 2 == 0
        options = ClientOptions(
            f"soak-churn-{number}",
            protocol_level=MQTT_5 if v5 else MQTT_3_1_1,
            clean_start=self.random.random() < 0.5,
            session_expiry_interval=30 if v5 else 0,
            keep_alive=20,
            will=Will(f"soak/will/{number}", b"gone", qos=self.random.randint(0, 1)),
        )

        async def visit(connection: MqttConnection) -> bool:
            await connection.subscribe([Subscription(f"soak/data/{number % PUBLISHERS}/#", qos=number % 3)])
            connection.publish(f"soak/churn/{number}", b"hello", qos=number % 3)
            await trio.sleep(self.random.uniform(0.1, 3.0))
            return self.random.random() < 0.5

        await self._session(options, visit)

    async def takeovers(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                nursery.start_soon(self._takeover_client, self.random.randrange(TAKEOVER_IDS))
                await trio.sleep(TAKEOVER_INTERVAL_S)

    async def _takeover_client(self, number: int) -> None:
        v5 = self.random.random() < 0.5
        options = ClientOptions(
            f"soak-takeover-{number}",
            protocol_level=MQTT_5 if v5 else MQTT_3_1_1,
            clean_start=self.random.random() < 0.5,
            session_expiry_interval=self.random.choice((0, 60)) if v5 else 0,
            keep_alive=20,
        )
        self.counters.takeovers += 1

        async def hold(connection: MqttConnection) -> bool:
            await connection.subscribe([Subscription(f"soak/takeover/{number}/#", qos=1)])
            with trio.move_on_after(self.random.uniform(1, 8)):
                await connection.wait_closed()  # taken over by the next one with this id, or leaves
            return False

        await self._session(options, hold)

    async def retained(self) -> None:
        options = ClientOptions("soak-retainer", protocol_level=MQTT_5, keep_alive=30)

        async def churn_retained(connection: MqttConnection) -> bool:
            while not connection.closed.is_set():
                topic = f"soak/retained/{self.random.randrange(RETAINED_TOPICS)}"
                payload = b"" if self.random.random() < 0.2 else os.urandom(self.random.randint(1, 512))
                if connection.publish(topic, payload, qos=self.random.randint(0, 1), retain=True):
                    self.counters.retained_set += 1
                await trio.sleep(RETAINED_INTERVAL_S)
            return False

        while True:
            await self._session(options, churn_retained)
            await trio.sleep(1)

    async def retained_readers(self) -> None:
        number = 0
        while True:
            number += 1

            async def read_all(connection: MqttConnection, abort: bool = number % 2 == 0) -> bool:
                await connection.subscribe([Subscription("soak/retained/#", qos=1)])
                await trio.sleep(1.0)
                return abort

            options = ClientOptions(f"soak-reader-{number % 5}", protocol_level=MQTT_5, keep_alive=30)
            await self._session(options, read_all)
            await trio.sleep(RETAINED_READER_INTERVAL_S)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for index in range(PUBLISHERS):
                nursery.start_soon(self.publisher, index)
            for index in range(PERSISTENT_SUBSCRIBERS):
                nursery.start_soon(self.persistent_subscriber, index)
            nursery.start_soon(self.churn)
            nursery.start_soon(self.takeovers)
            nursery.start_soon(self.retained)
            nursery.start_soon(self.retained_readers)


def _tree_bytes(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sample(broker: BrokerProcess, minute: int, data_dir: Path | None, counters: Counters) -> Sample:
    assert broker.proc is not None
    pid = broker.proc.pid
    with open(f"/proc/{pid}/status") as status:
        threads = int(next(line.split()[1] for line in status if line.startswith("Threads:")))
    return Sample(
        minute=minute,
        rss_mb=broker.rss_kib() / 1024,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=threads,
        data_mb=_tree_bytes(data_dir) / 1e6,
        counters=dict(vars(counters)),
    )


def slope_mb_per_hour(samples: list[Sample]) -> float:
    """Least-squares slope of RSS against time."""
    if len(samples) < 2:
        return 0.0
    xs = [s.minute / 60 for s in samples]
    ys = [s.rss_mb for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / denominator


async def soak(broker: BrokerProcess, minutes: int, warmup: int, rate: float, seed: int) -> int:
    assert broker.port is not None
    data_dir = broker.data_dir if isinstance(broker, EdgebusBroker) else None
    traffic = Traffic(broker.port, rate, seed)
    samples: list[Sample] = []
    print("minute  rss_MB  fds  threads  data_MB  connects  published  delivered  takeovers  retained"
          "  errors", flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic.run)
        start = trio.current_time()
        for minute in range(1, minutes + 1):
            await trio.sleep_until(start + 60 * minute)
            if broker.exit_code() is not None:
                print(f"broker exited with code {broker.exit_code()}: {broker.log_tail()}", flush=True)
                return 1
            s = sample(broker, minute, data_dir, traffic.counters)
            samples.append(s)
            c = traffic.counters
            print(f"{minute:6d} {s.rss_mb:7.1f} {s.fds:4d} {s.threads:8d} {s.data_mb:8.2f} {c.connects:9d} "
                  f"{c.published:10d} {c.delivered:10d} {c.takeovers:10d} {c.retained_set:9d} {c.errors:7d}",
                  flush=True)
        nursery.cancel_scope.cancel()
    after = [s for s in samples if s.minute > warmup]
    if traffic.counters.last_error:
        print(f"last client error: {traffic.counters.last_error}")
    if not after:
        print("too short for a verdict (no minute after the warm-up)")
        return 0
    slope = slope_mb_per_hour(after)
    first, last = after[0], after[-1]
    print(f"after the {warmup}-minute warm-up: RSS {first.rss_mb:.1f} -> {last.rss_mb:.1f} MB "
          f"(max {max(s.rss_mb for s in after):.1f}), fds {first.fds} -> {last.fds} "
          f"(max {max(s.fds for s in after)}), fitted slope {slope:+.2f} MB/hour")
    flat = slope <= GROWTH_LIMIT_MB_PER_HOUR and last.fds <= first.fds + 50
    print(f"VERDICT: {'FLAT' if flat else 'GROWING'} (limit {GROWTH_LIMIT_MB_PER_HOUR} MB/hour)")
    return 0 if flat else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=60, help="length of the run (default 60)")
    parser.add_argument("--warmup", type=int, default=5, help="minutes left out of the verdict (default 5)")
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second from the publishers")
    parser.add_argument("--broker", choices=("edgebus", "mosquitto"), default="edgebus")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORK_ROOT)
    args = parser.parse_args(argv)
    broker: BrokerProcess = (
        EdgebusBroker(core=None, work_root=args.workdir)
        if args.broker == "edgebus"
        else MosquittoBroker(core=None, work_root=args.workdir)
    )
    broker.start()
    print(f"{args.broker} on {HOST}:{broker.port} (pid {broker.proc.pid if broker.proc else '?'}), "
          f"{args.minutes} minutes at {args.rate:g} msg/s, started {time.strftime('%Y-%m-%d %H:%M:%S')}",
          flush=True)
    try:
        return trio.run(soak, broker, args.minutes, args.warmup, args.rate, args.seed)
    except KeyboardInterrupt:
        return 130
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
