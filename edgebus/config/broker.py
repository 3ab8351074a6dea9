"""The broker's configuration: its [sections], the [[listener]] table and the top-level ``Config``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, Literal, get_args

from edgebus.config.addresses import ListenAddress, ListenAddresses, OneListenAddress
from edgebus.config.bridge import BridgeConfig
from edgebus.config.schema import (
    MAX_FOUR_BYTE_INTEGER,
    Boolean,
    IntRange,
    NumberRange,
    OneOf,
    Text,
    TextList,
    section,
    section_array,
    setting,
)
from edgebus.core.outbox import OverflowPolicy

# Largest Remaining Length a Variable Byte Integer can encode (§1.5.5) plus the 5-byte maximum fixed header.
MAX_PACKET_SIZE_BYTES: Final = 268_435_455 + 5

LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """[server]: where the broker listens and keeps its data."""

    listen: tuple[ListenAddress, ...] = setting(
        (ListenAddress("0.0.0.0", 1883),),
        ListenAddresses(),
        'TCP addresses to accept MQTT connections on, "HOST:PORT", IPv6 as "[::1]:1883"; port 0 = any free',
    )
    data_dir: str = setting("./edgebus-data", Text(), "directory of the durable state (sessions, messages)")
    gateway_id: str = setting(
        "", Text(allow_empty=True), "this gateway's name in bridged message ids; '' = the host name"
    )
    log_level: LogLevel = setting(  # noqa: RUF009 - setting() is dataclasses.field() with an immutable default
        "info", OneOf(get_args(LogLevel)), "least severe log level written"
    )


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """[mqtt]: protocol limits and the features the broker announces in CONNACK (v5)."""

    max_packet_size: int = setting(
        1_048_576,
        IntRange(16, MAX_PACKET_SIZE_BYTES),
        "largest packet accepted, in bytes; announced as Maximum Packet Size on v5 (§3.2.2.3.6)",
    )
    receive_maximum: int = setting(
        100,
        IntRange(1, 65535),
        "inbound QoS>0 PUBLISH window per client, announced on v5; exceeding it -> DISCONNECT 0x93 (§3.3.4)",
    )
    max_inflight: int = setting(
        100,
        IntRange(1, 65535),
        "cap on unacknowledged outbound QoS>0 PUBLISHes per client (min with the client's Receive Maximum)",
    )
    topic_alias_maximum: int = setting(
        64, IntRange(0, 65535), "inbound topic aliases accepted per connection on v5; 0 = none (§3.2.2.3.8)"
    )
    max_keep_alive: int = setting(
        65535,
        IntRange(1, 65535),
        "longest keep alive granted, in seconds; larger (or 0) requests get Server Keep Alive = this on v5",
    )
    max_session_expiry_interval: int = setting(
        MAX_FOUR_BYTE_INTEGER,
        IntRange(0, MAX_FOUR_BYTE_INTEGER),
        "cap on the Session Expiry Interval a client asks for, in seconds",
    )
    max_qos: int = setting(2, IntRange(0, 2), "highest QoS supported, announced as Maximum QoS on v5")
    retain_available: bool = setting(True, Boolean(), "whether retained messages are supported")
    wildcard_subscriptions: bool = setting(True, Boolean(), "whether subscriptions may use '+' and '#'")
    subscription_identifiers: bool = setting(True, Boolean(), "whether v5 Subscription Identifiers work")
    shared_subscriptions: bool = setting(True, Boolean(), "whether $share/<group>/<filter> is supported")


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """[queue]: the bounded per-session queue of messages waiting for delivery."""

    max_messages: int = setting(1000, IntRange(1, 10_000_000), "most messages queued per session")
    max_bytes: int = setting(16_777_216, IntRange(1024, 2**40), "most payload bytes queued per session")
    overflow: OverflowPolicy = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "drop-oldest",
        OneOf(get_args(OverflowPolicy)),
        "what a full queue does: drop its oldest message, drop the new one, or refuse it (v5 QoS>0: 0x97)",
    )


Durability = Literal["fsync", "os", "memory"]


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """[storage]: the durable state (sessions, queues, in-flight and retained messages) in server.data_dir."""

    durability: Durability = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "fsync",
        OneOf(get_args(Durability)),
        "when a QoS 1/2 message counts as safe: fsync = on disk before PUBACK/PUBREC (survives power loss);"
        " os = handed to the OS (survives a broker crash, not a power cut); memory = never stored",
    )
    max_bytes: int = setting(0, IntRange(0, 2**50), "cap on the store's size on disk, in bytes; 0 = no cap")


@dataclass(frozen=True, slots=True)
class SysConfig:
    """[sys]: the $SYS status topics."""

    interval: float = setting(10.0, NumberRange(0, 86400), "seconds between $SYS publications; 0 disables")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """[security]: who may connect (password file, anonymous access) and what they may do (ACL file)."""

    allow_anonymous: bool = setting(True, Boolean(), "whether clients without a user name may connect")
    password_file: str = setting(
        "", Text(allow_empty=True), "password file (mosquitto_passwd, edgebus passwd); '' = none"
    )
    acl_file: str = setting("", Text(allow_empty=True), "Mosquitto-format ACL file; '' = no restrictions")
    auth_failure_delay: float = setting(
        1.0, NumberRange(0, 60), "seconds a refused CONNECT waits for its CONNACK; doubles per repeat"
    )
    auth_failure_delay_max: float = setting(
        30.0, NumberRange(0, 3600), "cap on the doubled delay of repeated authentication failures, in seconds"
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """[limits]: bounds that keep one client (or many) from exhausting the gateway."""

    max_connections: int = setting(0, IntRange(0, 10_000_000), "most open connections in all; 0 = no limit")
    connect_timeout: float = setting(
        10.0, NumberRange(0.1, 3600), "seconds a new connection has to send CONNECT (and finish TLS)"
    )
    max_topic_length: int = setting(65535, IntRange(1, 65535), "longest topic name or filter, in bytes")
    max_topic_levels: int = setting(0, IntRange(0, 65535), "most levels in a topic or filter; 0 = no limit")
    max_subscriptions_per_client: int = setting(
        0, IntRange(0, 10_000_000), "most subscriptions one session may hold; 0 = no limit"
    )
    max_message_rate: float = setting(
        0.0, NumberRange(0, 1e9), "PUBLISH packets per second one client may send; 0 = no limit"
    )
    max_byte_rate: float = setting(0.0, NumberRange(0, 1e12), "bytes per second a client may send; 0 = none")


ListenerType = Literal["tcp", "tls", "ws", "wss", "http", "https"]
#: The address of a [[listener]] that names none. An http / https listener without an address binds to
#: loopback instead (`ListenerConfig.bind_address`): the API must be opened to the network on purpose.
DEFAULT_LISTENER_ADDRESS: Final = ListenAddress("0.0.0.0", 8883)
HTTP_DEFAULT_ADDRESSES: Final = {
    "http": ListenAddress("127.0.0.1", 8080),
    "https": ListenAddress("127.0.0.1", 8443),
}
TlsVersion = Literal["1.2", "1.3"]


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """[[listener]]: a listener besides server.listen: plain TCP, TLS, WebSocket or WebSocket over TLS, or
    the HTTP API, metrics and status page (http, https)."""

    type: ListenerType = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "tcp", OneOf(get_args(ListenerType)), "what the listener speaks"
    )
    address: ListenAddress = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        DEFAULT_LISTENER_ADDRESS,
        OneListenAddress(),
        '"HOST:PORT" to listen on, IPv6 as "[::1]:8883"; http / https default to 127.0.0.1:8080 / :8443',
    )
    certfile: str = setting("", Text(allow_empty=True), "PEM certificate chain of the server (tls, wss)")
    keyfile: str = setting("", Text(allow_empty=True), "PEM private key of the server (tls, wss)")
    cafile: str = setting("", Text(allow_empty=True), "PEM CA certificates client certificates must chain to")
    require_certificate: bool = setting(
        False, Boolean(), "whether clients must present a certificate signed by cafile (mutual TLS)"
    )
    use_identity_as_username: bool = setting(
        False, Boolean(), "take the user name from the client certificate's Common Name (no password check)"
    )
    min_tls_version: TlsVersion = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "1.2", OneOf(get_args(TlsVersion)), "oldest TLS version accepted"
    )
    max_connections: int = setting(0, IntRange(0, 10_000_000), "most connections on this listener; 0 = none")
    path: str = setting("/mqtt", Text(), "HTTP path of the WebSocket endpoint (ws, wss)")
    # --- http, https: who may read (GET) and who may act (POST, DELETE) ---------------------------------
    allow_anonymous: bool = setting(
        False, Boolean(), "(http, https) serve GET requests without credentials, as a read-only user"
    )
    admins: tuple[str, ...] = setting(
        (), TextList(), "(http, https) users who may act (disconnect, delete, reload); the others only read"
    )
    token_file: str = setting(
        "", Text(allow_empty=True), "(http, https) bearer tokens, NAME:TOKEN per line; '' = none"
    )
    credentials_over_http: bool = setting(
        False,
        Boolean(),
        "(http) accept passwords and tokens in clear text; only on a loopback address",
    )

    @property
    def bind_address(self) -> ListenAddress:
        """Where the listener binds: ``address``, or loopback for an http / https listener given none."""
        if self.address is DEFAULT_LISTENER_ADDRESS and self.type in HTTP_DEFAULT_ADDRESSES:
            return HTTP_DEFAULT_ADDRESSES[self.type]
        return self.address

    def problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self.type not in ("http", "https") and (
            self.allow_anonymous or self.admins or self.token_file or self.credentials_over_http
        ):
            found.append(
                ("type", "allow_anonymous, admins, token_file and credentials_over_http need http/https")
            )
        if self.credentials_over_http and (self.type != "http" or not _is_loopback(self.bind_address.host)):
            found.append(("credentials_over_http", "only for an http listener on a loopback address"))
        return found


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Config:
    """The whole broker configuration. ``Config()`` is the built-in default the broker runs on without a file;
    ``source`` names the file it was loaded from (not a TOML key)."""

    # section() is dataclasses.field() whose default is a frozen (immutable) instance, hence the noqa.
    server: ServerConfig = section(ServerConfig, "addresses, data directory, logging")  # noqa: RUF009
    mqtt: MqttConfig = section(MqttConfig, "protocol limits and announced features")  # noqa: RUF009
    queue: QueueConfig = section(QueueConfig, "per-session delivery queue bounds")  # noqa: RUF009
    storage: StorageConfig = section(StorageConfig, "durable state")  # noqa: RUF009
    sys: SysConfig = section(SysConfig, "$SYS topics")  # noqa: RUF009
    security: SecurityConfig = section(SecurityConfig, "authentication and authorization")  # noqa: RUF009
    limits: LimitsConfig = section(LimitsConfig, "connection, topic and rate limits")  # noqa: RUF009
    listener: tuple[ListenerConfig, ...] = section_array(ListenerConfig, "extra listeners: tls, ws, wss, tcp")
    bridge: tuple[BridgeConfig, ...] = section_array(BridgeConfig, "upstream bridges (store-and-forward)")
    source: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        names = [bridge.name for bridge in self.bridge]
        twice = sorted({name for name in names if names.count(name) > 1})
        return [("bridge", f"bridge name {name!r} is used twice") for name in twice]
