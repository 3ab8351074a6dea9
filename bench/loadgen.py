"""Minimal, fast MQTT 3.1.1 load generator for the broker benchmarks (plain asyncio, no broker code)."""

from __future__ import annotations

import argparse
import array
import asyncio
import functools
import gc
import json
import math
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, TypeVar, cast

HOST = "127.0.0.1"

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
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

MAX_PACKET_ID = 65535
PAYLOAD_FILL = b"x"
TIMESTAMP_BYTES = 8  # perf_counter_ns, big-endian, at payload offset 0 in the latency scenario
FLOOD_BATCH_PACKETS = 128  # QoS 0 publishers write this many pre-encoded PUBLISH packets per write()
FLOOD_MAX_BATCHES_AHEAD = 8  # ... and keep at most this many batches not yet answered by a PINGRESP
FLOOD_WRITE_HIGH_BYTES = 64 * 1024  # asyncio write-buffer limits of a flooding publisher
FLOOD_WRITE_LOW_BYTES = 16 * 1024
CONNECT_TIMEOUT_S = 10.0
IDLE_CONNECT_TIMEOUT_S = 60.0
IDLE_CONNECT_CONCURRENCY = 200
IDLE_WARMUP_CLIENTS = 10


# --------------------------------------------------------------------------------------------- encoding


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
    """Byte layout of the PUBLISH packets of one scenario: one topic, one QoS, one payload size.

    Knowing the exact size and first two bytes of every PUBLISH lets the receive side frame a whole
    chunk of them with a few C-level slice operations instead of a Python loop per packet.
    """

    def __init__(self, topic: str, qos: int, payload_size: int) -> None:
        topic_field = encode_string(topic)
        body_size = len(topic_field) + (2 if qos else 0) + payload_size
        remaining_length = encode_remaining_length(body_size)
        self.topic = topic
        self.qos = qos
        self.payload_size = payload_size
        # DUP = 0, RETAIN = 0; a broker forwards live messages with RETAIN = 0 [MQTT-3.3.1-9].
        self.first_byte = 0x30 | (qos << 1)
        self.prefix = bytes([self.first_byte]) + remaining_length + topic_field  # up to the packet id
        self.size = 1 + len(remaining_length) + body_size
        self.remaining_length_byte: int | None = remaining_length[0] if len(remaining_length) == 1 else None
        self.packet_id_offset = len(self.prefix)  # meaningful for QoS > 0 only
        self.payload_offset = len(self.prefix) + (2 if qos else 0)

    def packet(self, packet_id: int, payload: bytes) -> bytes:
        if self.qos:
            return self.prefix + packet_id.to_bytes(2, "big") + payload
        return self.prefix + payload


@functools.cache
def publish_table(topic: str, qos: int, payload: bytes) -> tuple[bytes, ...]:
    """Every PUBLISH packet of a QoS 1/2 stream pre-encoded, indexed by packet id (index 0 unused)."""
    layout = PublishLayout(topic, qos, len(payload))
    prefix = layout.prefix
    return (b"", *(prefix + pid.to_bytes(2, "big") + payload for pid in range(1, MAX_PACKET_ID + 1)))


