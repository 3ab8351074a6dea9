"""A client that sends request after request and never reads the replies (issue 11, item 5).

Each request below makes the broker queue a small reply (PINGRESP, PUBACK, PUBREC, SUBACK, UNSUBACK,
PUBCOMP). Without a byte bound on a connection's pending output they pile up in the broker for as
long as the client sends (17 million PINGREQs took a broker from 33 MB to 135 MB). With it, past
MAX_PENDING_OUTPUT_BYTES the connection is no longer read: TCP pushes back on the flooder, the broker
process stays small, and other clients are served as before (ARCHITECTURE round 2: "every buffer has a
byte bound, including the small replies").

The broker runs as its own process so that its RSS is the broker's alone.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from edgebus.protocol import (
    Connect,
    PingReq,
    PingResp,
    Publish,
    PubRel,
    Subscribe,
    Subscription,
    Unsubscribe,
    encode,
)
from edgebus.protocol.packets import Properties
from edgebus.server import connection
from tests.clients import MQTT_5, RawClient, Sub
from tests.conftest import StartBroker
from tests.processes import start_edgebus_process

#: How long each flood lasts.
FLOOD_S = 8.0
#: How much the broker's RSS may grow while one connection floods: the pending-output bound (1 MiB),
#: one read's worth of decoded packets, the kernel-side buffers it does not count, allocator slack.
#: Without the bound, each of these floods grows it by far more (see the report in issue 11).
RSS_GROWTH_LIMIT_BYTES = 8 * 1024 * 1024
#: Requests sent per send_all: one 64 KiB-ish chunk.
CHUNK_PACKETS = 8192

FLOODS = {
    # [MQTT-3.12.4-1]: the server MUST send a PINGRESP in response to a PINGREQ.
    "pingreq": encode(PingReq(), MQTT_5),
    # [MQTT-4.3.2-2]: a QoS 1 PUBLISH is answered with PUBACK (the flow ends, so the id is free again).
    "publish-qos1": encode(Publish("flood/1", b"", qos=1, packet_id=1), MQTT_5),
    # [MQTT-4.3.3-10]: a resent QoS 2 PUBLISH is answered with PUBREC again, not delivered again.
    "publish-qos2": encode(Publish("flood/2", b"", qos=2, packet_id=1, dup=True), MQTT_5),
    # [MQTT-3.8.4-1]: the server MUST respond to a SUBSCRIBE with a SUBACK.
    "subscribe": encode(Subscribe(1, (Subscription("flood/s", 0),)), MQTT_5),
    # [MQTT-3.10.4-4]: the server MUST respond to an UNSUBSCRIBE with an UNSUBACK.
    "unsubscribe": encode(Unsubscribe(1, ("flood/none",)), MQTT_5),
    # [MQTT-4.3.3-11]: a PUBREL is answered with PUBCOMP (0x92 for an unknown id on 5.0).
    "pubrel": encode(PubRel(7), MQTT_5),
}


def _rss_bytes(pid: int) -> int:
    """The process's resident set size (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _flood(port: int, request: bytes) -> None:
    """Connect, then send ``request`` over and over for FLOOD_S seconds without reading anything."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window, so
    await sock.connect(("127.0.0.1", port))  # the replies back up in the broker, not in the kernel
    stream = trio.SocketStream(sock)
    await stream.send_all(encode(Connect("flooder", keep_alive=0), MQTT_5))
    chunk = request * CHUNK_PACKETS
    with trio.move_on_after(FLOOD_S):
        while True:
            await stream.send_all(chunk)
    await trio.aclose_forcefully(stream)


async def _watch(port: int, rounds: list[int]) -> None:
    """Another client, served all along: a message to itself and a PINGREQ answered, over and over."""
    watcher = await RawClient.connect("127.0.0.1", port)
    assert (await watcher.mqtt_connect("watcher")).reason_code == 0
    await watcher.subscribe(Sub("watch/#", 0), packet_id=1)
    try:
        while True:
            await watcher.send_packet(Publish("watch/x", b"%d" % len(rounds)))
            message = await watcher.receive_packet(timeout=5)
            assert isinstance(message, Publish) and message.payload == b"%d" % len(rounds)
            await watcher.send_packet(PingReq())
            assert isinstance(await watcher.receive_packet(timeout=5), PingResp)
            rounds.append(1)
            await trio.sleep(0.1)
    finally:
        await watcher.aclose()


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_a_client_that_floods_requests_without_reading_does_not_grow_the_broker(
    kind: str, tmp_path: Path
) -> None:
    """A flooding client that never reads keeps the broker's RSS within a bound, and another client
    is answered throughout."""
    port = _free_port()
    with (tmp_path / "edgebus.log").open("wb") as log:
        broker = await start_edgebus_process(
            ["--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")], port, log
        )
        try:
            await trio.sleep(0.5)
            baseline = _rss_bytes(broker.pid)
            peak = baseline
            rounds: list[int] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch, port, rounds)
                with trio.move_on_after(FLOOD_S + 1):
                    async with trio.open_nursery() as flooders:
                        flooders.start_soon(_flood, port, FLOODS[kind])
                        while True:
                            await trio.sleep(0.1)
                            peak = max(peak, _rss_bytes(broker.pid))
                nursery.cancel_scope.cancel()
            assert broker.poll() is None, "the broker died"
            assert peak - baseline < RSS_GROWTH_LIMIT_BYTES, (
                f"RSS grew from {baseline >> 20} MiB to {peak >> 20} MiB during a {kind} flood"
            )
            assert len(rounds) >= FLOOD_S * 3  # the watcher was served during the whole flood
        finally:
            broker.kill()
            await broker.wait()


async def test_replies_held_for_a_commit_are_bounded_too(tmp_path: Path) -> None:
    """QoS 1 PUBLISHes routed to a persistent session: each PUBACK is held until its store commit
    [MQTT-4.3.2-2] (ack only what is safe); those held replies count against the same bound."""
    port = _free_port()
    with (tmp_path / "edgebus.log").open("wb") as log:
        broker = await start_edgebus_process(
            ["--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")], port, log
        )
        try:
            keeper = await RawClient.connect("127.0.0.1", port)
            props = Properties(session_expiry_interval=3600)
            assert (await keeper.mqtt_connect("keeper", clean_start=False, properties=props)).reason_code == 0
            await keeper.subscribe(Sub("flood/1", 1), packet_id=1)
            await keeper.aclose()  # the session stays: every message is journaled for it
            baseline = _rss_bytes(broker.pid)
            peak = baseline
            with trio.move_on_after(FLOOD_S + 1):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_flood, port, FLOODS["publish-qos1"])
                    while True:
                        await trio.sleep(0.1)
                        peak = max(peak, _rss_bytes(broker.pid))
            assert broker.poll() is None, "the broker died"
            # The session's queue is bounded by [queue] max_messages/max_bytes (16 MiB by default).
            assert peak - baseline < RSS_GROWTH_LIMIT_BYTES + 16 * 1024 * 1024, (
                f"RSS grew from {baseline >> 20} MiB to {peak >> 20} MiB"
            )
        finally:
            broker.kill()
            await broker.wait()


async def test_a_connection_stuck_past_the_bound_is_closed(
    start_broker: StartBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose replies stay past the bound for OUTPUT_STALL_TIMEOUT_S (here 1 s) is closed: it
    must not hold a connection (and its 1 MiB) for ever."""
    monkeypatch.setattr(connection, "OUTPUT_STALL_TIMEOUT_S", 1.0)
    broker = await start_broker()
    assert broker.broker is not None
    flood = trio.move_on_after(20)
    with flood:
        await _flood_until_cut(broker.port)
    assert not flood.cancelled_caught, "the stuck connection was not closed within 20 s"
    assert not [c for c in broker.broker.clients if c.conn.client_id == "flooder"]


async def _flood_until_cut(port: int) -> None:
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(encode(Connect("flooder", keep_alive=0), MQTT_5))
    chunk = FLOODS["pingreq"] * CHUNK_PACKETS
    try:
        while True:
            await stream.send_all(chunk)
    except trio.BrokenResourceError:
        pass  # closed by the broker
    await trio.aclose_forcefully(stream)
