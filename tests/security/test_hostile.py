"""Hostile input against a live broker: random and mutated byte streams from several raw clients
(hypothesis), a client that stops reading (half-open TCP), and 5,000 connections opened and dropped.

Invariant (issue 4; ARCHITECTURE "errors carry their answer"): no input crashes or hangs the broker or grows
its memory without bound, no exception escapes a connection task (nothing logged as "failed"), and a
well-behaved client keeps being served.
"""

from __future__ import annotations

import itertools
import logging
import socket
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgebus.protocol import (
    Connect,
    Disconnect,
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
from tests.clients import MQTT_3_1_1, MQTT_5, RawClient, Sub
from tests.conftest import BrokerHandle, StartBroker, _start_edgebus
from tests.fuzzing import mutate

VALID_PACKETS = [
    encode(packet, level)
    for level in (MQTT_3_1_1, MQTT_5)
    for packet in (
        Connect("fuzz", protocol_level=level, clean_start=False, will=Will("w/t", b"gone", 1), username="u"),
        Publish("a/b", b"payload", qos=1, packet_id=1),
        Publish("a/b", b"x" * 40, qos=2, packet_id=2, retain=True),
        Subscribe(3, (Subscription("a/#", 2),)),
        Unsubscribe(4, ("a/#",)),
        PubRel(2),
        PubAck(9),
        PingReq(),
        Disconnect(),
    )
]


def _stream() -> st.SearchStrategy[bytes]:
    """A CONNECT (so later packets reach the connected state) followed by valid, mutated or random bytes."""
    packets = st.sampled_from(VALID_PACKETS)
    edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)
    chunk = st.one_of(packets, st.builds(mutate, packets, edits), st.binary(max_size=64))
    connects = st.sampled_from([VALID_PACKETS[0], VALID_PACKETS[len(VALID_PACKETS) // 2]])
    return st.builds(lambda first, rest: first + b"".join(rest), connects, st.lists(chunk, max_size=8))


_EXAMPLES = itertools.count()


class Watch:
    """A subscriber and a publisher that must keep working throughout."""

    def __init__(self, sub: RawClient, pub: RawClient) -> None:
        self.sub, self.pub, self.count = sub, pub, 0

    @classmethod
    async def start(cls, broker: BrokerHandle) -> Watch:
        sub = await RawClient.connect(*broker.address)
        assert (await sub.mqtt_connect("watch-sub")).reason_code == 0
        await sub.subscribe(Sub("watch/t", 1))
        pub = await RawClient.connect(*broker.address, MQTT_3_1_1)
        assert (await pub.mqtt_connect("watch-pub")).reason_code == 0
        return cls(sub, pub)

    async def check(self) -> None:
        self.count += 1
        payload = str(self.count).encode()
        await self.pub.send_packet(Publish("watch/t", payload, qos=0))
        message = await self.sub.receive_packet(timeout=5)
        assert isinstance(message, Publish) and message.payload == payload

    async def aclose(self) -> None:
        await self.sub.aclose()
        await self.pub.aclose()


async def _settle(broker: BrokerHandle, at_most: int) -> None:
    """Wait until the broker holds at most ``at_most`` connections (closed ones are reaped)."""
    assert broker.broker is not None
    with trio.fail_after(10):
        while len(broker.broker.clients) > at_most:  # noqa: ASYNC110 - polling the broker's own state
            await trio.sleep(0.05)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)
@given(streams=st.lists(_stream(), min_size=1, max_size=4))
async def test_random_and_mutated_streams_from_several_clients(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, streams: list[bytes]
) -> None:
    """Several raw clients at once send a CONNECT then valid, mutated and random packets; the broker
    answers or closes each (a malformed packet closes its connection [MQTT-4.8.0-1]) and keeps serving a
    well-behaved pair of clients; no connection task fails."""
    caplog.set_level(logging.INFO, logger="edgebus")
    # Hypothesis runs each example in its own trio run, while the function's fixtures are made once: the
    # broker lives in this example's own nursery, with its own data directory.
    data_dir = tmp_path / f"example-{next(_EXAMPLES)}"
    data_dir.mkdir()
    async with trio.open_nursery() as nursery:
        overrides = {"mqtt": {"max_packet_size": 4096}, "queue": {"max_messages": 50}}
        broker = await _start_edgebus(nursery, data_dir, overrides)
        await _fuzz_once(broker, streams)
        await broker.shutdown()
    assert not [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]


async def _fuzz_once(broker: BrokerHandle, streams: list[bytes]) -> None:
    watch = await Watch.start(broker)

    async def hostile(data: bytes) -> None:
        stream = await trio.open_tcp_stream(*broker.address)
        try:
            for offset in range(0, len(data), 37):  # in uneven pieces
                await stream.send_all(data[offset : offset + 37])
            with trio.move_on_after(0.05):
                while await stream.receive_some(65536):
                    pass  # whatever the broker answers; it may also close
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for data in streams:
            nursery.start_soon(hostile, data)
    await watch.check()
    await _settle(broker, 2)
    assert broker.broker is not None
    assert len(broker.broker.sessions) <= len(streams) + 2  # only "fuzz" (persistent) and the watchers
    await watch.aclose()


async def test_client_that_stops_reading_does_not_grow_memory_or_stall_others(
    start_broker: StartBroker,
) -> None:
    """Half-open TCP: a subscriber that never reads. Its queue stays within [queue] bounds (overflow
    policy drop-oldest), the bytes waiting for its socket stay within one flush batch, and another
    subscriber receives everything at once."""
    broker = await start_broker(queue={"max_messages": 100, "max_bytes": 1 << 20})
    stuck = socket.create_connection(broker.address)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(
        encode(Connect("stuck", keep_alive=0), MQTT_5)
        + encode(Subscribe(1, (Subscription("f/#", 1),)), MQTT_5)
    )
    watch = await Watch.start(broker)
    await watch.sub.subscribe(Sub("f/#", 0), packet_id=2)
    publisher = await RawClient.connect(*broker.address)
    assert (await publisher.mqtt_connect("flood")).reason_code == 0
    payload = b"z" * 10_000
    for batch in range(20):  # 2,000 messages, 20 MB in all
        await publisher.send(b"".join(encode(Publish(f"f/{batch}", payload), MQTT_5) for _ in range(100)))
        received = await watch.sub.receive_packets(100, timeout=10)
        assert all(isinstance(p, Publish) for p in received)
    assert broker.broker is not None
    session = broker.broker.sessions["stuck"]
    assert len(session.outbox) <= 100
    assert broker.broker.stats.messages_dropped > 1000  # the bound was reached: drop-oldest at work
    client = next(c for c in broker.broker.clients if c.conn.client_id == "stuck")
    assert len(client.pending) <= 256 * 1024 + 16 * 1024
    await watch.check()
    stuck.close()
    await publisher.aclose()
    await watch.aclose()


async def test_five_thousand_connections_opened_and_dropped(
    start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """5,000 connections opened and dropped (half of them after a CONNECT, some mid-packet): every one is
    reaped, the broker keeps serving, and no connection task fails."""
    caplog.set_level(logging.INFO, logger="edgebus")
    broker = await start_broker()
    watch = await Watch.start(broker)
    connect = encode(Connect("", keep_alive=30), MQTT_5)
    for _ in range(10):
        sockets: list[socket.socket] = []
        for _ in range(500):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.connect(broker.address)
            except BlockingIOError:
                pass
            sockets.append(sock)
        await trio.sleep(0.02)
        for index, sock in enumerate(sockets):
            try:
                if index % 2:
                    sock.send(connect if index % 4 == 1 else connect[:5])
            except OSError:
                pass
        await trio.sleep(0.02)
        for sock in sockets:
            sock.close()
        await watch.check()
    await _settle(broker, 2)
    await watch.check()
    await watch.aclose()
    assert not [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
