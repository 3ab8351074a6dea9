"""A trio driver for the sans-IO MQTT client (edgebus.core.client): TCP or TLS, a reader and a writer."""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from edgebus.core.client import (
    ClientState,
    Connected,
    ConnectionRefused,
    Event,
    MqttClient,
    PublishAcknowledged,
    SubscribeAcknowledged,
    UnsubscribeAcknowledged,
)
from edgebus.nursery import unwrap_single_error
from edgebus.protocol.packets import NO_PROPERTIES, ConnAck, Properties, Subscription
from edgebus.transport.stream import ClientStream
from edgebus.transport.tcp import TcpStream
from edgebus.transport.tls import TlsClientStream

#: Bytes asked of the socket per read.
RECEIVE_BYTES = 65536
#: Bytes of output a writer takes from the client per write (large batches, bounded memory).
WRITE_BATCH_BYTES = 256 * 1024

__all__ = [
    "ConnectError",
    "MqttConnection",
    "connect_mqtt",
    "open_mqtt_connection",
    "open_tcp_socket",
    "unwrap_single_error",
]


class ConnectError(Exception):
    """The connection could not be made: TCP refused or timed out, or CONNACK refused it."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


async def open_tcp_socket(host: str, port: int) -> TcpStream:
    """A connected non-blocking TCP socket as a lean stream (no happy-eyeballs: thousands of devices
    connect at once and each needs one address). OSError when the connection fails."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(errno.EHOSTUNREACH, f"cannot resolve {host}")
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            raise OSError(code, os.strerror(code))
        if code:
            await trio.lowlevel.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
    except BaseException:
        sock.close()
        raise
    return TcpStream(sock, f"{host}:{port}")


