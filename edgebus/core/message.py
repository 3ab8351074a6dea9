"""An application message as the broker routes it, encoded once and stamped per delivery."""

from __future__ import annotations

import struct
from collections.abc import Callable

from edgebus.protocol.encoder import fixed_header
from edgebus.protocol.enums import MQTT_5, PacketType
from edgebus.protocol.packets import NO_PROPERTIES, Properties
from edgebus.protocol.primitives import decode_varint, encode_string, encode_varint
from edgebus.protocol.properties import encode_properties

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PUBLISH = PacketType.PUBLISH << 4

# Property ids stamped per delivery (§3.3.2.3): they differ between subscribers or over time.
_MESSAGE_EXPIRY_ID = b"\x02"
_SUBSCRIPTION_ID_ID = b"\x0b"
_TOPIC_ALIAS_ID = b"\x23"


class Message:
    """One PUBLISH as received, shared by every subscriber it fans out to.

    The parts that are the same for every subscriber (topic, forwarded properties, payload) are
    encoded once, lazily, per protocol version; `encode` only adds the per-delivery parts.
    """

    __slots__ = (
        "_common_props",
        "_topic_bytes",
        "_whole_qos0",
        "expiry_deadline",
        "on_settled",
        "payload",
        "properties",
        "publisher_id",
        "qos",
        "retain",
        "size",
        "store_id",
        "store_refs",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties = NO_PROPERTIES,
        *,
        publisher_id: str | None = None,
        expiry_deadline: float | None = None,
        topic_wire: bytes | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        # Only the properties forwarded unaltered to subscribers [MQTT-3.3.2-15..20]; the topic
        # alias, subscription identifiers and the expiry interval are per delivery.
        self.properties = properties
        self.publisher_id = publisher_id
        # Monotonic deadline from the Message Expiry Interval, or None for "never" [MQTT-3.3.2-5].
        self.expiry_deadline = expiry_deadline
        # What the message costs in a queue budget (payload and topic; close enough for budgets).
        self.size = len(payload) + len(topic) + 32
        # Its row in the durable store (0: not stored) and how many stored deliveries use it.
        self.store_id = 0
        self.store_refs = 0
        # Called once its stored deliveries are all finished (acknowledged, or dropped): a PUBACK held
        # for the commit of those deliveries alone may then go at once (see ConnectionOutput).
        self.on_settled: Callable[[], None] | None = None
        # The topic encoded (length prefix and UTF-8): as received when the caller has it (topic_wire,
        # a PUBLISH's own topic, no alias), else encoded on first use.
        self._topic_bytes = topic_wire
        self._common_props: bytes | None = None
        self._whole_qos0: dict[tuple[int, bool], bytes] | None = None

    def is_expired(self, now: float) -> bool:
        return self.expiry_deadline is not None and now >= self.expiry_deadline

    def remaining_expiry(self, now: float) -> int | None:
        """The Message Expiry Interval to send: the received value minus the time spent waiting
        in the broker [MQTT-3.3.2-6]."""
        if self.expiry_deadline is None:
            return None
        return max(0, int(self.expiry_deadline - now + 0.999))

    def encode(
        self,
        protocol_level: int,
        qos: int,
        retain: bool,
        *,
        dup: bool = False,
        packet_id: int = 0,
        subscription_ids: tuple[int, ...] = (),
        topic_alias: int = 0,
        send_topic: bool = True,
        now: float = 0.0,
    ) -> bytes:
        """The PUBLISH bytes for one delivery. ``send_topic=False`` sends an empty topic name with
        ``topic_alias`` (an alias the receiver already knows)."""
        first = _PUBLISH | (qos << 1) | (8 if dup else 0) | (1 if retain else 0)
        if protocol_level == MQTT_5:
            return self._encode_v5(first, qos, packet_id, subscription_ids, topic_alias, send_topic, now)
        # MQTT 3.1.1: topic, packet id, payload; QoS 0 packets are identical for every subscriber.
        if qos == 0:
            cache = self._whole_qos0
            if cache is None:
                cache = self._whole_qos0 = {}
            key = (protocol_level, retain)
            whole = cache.get(key)
            if whole is None:
                body_len = len(self._topic()) + len(self.payload)
                whole = cache[key] = b"".join((fixed_header(first, body_len), self._topic(), self.payload))
            return whole
        topic = self._topic()
        body_len = len(topic) + 2 + len(self.payload)
        return b"".join((fixed_header(first, body_len), topic, _U16.pack(packet_id), self.payload))

    def _topic(self) -> bytes:
        topic = self._topic_bytes
        if topic is None:
            topic = self._topic_bytes = encode_string(self.topic)
        return topic

    def _common_properties(self) -> bytes:
        """The forwarded properties encoded once, without their length prefix."""
        common = self._common_props
        if common is None:
            block = encode_properties(self.properties, PacketType.PUBLISH)
            decoded = decode_varint(block, 0)
            assert decoded is not None
            common = self._common_props = block[decoded[1] :]
        return common

    def _encode_v5(
        self,
        first: int,
        qos: int,
        packet_id: int,
        subscription_ids: tuple[int, ...],
        topic_alias: int,
        send_topic: bool,
        now: float,
    ) -> bytes:
        per_delivery: list[bytes] = []
        if self.expiry_deadline is not None:
            expiry = self.remaining_expiry(now)
            assert expiry is not None
            per_delivery.append(_MESSAGE_EXPIRY_ID + _U32.pack(expiry))
        if topic_alias:
            per_delivery.append(_TOPIC_ALIAS_ID + _U16.pack(topic_alias))
        per_delivery.extend(_SUBSCRIPTION_ID_ID + encode_varint(sub_id) for sub_id in subscription_ids)
        common = self._common_properties()
        if not per_delivery and qos == 0 and send_topic:
            cache = self._whole_qos0
            if cache is None:
                cache = self._whole_qos0 = {}
            key = (MQTT_5, bool(first & 1))
            whole = cache.get(key)
            if whole is None:
                props = encode_varint(len(common)) + common
                body_len = len(self._topic()) + len(props) + len(self.payload)
                whole = cache[key] = b"".join(
                    (fixed_header(first, body_len), self._topic(), props, self.payload)
                )
            return whole
        per_delivery.append(common)
        props_body = b"".join(per_delivery)
        topic = self._topic() if send_topic else b"\x00\x00"
        pid = _U16.pack(packet_id) if qos else b""
        props_len = encode_varint(len(props_body))
        body_len = len(topic) + len(pid) + len(props_len) + len(props_body) + len(self.payload)
        return b"".join((fixed_header(first, body_len), topic, pid, props_len, props_body, self.payload))


def forwarded_properties(props: Properties) -> Properties:
    """The PUBLISH properties a server forwards unaltered to subscribers (§3.3.2.3): everything but
    the topic alias, the subscription identifiers and the expiry interval (stamped per delivery).
    Also takes a will's properties, whose Will Delay Interval is not forwarded."""
    if props is NO_PROPERTIES:
        return props
    if (
        props.topic_alias is None
        and not props.subscription_identifiers
        and props.message_expiry_interval is None
        and props.will_delay_interval is None  # a will's own property (§3.1.3.2.2)
    ):
        return props
    return Properties(
        payload_format_indicator=props.payload_format_indicator,
        content_type=props.content_type,
        response_topic=props.response_topic,
        correlation_data=props.correlation_data,
        user_properties=props.user_properties,
    )


def is_utf8(payload: bytes) -> bool:
    """Whether a payload is well-formed UTF-8 (a Payload Format Indicator of 1 promises it, §3.3.2.3.2)."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
