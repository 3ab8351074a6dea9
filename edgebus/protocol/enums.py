"""Wire codes of MQTT 3.1.1 and 5.0 as IntEnums: packet types, QoS, reason codes."""

from __future__ import annotations

from enum import IntEnum

#: Protocol Level byte of CONNECT for MQTT 3.1 (protocol name "MQIsdp", §3.1 of the IBM/Eurotech v3.1 spec).
MQTT_3_1 = 3
#: Protocol Level byte of CONNECT for MQTT 3.1.1 (§3.1.2.2 of 3.1.1).
MQTT_3_1_1 = 4
#: Protocol Level byte of CONNECT for MQTT 5.0 (§3.1.2.2 of 5.0).
MQTT_5 = 5
#: High bit of the CONNECT Protocol Level: set by a Mosquitto bridge (``try_private true``) to say that
#: the connection is a bridge; not part of any MQTT spec.
BRIDGE_BIT = 0x80


def session_level(connect_level: int) -> int:
    """The level the packets after a CONNECT of ``connect_level`` follow: the bridge bit cleared and 3.1
    read as 3.1.1 (3.1 packets are 3.1.1's, but for the CONNECT and the SUBACK failure code)."""
    level = connect_level & ~BRIDGE_BIT
    return MQTT_3_1_1 if level == MQTT_3_1 else level


class PacketType(IntEnum):
    """MQTT Control Packet type, the high nibble of the fixed header (§2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  # MQTT 5.0 only


class QoS(IntEnum):
    """Quality of Service levels (§4.3)."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class RetainHandling(IntEnum):
    """Subscription option bits 4-5 (§3.8.3.1 of 5.0)."""

    SEND_ON_SUBSCRIBE = 0
    SEND_IF_NEW_SUBSCRIPTION = 1
    DO_NOT_SEND = 2


class ConnectReturnCode(IntEnum):
    """CONNACK return codes of MQTT 3.1.1 (§3.2.2.3 of 3.1.1)."""

    ACCEPTED = 0x00
    UNACCEPTABLE_PROTOCOL_VERSION = 0x01
    IDENTIFIER_REJECTED = 0x02
    SERVER_UNAVAILABLE = 0x03
    BAD_USERNAME_OR_PASSWORD = 0x04
    NOT_AUTHORIZED = 0x05


class ReasonCode(IntEnum):
    """MQTT 5.0 reason codes (§2.4), one member per code and no aliases.

    0x00 is "Success" in CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK and AUTH,
    "Normal disconnection" in DISCONNECT and "Granted QoS 0" in SUBACK.
    """

    SUCCESS = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2
