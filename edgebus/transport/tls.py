"""TLS over edgebus's TcpStream through the standard ssl module and trio.SSLStream."""

from __future__ import annotations

import ssl

import trio

from edgebus.transport.tcp import TcpStream


class TlsStream(trio.abc.Stream):
    """A server-side TLS connection. The handshake runs on the first read, under the broker's CONNECT
    deadline. ``identity`` is the client certificate's Common Name when the listener takes the user name
    from it ("" without a certificate), else None."""

    __slots__ = ("_closed", "_ssl", "_transport", "_use_identity", "remote")

    def __init__(self, transport: TcpStream, context: ssl.SSLContext, use_identity: bool = False) -> None:
        self._transport = transport
        self._ssl = trio.SSLStream(transport, context, server_side=True)
        self._use_identity = use_identity
        self._closed = False
        self.remote = transport.remote

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        return await self._ssl.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        await self._ssl.send_all(data)

    def send_nowait(self, data: bytes) -> int:
        """Encrypting needs the SSL object's send lock: always leave the bytes to a writer task."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        return 0

    async def wait_send_all_might_not_block(self) -> None:
        await self._ssl.wait_send_all_might_not_block()

    def force_close(self) -> None:
        """Close without a close_notify: the broker only cuts connections it has finished with."""
        self._closed = True
        self._transport.force_close()

    async def aclose(self) -> None:
        self.force_close()
        await trio.lowlevel.checkpoint()

    @property
    def identity(self) -> str | None:
        if not self._use_identity:
            return None
        try:
            certificate = self._ssl.getpeercert()
        except (ValueError, AttributeError):  # handshake not done
            return ""
        if not certificate:
            return ""
        for rdn in certificate.get("subject", ()):
            for key, value in rdn:
                if key == "commonName" and isinstance(value, str):
                    return value
        return ""
