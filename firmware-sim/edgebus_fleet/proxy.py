"""A TCP proxy on 127.0.0.1 that the simulator controls: network flaps, and injected faults.

A flap cuts every connection through the proxy and refuses new ones for a while, as a gateway's
uplink going down would. Faults prove the audit can fail: the proxy can drop QoS 1 PUBLISH packets
on their way from the broker to the client (answering the broker's PUBACK itself, so the broker
thinks they were delivered), and deliver QoS 0 / QoS 2 PUBLISH packets twice.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

import trio

from edgebus.client_trio import open_tcp_socket
from edgebus.protocol.primitives import decode_varint
from edgebus.transport.tcp import TcpStream, open_listening_sockets

log = logging.getLogger("edgebus_fleet.proxy")

RECEIVE_BYTES = 65536
#: Packet id given to an injected QoS 2 duplicate: high, so it does not collide with the broker's.
DUPLICATE_PACKET_ID_BASE = 60000

__all__ = ["ChaosProxy"]


class ChaosProxy:
    """Forwards 127.0.0.1:<port> to the broker; `flap` cuts the network for a while."""

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = listen_port  # 0: any free port (known once serving)
        self.down_until = 0.0
        # Until then, whatever the broker sends is swallowed (the client's writes still get through): a
        # link that delivers but never answers, as a half-dead uplink does.
        self.mute_until = 0.0
        self.mutes = 0
        self.connections: set[tuple[TcpStream, TcpStream]] = set()
        self.flaps = 0
        # Faults on the broker -> client direction.
        self.drop_qos1_publishes = 0
        self.duplicate_publishes = 0
        # Wills to swallow (QoS 0/1, acknowledged to the broker as delivered), recognised by topic.
        self.drop_will_publishes = 0
        self.will_topics: frozenset[bytes] = frozenset()
        self.dropped_wills = 0
        self.dropped = 0
        self.duplicated = 0
        self._next_duplicate_id = DUPLICATE_PACKET_ID_BASE

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        (listener,) = open_listening_sockets("127.0.0.1", self.port)
        self.port = listener.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            try:
                while True:
                    await trio.lowlevel.wait_readable(listener)
                    while True:
                        try:
                            sock, _ = listener.accept()
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            if exc.errno in (errno.EMFILE, errno.ENFILE):
                                await trio.sleep(0.05)
                                break
                            continue
                        if trio.current_time() < self.down_until:
                            _reset(sock)  # the network is down: the connection attempt fails
                            continue
                        nursery.start_soon(self._handle, TcpStream(sock, "client"))
            finally:
                listener.close()

    def flap(self, duration: float) -> None:
        """Cut every connection now and refuse new ones for ``duration`` seconds."""
        self.flaps += 1
        self.down_until = trio.current_time() + duration
        for downstream, upstream in list(self.connections):
            downstream.force_close()
            upstream.force_close()
        self.connections.clear()

    def mute(self, duration: float) -> None:
        """For ``duration`` seconds, drop everything the broker sends on every connection (acknowledgements
        lost, PINGRESPs lost), while the client's packets still reach the broker."""
        self.mutes += 1
        self.mute_until = trio.current_time() + duration

    @property
    def is_down(self) -> bool:
        return trio.current_time() < self.down_until

    async def _handle(self, downstream: TcpStream) -> None:
        try:
            upstream = await open_tcp_socket(self.target_host, self.target_port)
        except OSError:
            downstream.force_close()
            return
        pair = (downstream, upstream)
        self.connections.add(pair)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope, False)
                nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope, True)
        finally:
            self.connections.discard(pair)
            downstream.force_close()
            upstream.force_close()

    async def _pump(
        self, source: TcpStream, sink: TcpStream, scope: trio.CancelScope, from_broker: bool
    ) -> None:
        buffer = bytearray()
        try:
            while True:
                data = await source.receive_some(RECEIVE_BYTES)
                if not data:
                    break
                if from_broker and trio.current_time() < self.mute_until:
                    continue  # muted: the answer is lost on the way
                faulty = self.drop_qos1_publishes or self.duplicate_publishes or self.drop_will_publishes
                if from_broker and (faulty or buffer):
                    buffer += data
                    out, acks = self._filter(buffer)
                    if acks:
                        await source.send_all(acks)
                    if out:
                        await sink.send_all(out)
                else:
                    await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    def _filter(self, buffer: bytearray) -> tuple[bytes, bytes]:
        """Split ``buffer`` into whole packets (leaving a partial one in it) and apply the faults;
        returns (bytes for the client, acknowledgements to answer the broker with)."""
        out = bytearray()
        acks = bytearray()
        pos = 0
        while pos < len(buffer):
            header = decode_varint(buffer, pos + 1)
            if header is None:
                break
            length, body = header
            end = body + length
            if end > len(buffer):
                break
            packet = bytes(buffer[pos:end])
            body -= pos  # from here on, offsets into ``packet``
            pos = end
            first = packet[0]
            if first >> 4 != 3:  # not a PUBLISH
                out += packet
                continue
            qos = (first >> 1) & 3
            if first & 0x01:  # a retained message replayed on subscribe: left alone
                out += packet
                continue
            topic_length = int.from_bytes(packet[body : body + 2], "big")
            pid_at = body + 2 + topic_length  # §3.3.2: topic name, then the packet id
            if qos <= 1 and self.drop_will_publishes and bytes(packet[body + 2 : pid_at]) in self.will_topics:
                self.drop_will_publishes -= 1
                self.dropped_wills += 1
                if qos == 1:
                    acks += b"\x40\x02" + packet[pid_at : pid_at + 2]  # PUBACK: "delivered"
                continue
            if qos == 1 and self.drop_qos1_publishes:
                self.drop_qos1_publishes -= 1
                self.dropped += 1
                acks += b"\x40\x02" + packet[pid_at : pid_at + 2]  # PUBACK: "delivered"
                continue
            out += packet
            if qos in (0, 2) and self.duplicate_publishes:
                self.duplicate_publishes -= 1
                self.duplicated += 1
                if qos == 2:
                    # A second PUBLISH of the same message under another packet id: for the client a
                    # new message, so it is delivered twice, which exactly-once forbids.
                    self._next_duplicate_id += 1
                    copy = bytearray(packet)
                    copy[0] &= ~0x08
                    copy[pid_at : pid_at + 2] = self._next_duplicate_id.to_bytes(2, "big")
                    out += copy
                else:
                    out += packet
        del buffer[:pos]
        return bytes(out), bytes(acks)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a refused or broken network path would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
