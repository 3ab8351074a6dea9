"""The NATS JetStream sink: records become JetStream publishes de-duplicated on ``Nats-Msg-Id``; in rules
read a durable pull consumer. nats-py runs on an asyncio loop thread of its own (`edgebus.bridge.aio`).

Exactly once, the JetStream way:

* every record carries ``Nats-Msg-Id: <gateway>:<epoch>:<seq>``; a record sent twice within the stream's
  duplicate window is stored once (the ack then says ``"duplicate": true``: a success, it is in the log);
* after a reconnect or a gateway crash, `resume` reads the log itself: for each out rule's subject filter
  it fetches the stream's last message on that filter (``STREAM.MSG.GET`` with ``last_by_subj``; wildcard
  filters are accepted there, tested on nats-server 2.15) and takes the highest of our sequences in their
  ids; the runner skips up to it. When the last message on a filter belongs to another gateway or store
  epoch, that filter says nothing about us: de-duplication then rests on the stream's duplicate window
  alone (a warning says so, once).

NATS has no retain flag: a retained record is published with the header ``Edgebus-Retain: 1`` and an inbound
message with that header is delivered as retained.

Inbound messages are at least once upstream of the gateway: a message is acknowledged only after ``deliver``
returned; an ack lost with the link means a redelivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
import nats.js.api
import nats.js.errors
import trio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from edgebus.bridge.aio import CrossingTimeout, LoopThread, open_loop_thread
from edgebus.bridge.rules import TopicMap, topic_to_subject
from edgebus.bridge.sink import (
    MESSAGE_ID_HEADER,
    BridgeIdentity,
    Deliver,
    InboundMessage,
    Record,
    SinkBase,
    SinkError,
    Uplink,
)
from edgebus.client_trio import unwrap_single_error
from edgebus.config import BridgeConfig, BridgeTopic
from edgebus.transport.tls import client_context

__all__ = [
    "CONTENT_TYPE_HEADER",
    "RETAIN_HEADER",
    "JetStreamSink",
    "consumer_name",
    "out_filters",
    "subject_matches",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: NATS has no retain flag; this header carries it both ways ("1" = retained).
RETAIN_HEADER = "Edgebus-Retain"
CONTENT_TYPE_HEADER = "Content-Type"
#: Most messages one pull request asks for (one crossing delivers them, one crossing acknowledges them).
FETCH_BATCH = 100
#: Seconds one pull request lingers on the server when nothing is there (then the next one goes out).
FETCH_WAIT_S = 1.0
#: Seconds the durable consumer waits for an ack before it redelivers; a fetched batch is delivered well
#: within it. After a link dies mid-batch the unacknowledged messages come back after this long.
ACK_WAIT_S = 30.0
#: Seconds closing a connection may take (it waits for nothing the runner needs).
CLOSE_TIMEOUT_S = 2.0
#: Seconds a crossing may take beyond the bound enforced on the asyncio side (which reports the real cause).
CROSSING_MARGIN_S = 1.0
#: JetStream API error code for "no message found" (STREAM.MSG.GET on an empty filter).
NO_MESSAGE_FOUND = 10037

_CONSUMER_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def out_filters(topic_map: TopicMap) -> list[str]:
    """The subject filters that cover every subject the out rules can publish to (in rule order, no repeats).

    An out rule sends ``local_prefix + T`` to ``remote_prefix + subject(T)`` for each T matching its pattern.
    MQTT's '#' also matches the parent level ('a/#' matches 'a') where NATS's '>' needs one more token, so a
    pattern ending in '/#' yields the parent's filter too."""
    found: list[str] = []
    for rule in topic_map.out_rules:
        prefix = _remote_prefix(rule)
        patterns = [rule.pattern]
        if rule.pattern.endswith("/#"):
            patterns.append(rule.pattern[:-2])
        for pattern in patterns:
            subject_filter = prefix + _filter_to_subject(pattern)
            if subject_filter not in found:
                found.append(subject_filter)
    return found


def _remote_prefix(rule: BridgeTopic) -> str:
    """The rule's remote prefix as whole subject tokens (as TopicMap does for NATS)."""
    prefix = rule.remote_prefix
    if prefix and not prefix.endswith("."):
        prefix += "."
    return prefix