def _fail_future(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # mark retrieved: nobody may be waiting for this one


# --------------------------------------------------------------------------------------------- clients


# One receive buffer for every connection. asyncio's plain Protocol path calls recv(256 KiB) and so
# allocates (and maps) a fresh 256 KiB object per read, ~20 us each here; a BufferedProtocol reads into
# this buffer instead. Sharing it is safe: asyncio calls get_buffer() and buffer_updated() back to back
# on its single thread, and buffer_updated() copies the bytes out before returning.
RECEIVE_BUFFER_BYTES = 256 * 1024
_receive_view = memoryview(bytearray(RECEIVE_BUFFER_BYTES))


class MqttClient(asyncio.BufferedProtocol):
    """Connection with a light incremental framer: it only splits packets and dispatches by type."""

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

    # asyncio callbacks
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
        index = self._fast_path(data, out)
        while index < size:
            if size - index < 2:
                break
            # Remaining length: variable byte integer, at most 4 bytes (§2.2.3).
            remaining = data[index + 1]
            body = index + 2
            if remaining & 0x80:
                remaining &= 0x7F
                shift = 7
                complete = False
                while body < size:
                    byte = data[body]
                    body += 1
                    remaining |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        complete = True
                        break
                    shift += 7
                    if shift > 21:
                        self._protocol_error("remaining length longer than 4 bytes")
                        return
                if not complete:
                    break
            end = body + remaining
            if end > size:
                break
            self._on_packet(data[index], data, body, end, out)
            index = end
        if index < size:
            self._pending = data[index:]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        self._after_receive()

    # hooks for the subclasses
    def _fast_path(self, data: bytes, out: list[bytes]) -> int:
        """Consume a run of uniform packets at the start of data in bulk; return the bytes consumed."""
        return 0

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
        print(f"loadgen: {self.client_id}: {reason}; closing", file=sys.stderr)
        if self.transport is not None:
            self.transport.abort()

    # coroutines for the scenario code
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

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


class Subscriber(MqttClient):
    """Counts PUBLISH packets, answers QoS 1 with PUBACK and QoS 2 with PUBREC, PUBREL with PUBCOMP."""

    def __init__(self, client_id: str, layout: PublishLayout | None, *, record_latency: bool = False,
                 clean_session: bool = True, keepalive_s: int = 60) -> None:
        super().__init__(client_id, clean_session=clean_session, keepalive_s=keepalive_s)
        self.received = 0
        self.duplicates_flagged = 0
        self.latencies_ns: list[int] = []
        self.latency_from_ns = 0  # samples sent before this perf_counter_ns are warm-up and not kept
        self._layout = layout
        self._record_latency = record_latency
        self._now_ns = 0
        # The fast path needs a fixed packet size and a one-byte remaining length.
        self._bulk = layout is not None and layout.remaining_length_byte is not None and not record_latency

    def data_received(self, data: bytes) -> None:
        if self._record_latency:
            self._now_ns = time.perf_counter_ns()
        super().data_received(data)

    def _fast_path(self, data: bytes, out: list[bytes]) -> int:
        layout = self._layout
        if not self._bulk or layout is None or not data or data[0] != layout.first_byte:
            return 0
        size = layout.size
        count = len(data) // size
        if count == 0:
            return 0
        end = count * size
        # If every packet-sized stride starts with the expected first byte and one-byte remaining
        # length, the chain of frames is exactly `count` PUBLISH packets of this layout.
        if (data[0:end:size].count(layout.first_byte) != count
                or data[1:end:size].count(cast(int, layout.remaining_length_byte)) != count):
            return 0
        self.received += count
        if layout.qos:
            acks = bytearray(4 * count)
            acks[0::4] = (PUBACK_HEADER[:1] if layout.qos == 1 else PUBREC_HEADER[:1]) * count
            acks[1::4] = b"\x02" * count
            offset = layout.packet_id_offset
            acks[2::4] = data[offset:end:size]
            acks[3::4] = data[offset + 1 : end : size]
            out.append(bytes(acks))
        return end

    def _on_packet(self, first: int, data: bytes, start: int, end: int, out: list[bytes]) -> None:
        packet_type = first >> 4
        if packet_type == TYPE_PUBLISH:
            self.received += 1
            if first & 0x08:
                self.duplicates_flagged += 1
            qos = (first >> 1) & 0x03
            position = start + 2 + ((data[start] << 8) | data[start + 1])
            if qos:
                # [MQTT-4.3.2-2] answer QoS 1 with PUBACK; [MQTT-4.3.3-2] answer QoS 2 with PUBREC.
                out.append((PUBACK_HEADER if qos == 1 else PUBREC_HEADER) + data[position : position + 2])
                position += 2
            if self._record_latency:
                sent_ns = int.from_bytes(data[position : position + TIMESTAMP_BYTES], "big")
                if sent_ns >= self.latency_from_ns:
                    self.latencies_ns.append(self._now_ns - sent_ns)
        elif packet_type == TYPE_PUBREL:
            out.append(PUBCOMP_HEADER + data[start : start + 2])  # [MQTT-4.3.3-2]
        else:
            super()._on_packet(first, data, start, end, out)


class FloodPublisher(MqttClient):
    """QoS 0 publisher that pipelines pre-encoded PUBLISH batches as fast as the broker takes them.

    QoS 0 has no acknowledgement, so without a bound the publisher would run megabytes ahead of the
    broker into the kernel's socket buffers, and that backlog would take many seconds to deliver after
    the measurement. Each batch therefore ends with a PINGREQ, which the broker must answer
    [MQTT-3.12.4-1]; a broker that handles a connection's packets in order (Mosquitto, edgebus) has
    read the whole batch when its PINGRESP arrives. At most `max_batches_ahead` batches are unanswered
    at a time, which still keeps the broker's input full.
    """

    def __init__(self, client_id: str, layout: PublishLayout, payload: bytes,
                 batch_packets: int = FLOOD_BATCH_PACKETS,
                 max_batches_ahead: int = FLOOD_MAX_BATCHES_AHEAD) -> None:
        super().__init__(client_id)
        self.sent = 0
        self._batch = layout.packet(0, payload) * batch_packets + PINGREQ_PACKET
        self._batch_packets = batch_packets
        self._max_batches_ahead = max_batches_ahead
        self._unanswered = 0
        self._running = False
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cast(asyncio.Transport, transport).set_write_buffer_limits(
            high=FLOOD_WRITE_HIGH_BYTES, low=FLOOD_WRITE_LOW_BYTES)

    def start(self) -> None:
        self._running = True
        self._pump()

    def stop(self) -> None:
        self._running = False

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def _on_packet(self, first: int, data: bytes, start: int, end: int, out: list[bytes]) -> None:
        if first >> 4 == TYPE_PINGRESP:
            self._unanswered -= 1
        else:
            super()._on_packet(first, data, start, end, out)

    def _after_receive(self) -> None:
        self._pump()

    def _pump(self) -> None:
        transport = self.transport
        if transport is None:
            return
        batch = self._batch
        # write() calls pause_writing() as soon as the buffer passes the high-water mark.
        while (self._running and not self._paused and self._unanswered < self._max_batches_ahead
               and not transport.is_closing()):
            transport.write(batch)
            self._unanswered += 1
            self.sent += self._batch_packets

    @property
    def drained(self) -> bool:
        """Every batch written so far has been read by the broker."""
        return self._unanswered <= 0 or self.transport is None or self.transport.is_closing()


class WindowPublisher(MqttClient):
    """QoS 1/2 publisher keeping at most `window` messages in flight, refilled on PUBACK / PUBCOMP.

    With `timestamped`, each payload starts with the send time (perf_counter_ns) and the caller paces
    the stream with publish(); otherwise the window refills itself after every received chunk.
    """

    def __init__(self, client_id: str, layout: PublishLayout, payload: bytes, *, window: int,
                 timestamped: bool = False, ack_latency: bool = False, limit: int | None = None) -> None:
        super().__init__(client_id)
        if layout.qos not in (1, 2):
            raise ValueError("WindowPublisher is for QoS 1 and 2")
        if ack_latency and (timestamped or layout.qos != 1):
            raise ValueError("ack latency is measured on self-refilling QoS 1 streams only")
        self.sent = 0
        self.completed = 0
        self.window_full_events = 0
        self._layout = layout
        self._qos = layout.qos
        self._window = window
        self._timestamped = timestamped
        self._limit = limit  # stop refilling after this many messages in all (None: no limit)
        self._payload_tail = payload[TIMESTAMP_BYTES:]
        self._table = () if timestamped else publish_table(layout.topic, layout.qos, payload)
        self._inflight: set[int] = set()
        self._next_packet_id = 1
        self._running = False
        # PUBACK latency: perf_counter_ns at which each packet id's PUBLISH was written, and the time the
        # current chunk was read. Samples are kept while `record_ack_latency` is set, for PUBLISHes
        # written at or after `ack_latency_from_ns`.
        self._ack_latency = ack_latency
        self._sent_at_ns = [0] * (MAX_PACKET_ID + 1) if ack_latency else []
        self._now_ns = 0
        self.record_ack_latency = False
        self.ack_latency_from_ns = 0
        self.ack_latencies_ns: list[int] = []

    @property
    def limit_reached(self) -> bool:
        return self._limit is not None and self.sent >= self._limit

    def data_received(self, data: bytes) -> None:
        if self._ack_latency:
            self._now_ns = time.perf_counter_ns()
        super().data_received(data)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def start(self) -> None:
        self._running = True
        if not self._timestamped:
            self._refill()

    def stop(self) -> None:
        self._running = False

    def publish(self, count: int) -> int:
        """Send up to `count` timestamped messages now (window permitting); return how many were sent."""
        count = min(count, self._window - len(self._inflight))
        if count <= 0 or not self.is_open:
            self.window_full_events += 1
            return 0
        prefix = self._layout.prefix
        tail = self._payload_tail
        packets = []
        for packet_id in self._take_packet_ids(count):
            stamp = time.perf_counter_ns().to_bytes(TIMESTAMP_BYTES, "big")
            packets.append(prefix + packet_id.to_bytes(2, "big") + stamp + tail)
        cast(asyncio.Transport, self.transport).write(b"".join(packets))
        self.sent += count
        return count

    def _take_packet_ids(self, count: int) -> list[int]:
        # A new PUBLISH needs a currently unused packet id [MQTT-2.3.1-2]: skip ids still in flight.
        inflight = self._inflight
        packet_id = self._next_packet_id
        taken: list[int] = []
        while len(taken) < count:
            if packet_id not in inflight:
                taken.append(packet_id)
            packet_id = packet_id + 1 if packet_id < MAX_PACKET_ID else 1
        self._next_packet_id = packet_id
        inflight.update(taken)
        return taken

    def _refill(self) -> None:
        if not self._running or self._timestamped:
            return
        free = self._window - len(self._inflight)
        if self._limit is not None:
            free = min(free, self._limit - self.sent)
        if free <= 0 or not self.is_open:
            return
        table = self._table
        packet_ids = self._take_packet_ids(free)
        packets = [table[packet_id] for packet_id in packet_ids]
        cast(asyncio.Transport, self.transport).write(b"".join(packets))
        if self._ack_latency:
            written_ns = time.perf_counter_ns()
            sent_at = self._sent_at_ns
            for packet_id in packet_ids:
                sent_at[packet_id] = written_ns
        self.sent += free

    def _after_receive(self) -> None:
        self._refill()

    def _fast_path(self, data: bytes, out: list[bytes]) -> int:
        # A chunk of whole PUBACKs (QoS 1): retire all their packet ids with one set operation.
        if self._qos != 1 or not data or data[0] != 0x40:
            return 0
        count = len(data) // 4
        end = 4 * count
        if count == 0 or data[0:end:4].count(0x40) != count or data[1:end:4].count(0x02) != count:
            return 0
        words = array.array("H", data[:end])
        if sys.byteorder == "little":
            words.byteswap()
        if self.record_ack_latency:
            self._record_acks(words[1::2])
        before = len(self._inflight)
        self._inflight.difference_update(words[1::2])
        self.completed += before - len(self._inflight)
        return end

    def _record_acks(self, packet_ids: Iterable[int]) -> None:
        """One PUBACK latency sample per packet id still in flight (a repeated PUBACK is not counted)."""
        now_ns = self._now_ns
        since_ns = self.ack_latency_from_ns
        sent_at = self._sent_at_ns
        inflight = self._inflight
        samples = self.ack_latencies_ns
        for packet_id in packet_ids:
            if packet_id in inflight:
                written_ns = sent_at[packet_id]
                if written_ns >= since_ns:
                    samples.append(now_ns - written_ns)

    def _retire(self, data: bytes, start: int) -> None:
        packet_id = (data[start] << 8) | data[start + 1]
        if self.record_ack_latency and self._qos == 1:
            self._record_acks((packet_id,))
        if packet_id in self._inflight:
            self._inflight.discard(packet_id)
            self.completed += 1

    def _on_packet(self, first: int, data: bytes, start: int, end: int, out: list[bytes]) -> None:
        packet_type = first >> 4
        if packet_type == TYPE_PUBACK and self._qos == 1:
            self._retire(data, start)
        elif packet_type == TYPE_PUBREC and self._qos == 2:
            out.append(PUBREL_HEADER + data[start : start + 2])  # [MQTT-4.3.3-1]
        elif packet_type == TYPE_PUBCOMP and self._qos == 2:
            self._retire(data, start)
        else:
            super()._on_packet(first, data, start, end, out)


class IdleClient(MqttClient):
    """A connection that subscribes once and then only holds its session open."""


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


# --------------------------------------------------------------------------------------------- scenarios


class BrokerProbe(Protocol):
    """What a scenario may read about the broker process (the harness provides it)."""

    def rss_kib(self) -> int: ...

    def cpu_seconds(self) -> float: ...

    def io_counters(self) -> dict[str, int]:
        """The broker's /proc/PID/io counters (write_bytes, rchar, wchar, ...)."""
        ...


@dataclass(frozen=True)
class ScenarioSettings:
    """Sizes and durations of one run; `quick()` and `self_check()` give the shorter variants."""

    duration_s: float = 10.0
    warmup_s: float = 1.0
    grace_s: float = 10.0
    quiet_s: float = 0.5  # QoS 0: delivery counted finished after this long without progress
    publishers: int = 4
    fanout_subscribers: int = 100
    payload_size: int = 64
    window: int = 20
    latency_rate_per_s: float = 2000.0
    latency_duration_s: float = 10.0
    latency_max_inflight: int = 1000
    idle_connections: int = 5000
    settle_timeout_s: float = 30.0
    # durable-q1-offline: most messages published while the subscriber is away (all publishers together,
    # warm-up included); below the brokers' queue caps (Mosquitto max_queued_messages and the
    # [queue] max_messages the harness gives edgebus in that scenario, both 100,000).
    offline_max_messages: int = 90_000

    @classmethod
    def quick(cls) -> ScenarioSettings:
        return cls(duration_s=2.0, warmup_s=0.5, grace_s=3.0, latency_duration_s=3.0, settle_timeout_s=10.0,
                   offline_max_messages=30_000)

    @classmethod
    def self_check(cls) -> ScenarioSettings:
        return cls(duration_s=1.0, warmup_s=0.2, grace_s=3.0, latency_duration_s=1.0, idle_connections=200,
                   fanout_subscribers=10, settle_timeout_s=3.0, offline_max_messages=10_000)


class CpuWindow:
    """CPU used by this process (and by the broker, if probed) over a wall-clock window."""

    def __init__(self, probe: BrokerProbe | None) -> None:
        self._probe = probe
        self._wall = time.perf_counter()
        self._own = self._own_cpu()
        self._broker = probe.cpu_seconds() if probe is not None else 0.0

    @staticmethod
    def _own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def finish(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self._wall
        own = (self._own_cpu() - self._own) / wall * 100.0
        broker = None
        if self._probe is not None:
            try:
                broker = (self._probe.cpu_seconds() - self._broker) / wall * 100.0
            except OSError:
                broker = None
        return {"loadgen_cpu_pct": round(own, 1),
                "broker_cpu_pct": None if broker is None else round(broker, 1),
                "window_s": round(wall, 3)}


async def wait_for_delivery(progress: Callable[[], int], target: int, *, grace_s: float, quiet_s: float,
                            busy: Callable[[], bool] = lambda: False) -> None:
    """Wait until progress() reaches target, or stalls for quiet_s while not busy(), or grace_s passes."""
    deadline = time.perf_counter() + grace_s
    last = progress()
    last_change = time.perf_counter()
    while True:
        now = time.perf_counter()
        value = progress()
        if value >= target or now >= deadline:
            return
        if value != last or busy():
            last = value
            last_change = now
        elif now - last_change >= quiet_s:
            return
        await asyncio.sleep(0.02)


def _payload(size: int) -> bytes:
    return PAYLOAD_FILL * size


async def run_fanin(host: str, port: int, qos: int, settings: ScenarioSettings,
                    probe: BrokerProbe | None = None) -> dict[str, Any]:
    """N publishers -> 1 subscriber on one topic, both sides at `qos`; msgs/s delivered and messages lost."""
    topic = f"bench/fanin/q{qos}"
    layout = PublishLayout(topic, qos, settings.payload_size)
    payload = _payload(settings.payload_size)
    clients: list[MqttClient] = []
    try:
        subscriber = await open_client(host, port, Subscriber(f"bench-fanin-q{qos}-sub", layout))
        clients.append(subscriber)
        await subscriber.subscribe(topic, qos)
        publishers: list[FloodPublisher | WindowPublisher] = []
        for index in range(settings.publishers):
            client_id = f"bench-fanin-q{qos}-pub{index}"
            publisher: FloodPublisher | WindowPublisher = (
                FloodPublisher(client_id, layout, payload) if qos == 0
                else WindowPublisher(client_id, layout, payload, window=settings.window))
            publishers.append(await open_client(host, port, publisher))
        clients.extend(publishers)

        for publisher in publishers:
            publisher.start()
        await asyncio.sleep(settings.warmup_s)
        cpu = CpuWindow(probe)
        received_before = subscriber.received
        accepted_before = sum(p.completed for p in publishers if isinstance(p, WindowPublisher))
        await asyncio.sleep(settings.duration_s)
        received_after = subscriber.received
        accepted_after = sum(p.completed for p in publishers if isinstance(p, WindowPublisher))
        usage = cpu.finish()
        for publisher in publishers:
            publisher.stop()
        sent = sum(publisher.sent for publisher in publishers)

        def busy() -> bool:
            # Unfinished QoS 1/2 flows or unsent bytes mean delivery may still be coming.
            return any(p.inflight if isinstance(p, WindowPublisher) else not p.drained for p in publishers)

        await wait_for_delivery(lambda: subscriber.received, sent, grace_s=settings.grace_s,
                                quiet_s=settings.quiet_s if qos == 0 else settings.grace_s, busy=busy)
        window_s = cast(float, usage["window_s"])
        return {
            "msgs_per_s": round((received_after - received_before) / window_s),
            # QoS 1/2: flows the broker completed with the publishers (PUBACK / PUBCOMP) per second, and
            # how many of those messages it still owed the subscriber when the window closed.
            "accepted_per_s": round((accepted_after - accepted_before) / window_s) if qos else None,
            "backlog_at_end": max(0, accepted_after - received_after) if qos else None,
            "sent": sent,
            "delivered": subscriber.received,
            "lost": max(0, sent - subscriber.received),
            "extra_deliveries": max(0, subscriber.received - sent),
            "unacknowledged": sum(p.inflight for p in publishers if isinstance(p, WindowPublisher)),
            "protocol_errors": sum(c.protocol_errors for c in clients),
            **usage,
        }
    finally:
        await close_all(clients)


async def run_fanout(host: str, port: int, settings: ScenarioSettings,
                     probe: BrokerProbe | None = None) -> dict[str, Any]:
    """1 QoS 0 publisher -> M subscribers of the same topic; deliveries/s = messages x subscribers."""
    topic = "bench/fanout"
    layout = PublishLayout(topic, 0, settings.payload_size)
    clients: list[MqttClient] = []
    try:
        async def subscribed(index: int) -> Subscriber:
            subscriber = await open_client(host, port, Subscriber(f"bench-fanout-sub{index}", layout))
            clients.append(subscriber)
            await subscriber.subscribe(topic, 0)
            return subscriber

        subscribers = list(await asyncio.gather(*(subscribed(i) for i in range(settings.fanout_subscribers))))
        payload = _payload(settings.payload_size)
        # Every message becomes M deliveries: keep fewer messages ahead so the backlog after the
        # measurement (M x what the broker has not read yet) drains within the grace period.
        publisher = await open_client(host, port, FloodPublisher("bench-fanout-pub", layout, payload,
                                                                 batch_packets=64, max_batches_ahead=8))
        clients.append(publisher)

        def delivered() -> int:
            return sum(s.received for s in subscribers)

        publisher.start()
        await asyncio.sleep(settings.warmup_s)
        cpu = CpuWindow(probe)
        before = delivered()
        await asyncio.sleep(settings.duration_s)
        after = delivered()
        usage = cpu.finish()
        publisher.stop()
        expected = publisher.sent * len(subscribers)
        await wait_for_delivery(delivered, expected, grace_s=settings.grace_s, quiet_s=settings.quiet_s,
                                busy=lambda: not publisher.drained)
        total = delivered()
        return {
            "deliveries_per_s": round((after - before) / cast(float, usage["window_s"])),
            "subscribers": len(subscribers),
            "sent": publisher.sent,
            "delivered": total,
            "lost": max(0, expected - total),
            "min_per_subscriber": min(s.received for s in subscribers),
            "max_per_subscriber": max(s.received for s in subscribers),
            "protocol_errors": sum(c.protocol_errors for c in clients),
            **usage,
        }
    finally:
        await close_all(clients)


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


async def run_latency(host: str, port: int, settings: ScenarioSettings,
                      probe: BrokerProbe | None = None) -> dict[str, Any]:
    """QoS 1 publisher at a fixed rate -> QoS 1 subscriber; end-to-end latency from payload timestamps."""
    topic = "bench/latency"
    layout = PublishLayout(topic, 1, settings.payload_size)
    clients: list[MqttClient] = []
    try:
        subscriber = Subscriber("bench-latency-sub", layout, record_latency=True)
        await open_client(host, port, subscriber)
        clients.append(subscriber)
        await subscriber.subscribe(topic, 1)
        publisher = await open_client(host, port, WindowPublisher(
            "bench-latency-pub", layout, _payload(settings.payload_size),
            window=settings.latency_max_inflight, timestamped=True))
        clients.append(publisher)
        publisher.start()

        rate = settings.latency_rate_per_s
        start_ns = time.perf_counter_ns()
        measure_from_ns = start_ns + int(settings.warmup_s * 1e9)
        end_ns = measure_from_ns + int(settings.latency_duration_s * 1e9)
        subscriber.latency_from_ns = measure_from_ns
        sent_in_window = 0
        scheduled = 0
        cpu: CpuWindow | None = None
        # Send whatever is due every ~0.5 ms (the event loop's timer granularity is ~1 ms), so the average
        # rate is exact and bursts are at most a couple of messages.
        while True:
            now_ns = time.perf_counter_ns()
            if now_ns >= end_ns:
                break
            if cpu is None and now_ns >= measure_from_ns:
                cpu = CpuWindow(probe)
            due = (now_ns - start_ns) * rate // 1_000_000_000 - scheduled
            if due > 0:
                scheduled += int(due)
                count = publisher.publish(int(due))
                if now_ns >= measure_from_ns:
                    sent_in_window += count
            await asyncio.sleep(0.0005)
        usage = (cpu or CpuWindow(probe)).finish()
        publisher.stop()
        await wait_for_delivery(lambda: subscriber.received, publisher.sent, grace_s=settings.grace_s,
                                quiet_s=settings.grace_s, busy=lambda: publisher.inflight > 0)
        samples = sorted(subscriber.latencies_ns)
        result: dict[str, Any] = {
            "samples": len(samples),
            "target_rate_per_s": rate,
            "sent_rate_per_s": round(sent_in_window / cast(float, usage["window_s"])),
            "sent": publisher.sent,
            "delivered": subscriber.received,
            "lost": max(0, publisher.sent - subscriber.received),
            "window_full_events": publisher.window_full_events,
            "protocol_errors": sum(c.protocol_errors for c in clients),
            **usage,
        }
        if samples:
            result |= {"p50_ms": round(percentile(samples, 0.50) / 1e6, 3),
                       "p99_ms": round(percentile(samples, 0.99) / 1e6, 3),
                       "max_ms": round(samples[-1] / 1e6, 3)}
        return result
    finally:
        await close_all(clients)


IO_FIELDS = ("write_bytes", "cancelled_write_bytes", "read_bytes", "wchar", "rchar", "syscw")


def io_delta(probe: BrokerProbe | None, before: dict[str, int] | None) -> dict[str, int] | None:
    """The broker's /proc/PID/io counters now minus `before` (None if there is no probe or no reading)."""
    if probe is None or before is None:
        return None
    try:
        after = probe.io_counters()
    except OSError:
        return None
    return {key: after[key] - before[key] for key in IO_FIELDS if key in after and key in before}


def io_reading(probe: BrokerProbe | None) -> dict[str, int] | None:
    if probe is None:
        return None
    try:
        return probe.io_counters()
    except OSError:
        return None


def per_message(delta: dict[str, int] | None, key: str, messages: int) -> float | None:
    if delta is None or key not in delta or messages <= 0:
        return None
    return round(delta[key] / messages, 1)


def ack_latency_figures(publishers: list[WindowPublisher]) -> dict[str, Any]:
    """p50 / p99 / max of the publishers' PUBACK latencies, in ms, over all of them."""
    samples = sorted(sample for publisher in publishers for sample in publisher.ack_latencies_ns)
    if not samples:
        return {"ack_samples": 0}
    return {"ack_samples": len(samples),
            "ack_p50_ms": round(percentile(samples, 0.50) / 1e6, 3),
            "ack_p99_ms": round(percentile(samples, 0.99) / 1e6, 3),
            "ack_max_ms": round(samples[-1] / 1e6, 3)}


async def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() >= deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


async def run_durable(host: str, port: int, settings: ScenarioSettings, probe: BrokerProbe | None = None,
                      *, offline: bool = False) -> dict[str, Any]:
    """N QoS 1 publishers -> 1 persistent-session subscriber (clean session 0, QoS 1); msgs/s, PUBACK
    latency at the publishers and the broker's disk writes per message (/proc/PID/io write_bytes).

    offline: the subscriber subscribes and disconnects first, so every message is queued for it (at most
    `offline_max_messages`); after the publishers are done it reconnects and drains the queue.
    """
    topic = "bench/durable/q1"
    subscriber_id = "bench-durable-sub"
    layout = PublishLayout(topic, 1, settings.payload_size)
    payload = _payload(settings.payload_size)
    clients: list[MqttClient] = []
    try:
        subscriber = await open_client(host, port, Subscriber(subscriber_id, layout, clean_session=False))
        clients.append(subscriber)
        await subscriber.subscribe(topic, 1)
        subscribers = [subscriber]
        if offline:
            await subscriber.disconnect()
            # The broker marks the session away once it has read the DISCONNECT; give it a moment so the
            # first messages are queued rather than sent to the closing connection.
            await asyncio.sleep(0.2)
        budget = settings.offline_max_messages // settings.publishers if offline else None
        publishers = [
            await open_client(host, port, WindowPublisher(
                f"bench-durable-pub{index}", layout, payload, window=settings.window, ack_latency=True,
                limit=budget))
            for index in range(settings.publishers)]
        clients.extend(publishers)

        def received() -> int:
            return sum(s.received for s in subscribers)

        def acked() -> int:
            return sum(p.completed for p in publishers)

        for publisher in publishers:
            publisher.start()
        if offline:
            # A fast broker could spend the whole budget in the warm-up: end it after a tenth at most.
            await wait_until(lambda: acked() >= settings.offline_max_messages // 10, settings.warmup_s,
                             interval_s=0.005)
        else:
            await asyncio.sleep(settings.warmup_s)
        io_before = io_reading(probe)
        cpu = CpuWindow(probe)
        window_start_ns = time.perf_counter_ns()
        for publisher in publishers:
            publisher.ack_latency_from_ns = window_start_ns
            publisher.record_ack_latency = True
        received_before, acked_before = received(), acked()
        if offline:
            # Until the budget is spent and acknowledged, or the measurement time is over.
            await wait_until(lambda: all(p.limit_reached and not p.inflight for p in publishers),
                             settings.duration_s, interval_s=0.005)
        else:
            await asyncio.sleep(settings.duration_s)
        received_after, acked_after = received(), acked()
        io_window = io_delta(probe, io_before)
        usage = cpu.finish()
        for publisher in publishers:
            publisher.record_ack_latency = False
            publisher.stop()
        sent = sum(publisher.sent for publisher in publishers)
        window_s = cast(float, usage["window_s"])
        accepted_in_window = acked_after - acked_before
        result: dict[str, Any] = {
            "msgs_per_s": None if offline else round((received_after - received_before) / window_s),
            "accepted_per_s": round(accepted_in_window / window_s),
            "accepted_in_window": accepted_in_window,
            "backlog_at_end": max(0, acked_after - received_after),
            **ack_latency_figures(publishers),
            "window_write_bytes": None if io_window is None else io_window.get("write_bytes"),
            # Disk bytes per message the broker acknowledged in the window.
            "bytes_per_msg": per_message(io_window, "write_bytes", accepted_in_window),
            "window_io": io_window,
        }

        if offline:
            # Every message acknowledged, then the subscriber comes back for its queue.
            await wait_until(lambda: not any(p.inflight for p in publishers), settings.grace_s)
            queued = acked()
            io_drain_before = io_reading(probe)
            drain_started = time.perf_counter()
            returning = Subscriber(subscriber_id, layout, clean_session=False)
            clients.append(returning)
            subscribers.append(returning)
            await open_client(host, port, returning)
            last_count, last_change = received(), time.perf_counter()
            # Until the whole queue is here, or nothing has arrived for a grace period.
            while received() < queued and time.perf_counter() - last_change < settings.grace_s:
                await asyncio.sleep(0.01)
                if received() != last_count:
                    last_count, last_change = received(), time.perf_counter()
            drain_s = (time.perf_counter() if received() >= queued else last_change) - drain_started
            io_drain = io_delta(probe, io_drain_before)
            io_total = io_delta(probe, io_before)
            drained = returning.received
            result |= {
                "queued": queued,
                "drained": drained,
                "drain_s": round(drain_s, 3),
                "drain_per_s": round(drained / drain_s) if drain_s > 0 else None,
                "drain_write_bytes": None if io_drain is None else io_drain.get("write_bytes"),
                # What a queued message costs in all: stored while away, then delivered and deleted.
                "total_bytes_per_msg": per_message(io_total, "write_bytes", queued),
                "drain_io": io_drain,
            }
        else:
            await wait_for_delivery(received, sent, grace_s=settings.grace_s, quiet_s=settings.grace_s,
                                    busy=lambda: any(p.inflight for p in publishers))
            # A broker may deliver before it acknowledges (edgebus forwards at once and sends PUBACK
            # after the commit): the last PUBACKs can still be on their way.
            await wait_until(lambda: not any(p.inflight for p in publishers), settings.grace_s)
        delivered = received()
        total_acked = acked()
        result |= {
            "sent": sent,
            "acked": total_acked,
            "delivered": delivered,
            # Acknowledged but never delivered: exact when nothing is left unacknowledged (then acked ==
            # sent); otherwise a lower bound, as an unacknowledged message may have been delivered.
            "lost": max(0, total_acked - delivered),
            "extra_deliveries": max(0, delivered - sent),
            "duplicates_flagged": sum(s.duplicates_flagged for s in subscribers),
            "unacknowledged": sum(p.inflight for p in publishers),
            "protocol_errors": sum(c.protocol_errors for c in clients),
            **usage,
        }
        return result
    finally:
        await close_all(clients)


async def settle_rss(probe: BrokerProbe, timeout_s: float, interval_s: float = 0.5,
                     samples: int = 4) -> tuple[int, bool]:
    """Sample the broker's RSS until `samples` readings in a row agree within max(64 KiB, 0.5 %)."""
    readings = [probe.rss_kib()]
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        await asyncio.sleep(interval_s)
        readings.append(probe.rss_kib())
        recent = readings[-samples:]
        if len(recent) == samples and max(recent) - min(recent) <= max(64, max(recent) // 200):
            return recent[-1], True
    return readings[-1], False


async def run_idle_rss(host: str, port: int, settings: ScenarioSettings,
                       probe: BrokerProbe | None = None) -> dict[str, Any]:
    """N idle persistent sessions, each subscribed to its own topic -> broker RSS growth per connection."""
    if probe is None:
        raise ValueError("idle-rss needs a broker probe to read the broker's RSS")
    clients: list[MqttClient] = []
    failures: list[str] = []
    try:
        # Warm-up: let the broker load whatever it loads lazily on its first connections, so the
        # baseline is a broker that has served clients, not a pristine one.
        for index in range(IDLE_WARMUP_CLIENTS):
            warm = await open_client(host, port, IdleClient(f"bench-idle-warmup{index}"))
            await warm.subscribe(f"bench/idle/warmup/{index}", 1)
            await warm.disconnect()
        before_kib, before_settled = await settle_rss(probe, settings.settle_timeout_s)

        gate = asyncio.Semaphore(IDLE_CONNECT_CONCURRENCY)

        async def connect_one(index: int) -> None:
            async with gate:
                client = IdleClient(f"bench-idle-{index:05d}", clean_session=False, keepalive_s=600)
                try:
                    await open_client(host, port, client, timeout_s=IDLE_CONNECT_TIMEOUT_S)
                    await client.subscribe(f"bench/idle/{index}", 1, timeout_s=IDLE_CONNECT_TIMEOUT_S)
                except (OSError, TimeoutError) as exc:
                    failures.append(f"{client.client_id}: {exc!r}")
                    if client.transport is not None:
                        client.transport.abort()
                else:
                    clients.append(client)

        cpu = CpuWindow(probe)
        started = time.perf_counter()
        await asyncio.gather(*(connect_one(i) for i in range(settings.idle_connections)))
        connect_s = time.perf_counter() - started
        usage = cpu.finish()
        after_kib, after_settled = await settle_rss(probe, settings.settle_timeout_s)
        connected = sum(1 for client in clients if client.is_open)
        result: dict[str, Any] = {
            "connections": connected,
            "requested": settings.idle_connections,
            "connect_failures": len(failures),
            "first_failure": failures[0] if failures else None,
            "connect_s": round(connect_s, 2),
            "rss_before_kib": before_kib,
            "rss_after_kib": after_kib,
            "settled": before_settled and after_settled,
            **usage,
        }
        if connected:
            result["kib_per_conn"] = round((after_kib - before_kib) / connected, 2)
        return result
    finally:
        await close_all(clients)


SCENARIO_NAMES = ("fanin-q0", "fanin-q1", "fanin-q2", "fanout-q0", "latency-q1", "idle-rss", "durable-q1",
                  "durable-q1-offline")


async def run_scenario(name: str, host: str, port: int, settings: ScenarioSettings,
                       probe: BrokerProbe | None = None) -> dict[str, Any]:
    """Run one named scenario against a broker already listening on host:port."""
    runners: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "fanin-q0": lambda: run_fanin(host, port, 0, settings, probe),
        "fanin-q1": lambda: run_fanin(host, port, 1, settings, probe),
        "fanin-q2": lambda: run_fanin(host, port, 2, settings, probe),
        "fanout-q0": lambda: run_fanout(host, port, settings, probe),
        "latency-q1": lambda: run_latency(host, port, settings, probe),
        "idle-rss": lambda: run_idle_rss(host, port, settings, probe),
        "durable-q1": lambda: run_durable(host, port, settings, probe),
        "durable-q1-offline": lambda: run_durable(host, port, settings, probe, offline=True),
    }
    if name not in runners:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_NAMES)}")
    # The cyclic GC would add pauses to the measurements; these scenarios create no reference cycles
    # worth collecting in their few seconds.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return await runners[name]()
    finally:
        if gc_was_enabled:
            gc.enable()


