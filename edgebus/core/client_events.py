"""What the client role and its application say to each other: the options, the states, the events.

The vocabulary of ``edgebus.core.client.MqttClient`` (which is where applications import it from),
apart from the machine itself, as h11 keeps its events apart from its connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from edgebus.protocol.decoder import MAX_PACKET_SIZE
from edgebus.protocol.enums import MQTT_3_1, MQTT_3_1_1, MQTT_5
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import (
    NO_PROPERTIES,
    ConnAck,
    Connect,
    Disconnect,
    Properties,
    Publish,
    SubAck,
    UnsubAck,
    Will,
)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What the client asks for in CONNECT, and its own limits."""

    client_id: str
    protocol_level: int = MQTT_5
    clean_start: bool = True  # "Clean Session" on 3.1.1
    keep_alive: int = 60  # seconds; 0 disables keep-alive
    session_expiry_interval: int = 0  # seconds, MQTT 5 only; 0xFFFFFFFF never expires
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    receive_maximum: int = 65535  # our inbound window (MQTT 5 announces it)
    max_inflight: int = 65535  # cap on our outbound window, whatever the server allows
    maximum_packet_size: int = MAX_PACKET_SIZE  # largest packet we accept (announced on MQTT 5)
    topic_alias_maximum: int = 0  # inbound topic aliases we accept (MQTT 5)
    max_queued_messages: int = 100_000  # PUBLISH calls not yet sent; `publish` refuses beyond
    auto_acknowledge: bool = True  # send PUBACK / PUBREC at once; else the application calls acknowledge()
    ping_timeout: float | None = None  # seconds to wait for PINGRESP; None: the keep-alive interval
    connect_properties: Properties = NO_PROPERTIES  # extra CONNECT properties (user properties ...)

    def __post_init__(self) -> None:
        if self.protocol_level not in (MQTT_3_1, MQTT_3_1_1, MQTT_5):
            raise ValueError(f"protocol_level must be 3 (3.1), 4 (3.1.1) or 5, not {self.protocol_level!r}")
        if not 0 <= self.keep_alive <= 0xFFFF:
            raise ValueError("keep_alive must be 0..65535 seconds")
        if not 1 <= self.receive_maximum <= 0xFFFF or self.max_inflight < 1:
            raise ValueError("receive_maximum must be 1..65535 and max_inflight at least 1")

    def connect_packet(self) -> Connect:
        """The CONNECT these options ask for; on MQTT 5 the limits go in its properties, each left
        out at its default (§3.1.2.11)."""
        properties = self.connect_properties
        if self.protocol_level == MQTT_5:
            properties = _replace_properties(
                properties,
                session_expiry_interval=self.session_expiry_interval or None,
                receive_maximum=self.receive_maximum if self.receive_maximum != 65535 else None,
                maximum_packet_size=(
                    self.maximum_packet_size if self.maximum_packet_size < MAX_PACKET_SIZE else None
                ),
                topic_alias_maximum=self.topic_alias_maximum or None,
            )
        return Connect(
            client_id=self.client_id,
            protocol_level=self.protocol_level,
            protocol_name="MQIsdp" if self.protocol_level == MQTT_3_1 else "MQTT",
            clean_start=self.clean_start,
            keep_alive=self.keep_alive,
            will=self.will,
            username=self.username,
            password=self.password,
            properties=properties,
        )


class ClientState(enum.Enum):
    """Where the client's current network connection stands."""

    DISCONNECTED = 1  # no network connection
    CONNECTING = 2  # CONNECT queued, no CONNACK yet
    CONNECTED = 3
    CLOSING = 4  # the connection must close once the output taken so far is written


@dataclass(frozen=True, slots=True)
class Connected:
    """CONNACK accepted the connection. ``session_present`` tells whether the server kept our session."""

    connack: ConnAck

    @property
    def session_present(self) -> bool:
        return self.connack.session_present


@dataclass(frozen=True, slots=True)
class ConnectionRefused:
    """CONNACK refused the connection (3.1.1 return code or 5.0 reason code >= 0x80)."""

    connack: ConnAck

    @property
    def reason_code(self) -> int:
        return self.connack.reason_code


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """An application message from the server; ``publish.topic`` is resolved from a topic alias.
    With ``auto_acknowledge`` off, call ``acknowledge(publish.packet_id)`` for QoS 1/2."""

    publish: Publish


@dataclass(frozen=True, slots=True)
class PublishAcknowledged:
    """The end of an outbound QoS 1/2 flow: PUBACK, PUBCOMP, or a PUBREC with a failure reason code.
    ``token`` is what was given to `publish`."""

    token: object
    qos: int
    packet_id: int
    reason_code: int

    @property
    def success(self) -> bool:
        return self.reason_code < 0x80


@dataclass(frozen=True, slots=True)
class SubscribeAcknowledged:
    suback: SubAck


@dataclass(frozen=True, slots=True)
class UnsubscribeAcknowledged:
    unsuback: UnsubAck


@dataclass(frozen=True, slots=True)
class DisconnectReceived:
    """The server sent DISCONNECT (MQTT 5): the connection is over."""

    disconnect: Disconnect


@dataclass(frozen=True, slots=True)
class KeepAliveTimeout:
    """No PINGRESP came in time: the connection is to be considered broken (§3.1.2.10, §4.13)."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The server broke the protocol; on MQTT 5 a DISCONNECT with ``error.reason_code`` is queued."""

    error: ProtocolError


Event = (
    Connected
    | ConnectionRefused
    | MessageReceived
    | PublishAcknowledged
    | SubscribeAcknowledged
    | UnsubscribeAcknowledged
    | DisconnectReceived
    | KeepAliveTimeout
    | ProtocolViolation
)


def _replace_properties(properties: Properties, **values: int | None) -> Properties:
    """``properties`` with each non-None value of ``values`` set."""
    present = {name: value for name, value in values.items() if value is not None}
    return replace(properties, **present) if present else properties  # type: ignore[arg-type]
