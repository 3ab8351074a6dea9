#!/usr/bin/env python3
"""A long fuzz campaign against a live edgebus broker (not part of the test suite).

The broker runs in a thread of its own (its own trio run, port 0, in-memory storage); hypothesis generates
byte streams (a CONNECT, then valid, mutated and random packets) that several plain sockets send at once.
After each example a well-behaved publisher/subscriber pair must still get its message through; at the end
every connection must have been reaped and nothing may have been logged as "failed".

    PYTHONPATH=. python scripts/fuzz_broker.py --minutes 10
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgebus.config import Config, ListenAddress, MqttConfig, QueueConfig, ServerConfig, StorageConfig
from edgebus.protocol import (
    Connect,
    Disconnect,
    PacketDecoder,
    PingReq,
    PubAck,
    Publish,
    PubRel,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
    encode,
)
from edgebus.server.broker import Broker
from tests.fuzzing import mutate

VALID = [
    encode(packet, level)
    for level in (4, 5)
    for packet in (
        Connect(
            "fuzz", protocol_level=level, clean_start=level == 5, will=Will("w/t", b"gone", 1), username="u"
        ),
        Publish("a/b", b"payload", qos=1, packet_id=1),
        Publish("a/+", b"bad topic", qos=0),
        Publish("a/b", b"x" * 40, qos=2, packet_id=2, retain=True),
        Subscribe(3, (Subscription("a/#", 2), Subscription("$share/g/a/+", 1))),
        Unsubscribe(4, ("a/#",)),
        PubRel(2),
        PubAck(9),
        PingReq(),
        Disconnect(),
    )
]
CONNECTS = [VALID[0], VALID[len(VALID) // 2]]


class FailureLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "failed" in record.getMessage():
            self.failures.append(self.format(record))


packets = st.sampled_from(VALID)
edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)
chunks = st.one_of(packets, st.builds(mutate, packets, edits), st.binary(max_size=200))
streams = st.builds(
    lambda first, rest: first + b"".join(rest), st.sampled_from(CONNECTS), st.lists(chunks, max_size=12)
)


class Watch:
    """A subscriber and a publisher on blocking sockets."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sub = socket.create_connection(address, timeout=5)
        self.sub.sendall(
            # keep_alive=0: the watchers are silent between checks and must not be cut for it.
            encode(Connect("watch-sub", keep_alive=0), 5)
            + encode(Subscribe(1, (Subscription("watch/t", 0),)), 5)
        )
        self.decoder = PacketDecoder(role="client", protocol_level=5)
        self.pending: list[Any] = []
        self.pub = socket.create_connection(address, timeout=5)
        self.pub.sendall(encode(Connect("watch-pub", keep_alive=0), 5))
        self.count = 0
        self._receive(2)  # CONNACK, SUBACK

    def _receive(self, count: int) -> list[Any]:
        while len(self.pending) < count:
            data = self.sub.recv(65536)
            if not data:
                raise AssertionError("the broker closed the watcher")
            self.pending.extend(self.decoder.receive_data(data))
        taken, self.pending = self.pending[:count], self.pending[count:]
        return taken

    def check(self) -> None:
        self.count += 1
        payload = str(self.count).encode()
        self.pub.sendall(encode(Publish("watch/t", payload), 5))
        (message,) = self._receive(1)
        assert isinstance(message, Publish) and message.payload == payload, message


def send_stream(address: tuple[str, int], data: bytes) -> None:
    try:
        with socket.create_connection(address, timeout=2) as sock:
            for offset in range(0, len(data), 53):
                sock.sendall(data[offset : offset + 53])
            sock.settimeout(0.02)
            try:
                while sock.recv(65536):
                    pass
            except (TimeoutError, OSError):
                pass
    except OSError:
        pass  # closed by the broker mid-send: a fine answer to garbage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    failures = FailureLog()
    logging.getLogger("edgebus").addHandler(failures)
    logging.getLogger("edgebus").setLevel(logging.INFO)
    logging.getLogger("edgebus").propagate = False
    config = Config(
        server=ServerConfig(listen=(ListenAddress("127.0.0.1", 0),), data_dir="/tmp/edgebus-fuzz"),
        mqtt=MqttConfig(max_packet_size=4096),
        queue=QueueConfig(max_messages=100),
        storage=StorageConfig(durability="memory"),
    )
    broker = Broker(config)
    started = threading.Event()
    addresses: list[tuple[str, int]] = []
    tokens: list[trio.lowlevel.TrioToken] = []

    async def run_broker() -> None:
        async with trio.open_nursery() as nursery:
            addresses.extend(await nursery.start(broker.serve))
            tokens.append(trio.lowlevel.current_trio_token())
            started.set()

    thread = threading.Thread(target=trio.run, args=(run_broker,), daemon=True)
    thread.start()
    started.wait(10)
    address = addresses[0]
    watch = Watch(address)
    inputs = 0
    examples = 0

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(streams, min_size=1, max_size=4))
    def example(batch: list[bytes]) -> None:
        nonlocal inputs, examples
        threads = [threading.Thread(target=send_stream, args=(address, data)) for data in batch]
        for worker in threads:
            worker.start()
        for worker in threads:
            worker.join()
        watch.check()
        inputs += len(batch)
        examples += 1

    deadline = time.monotonic() + args.minutes * 60
    while time.monotonic() < deadline:
        example()
        print(f"{examples} examples, {inputs} streams, {len(broker.clients)} connections open", flush=True)
    time.sleep(3)
    open_connections = len(broker.clients)
    print(f"done: {examples} examples, {inputs} byte streams; open connections: {open_connections} (2 watch)")
    print(f"sessions: {len(broker.sessions)}; failures logged: {len(failures.failures)}")
    for line in failures.failures[:20]:
        print("  ", line)
    trio.from_thread.run_sync(broker.shutdown, trio_token=tokens[0])
    thread.join(10)
    return 1 if failures.failures or open_connections > 2 else 0


if __name__ == "__main__":
    sys.exit(main())