def _filter_to_subject(topic_filter: str) -> str:
    """An MQTT topic filter as a NATS subject filter: '+' -> '*', '#' -> '>', other levels as in a topic."""
    wildcards = {"+": "*", "#": ">"}
    return ".".join(wildcards.get(level) or topic_to_subject(level) for level in topic_filter.split("/"))


def subject_matches(subject_filter: str, subject: str) -> bool:
    """NATS subject matching: '*' is one token, a final '>' one or more."""
    wanted = subject_filter.split(".")
    tokens = subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)


def consumer_name(client_id: str) -> str:
    """A durable consumer name for ``client_id``: names cannot hold '.', '*', '>', whitespace or path
    separators, so anything but letters, digits, '_' and '-' becomes '_', and a changed name gets a short
    hash of the original so two client ids cannot share one consumer."""
    safe = _CONSUMER_NAME_UNSAFE.sub("_", client_id)
    if safe != client_id or not safe:
        safe = f"{safe}_{hashlib.sha256(client_id.encode()).hexdigest()[:8]}"
    return safe


def _server_url(host: str, port: int, tls: bool) -> str:
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


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass(frozen=True, slots=True)
class _Fetched:
    """One message of a pull batch, as the trio side sees it; ``handle`` is used on the asyncio side only."""

    subject: str
    data: bytes
    retain: bool
    handle: Msg


@dataclass(frozen=True, slots=True)
class _LastMessage:
    """The last message of the stream on one filter (None fields: no message there)."""

    subject_filter: str
    stream_seq: int | None
    message_id: str | None


class _NatsLink:
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
        self._die(_describe(error))

    async def _on_disconnected(self) -> None:
        cause = self.client.last_error  # e.g. the stale connection nats-py found without calling error_cb
        self._die(f"disconnected: {_describe(cause)}" if cause is not None else "disconnected")

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
                log.debug("closing the JetStream link to %s: %s", self.url, _describe(error))
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
                    headers = {MESSAGE_ID_HEADER: record.message_id}
                    if record.content_type:
                        headers[CONTENT_TYPE_HEADER] = record.content_type
                    if record.retain:
                        headers[RETAIN_HEADER] = "1"
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
            raise SinkError(f"publishing to {self.url} failed: {_describe(error)} ({state})") from None
        finally:
            for token in tokens:
                self._acks.pop(token, None)
        for record, reply in zip(records, replies, strict=True):
            _check_ack(record, reply, stream)

    # -- resume: what the log already holds --------------------------------------------------------------

    async def last_messages(self, stream: str, subject_filters: Sequence[str]) -> list[_LastMessage]:
        manager = self.client.jsm(timeout=self._bridge.ack_timeout)
        found: list[_LastMessage] = []
        for subject_filter in subject_filters:
            try:
                raw = await self._guarded(manager.get_msg(stream, subject=subject_filter), "reading the log")
            except nats.js.errors.NotFoundError as error:
                if error.err_code != NO_MESSAGE_FOUND:
                    where = f"the last message of {stream!r} on {subject_filter!r}"
                    raise SinkError(f"reading {where}: {error}") from None
                found.append(_LastMessage(subject_filter, None, None))
                continue
            found.append(_LastMessage(subject_filter, raw.seq, _header(raw.headers, MESSAGE_ID_HEADER)))
        return found

    # -- in: pull a batch, settle it after delivery ------------------------------------------------------

    async def fetch(self, batch: int, wait_s: float) -> list[_Fetched]:
        if self.dead is not None:
            raise SinkError(f"the connection to {self.url} is dead ({self.dead})")
        try:
            messages: list[Msg] = await self._pull.fetch(batch, timeout=wait_s)
        except nats.errors.TimeoutError:  # nothing arrived within wait_s
            if self.dead is not None:
                raise SinkError(f"the connection to {self.url} is dead ({self.dead})") from None
            return []
        return [_Fetched(msg.subject, msg.data, _retained(msg), msg) for msg in messages]

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


