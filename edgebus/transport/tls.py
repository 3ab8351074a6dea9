"""TLS through the standard ssl module: the server and client contexts, and streams over TcpStream."""

from __future__ import annotations

import ssl

import trio

from edgebus.transport.tcp import TcpStream


def server_context(
    certfile: str,
    keyfile: str,
    *,
    cafile: str = "",
    require_certificate: bool = False,
    min_tls_version: str = "1.2",
) -> ssl.SSLContext:
    """The context of a TLS server (a tls or wss listener): TLS ``min_tls_version`` ("1.2" or "1.3") or
    later. With ``cafile``, client certificates are verified against it: required with
    ``require_certificate``, else optional. Raises OSError / ssl.SSLError (unreadable files) or
    ValueError (require_certificate without cafile)."""
    if require_certificate and not cafile:
        raise ValueError("require_certificate needs cafile (the CA that signs client certificates)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if min_tls_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if cafile:
        context.load_verify_locations(cafile)
        context.verify_mode = ssl.CERT_REQUIRED if require_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(cafile: str = "", certfile: str = "", keyfile: str = "") -> ssl.SSLContext:
    """The context of a TLS client (a bridge's upstream connection, MQTT or NATS): verifies the server's
    chain against ``cafile`` ('' = the system's CAs) and its host name (check_hostname), and presents
    ``certfile`` (key in ``keyfile``, or in certfile when '') for mutual TLS. Raises OSError /
    ssl.SSLError (unreadable files) or ValueError."""
    context = ssl.create_default_context(cafile=cafile or None)
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context


class _TlsOverTcp(trio.abc.Stream):
    """TLS (trio.SSLStream) over the lean TcpStream, for either side: a ClientStream
    (edgebus.transport.stream). `force_close` closes the TCP socket at once, without a close_notify: it
    serves for aborts and for ends whose MQTT close is written."""

    __slots__ = ("_closed", "_ssl", "_transport", "remote")

    def __init__(self, transport: TcpStream, ssl_stream: trio.SSLStream[TcpStream]) -> None:
        self._transport = transport
        self._ssl = ssl_stream
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
        self._closed = True
        self._transport.force_close()

    async def close_write(self) -> None:
        """TCP FIN without a close_notify (as `force_close` sends none): the records written reach the
        peer, and reads go on until it closes too. MQTT packets delimit themselves, so a client cannot
        mistake a truncated stream for a complete packet; what a close_notify would add is a clean
        ending in the client's TLS log."""
        await self._transport.close_write()

    async def aclose(self) -> None:
        self.force_close()
        await trio.lowlevel.checkpoint()


class TlsStream(_TlsOverTcp):
    """A server-side TLS connection. The handshake runs on the first read, under the broker's CONNECT
    deadline. ``identity`` is the client certificate's Common Name when the listener takes the user name
    from it ("" without a certificate), else None."""

    __slots__ = ("_use_identity",)

    def __init__(self, transport: TcpStream, context: ssl.SSLContext, use_identity: bool = False) -> None:
        super().__init__(transport, trio.SSLStream(transport, context, server_side=True))
        self._use_identity = use_identity

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


class TlsClientStream(_TlsOverTcp):
    """The client side (the bridge's upstream connection): verifies ``server_hostname`` when the context
    checks host names."""

    __slots__ = ("handshake_done",)

    def __init__(self, transport: TcpStream, context: ssl.SSLContext, server_hostname: str | None) -> None:
        super().__init__(transport, trio.SSLStream(transport, context, server_hostname=server_hostname))
        self.handshake_done = False

    async def do_handshake(self) -> None:
        """Run the handshake now (else it runs on the first read or write): certificate and host name
        problems surface here. trio.BrokenResourceError with the ssl.SSLError as its cause."""
        await self._ssl.do_handshake()
        self.handshake_done = True