class MqttConnection:
    """One network connection of an `MqttClient`, driven by a reader and a writer task.

    Events go to ``on_event`` (synchronous, called from the connection's tasks) as they are decoded;
    `subscribe` and `publish_and_wait` also let a task await their acknowledgement. The connection
    ends on EOF, an error, a DISCONNECT either way, or a keep-alive timeout; `closed` is set then and
    `client.connection_lost()` has been called.
    """

    def __init__(
        self,
        stream: ClientStream,
        client: MqttClient,
        on_event: Callable[[Event], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        self.client = client
        self.on_event = on_event
        self.on_close = on_close
        self.closed = trio.Event()
        self.connected = trio.Event()
        self.settled = trio.Event()  # CONNACK came, or the connection closed
        self.connack: ConnAck | None = None
        self.close_reason = ""
        self._scopes: list[trio.CancelScope] = []
        self._wakeup = trio.Event()
        self._waiters: dict[object, trio.Event] = {}
        self._results: dict[object, Event] = {}

    # --- the application's side ---------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties = NO_PROPERTIES,
        token: object = None,
    ) -> bool:
        """Queue a message (see `MqttClient.publish`) and wake the writer; no wait."""
        accepted = self.client.publish(topic, payload, qos, retain, properties, token)
        if accepted:
            self._wakeup.set()
        return accepted

    async def publish_and_wait(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: Properties = NO_PROPERTIES,
    ) -> PublishAcknowledged | None:
        """Publish and wait for the end of its QoS 1/2 flow (None for QoS 0: nothing to wait for)."""
        token = object()
        if not self.publish(topic, payload, qos, retain, properties, token):
            raise ConnectError("message refused: not connected or queue full")
        if qos == 0:
            return None
        result = await self._wait_for(token)
        assert isinstance(result, PublishAcknowledged)
        return result

    async def subscribe(
        self, subscriptions: Sequence[Subscription], properties: Properties = NO_PROPERTIES
    ) -> SubscribeAcknowledged:
        """Subscribe and wait for the SUBACK."""
        pid = self.client.subscribe(subscriptions, properties)
        self._wakeup.set()
        result = await self._wait_for(("sub", pid))
        assert isinstance(result, SubscribeAcknowledged)
        return result

    async def unsubscribe(self, topic_filters: Sequence[str]) -> UnsubscribeAcknowledged:
        pid = self.client.unsubscribe(topic_filters)
        self._wakeup.set()
        result = await self._wait_for(("unsub", pid))
        assert isinstance(result, UnsubscribeAcknowledged)
        return result

    def disconnect(self, reason_code: int = 0, properties: Properties = NO_PROPERTIES) -> None:
        """Queue DISCONNECT; the writer closes the connection once it is written."""
        self.client.disconnect(reason_code, properties)
        self._wakeup.set()

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection now, without DISCONNECT (as a crash or a cut cable would)."""
        self._close(reason)

    async def wait_closed(self) -> None:
        await self.closed.wait()

    def wake(self) -> None:
        """Tell the writer there may be output (after calling the client directly)."""
        self._wakeup.set()

    async def _wait_for(self, key: object) -> Event:
        if key in self._results:
            return self._results.pop(key)
        event = self._waiters[key] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._closed_cancels(scope)
                await event.wait()
        finally:
            self._waiters.pop(key, None)
        if key not in self._results:
            raise ConnectError(f"connection closed ({self.close_reason}) before the acknowledgement")
        return self._results.pop(key)

    def _closed_cancels(self, scope: trio.CancelScope) -> None:
        if self.closed.is_set():
            scope.cancel()
        else:
            self._scopes.append(scope)

    # --- the tasks ----------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand every pending event to the application; wake the writer if there is output."""
        client = self.client
        now = trio.current_time()
        while (event := client.next_event(now)) is not None:
            key: object = None
            if isinstance(event, PublishAcknowledged):
                key = event.token
            elif isinstance(event, SubscribeAcknowledged):
                key = ("sub", event.suback.packet_id)
            elif isinstance(event, UnsubscribeAcknowledged):
                key = ("unsub", event.unsuback.packet_id)
            elif isinstance(event, Connected):
                self.connack = event.connack
                self.connected.set()
                self.settled.set()
                self._wakeup.set()  # the writer now has a keep-alive deadline to wait for
            elif isinstance(event, ConnectionRefused):
                self.connack = event.connack
                self.settled.set()
            if key is not None and key in self._waiters:
                self._results[key] = event
                self._waiters[key].set()
            if self.on_event is not None:
                self.on_event(event)
        if client.state is ClientState.CLOSING or client.has_output():
            self._wakeup.set()

    async def _reader(self) -> None:
        stream = self.stream
        client = self.client
        try:
            while not self.closed.is_set():
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    self._close("connection closed by the broker")
                    return
                client.receive_data(data if isinstance(data, bytes) else bytes(data))
                self._dispatch()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._close(f"connection lost: {exc}")

    async def _writer(self) -> None:
        client = self.client
        stream = self.stream
        try:
            while not self.closed.is_set():
                deadline = client.next_deadline()
                with trio.move_on_at(deadline if deadline is not None else float("inf")):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                self._dispatch()  # a keep-alive timeout surfaces here
                now = trio.current_time()
                chunks = client.take_output(now)
                if chunks:
                    await stream.send_all(b"".join(chunks))
                if client.state is ClientState.CLOSING and not client.has_output():
                    self._close("closed by the client")
                    return
                if client.has_output():
                    self._wakeup.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._close(f"connection lost: {exc}")

    def _close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.stream.force_close()
        self.client.connection_lost()
        self.closed.set()
        self.settled.set()
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()
        self._wakeup.set()
        if self.on_close is not None:
            self.on_close()


async def connect_mqtt(
    nursery: trio.Nursery,
    host: str,
    port: int,
    client: MqttClient,
    *,
    on_event: Callable[[Event], None] | None = None,
    on_close: Callable[[], None] | None = None,
    connect_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> MqttConnection:
    """Open TCP (and TLS with ``ssl_context``, checking the certificate against ``server_hostname``,
    by default ``host``), send CONNECT and wait for CONNACK; the connection's reader and writer run in
    ``nursery`` until it closes (``on_close`` is called then). ConnectError when TCP or the TLS
    handshake fails, CONNACK refuses, or no CONNACK comes in time."""
    try:
        with trio.fail_after(connect_timeout):
            tcp = await open_tcp_socket(host, port)
    except trio.TooSlowError:
        raise ConnectError(f"TCP connect to {host}:{port} timed out") from None
    except OSError as exc:
        raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    stream: TcpStream | TlsClientStream = tcp
    if ssl_context is not None:
        stream = TlsClientStream(tcp, ssl_context, server_hostname or host)
        try:
            with trio.fail_after(connect_timeout):
                await stream.do_handshake()
        except trio.TooSlowError:
            raise ConnectError(f"TLS handshake with {host}:{port} timed out") from None
        except (trio.BrokenResourceError, OSError) as exc:
            cause = exc.__cause__ or exc
            raise ConnectError(f"TLS handshake with {host}:{port} failed: {cause}") from None
        finally:
            if not stream.handshake_done:
                stream.force_close()
    connection = MqttConnection(stream, client, on_event, on_close)
    client.connect(trio.current_time())
    nursery.start_soon(connection._reader)
    nursery.start_soon(connection._writer)
    connection.wake()
    try:
        with trio.move_on_after(connect_timeout) as timeout:
            await connection.settled.wait()
    finally:
        if not connection.connected.is_set():
            connection.abort("no CONNACK")
    if connection.connected.is_set():
        return connection
    connack = connection.connack
    if timeout.cancelled_caught:
        raise ConnectError(f"no CONNACK from {host}:{port} within {connect_timeout:g} s")
    if connack is not None and connack.reason_code:
        raise ConnectError(
            f"{host}:{port} refused the connection: reason code 0x{connack.reason_code:02X}",
            connack.reason_code,
        )
    raise ConnectError(f"{host}:{port} closed the connection before CONNACK ({connection.close_reason})")


@asynccontextmanager
async def open_mqtt_connection(
    host: str,
    port: int,
    client: MqttClient,
    *,
    on_event: Callable[[Event], None] | None = None,
    connect_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[MqttConnection]:
    """`connect_mqtt` with a nursery of its own: yields the running connection; on exit a DISCONNECT
    is sent (if still connected) and the connection closed. A connection lost in the body does not
    raise: the body sees ``connection.closed`` set."""
    with unwrap_single_error():
        async with trio.open_nursery() as nursery:
            connection = await connect_mqtt(
                nursery,
                host,
                port,
                client,
                on_event=on_event,
                connect_timeout=connect_timeout,
                ssl_context=ssl_context,
            )
            try:
                yield connection
            finally:
                if not connection.closed.is_set() and client.state is ClientState.CONNECTED:
                    connection.disconnect()
                    with trio.move_on_after(1.0) as flush:
                        flush.shield = True
                        await connection.closed.wait()
                connection.abort("closed")
                nursery.cancel_scope.cancel()