def scenario_result(name: str, host: str, port: int, settings: ScenarioSettings,
                    probe: BrokerProbe | None = None) -> dict[str, Any]:
    """Synchronous wrapper: a fresh event loop per scenario."""
    return asyncio.run(run_scenario(name, host, port, settings, probe))


# --------------------------------------------------------------------------------------------- process setup


def pin_to_core(core: int) -> bool:
    """Pin the calling process to one core if the machine has it; return whether it did."""
    if not hasattr(os, "sched_setaffinity") or core not in os.sched_getaffinity(0):
        return False
    os.sched_setaffinity(0, {core})
    return True


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# --------------------------------------------------------------------------------------------- self-check


class _CaptureTransport(asyncio.Transport):
    """A transport that records writes, to drive a client's receive path without a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        self.aborted = True


async def check_framer() -> list[str]:
    """Feed the same byte stream whole, byte by byte and in odd chunks; the replies must not differ."""
    problems: list[str] = []
    for qos in (0, 1, 2):
        layout = PublishLayout("bench/check", qos, 64)
        payload = _payload(64)
        stream = bytearray()
        for packet_id in range(1, 301):
            stream += layout.packet(packet_id, payload)
            if qos == 2 and packet_id % 7 == 0:
                stream += PUBREL_HEADER + (packet_id - 6).to_bytes(2, "big")
        long_topic = PublishLayout("t" * 300, qos, 10).packet(9, b"y" * 10)  # 2-byte remaining length
        stream += long_topic
        replies: list[bytes] = []
        counts: list[int] = []
        for chunk_size in (len(stream), 1, 7, layout.size, layout.size * 3 + 5):
            subscriber = Subscriber("check", layout)
            transport = _CaptureTransport()
            subscriber.connection_made(transport)
            del transport.written[:]
            for offset in range(0, len(stream), chunk_size):
                subscriber.data_received(bytes(stream[offset : offset + chunk_size]))
            replies.append(bytes(transport.written))
            counts.append(subscriber.received)
            if transport.aborted or subscriber.protocol_errors:
                problems.append(f"framer qos{qos}: chunk size {chunk_size} aborted the connection")
        if len(set(replies)) != 1 or set(counts) != {301}:
            problems.append(f"framer qos{qos}: counts {counts}, {len(set(replies))} distinct replies")
        expected_acks = 301 if qos else 0
        ack_bytes = len(replies[0]) - (4 * (300 // 7) if qos == 2 else 0)
        if ack_bytes != 4 * expected_acks:
            problems.append(f"framer qos{qos}: {ack_bytes // 4} acks for {expected_acks} messages")
        if qos == 1 and replies[0][:4] != b"\x40\x02\x00\x01":
            problems.append(f"framer qos1: first PUBACK is {replies[0][:4]!r}")
    if encode_remaining_length(321) != b"\xc1\x02" or encode_remaining_length(127) != b"\x7f":
        problems.append("remaining length encoder")
    return problems


def self_check(mosquitto: str | None = None) -> int:
    """Run every scenario against Mosquitto for ~1 s and check the loadgen's own bookkeeping."""
    from bench.run import MosquittoBroker  # imported here: the load generator itself needs no broker

    raise_nofile_limit()
    problems = asyncio.run(check_framer())
    print("framer:", "ok" if not problems else "; ".join(problems))
    settings = ScenarioSettings.self_check()
    expectations: dict[str, Callable[[dict[str, Any]], list[str]]] = {
        "fanin-q0": lambda r: [] if r["delivered"] > 0 else ["nothing delivered"],
        "fanin-q1": lambda r: [f"{k}={r[k]}" for k in ("lost", "extra_deliveries", "unacknowledged") if r[k]]
        + ([] if r["delivered"] > 0 else ["nothing delivered"]),
        "fanin-q2": lambda r: [f"{k}={r[k]}" for k in ("lost", "extra_deliveries", "unacknowledged") if r[k]]
        + ([] if r["delivered"] > 0 else ["nothing delivered"]),
        "fanout-q0": lambda r: [] if r["min_per_subscriber"] > 0 else ["a subscriber got nothing"],
        "latency-q1": lambda r: ([] if r["samples"] > 0 and r["lost"] == 0 else [f"samples={r['samples']}"])
        + ([] if abs(r["sent_rate_per_s"] - r["target_rate_per_s"]) < 0.1 * r["target_rate_per_s"]
           else [f"rate {r['sent_rate_per_s']}/s"]),
        "idle-rss": lambda r: [] if r["connections"] == r["requested"] and "kib_per_conn" in r
        else [f"connected {r['connections']}/{r['requested']}"],
        "durable-q1": lambda r: [f"{k}={r[k]}" for k in ("lost", "extra_deliveries", "unacknowledged")
                                 if r[k]]
        + ([] if r["delivered"] > 0 and r["ack_samples"] > 0 else ["nothing delivered or no ack samples"])
        + ([] if r["bytes_per_msg"] is not None else ["no /proc/PID/io reading"]),
        "durable-q1-offline": lambda r: [f"{k}={r[k]}" for k in ("lost", "extra_deliveries", "unacknowledged")
                                         if r[k]]
        + ([] if r["drained"] == r["queued"] > 0 else [f"drained {r['drained']} of {r['queued']}"]),
    }
    for name in SCENARIO_NAMES:
        broker = MosquittoBroker(executable=mosquitto)
        try:
            broker.start()
            result = scenario_result(name, HOST, broker.port, settings, broker)
        finally:
            broker.stop()
        found = expectations[name](result)
        if result.get("protocol_errors"):
            found.append(f"protocol_errors={result['protocol_errors']}")
        problems.extend(f"{name}: {p}" for p in found)
        summary = {k: v for k, v in result.items() if not isinstance(v, float) or k.endswith(("_ms", "_pct"))}
        print(f"{name}: {'ok' if not found else 'FAILED ' + ', '.join(found)}  {json.dumps(summary)}")
    print("self-check:", "PASSED" if not problems else f"FAILED ({len(problems)} problems)")
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--self-check", action="store_true",
                        help="run every scenario against a fresh Mosquitto for ~1 s and check the results")
    parser.add_argument("--mosquitto", help="mosquitto executable for --self-check")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, help="broker already listening here (without --self-check)")
    parser.add_argument("--scenario", choices=SCENARIO_NAMES, default="fanin-q0")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--core", type=int, default=1, help="pin the load generator to this core (-1: none)")
    args = parser.parse_args(argv)
    if args.core >= 0:
        pin_to_core(args.core)
    if args.self_check:
        return self_check(args.mosquitto)
    if args.port is None:
        parser.error("--port is required unless --self-check is given")
    raise_nofile_limit()
    settings = ScenarioSettings.quick() if args.quick else ScenarioSettings()
    if args.scenario == "idle-rss":
        parser.error("idle-rss needs the broker's pid; run it through python -m bench.run")
    result = scenario_result(args.scenario, args.host, args.port, settings)
    print(json.dumps({"scenario": args.scenario, "settings": asdict(replace(settings)), "result": result},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