class _JetStreamUplink:
    """The `Uplink` of one connection: trio side; each call crosses to the asyncio loop once."""

    def __init__(self, sink: JetStreamSink, loop_thread: LoopThread, link: _NatsLink) -> None:
        self._sink = sink
        self._loop = loop_thread
        self._link = link

    async def resume(self, first_seq: int, last_seq: int) -> int:
        sink = self._sink
        filters = out_filters(sink.topic_map)
        if not filters:
            return 0
        timeout = sink.bridge.ack_timeout + CROSSING_MARGIN_S
        lasts = await _cross(
            "resume", self._loop, self._link.last_messages, sink.bridge.stream, filters, timeout=timeout
        )
        highest = 0
        for last in lasts:
            if last.stream_seq is None:
                continue  # nothing on this filter yet
            seq = sink.identity.seq_of(last.message_id)
            if seq == 0:
                sink.warn_foreign_last(last)
            highest = max(highest, seq)
        if first_seq <= last_seq and highest > last_seq:
            log.warning(
                "JetStream stream %r holds our seq %d beyond the outbox's last %d (a restored backup?)",
                sink.bridge.stream,
                highest,
                last_seq,
            )
        return highest

    async def send(self, records: Sequence[Record]) -> None:
        if not records:
            return
        bridge = self._sink.bridge
        await _cross(
            "send",
            self._loop,
            self._link.publish_batch,
            list(records),
            bridge.stream,
            bridge.ack_timeout,
            timeout=bridge.ack_timeout + CROSSING_MARGIN_S,
        )


async def _cross(
    what: str,
    loop_thread: LoopThread,
    async_fn: Callable[..., Coroutine[Any, Any, T]],
    *args: Any,
    timeout: float,  # noqa: ASYNC109 - LoopThread.run's bound, which also cancels the asyncio side
) -> T:
    """One crossing; every failure but a cancellation becomes SinkError."""
    try:
        return await loop_thread.run(async_fn, *args, timeout=timeout)
    except SinkError:
        raise
    except CrossingTimeout:
        raise SinkError(f"JetStream {what}: no answer within {timeout:g} s") from None
    except Exception as error:
        # Cancelled on the trio side while the asyncio side failed on its way out (nats-py turns its
        # CancelledError into ConnectionClosedError on a closed connection): the cancellation wins.
        await trio.lowlevel.checkpoint_if_cancelled()
        raise SinkError(f"JetStream {what} failed: {_describe(error)}") from error


