"""The asyncio side of the RabbitMQ stream sink: one stream-protocol connection (rstream's low-level
`Client`) with one named publisher on it, each method run on the sink's asyncio loop thread
(`edgebus.bridge.aio`): declaring the publisher, asking the stream for its last publishing id, publishing
a batch and awaiting its confirms.

rstream's `Producer` is not used: it reconnects and re-declares on its own, retries, buffers and numbers
messages itself. The runner owns all of that here; the `Client` underneath is the protocol and no more.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from rstream import schema
from rstream.client import Client
from rstream.exceptions import ServerError, StreamNotAvailable
from rstream.utils import OnClosedErrorInfo

from edgebus.bridge.aio import describe
from edgebus.bridge.amqp_message import encode_message
from edgebus.bridge.sink import Record, SinkError
from edgebus.config import BridgeConfig
from edgebus.transport.tls import client_context

__all__ = ["CLOSE_TIMEOUT_S", "StreamLink", "describe"]

# The sink's logger: one name to configure for the RabbitMQ bridge.
log = logging.getLogger("edgebus.bridge.rabbitmq_stream")

T = TypeVar("T")

#: Seconds closing a connection may take (it waits for nothing the runner needs).
CLOSE_TIMEOUT_S = 2.0
#: The publisher's id on its connection (one publisher per connection).
PUBLISHER_ID = 0
#: Most bytes of messages in one Publish frame: below the 1 MiB frame_max asked for, and the server's.
FRAME_BYTES = 512 * 1024
FRAME_MAX = 1024 * 1024
#: Seconds between asking again for a stream the node has not brought back yet (StreamNotAvailable).
STREAM_RETRY_S = 0.02
#: User and password when the bridge sets none: RabbitMQ's default user (accepted from loopback only).
DEFAULT_USER = "guest"




class StreamLink:
    """One stream-protocol connection and its publisher. Every method runs on the asyncio loop thread."""

    def __init__(self, bridge: BridgeConfig, client_id: str, producer_name: str) -> None:
        self._bridge = bridge
        self._client_id = client_id
        self.producer_name = producer_name
        self.client: Client | None = None
        self.address = ""
        self.dead: str | None = None  # why the connection is unusable; None while it works
        self._dead_event: asyncio.Event | None = None
        self._opened = False
        self._closing = False
        # The batch in flight: publishing ids not confirmed yet, the first refused one, and its end.
        self._unconfirmed: set[int] = set()
        self._refused: tuple[int, int] | None = None
        self._settled: asyncio.Event | None = None

    # -- connection state --------------------------------------------------------------------------------

    def _die(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
            if self._opened and not self._closing:
                log.warning("RabbitMQ stream link to %s is dead: %s", self.address, reason)
        if self._dead_event is not None:
            self._dead_event.set()

    async def _on_closed(self, info: OnClosedErrorInfo) -> None:
        self._die(f"connection closed ({info.reason})")

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
                work.add_done_callback(_collect)
        if work.done() and not work.cancelled():
            return work.result()
        raise SinkError(f"{what}: the connection to {self.address} died ({self.dead})")

    def _require_client(self) -> Client:
        if self.dead is not None or self.client is None or not self.client.is_connection_alive():
            self._die(self.dead or "connection closed")
            raise SinkError(f"the connection to {self.address} is dead ({self.dead})")
        return self.client

    # -- opening and closing -----------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        bridge = self._bridge
        if not bridge.tls:
            return None
        return client_context(bridge.cafile, bridge.certfile, bridge.keyfile)

    async def open(self, host: str, port: int, stream: str) -> None:
        """Connect and authenticate, check the stream, declare the named publisher."""
        bridge = self._bridge
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._dead_event = asyncio.Event()
        client = Client(
            host,
            port,
            ssl_context=self._tls_context(),
            frame_max=FRAME_MAX,
            heartbeat=max(1, round(bridge.keep_alive)),
            connection_name=self._client_id,
            connection_closed_handler=self._on_closed,
        )
        # rstream reports a lost connection only for one that has streams; told before it starts, it does so
        # during the handshake too (a connection reset there fails its requests only after 10 s otherwise).
        client.add_stream(stream)
        client.add_handler(schema.PublishConfirm, self._on_confirm, name="edgebus")
        client.add_handler(schema.PublishError, self._on_publish_error, name="edgebus")
        self.client = client
        self._stream_unavailable = False
        try:
            async with asyncio.timeout(bridge.connect_timeout):
                await self._open(client, stream)
        except TimeoutError:
            if self._stream_unavailable:
                raise SinkError(
                    f"RabbitMQ stream {stream!r} not available within {bridge.connect_timeout:g} s"
                ) from None
            raise
        self._opened = True

    async def _open(self, client: Client, stream: str) -> None:
        bridge = self._bridge
        try:
            await client.start()
            await self._guarded(
                client.authenticate(
                    "/",
                    bridge.username or DEFAULT_USER,
                    bridge.password if bridge.username else DEFAULT_USER,
                ),
                "connecting",
            )
        except (OSError, ConnectionError) as error:
            raise SinkError(f"unreachable: {describe(error)}") from None
        except ServerError as error:
            raise SinkError(f"refused: {describe(error)}") from None
        # A node that just restarted accepts connections before its streams are back (measured 0.3-0.5 s
        # of StreamNotAvailable after the port answered): ask again on this connection every
        # STREAM_RETRY_S, within connect_timeout, rather than close it and wait for the backoff.
        while True:
            try:
                if not await self._guarded(client.stream_exists(stream), "checking the stream"):
                    raise SinkError(f"RabbitMQ stream {stream!r} does not exist")
                await self._guarded(
                    client.declare_publisher(stream, self.producer_name, PUBLISHER_ID),
                    "declaring the publisher",
                )
                return
            except StreamNotAvailable:
                self._stream_unavailable = True
                await asyncio.sleep(STREAM_RETRY_S)
            except ServerError as error:
                # Not the stream's leader node, no write permission ...
                raise SinkError(
                    f"stream {stream!r}, publisher {self.producer_name!r}: {describe(error)}"
                ) from None

    async def close(self) -> None:
        self._closing = True
        self._die("closed")
        client = self.client
        if client is None:
            return
        try:
            # A polite close asks the server and waits for its answer: only on a link that was opened and is
            # not known dead. rstream's close() also sleeps 0.2 s whatever happened, which on a failed open
            # (refused, stream not available yet) delayed each next try, hence the catch-up, by that much.
            if self._opened and client.is_connection_alive():
                await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_S)
        except (TimeoutError, OSError, ServerError) as error:
            log.debug("closing the RabbitMQ stream link to %s: %s", self.address, describe(error))
        finally:
            # rstream leaves the socket open when the connection broke (or the close was cut short), and its
            # listener task running: abort and cancel them. rstream offers no public way to.
            writer = getattr(getattr(client, "_conn", None), "_writer", None)
            if writer is not None and not writer.transport.is_closing():
                writer.transport.abort()
            for task in list(getattr(client, "_tasks", {}).values()):
                task.cancel()

    # -- resume: what the stream already holds from this publisher ---------------------------------------

    async def last_publishing_id(self, stream: str) -> int:
        """The highest publishing id the stream stored for our producer name (0: none)."""
        client = self._require_client()
        return await self._guarded(
            client.query_publisher_sequence(stream, self.producer_name), "querying the publisher sequence"
        )

    # -- out: publish a batch, await its confirms together -----------------------------------------------

    def _on_confirm(self, frame: schema.PublishConfirm) -> None:
        if frame.publisher_id != PUBLISHER_ID:
            return
        self._unconfirmed.difference_update(frame.publishing_ids)
        if not self._unconfirmed and self._settled is not None:
            self._settled.set()

    def _on_publish_error(self, frame: schema.PublishError) -> None:
        if frame.publisher_id != PUBLISHER_ID or not frame.errors:
            return
        first = min(frame.errors, key=lambda error: error.publishing_id)
        if self._refused is None or first.publishing_id < self._refused[0]:
            self._refused = (first.publishing_id, first.response_code)
        if self._settled is not None:
            self._settled.set()

    async def publish_batch(self, records: Sequence[Record], ack_timeout: float) -> None:
        """Publish every record with publishing id = its outbox seq; await every confirm (a record the stream
        already held for this producer name is confirmed without being stored again)."""
        client = self._require_client()
        self._unconfirmed = {record.seq for record in records}
        self._refused = None
        self._settled = asyncio.Event()
        now_ms = time.time() * 1000
        frames: list[list[schema.Message]] = [[]]
        frame_bytes = 0
        for record in records:
            expires_at_ms = (
                None if record.expiry_interval is None else int(now_ms + record.expiry_interval * 1000)
            )
            data = encode_message(
                record.message_id,
                record.topic,
                record.payload,
                record.retain,
                record.content_type,
                expires_at_ms,
                record.user_properties,
            )
            if frame_bytes + len(data) > FRAME_BYTES and frames[-1]:
                frames.append([])
                frame_bytes = 0
            frames[-1].append(schema.Message(publishing_id=record.seq, filter_value=None, data=data))
            frame_bytes += len(data) + 12
        try:
            async with asyncio.timeout(ack_timeout):
                for messages in frames:
                    await client.send_publish_frame(
                        schema.Publish(publisher_id=PUBLISHER_ID, messages=messages)
                    )
                    if not client.is_connection_alive():  # rstream swallows the write's socket error
                        self._die("the connection broke while publishing")
                await self._guarded(self._settled.wait(), "waiting for RabbitMQ confirms")
        except TimeoutError:
            confirmed = len(records) - len(self._unconfirmed)
            first = min(self._unconfirmed, default=None)
            raise SinkError(
                f"{confirmed} of {len(records)} RabbitMQ stream confirms within {ack_timeout:g} s "
                f"(first unconfirmed: seq {first})"
            ) from None
        if self._refused is not None:
            seq, code = self._refused
            raise SinkError(f"RabbitMQ refused record seq {seq}: response code {code}", rejected_seq=seq)


def _collect(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
