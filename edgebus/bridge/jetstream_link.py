"""The asyncio side of the JetStream sink: one nats-py connection and what hangs on it, each method run on the
sink's asyncio loop thread (`edgebus.bridge.aio`): publishing a batch and awaiting its acks, reading the
stream's last message on each filter, pulling the in rules' batches and settling them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from edgebus.bridge.aio import describe
from edgebus.bridge.jetstream_headers import CONTENT_TYPE_HEADER, RETAIN_HEADER, record_headers
from edgebus.bridge.sink import MESSAGE_ID_HEADER, Record, SinkError
from edgebus.config import BridgeConfig
from edgebus.transport.tls import client_context

__all__ = [
    "CLOSE_TIMEOUT_S",
    "CONTENT_TYPE_HEADER",
    "RETAIN_HEADER",
    "Fetched",
    "LastMessage",
    "NatsLink",
    "describe",
    "server_url",
]

# The sink's logger: one name to configure for the JetStream bridge.
log = logging.getLogger("edgebus.bridge.jetstream")

T = TypeVar("T")

#: Seconds closing a connection may take (it waits for nothing the runner needs).
CLOSE_TIMEOUT_S = 2.0
#: JetStream API error code for "no message found" (STREAM.MSG.GET on an empty filter).
NO_MESSAGE_FOUND = 10037


def server_url(host: str, port: int, tls: bool) -> str:
    """The nats-py URL of one address (an IPv6 host in brackets)."""
    scheme = "tls" if tls else "nats"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _header(headers: dict[str, str] | None, name: str) -> str | None:
    """A header value, the name compared without case (nats-py keeps the case it received)."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, found in headers.items():
        if key.lower() == lowered:
            return found
    return None




@dataclass(frozen=True, slots=True)
class Fetched:
    """One message of a pull batch, as the trio side sees it; ``handle`` is used on the asyncio side only."""

    subject: str
    data: bytes
    retain: bool
    handle: Msg


@dataclass(frozen=True, slots=True)
class LastMessage:
    """The last message of the stream on one filter (None fields: no message there)."""

    subject_filter: str
    stream_seq: int | None
    message_id: str | None


