"""HTTP/1.1 connections with h11: keep-alive, a bound on head and body sizes, deadlines against slow
clients (slowloris), a cap on open connections, and a JSON error for anything malformed. What a request
means is the handler's (`edgebus.http.service`); this module only moves requests and responses."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final

import h11
import trio

from edgebus.transport.stream import ClientStream

log = logging.getLogger("edgebus.http")

#: Largest request head (request line and headers) accepted; past it: 431.
MAX_HEAD_BYTES: Final = 16 * 1024
#: Largest request body accepted; past it: 413. The API's actions take no body worth more.
MAX_BODY_BYTES: Final = 64 * 1024
#: A whole request (or the wait for the next one on a kept-alive connection) must arrive within this.
REQUEST_TIMEOUT_S: Final = 10.0
#: A response the client does not read within this is abandoned with its connection.
WRITE_TIMEOUT_S: Final = 10.0
#: Open HTTP connections at most, whatever the listener's max_connections: the API is for a few
#: operators and one Prometheus, and must never take the broker's memory or event loop from MQTT.
MAX_HTTP_CONNECTIONS: Final = 64
#: Reading what a client still sends after the response, before closing (so the kernel sends no RST).
CLOSE_DRAIN_S: Final = 1.0
RECEIVE_BYTES: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    remote: str  # HOST:PORT of the client
    secure: bool  # over TLS


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: Sent even if the connection is being closed (its listener removed by the very reload it answers).
    shielded: bool = False


def json_response(status: int, value: object, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return HttpResponse(status, body, "application/json", headers or [])


def json_error(
    status: int, message: str, headers: list[tuple[str, str]] | None = None, **details: object
) -> HttpResponse:
    """Every error the listener answers: ``{"error": message, "status": status, **details}``, never a
    traceback."""
    return json_response(status, {"error": message, "status": status, **details}, headers)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _Timeout(Exception):
    pass


class HttpServer:
    """Serves HTTP/1.1 connections, each in its own task, with ``handler`` answering each request."""

    def __init__(self, handler: Handler, secure: bool) -> None:
        self.handler = handler
        self.secure = secure
        self.open_connections = 0
        self.refused_connections = 0
        self.requests = 0
        self._scopes: set[trio.CancelScope] = set()
        self.closed = False

    def close(self) -> None:
        """Its listener is gone (removed or changed by a reload): end every open connection, so none keeps
        the rules (admins, tokens) the listener had. A request being answered finishes first only if its
        response is ``shielded``."""
        self.closed = True
        for scope in self._scopes:
            scope.cancel()

    async def serve_connection(self, stream: ClientStream) -> None:
        if self.open_connections >= MAX_HTTP_CONNECTIONS:
            self.refused_connections += 1
            log.debug("%s: refused, %d HTTP connections open", stream.remote, self.open_connections)
            stream.force_close()
            return
        self.open_connections += 1
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                if not self.closed:
                    await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Timeout):
            pass
        except Exception:
            # One connection's failure never reaches the broker's nursery.
            log.exception("HTTP connection %s failed", stream.remote)
        finally:
            self._scopes.discard(scope)
            self.open_connections -= 1
            stream.force_close()

    async def _serve(self, stream: ClientStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            deadline = trio.current_time() + REQUEST_TIMEOUT_S
            try:
                request = await self._read_request(conn, stream, deadline)
            except h11.RemoteProtocolError as error:
                status = error.error_status_hint if 400 <= error.error_status_hint < 500 else 400
                await self._answer_and_close(conn, stream, json_error(status, f"bad request: {error}"))
                return
            except _BodyTooLarge:
                await self._answer_and_close(conn, stream, json_error(413, "request body too large"))
                return
            except _Timeout:
                if conn.their_state is h11.SEND_BODY or (
                    conn.their_state is h11.IDLE and conn.trailing_data[0]
                ):
                    await self._answer_and_close(conn, stream, json_error(408, "request timeout"))
                return
            if request is None:
                return  # the client closed between requests
            self.requests += 1
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("HTTP %s %s failed", request.method, request.target)
                response = json_error(500, "internal error (see the broker's log)")
            with trio.CancelScope(shield=response.shielded):
                await self._send(conn, stream, response)  # bounded by WRITE_TIMEOUT_S
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                await self._close(stream)
                return
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, stream: ClientStream, deadline: float
    ) -> HttpRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_at(deadline):
                    conn.receive_data(bytes(await stream.receive_some(RECEIVE_BYTES)))
                    continue
                raise _Timeout
            if isinstance(event, h11.Request):
                head = event
                # h11 bounds a head that arrives in pieces; one that came whole is measured here.
                if len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers) > MAX_HEAD_BYTES:
                    raise h11.RemoteProtocolError("request head too large", 431)
                length = dict(event.headers).get(b"content-length")
                if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
                    raise _BodyTooLarge
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    raise _BodyTooLarge
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return HttpRequest(
                    head.method.decode("ascii", "replace"),
                    head.target.decode("ascii", "replace"),
                    {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers},
                    bytes(body),
                    stream.remote,
                    self.secure,
                )
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # pragma: no cover - h11 has no other client events
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}", 400)

    async def _send(self, conn: h11.Connection, stream: ClientStream, response: HttpResponse) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            *response.headers,
        ]
        reason = HTTPStatus(response.status).phrase.encode()
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        assert data is not None
        body = conn.send(h11.Data(data=response.body)) if response.body else b""
        end = conn.send(h11.EndOfMessage())
        with trio.move_on_after(WRITE_TIMEOUT_S) as scope:
            await stream.send_all(data + (body or b"") + (end or b""))
        if scope.cancelled_caught:
            raise _Timeout

    async def _answer_and_close(
        self, conn: h11.Connection, stream: ClientStream, response: HttpResponse
    ) -> None:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response.headers.append(("connection", "close"))
            try:
                await self._send(conn, stream, response)
            except h11.LocalProtocolError:
                return
        await self._close(stream)

    async def _close(self, stream: ClientStream) -> None:
        """FIN after the response, then read and discard for a moment: closing with unread bytes makes
        the kernel send RST, which can destroy the response before the client read it."""
        with trio.move_on_after(WRITE_TIMEOUT_S):
            await stream.close_write()  # TLS: close_notify first
        with trio.move_on_after(CLOSE_DRAIN_S):
            drained = 0
            while drained < MAX_BODY_BYTES and (data := await stream.receive_some(RECEIVE_BYTES)):
                drained += len(data)


class _BodyTooLarge(Exception):
    pass
