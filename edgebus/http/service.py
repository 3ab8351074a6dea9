"""The HTTP listener's routes: which method and path go where, who may call them (401, 403), and the
JSON errors (400, 404, 405, 422) of everything else; plus the throughput sampler of the status page."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from edgebus.config import ConfigError, ListenerConfig
from edgebus.http import api, metrics
from edgebus.http.auth import HttpAuth, Principal, Refusal
from edgebus.http.page import STATUS_PAGE
from edgebus.http.server import HttpRequest, HttpResponse, HttpServer, json_error, json_response
from edgebus.http.view import BrokerView
from edgebus.server.config_file import StartupProblems
from edgebus.server.reload import ReloadRefused

log = logging.getLogger("edgebus.http")

API: Final = "/api/v1"


@dataclass(frozen=True, slots=True)
class Call:
    """One request on its way to its route: who asked, the path's captured part, the query."""

    request: HttpRequest
    principal: Principal
    argument: str
    query: dict[str, list[str]]


RouteHandler = Callable[["HttpService", Call], HttpResponse | Awaitable[HttpResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    pattern: re.Pattern[str]
    methods: dict[str, tuple[RouteHandler, bool]]  # method -> (handler, admin only)
    public: bool = False  # served without credentials (the status page: it holds no data)


class BadRequest(Exception):
    pass


def _query_int(call: Call, name: str, default: int, low: int, high: int) -> int:
    values = call.query.get(name)
    if not values:
        return default
    text = values[-1]
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"query parameter {name!r} must be an integer from {low} to {high}, got {text!r}")
    return int(text)


def _query_text(call: Call, name: str) -> str:
    values = call.query.get(name)
    if not values or not values[-1]:
        raise BadRequest(f"query parameter {name!r} is required")
    return values[-1]


def _found(done: bool, what: str) -> HttpResponse:
    return json_response(200, {"ok": True}) if done else json_error(404, f"no such {what}")


def _page(_: HttpService, __: Call) -> HttpResponse:
    return HttpResponse(200, STATUS_PAGE, "text/html; charset=utf-8", [("content-security-policy", _CSP)])


def _metrics(service: HttpService, _: Call) -> HttpResponse:
    text = metrics.render(service.broker, service.requests)
    return HttpResponse(200, text.encode(), metrics.CONTENT_TYPE)


def _retained(service: HttpService, call: Call) -> HttpResponse:
    offset = _query_int(call, "offset", 0, 0, 10**9)
    limit = _query_int(call, "limit", api.DEFAULT_PAGE, 1, api.MAX_PAGE)
    prefix = call.query.get("prefix", [""])[-1]
    return json_response(200, api.retained(service.broker, offset, limit, prefix))


def _clear_retained(service: HttpService, call: Call) -> HttpResponse:
    topic = _query_text(call, "topic")
    return _found(api.clear_retained(service.broker, topic), "retained message")


async def _reload(service: HttpService, _: Call) -> HttpResponse:
    """The configuration file re-read, checked and applied as on SIGHUP (`Broker.reload_from_file`).
    Shielded: the listener this request came through may be one the reload removes or changes."""
    broker = service.broker
    with trio.CancelScope(shield=True):
        try:
            report = await broker.reload_from_file()
        except ConfigError as error:
            problems = [str(problem) for problem in error.problems]
            return _refused(422, "the configuration file does not validate", problems)
        except StartupProblems as error:
            where = f"{broker.config.source}: " if broker.config.source else ""
            problems = [where + problem for problem in error.problems]
            return _refused(422, "the configuration cannot run", problems)
        except ReloadRefused as error:
            return _refused(409, "the configuration cannot be applied", error.problems)
    log.info("configuration %s reloaded (HTTP API); %s", broker.config.source or "(built-in)", report.summary)
    body = {
        "ok": True,
        "source": report.source,
        "changed": report.changed,
        "needs_restart": report.needs_restart,
        "errors": report.errors,
    }
    response = json_response(200, body)
    response.shielded = True
    return response


def _refused(status: int, message: str, problems: list[str]) -> HttpResponse:
    log.error("reload refused (HTTP API), the configuration stays as it was: %s", "; ".join(problems))
    response = json_error(status, f"reload refused, nothing changed: {message}", problems=problems)
    response.shielded = True
    return response


def _disconnect(service: HttpService, call: Call) -> HttpResponse:
    return _found(api.disconnect_client(service.broker, call.argument), "connected client")


def _delete_session(service: HttpService, call: Call) -> HttpResponse:
    return _found(api.delete_session(service.broker, call.argument), "session")


def _throughput(service: HttpService, _: Call) -> HttpResponse:
    return json_response(200, service.throughput.as_json())


def _read(resource: Callable[[BrokerView], api.Json]) -> RouteHandler:
    def read(service: HttpService, _: Call) -> HttpResponse:
        return json_response(200, resource(service.broker))

    return read


_CSP: Final = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"

ROUTES: Final = (
    Route(re.compile(r"/(?:index\.html)?"), {"GET": (_page, False)}, public=True),
    Route(re.compile(r"/metrics"), {"GET": (_metrics, False)}),
    Route(re.compile(API + r"/broker"), {"GET": (_read(api.broker_info), False)}),
    Route(re.compile(API + r"/listeners"), {"GET": (_read(api.listeners), False)}),
    Route(re.compile(API + r"/clients"), {"GET": (_read(api.clients), False)}),
    Route(re.compile(API + r"/clients/([^/]+)/disconnect"), {"POST": (_disconnect, True)}),
    Route(re.compile(API + r"/sessions"), {"GET": (_read(api.sessions), False)}),
    Route(re.compile(API + r"/sessions/([^/]+)"), {"DELETE": (_delete_session, True)}),
    Route(re.compile(API + r"/subscriptions"), {"GET": (_read(api.subscriptions), False)}),
    Route(re.compile(API + r"/retained"), {"GET": (_retained, False), "DELETE": (_clear_retained, True)}),
    Route(re.compile(API + r"/bridges"), {"GET": (_read(api.bridges), False)}),
    Route(re.compile(API + r"/throughput"), {"GET": (_throughput, False)}),
    Route(re.compile(API + r"/reload"), {"POST": (_reload, True)}),
)


class HttpService:
    """Every http / https listener of one broker: a server per listener (each with its own credentials
    rules) sharing the routes and the throughput samples."""

    def __init__(self, broker: BrokerView) -> None:
        self.broker = broker
        self.throughput = api.Throughput()
        #: The running listeners' servers, each with its credentials check; a reload adds and retires them.
        self.servers: dict[HttpServer, HttpAuth] = {}
        self._retired_requests = 0  # answered by servers since retired: the counter never goes down

    @property
    def requests(self) -> int:
        return self._retired_requests + sum(server.requests for server in self.servers)

    def server_for(self, listener: ListenerConfig) -> HttpServer:
        """The server of one listener. Reads its token file: TokenFileError if it cannot."""
        broker = self.broker
        auth = HttpAuth(listener, broker.config.security, broker.password_entries)

        async def handle(request: HttpRequest) -> HttpResponse:
            return await self.handle(auth, request)

        server = HttpServer(handle, secure=listener.type == "https")
        self.servers[server] = auth
        return server

    def retire(self, server: HttpServer) -> None:
        """Its listener stopped: its open connections end."""
        server.close()
        if self.servers.pop(server, None) is not None:
            self._retired_requests += server.requests

    def read_tokens(self, server: HttpServer) -> dict[bytes, str] | None:
        """A reload's new tokens of a listener that stays (None: it has no token file). Raises
        TokenFileError; nothing has changed then."""
        return self.servers[server].read_tokens()

    def set_tokens(self, server: HttpServer, tokens: dict[bytes, str] | None) -> None:
        if tokens is not None:
            self.servers[server].tokens = tokens

    async def sample_forever(self) -> None:
        while True:
            self.throughput.sample(self.broker)
            await trio.sleep(api.SAMPLE_INTERVAL_S)

    async def handle(self, auth: HttpAuth, request: HttpRequest) -> HttpResponse:
        try:
            split = urlsplit(request.target)
        except ValueError:
            return json_error(400, "malformed request target")
        path = split.path
        for route in ROUTES:
            match = route.pattern.fullmatch(path)
            if match is not None:
                break
        else:
            return json_error(404, f"no such resource: {path[:200]}")
        entry = route.methods.get(request.method)
        if entry is None:
            allow = ", ".join(route.methods)
            return json_error(
                405, f"{request.method[:20]} not allowed here; allowed: {allow}", [("allow", allow)]
            )
        handler, admin_only = entry
        if route.public:
            principal = Principal("anonymous", admin=False)
        else:
            outcome = await auth.authenticate(request.headers.get("authorization"), request.remote)
            if isinstance(outcome, Refusal):
                challenge = auth.challenge() if outcome.status == 401 else []
                return json_error(outcome.status, outcome.message, challenge)
            principal = outcome
            if admin_only and not principal.admin:
                return json_error(403, f"user {principal.name!r} may only read; actions need an admin")
        try:
            argument = unquote(match.group(1), errors="strict") if match.groups() else ""
            query = parse_qs(split.query, errors="strict")
        except UnicodeDecodeError:
            return json_error(400, "the path or query is not valid percent-encoded UTF-8")
        try:
            result = handler(self, Call(request, principal, argument, query))
            response = result if isinstance(result, HttpResponse) else await result
        except BadRequest as error:
            return json_error(400, str(error))
        if admin_only:
            log.info("HTTP %s %s by %r: %d", request.method, path, principal.name, response.status)
        return response