class NatsLink:
    """One nats-py connection and what hangs on it. Every method runs on the asyncio loop thread."""

    def __init__(self, bridge: BridgeConfig, client_id: str) -> None:
        self._bridge = bridge
        self._client_id = client_id
        self.client = NatsClient()
        self.url = ""
        self.dead: str | None = None  # why the connection is unusable; None while it works
        self._dead_event: asyncio.Event | None = None
        self._connect_called = False
        self._opened = False
        self._closing = False
        self._inbox = ""
        self._acks: dict[int, asyncio.Future[Msg]] = {}
        self._next_token = 0
        self._pull: Any = None  # nats-py's JetStreamContext.PullSubscription, set when there are in rules

    # -- connection state --------------------------------------------------------------------------------

    def _die(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
            if self._opened and not self._closing:
                log.warning("JetStream link to %s is dead: %s", self.url, reason)
        if self._dead_event is not None:
            self._dead_event.set()

    async def _on_error(self, error: Exception) -> None:
        # With allow_reconnect=False every error nats-py reports ends or breaks this connection (EOF, stale
        # connection, a server -ERR, a slow consumer on our ack inbox): fail what waits on it at once.
        self._die(describe(error))

    async def _on_disconnected(self) -> None:
        cause = self.client.last_error  # e.g. the stale connection nats-py found without calling error_cb
        self._die(f"disconnected: {describe(cause)}" if cause is not None else "disconnected")

    async def _guarded(self, awaitable: Awaitable[T], what: str) -> T:
        """``await awaitable``, but raise SinkError as soon as the connection is known dead."""
        assert self._dead_event is not None
        work = asyncio.ensure_future(awaitable)
        death = asyncio.ensure_future(self._dead_event.wait())
        try:
            await asyncio.wait({work, death}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            death.cancel()
            if not work.done():
                work.cancel()
                work.add_done_callback(_collect)  # its outcome is of no interest now: do not log it as lost
        if work.done() and not work.cancelled():
            return work.result()
        raise SinkError(f"{what}: the connection to {self.url} died ({self.dead})")

    # -- opening and closing -----------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        bridge = self._bridge
        if not bridge.tls:
            return None
        return client_context(bridge.cafile, bridge.certfile, bridge.keyfile)

    async def open(self, url: str, stream: str, consumer: nats.js.api.ConsumerConfig | None) -> None:
        """Connect to one server, check the stream, subscribe the ack inbox, set up the in rules' consumer."""
        bridge = self._bridge
        self.url = url
        self._dead_event = asyncio.Event()
        options: dict[str, Any] = {
            "servers": [url],
            "name": self._client_id,
            "allow_reconnect": False,  # the runner owns reconnects (and their backoff)
            # Even so nats-py retries a refused first connect until max_reconnect_attempts, waiting
            # reconnect_time_wait between tries: one quick retry, then NoServersError.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0,
            "connect_timeout": bridge.connect_timeout,
            "ping_interval": bridge.keep_alive,
            "max_outstanding_pings": 2,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
        }
        if bridge.username:
            options["user"] = bridge.username
        if bridge.password:
            options["password"] = bridge.password
        tls = self._tls_context()
        if tls is not None:
            options["tls"] = tls
        async with asyncio.timeout(bridge.connect_timeout):
            self._connect_called = True
            try:
                await self.client.connect(**options)
            except nats.errors.NoServersError:
                raise SinkError(f"unreachable: {self.dead or 'no server'}") from None
            manager = self.client.jsm(timeout=bridge.connect_timeout)
            try:
                await manager.stream_info(stream)
            except nats.js.errors.NotFoundError:
                raise SinkError(f"JetStream stream {stream!r} does not exist") from None
            except nats.js.errors.ServiceUnavailableError:
                raise SinkError(f"JetStream is not enabled there (stream {stream!r})") from None
            self._inbox = self.client.new_inbox()
            await self.client.subscribe(self._inbox + ".*", cb=self._on_ack)
            if consumer is not None:
                await manager.add_consumer(stream, consumer)  # creates it, or updates its filters
                self._pull = await self.client.jetstream().pull_subscribe_bind(
                    durable=consumer.durable_name, stream=stream
                )
            await self.client.flush(timeout=max(1, round(bridge.connect_timeout)))
        self._opened = True

    async def close(self) -> None:
        self._closing = True
        self._die("closed")
        if not self._connect_called:
            return
        if not self.client.is_closed:
            try:
                await asyncio.wait_for(self.client.close(), CLOSE_TIMEOUT_S)
            except (TimeoutError, OSError, nats.errors.Error) as error:
                log.debug("closing the JetStream link to %s: %s", self.url, describe(error))
        # nats-py's close flushes what it buffered and waits for it to drain: a server that stopped reading
        # (SIGSTOP, a dead route) keeps it waiting, and when that is cut short the socket is left open.
        # Abort it: nats-py offers no public way to.
        writer = getattr(getattr(self.client, "_transport", None), "_io_writer", None)
        if writer is not None and not writer.transport.is_closing():
            writer.transport.abort()

    # -- out: publish a batch, await its acks together ---------------------------------------------------

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject[len(self._inbox) + 1 :]
        future = self._acks.pop(int(token), None) if token.isdigit() else None
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish_batch(self, records: Sequence[Record], stream: str, ack_timeout: float) -> None:
        """Publish every record (pipelined, each with its own reply subject on our inbox); await all acks."""
        if self.dead is not None:
            raise SinkError(f"the connection to {self.url} is dead ({self.dead})")
        loop = asyncio.get_running_loop()
        tokens: list[int] = []
        waiting: list[asyncio.Future[Msg]] = []
        try:
            async with asyncio.timeout(ack_timeout):
                for record in records:
                    self._next_token += 1
                    token = self._next_token
                    future: asyncio.Future[Msg] = loop.create_future()
                    self._acks[token] = future
                    tokens.append(token)
                    waiting.append(future)
                    headers = record_headers(record)
                    # nats-py's flusher task writes what publish buffers; no PING round trip needed: the acks
                    # are the confirmation, and a PONG would not come from a dead server either.
                    await self.client.publish(
                        record.topic, record.payload, reply=f"{self._inbox}.{token}", headers=headers
                    )
                replies = await self._guarded(asyncio.gather(*waiting), "waiting for JetStream acks")
        except TimeoutError:
            acked = sum(1 for future in waiting if future.done())
            raise SinkError(
                f"{acked} of {len(records)} JetStream acks within {ack_timeout:g} s "
                f"(first unacknowledged: seq {records[acked].seq if acked < len(records) else '?'})"
            ) from None
        except nats.errors.Error as error:
            state = self.dead or "link up"
            raise SinkError(f"publishing to {self.url} failed: {describe(error)} ({state})") from None
        finally:
            for token in tokens:
                self._acks.pop(token, None)
        for record, reply in zip(records, replies, strict=True):
            _check_ack(record, reply, stream)

    # -- resume: what the log already holds --------------------------------------------------------------

    async def last_messages(self, stream: str, subject_filters: Sequence[str]) -> list[LastMessage]:
        manager = self.client.jsm(timeout=self._bridge.ack_timeout)
        found: list[LastMessage] = []
        for subject_filter in subject_filters:
            try:
                raw = await self._guarded(manager.get_msg(stream, subject=subject_filter), "reading the log")
            except nats.js.errors.NotFoundError as error:
                if error.err_code != NO_MESSAGE_FOUND:
                    where = f"the last message of {stream!r} on {subject_filter!r}"
                    raise SinkError(f"reading {where}: {error}") from None
                found.append(LastMessage(subject_filter, None, None))
                continue
            found.append(LastMessage(subject_filter, raw.seq, _header(raw.headers, MESSAGE_ID_HEADER)))
        return found

    # -- in: pull a batch, settle it after delivery ------------------------------------------------------

    async def fetch(self, batch: int, wait_s: float) -> list[Fetched]:
        if self.dead is not None:
            raise SinkError(f"the connection to {self.url} is dead ({self.dead})")
        try:
            messages: list[Msg] = await self._pull.fetch(batch, timeout=wait_s)
        except nats.errors.TimeoutError:  # nothing arrived within wait_s
            if self.dead is not None:
                raise SinkError(f"the connection to {self.url} is dead ({self.dead})") from None
            return []
        return [Fetched(msg.subject, msg.data, _retained(msg), msg) for msg in messages]

    async def settle(self, acked: Sequence[Msg], rejected: Sequence[Msg]) -> None:
        """Ack the delivered messages, nak the others (redelivered at once); wait till the server has them."""
        for msg in acked:
            await msg.ack()
        for msg in rejected:
            await msg.nak()
        flushed = self.client.flush(timeout=max(1, round(self._bridge.ack_timeout)))
        await self._guarded(flushed, "acknowledging")


def _collect(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _retained(msg: Msg) -> bool:
    return _header(msg.headers, RETAIN_HEADER) == "1"


def _check_ack(record: Record, reply: Msg, stream: str) -> None:
    """A JetStream publish ack: ``{"stream": .., "seq": ..}`` (perhaps ``"duplicate": true``) or an error."""
    where = f"record seq {record.seq} ({record.message_id}) to {record.topic!r}"
    status = _header(reply.headers, "Status")
    if status:
        description: str = _header(reply.headers, "Description") or ""
        if status == "503":
            description = description or "no responders: no stream takes this subject"
        raise SinkError(f"{where}: status {status} {description.strip()}", rejected_seq=record.seq)
    try:
        body = json.loads(reply.data)
    except ValueError:
        raise SinkError(f"{where}: unreadable ack {reply.data[:100]!r}", rejected_seq=record.seq) from None
    if not isinstance(body, dict):
        raise SinkError(f"{where}: unreadable ack {reply.data[:100]!r}", rejected_seq=record.seq)
    error: object = body.get("error")
    if error is not None:
        if isinstance(error, dict):
            reason, code = error.get("description"), error.get("err_code")
            raise SinkError(f"{where}: refused: {reason} (err_code {code})", rejected_seq=record.seq)
        raise SinkError(f"{where}: refused: {error}", rejected_seq=record.seq)
    if "seq" not in body:
        raise SinkError(f"{where}: ack without a sequence: {body}", rejected_seq=record.seq)
    if body.get("stream") != stream:
        # Stored, but where resume() does not look: exactly-once cannot hold; the subjects are misconfigured.
        other = body.get("stream")
        raise SinkError(
            f"{where}: stored in stream {other!r}, not the bridge's stream {stream!r}", record.seq
        )
