"""Crash test: the broker is SIGKILLed at random moments under QoS 1 and QoS 2 load, restarted on the
same data dir, 20 times; then every message a publisher saw acknowledged (PUBACK / PUBCOMP) must have
reached every persistent subscriber: QoS 1 at least once, QoS 2 exactly once, in per-publisher order.

The clients here are minimal but protocol-complete for what the audit relies on: persistent
sessions, resend of unacknowledged PUBLISH (DUP) and PUBREL after reconnect [MQTT-4.4.0-1], and the
QoS 2 receiver's packet-id memory until PUBREL [MQTT-4.3.3-10].
"""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import IO

import pytest
import trio

from edgebus.protocol import (
    MQTT_5,
    ConnAck,
    Connect,
    PacketDecoder,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)
from edgebus.protocol.packets import Packet
from tests.clients import PEER
from tests.processes import free_port, start_edgebus_process

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's durable store")

ROUNDS = 20
WINDOW = 5
PERSISTENT = Properties(session_expiry_interval=3600)


class Client:
    """One MQTT client whose session state outlives its connections (and the broker's crashes)."""

    def __init__(self, client_id: str, level: int) -> None:
        self.client_id = client_id
        self.level = level
        self.stream: trio.SocketStream | None = None
        self.send_lock = trio.Lock()
        # Publisher side: packet id -> (seq, PUBLISH, "sent" | "rec"), in send order.
        self.inflight: dict[int, tuple[int, Publish, str]] = {}
        self.next_pid = 1
        self.next_seq = 0
        self.acked: list[int] = []
        # Subscriber side: payloads in arrival order, and QoS 2 ids received but not released.
        self.received: list[bytes] = []
        self.qos2_pending: set[int] = set()
        self.window_open = trio.Event()
        self.decoder = PacketDecoder(role="client", protocol_level=level)
        self._buffer: list[Packet] = []

    async def send(self, packet: Packet) -> None:
        assert self.stream is not None
        async with self.send_lock:
            await self.stream.send_all(encode(packet, self.level))

    async def connect(self, port: int, subscribe: tuple[str, int] | None = None) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", port)
        self.decoder = PacketDecoder(role="client", protocol_level=self.level)
        self._buffer = []
        props = PERSISTENT if self.level == MQTT_5 else Properties()
        await self.send(
            Connect(self.client_id, self.level, clean_start=False, keep_alive=60, properties=props)
        )
        connack = await self._next()
        assert isinstance(connack, ConnAck) and connack.reason_code == 0
        if subscribe is not None:
            await self.send(Subscribe(1, (Subscription(subscribe[0], subscribe[1]),)))
        # Resume what was in flight [MQTT-4.4.0-1].
        for pid, (_, publish, state) in list(self.inflight.items()):
            if state == "rec":
                await self.send(PubRel(pid))
            else:
                await self.send(Publish(publish.topic, publish.payload, publish.qos, dup=True, packet_id=pid))

    async def _next(self) -> Packet:
        assert self.stream is not None
        while True:
            if self._buffer:
                return self._buffer.pop(0)
            data = await self.stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("closed")
            self._buffer = self.decoder.receive_data(data)

    _buffer: list[Packet] = []

    async def read_forever(self) -> None:
        while True:
            packet = await self._next()
            if isinstance(packet, Publish):
                await self._on_publish(packet)
            elif isinstance(packet, PubAck):
                entry = self.inflight.pop(packet.packet_id, None)
                if entry is not None:
                    self.acked.append(entry[0])
                    self.window_open.set()
            elif isinstance(packet, PubRec):
                entry = self.inflight.get(packet.packet_id)
                if entry is not None:
                    self.inflight[packet.packet_id] = (entry[0], entry[1], "rec")
                await self.send(PubRel(packet.packet_id))
            elif isinstance(packet, PubComp):
                entry = self.inflight.pop(packet.packet_id, None)
                if entry is not None:
                    self.acked.append(entry[0])
                    self.window_open.set()
            elif isinstance(packet, PubRel):
                self.qos2_pending.discard(packet.packet_id)
                await self.send(PubComp(packet.packet_id))
            elif not isinstance(packet, SubAck):
                raise AssertionError(f"unexpected {packet}")

    async def _on_publish(self, packet: Publish) -> None:
        pid = packet.packet_id
        if packet.qos == 0:
            self.received.append(packet.payload)
        elif packet.qos == 1:
            self.received.append(packet.payload)
            assert pid is not None
            await self.send(PubAck(pid))
        else:
            assert pid is not None
            if pid not in self.qos2_pending:  # a DUP of an id not yet released is not new
                self.qos2_pending.add(pid)
                self.received.append(packet.payload)
            await self.send(PubRec(pid))

    async def publish_forever(self, topic: str, qos: int) -> None:
        while True:
            while len(self.inflight) >= WINDOW:
                self.window_open = trio.Event()
                await self.window_open.wait()
            pid = self.next_pid
            self.next_pid = pid % 65535 + 1
            seq = self.next_seq
            self.next_seq += 1
            publish = Publish(topic, f"{self.client_id}:{seq}".encode(), qos, packet_id=pid)
            self.inflight[pid] = (seq, publish, "sent")
            await self.send(publish)

    async def close(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
            self.stream = None


async def _start(port: int, data_dir: Path, log: IO[bytes]) -> trio.Process:
    return await start_edgebus_process(
        ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)], port, log
    )


