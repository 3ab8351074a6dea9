"""A minimal asyncio MQTT 3.1.1 client for bench/bridge.py's device publishers and log subscriber.

The broker benchmark (bench/run.py) no longer uses it: its load comes from the C generator,
bench/mqttgen.c. This module imports nothing from edgebus.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TypeVar, cast

# Packet types (MQTT 3.1.1 §2.2.1, the high nibble of the fixed header's first byte).
TYPE_CONNACK = 2
TYPE_PUBLISH = 3
TYPE_PUBACK = 4
TYPE_PUBREC = 5
TYPE_PUBREL = 6
TYPE_PUBCOMP = 7
TYPE_SUBACK = 9
TYPE_PINGRESP = 13

# Two-byte fixed headers of the acknowledgements; the packet id follows. PUBREL carries flags 0b0010
# [MQTT-3.6.1-1]; the others carry 0 (§2.2.2).
PUBACK_HEADER = b"\x40\x02"
PUBREC_HEADER = b"\x50\x02"
PUBREL_HEADER = b"\x62\x02"
PUBCOMP_HEADER = b"\x70\x02"
DISCONNECT_PACKET = b"\xe0\x00"

MAX_PACKET_ID = 65535
CONNECT_TIMEOUT_S = 10.0


def encode_remaining_length(length: int) -> bytes:
    """Variable byte integer of §2.2.3 (at most 4 bytes)."""
    if not 0 <= length <= 268_435_455:
        raise ValueError(f"remaining length out of range: {length}")
    out = bytearray()
    while True:
        byte = length % 128
        length //= 128
        if length:
            byte |= 0x80
        out.append(byte)
        if not length:
            return bytes(out)


def encode_string(text: str) -> bytes:
    """UTF-8 encoded string with its two-byte length prefix (§1.5.3)."""
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def encode_connect(client_id: str, *, clean_session: bool, keepalive_s: int) -> bytes:
    """CONNECT for protocol level 4 (3.1.1), no will, no credentials (§3.1)."""
    flags = 0x02 if clean_session else 0x00
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive_s.to_bytes(2, "big") + encode_string(client_id)
    return b"\x10" + encode_remaining_length(len(body)) + body


def encode_subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    """SUBSCRIBE with one filter; fixed-header flags must be 0b0010 [MQTT-3.8.1-1]."""
    body = packet_id.to_bytes(2, "big") + encode_string(topic_filter) + bytes([qos])
    return b"\x82" + encode_remaining_length(len(body)) + body


class PublishLayout:
    """The PUBLISH packets of one stream: one topic, one QoS, one payload size."""

    def __init__(self, topic: str, qos: int, payload_size: int) -> None:
        topic_field = encode_string(topic)
        body_size = len(topic_field) + (2 if qos else 0) + payload_size
        self.qos = qos
        # DUP = 0, RETAIN = 0.
        self.prefix = bytes([0x30 | (qos << 1)]) + encode_remaining_length(body_size) + topic_field

    def packet(self, packet_id: int, payload: bytes) -> bytes:
        if self.qos:
            return self.prefix + packet_id.to_bytes(2, "big") + payload
        return self.prefix + payload


def _fail_future(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # mark retrieved: nobody may be waiting for this one


# One receive buffer for every connection: asyncio's plain Protocol path allocates a fresh 256 KiB
# object per read. Sharing it is safe: asyncio calls get_buffer() and buffer_updated() back to back on
# its single thread, and buffer_updated() copies the bytes out before returning.
RECEIVE_BUFFER_BYTES = 256 * 1024
_receive_view = memoryview(bytearray(RECEIVE_BUFFER_BYTES))


class MqttClient(asyncio.BufferedProtocol):
    """Connection with a light incremental framer: it only splits packets and dispatches by type.

    Subclasses handle packets in _on_packet (appending replies to `out`, written once per received
    chunk) and act after each chunk in _after_receive.
    """

    def __init__(self, client_id: str, *, clean_session: bool = True, keepalive_s: int = 60) -> None:
        loop = asyncio.get_running_loop()
        self.client_id = client_id
        self._connect_packet = encode_connect(client_id, clean_session=clean_session, keepalive_s=keepalive_s)
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.protocol_errors = 0
        self._pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._connect_packet)

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"{self.client_id}: connection lost ({exc!r})")
        _fail_future(self.connack, error)
        _fail_future(self.suback, error)
        if not self.closed.done():
            self.closed.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_receive_view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """Frame and handle the packets in data (after any partial packet kept from before)."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        size = len(data)
        out: list[bytes] = []
        index = 0
        while size - index >= 2:
            # Remaining length: variable byte integer, at most 4 bytes (§2.2.3).
            remaining = 0
            body = index + 1
            for shift in (0, 7, 14, 21):
                if body >= size:
                    break
                byte = data[body]
                body += 1
                remaining |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
            else:
                self._protocol_error("remaining length longer than 4 bytes")
                return
            if data[body - 1] & 0x80 or body + remaining > size:
                break  # the length or the body is not complete yet
            self._on_packet(data[index], data, body, body + remaining, out)
            index = body + remaining
        if index < size:
            self._pending = data[index:]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        self._after_receive()

    def _after_receive(self) -> None:
        pass

    def _on_packet(self, first: int, data: bytes, start: int, end: int, out: list[bytes]) -> None:
        packet_type = first >> 4
        if packet_type == TYPE_CONNACK:
            if not self.connack.done():
                self.connack.set_result(data[start + 1])
        elif packet_type == TYPE_SUBACK:
            if not self.suback.done():
                self.suback.set_result(data[start + 2 : end])
        elif packet_type != TYPE_PINGRESP:
            self._protocol_error(f"unexpected packet type {packet_type}")

    def _protocol_error(self, reason: str) -> None:
        self.protocol_errors += 1
        print(f"aioclient: {self.client_id}: {reason}; closing", file=sys.stderr)
        if self.transport is not None:
            self.transport.abort()

    async def subscribe(self, topic_filter: str, qos: int, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if self.transport is None:
            raise ConnectionError("not connected")
        self.transport.write(encode_subscribe(1, topic_filter, qos))
        codes = await asyncio.wait_for(self.suback, timeout_s)
        if not codes or codes[0] == 0x80:
            raise ConnectionError(f"{self.client_id}: SUBSCRIBE {topic_filter!r} refused: {codes!r}")

    async def disconnect(self, timeout_s: float = 2.0) -> None:
        transport = self.transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.write(DISCONNECT_PACKET)
            transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)
        except TimeoutError:
            transport.abort()


ClientT = TypeVar("ClientT", bound=MqttClient)


async def open_client(host: str, port: int, client: ClientT, timeout_s: float = CONNECT_TIMEOUT_S) -> ClientT:
    """Connect `client`, send CONNECT and wait for a successful CONNACK (return code 0, §3.2.2.3)."""
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.create_connection(lambda: client, host, port), timeout_s)
    return_code = await asyncio.wait_for(asyncio.shield(client.connack), timeout_s)
    if return_code != 0:
        raise ConnectionError(f"{client.client_id}: CONNACK return code {return_code}")
    return client


async def close_all(clients: list[MqttClient]) -> None:
    await asyncio.gather(*(client.disconnect() for client in clients), return_exceptions=True)
