"""MQTT over WebSocket (MQTT 5.0 §6): the HTTP upgrade and binary frames, with wsproto (sans-IO)."""

from __future__ import annotations

import logging

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from edgebus.transport.stream import ClientStream

log = logging.getLogger("edgebus.transport")

#: The WebSocket subprotocol of MQTT [MQTT-6.0.0-3], [MQTT-6.0.0-4].
SUBPROTOCOL = "mqtt"
#: Bytes read from the transport at a time.
RECEIVE_BYTES = 8192


class WebSocketStream(trio.abc.Stream):
    """The MQTT byte stream inside a server-side WebSocket connection.

    The upgrade is answered on the first read, under the broker's CONNECT deadline: a request for another
    path gets 404, one that does not offer the "mqtt" subprotocol 400. Binary frames carry the MQTT bytes
    (a packet may span frames and a frame may hold several packets, §6); a text frame closes the
    connection [MQTT-6.0.0-1]. Pings are answered; a close frame is answered and reads as end of stream.
    """

    __slots__ = ("_buffer", "_closed", "_eof", "_path", "_send_lock", "_transport", "_ws", "remote")

    def __init__(self, transport: ClientStream, path: str = "/mqtt") -> None:
        self._transport = transport
        self._ws = WSConnection(ConnectionType.SERVER)
        self._path = path
        self._buffer = bytearray()
        self._eof = False
        self._closed = False
        # Pongs and close replies come from the reader while a writer task may be sending: frames are
        # made and sent under this lock, so they reach the socket whole and in order.
        self._send_lock = trio.StrictFIFOLock()
        self.remote = transport.remote

    @property
    def identity(self) -> str | None:
        return getattr(self._transport, "identity", None)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        limit = max_bytes or RECEIVE_BYTES
        while not self._buffer:
            if self._eof:
                await trio.lowlevel.checkpoint()
                return b""
            data = await self._transport.receive_some(RECEIVE_BYTES)
            try:
                self._ws.receive_data(bytes(data) if data else None)
                for event in self._ws.events():
                    await self._on_event(event)
            except (RemoteProtocolError, LocalProtocolError) as error:
                log.debug("%s: WebSocket error: %s", self.remote, error)
                self._eof = True
            if not data:
                self._eof = True
        chunk = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        return chunk

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, BytesMessage):
            self._buffer += event.data
        elif isinstance(event, Request):
            await self._answer_upgrade(event)
        elif isinstance(event, Ping):
            await self._send_event(event.response())
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                await self._send_event(event.response())
            self._eof = True
        elif isinstance(event, TextMessage):
            # MQTT packets travel in binary frames only [MQTT-6.0.0-1].
            await self._send_event(
                CloseConnection(code=CloseReason.UNSUPPORTED_DATA, reason="binary frames only")
            )
            self._eof = True

    async def _answer_upgrade(self, request: Request) -> None:
        if request.target.split("?", 1)[0] != self._path:
            await self._reject(404, "no MQTT endpoint here")
        elif SUBPROTOCOL not in request.subprotocols:
            # The client MUST offer "mqtt" [MQTT-6.0.0-3].
            await self._reject(400, 'the WebSocket subprotocol "mqtt" is required')
        else:
            # The server selects "mqtt" [MQTT-6.0.0-4].
            await self._send_event(AcceptConnection(subprotocol=SUBPROTOCOL))

    async def _reject(self, status: int, text: str) -> None:
        body = text.encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await self._send_event(RejectConnection(status_code=status, headers=headers, has_body=True))
        await self._send_event(RejectData(data=body, body_finished=True))
        self._eof = True

    async def _send_event(self, event: Event) -> None:
        async with self._send_lock:
            data = self._ws.send(event)
            if data:
                await self._transport.send_all(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._ws.state is not ConnectionState.OPEN:
            raise trio.BrokenResourceError("WebSocket not open")
        await self._send_event(BytesMessage(data=bytes(data)))

    def send_nowait(self, data: bytes) -> int:
        """Frames are made under the send lock: always leave the bytes to a writer task."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        return 0

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    def force_close(self) -> None:
        self._closed = True
        self._transport.force_close()

    async def close_write(self) -> None:
        """A close frame (1000, normal closure: RFC 6455 §7.4.1), then the transport's FIN: after the last
        MQTT bytes the client sees a WebSocket that closed cleanly, not an abnormal closure (1006).
        Reads go on until the client closes too; its close frame reads as end of stream."""
        if self._ws.state is ConnectionState.OPEN:
            try:
                await self._send_event(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
            except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
                pass  # the client is gone already
        await self._transport.close_write()

    async def aclose(self) -> None:
        self.force_close()
        await trio.lowlevel.checkpoint()