async def _run_session(
    clients: list[Client], port: int, load: bool, subs: dict[str, tuple[str, int]]
) -> None:
    """Connect everyone and run until cancelled or the broker dies."""
    async with trio.open_nursery() as nursery:
        for client in clients:
            await client.connect(port, subs.get(client.client_id))
            nursery.start_soon(client.read_forever)
        if load:
            for client, (topic, qos) in zip(clients[2:], PUBLISHERS, strict=True):
                nursery.start_soon(client.publish_forever, topic, qos)


PUBLISHERS = [("load/a", 1), ("load/b", 2), ("load/c", 2)]


async def test_sigkill_rounds_lose_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(0xEDB05)
    port = free_port()
    data_dir = tmp_path / "data"
    sink5 = Client("sink-v5", MQTT_5)  # QoS 2 subscription: QoS 2 messages exactly once
    sink3 = Client("sink-v311", 4)  # QoS 1 subscription (3.1.1): at least once
    publishers = [Client("pub-a", MQTT_5), Client("pub-b", MQTT_5), Client("pub-c", 4)]
    clients = [sink5, sink3, *publishers]
    subs = {"sink-v5": ("load/#", 2), "sink-v311": ("load/#", 1)}
    with (tmp_path / "broker.log").open("wb") as log:
        for _ in range(ROUNDS):
            process = await _start(port, data_dir, log)
            try:
                with trio.move_on_after(rng.uniform(0.2, 0.8)):
                    try:
                        await _run_session(clients, port, True, subs)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                process.send_signal(signal.SIGKILL)  # at a random moment, mid-stream
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()
            for client in clients:
                await client.close()
        # Final run: everyone resumes, publishers finish what they had in flight, no new load.
        process = await _start(port, data_dir, log)
        try:
            with trio.move_on_after(8):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_run_session, clients, port, False, subs)
                    await _wait_until_delivered(publishers, [sink5, sink3])
                    nursery.cancel_scope.cancel()
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            for client in clients:
                await client.close()

    acked_total = sum(len(p.acked) for p in publishers)
    print(
        f"crash audit: {ROUNDS} SIGKILL rounds, {acked_total} acknowledged messages "
        f"({', '.join(f'{p.client_id}: {len(p.acked)}' for p in publishers)}), "
        f"received {len(sink5.received)} by {sink5.client_id} and {len(sink3.received)} by {sink3.client_id}"
    )
    assert acked_total > 200, f"too little load to mean anything: {acked_total} acknowledged"
    for publisher, (_, qos) in zip(publishers, PUBLISHERS, strict=True):
        assert not publisher.inflight, f"{publisher.client_id} still has {len(publisher.inflight)} in flight"
        for sink, exactly_once in ((sink5, qos == 2), (sink3, False)):
            got = [
                int(p.split(b":")[1])
                for p in sink.received
                if p.startswith(publisher.client_id.encode() + b":")
            ]
            missing = sorted(set(publisher.acked) - set(got))
            assert not missing, (
                f"{sink.client_id} lost {len(missing)} acknowledged messages of {publisher.client_id}"
            )
            if exactly_once:
                dupes = len(got) - len(set(got))
                assert dupes == 0, f"{sink.client_id} got {dupes} duplicates of QoS 2 {publisher.client_id}"
            # Per-publisher order of first arrivals [MQTT-4.6.0-5].
            first_seen = list(dict.fromkeys(got))
            assert first_seen == sorted(first_seen), f"{sink.client_id}: {publisher.client_id} out of order"


async def _wait_until_delivered(publishers: list[Client], sinks: list[Client]) -> None:
    while True:
        done = all(not p.inflight for p in publishers) and all(
            {f"{p.client_id}:{s}".encode() for p in publishers for s in p.acked} <= set(sink.received)
            for sink in sinks
        )
        if done:
            return
        await trio.sleep(0.1)
