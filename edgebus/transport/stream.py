"""The one interface of a connection's byte stream, for every transport and either side of a connection."""

from __future__ import annotations

from typing import Protocol


class ClientStream(Protocol):
    """What the broker and the MQTT client need of a connection's stream (TcpStream, TlsStream,
    TlsClientStream, WebSocketStream): trio's Stream reads and writes, a write that never waits, and a
    synchronous close that takes effect at once (tasks waiting on it wake up with an error)."""

    remote: str

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    def send_nowait(self, data: bytes) -> int: ...

    def force_close(self) -> None: ...

    async def close_write(self) -> None:
        """End what this side sends, after what was written (a WebSocket close frame, then the TCP FIN),
        and keep the read side open: a closing server reads on and discards, so the kernel does not
        answer the peer's late packets with RST (which discards what the peer has not read yet, e.g. a
        DISCONNECT's reason code)."""
        ...


def peer_identity(stream: ClientStream) -> str | None:
    """The user name a client certificate gives on a listener with use_identity_as_username ("" if the
    client sent none); None on every other listener."""
    identity: str | None = getattr(stream, "identity", None)
    return identity