class JetStreamSink(SinkBase):
    """An upstream NATS JetStream stream (`edgebus.bridge.sink.Sink`)."""

    def __init__(
        self,
        bridge: BridgeConfig,
        identity: BridgeIdentity,
        topic_map: TopicMap,
        deliver: Deliver,
        client_id: str,
    ) -> None:
        super().__init__(bridge, identity, topic_map, deliver, client_id)
        self.consumer = consumer_name(client_id)
        self._in_filters: list[tuple[str, int]] = []
        for subject_filter, qos in topic_map.remote_filters():
            if all(subject_filter != known for known, _ in self._in_filters):
                self._in_filters.append((subject_filter, qos))
        self._warned_foreign = False

    def connect(self) -> AbstractAsyncContextManager[Uplink]:
        return self._open()

    def warn_foreign_last(self, last: _LastMessage) -> None:
        if self._warned_foreign:
            return
        self._warned_foreign = True
        log.warning(
            "the last message of JetStream stream %r on %r (stream seq %s, id %r) is not from gateway %r "
            "store epoch %r: resuming cannot tell what the log holds there; de-duplication relies on the "
            "stream's duplicate window",
            self.bridge.stream,
            last.subject_filter,
            last.stream_seq,
            last.message_id,
            self.identity.gateway_id,
            self.identity.epoch,
        )

    def _consumer_config(self) -> nats.js.api.ConsumerConfig | None:
        if not self._in_filters:
            return None
        filters = [subject_filter for subject_filter, _ in self._in_filters]
        return nats.js.api.ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer,
            # Everything the stream holds on the in subjects; later, everything since the last ack.
            deliver_policy=nats.js.api.DeliverPolicy.ALL,
            ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )

    async def _connect_link(self, loop_thread: LoopThread) -> _NatsLink:
        """Try the addresses in turn, each within connect_timeout."""
        bridge = self.bridge
        failures: list[str] = []
        consumer = self._consumer_config()
        for address in bridge.addresses:
            url = _server_url(address.host, address.port, bridge.tls)
            link = _NatsLink(bridge, self.client_id)
            opened = False
            try:
                await _cross(
                    "connect",
                    loop_thread,
                    link.open,
                    url,
                    bridge.stream,
                    consumer,
                    timeout=bridge.connect_timeout + CROSSING_MARGIN_S,
                )
                opened = True
                return link
            except SinkError as error:
                if isinstance(error.__cause__, TimeoutError):
                    failures.append(f"{url}: no answer within {bridge.connect_timeout:g} s")
                else:
                    failures.append(f"{url}: {error}")
                log.info("JetStream bridge %r: %s", bridge.name, failures[-1])
            finally:
                if not opened:
                    await _close_link(loop_thread, link)
        raise SinkError("could not connect to JetStream: " + "; ".join(failures))

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Uplink]:
        async with open_loop_thread(f"jetstream-{self.client_id}") as loop_thread:
            link = await self._connect_link(loop_thread)
            try:
                with unwrap_single_error():  # the body's send and the receiver may see the same dead link
                    async with trio.open_nursery() as nursery:
                        if self._in_filters:
                            nursery.start_soon(self._receive, loop_thread, link)
                        try:
                            yield _JetStreamUplink(self, loop_thread, link)
                        finally:
                            nursery.cancel_scope.cancel()
            finally:
                await _close_link(loop_thread, link)

    # -- in rules ----------------------------------------------------------------------------------------

    def _inbound_qos(self, subject: str) -> int | None:
        """The QoS of the first in rule whose filter matches ``subject``; None when none does (or the subject
        does not map back to a local topic)."""
        for subject_filter, qos in self._in_filters:
            if subject_matches(subject_filter, subject):
                return qos if self.topic_map.route_in(subject) is not None else None
        return None

    async def _receive(self, loop_thread: LoopThread, link: _NatsLink) -> None:
        """Pull batches; deliver each message in order; ack the batch once every message was delivered."""
        fetch_timeout = FETCH_WAIT_S + self.bridge.ack_timeout + CROSSING_MARGIN_S
        settle_timeout = self.bridge.ack_timeout + CROSSING_MARGIN_S
        while True:
            batch = await _cross(
                "fetch", loop_thread, link.fetch, FETCH_BATCH, FETCH_WAIT_S, timeout=fetch_timeout
            )
            delivered = 0
            try:
                for fetched in batch:
                    qos = self._inbound_qos(fetched.subject)
                    if qos is None:
                        log.debug("bridge %r: no in rule for %r; dropped", self.bridge.name, fetched.subject)
                    else:
                        message = InboundMessage(fetched.subject, fetched.data, qos, fetched.retain)
                        await self.deliver(message)
                    delivered += 1
            except BaseException:
                # Delivery failed or the link closes: ack what was delivered, hand the rest back at once.
                if not batch:
                    raise
                handles = [fetched.handle for fetched in batch]
                with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
                    scope.shield = True
                    try:
                        await loop_thread.run(
                            link.settle, handles[:delivered], handles[delivered:], timeout=CLOSE_TIMEOUT_S
                        )
                    except Exception as error:
                        log.debug("settling a JetStream batch on close: %s", _describe(error))
                raise
            if batch:
                handles = [fetched.handle for fetched in batch]
                await _cross("ack", loop_thread, link.settle, handles, [], timeout=settle_timeout)


async def _close_link(loop_thread: LoopThread, link: _NatsLink) -> None:
    """Close the connection, bounded in time, even in a cancelled scope."""
    with trio.move_on_after(CLOSE_TIMEOUT_S + CROSSING_MARGIN_S) as scope:
        scope.shield = True
        try:
            await loop_thread.run(link.close, timeout=CLOSE_TIMEOUT_S + CROSSING_MARGIN_S / 2)
        except Exception as error:
            log.debug("closing a JetStream link: %s", _describe(error))
