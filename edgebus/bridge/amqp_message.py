"""AMQP 1.0 messages as RabbitMQ streams store them: the bare message of one outbox record, encoded here.

A stream stores each message as opaque bytes; RabbitMQ's own consumers (AMQP 0.9.1 and 1.0, the stream
clients) read them as an AMQP 1.0 message. This encoder writes the three sections a record needs, in the
32-bit forms only (AMQP 1.0 part 1, types; part 3, message format):

* properties: ``message-id`` = the record's ``edgebus-msg-id``, ``content-type`` (after cbor-json) and
  ``absolute-expiry-time`` (when the MQTT message had an expiry interval);
* application-properties: ``edgebus-msg-id``, ``mqtt-topic`` (the remote topic), ``mqtt-retain``;
* data: the payload.

rstream has an encoder (from the Azure SDK) but it costs ~22 µs per message on the test machine; this one
a few, which matters at the 20,000 messages/s a catch-up aims for.
"""

from __future__ import annotations

import struct

from edgebus.bridge.sink import MESSAGE_ID_PROPERTY

__all__ = ["MQTT_RETAIN_PROPERTY", "MQTT_TOPIC_PROPERTY", "encode_message"]

MQTT_TOPIC_PROPERTY = "mqtt-topic"
MQTT_RETAIN_PROPERTY = "mqtt-retain"

_NULL = b"\x40"
_TRUE = b"\x41"
_FALSE = b"\x42"
# Section descriptors: 0x00 (described), 0x53 smallulong, the section's code.
_PROPERTIES = b"\x00\x53\x73"
_APPLICATION_PROPERTIES = b"\x00\x53\x74"
_DATA = b"\x00\x53\x75"
_U32 = struct.Struct(">I")
_U32_U32 = struct.Struct(">II")
_TIMESTAMP = struct.Struct(">Bq")  # 0x83: milliseconds since the Unix epoch


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"\xb1" + _U32.pack(len(raw)) + raw


def _symbol(text: str) -> bytes:
    raw = text.encode("ascii")
    return b"\xb3" + _U32.pack(len(raw)) + raw


def _compound(code: bytes, items: list[bytes]) -> bytes:
    """list32 (0xd0) or map32 (0xd1): size (counting the count field), count, the items."""
    body = b"".join(items)
    return code + _U32_U32.pack(len(body) + 4, len(items)) + body


def encode_message(
    message_id: str,
    topic: str,
    payload: bytes,
    retain: bool,
    content_type: str | None,
    expires_at_ms: int | None,
) -> bytes:
    """One record as an AMQP 1.0 bare message."""
    fields = [_str(message_id), _NULL, _NULL, _NULL, _NULL, _NULL]  # message-id .. correlation-id
    fields.append(_symbol(content_type) if content_type else _NULL)  # content-type
    if expires_at_ms is not None:
        fields += [_NULL, _TIMESTAMP.pack(0x83, expires_at_ms)]  # content-encoding, absolute-expiry-time
    properties = _PROPERTIES + _compound(b"\xd0", fields)
    application = _APPLICATION_PROPERTIES + _compound(
        b"\xd1",
        [
            _str(MESSAGE_ID_PROPERTY),
            _str(message_id),
            _str(MQTT_TOPIC_PROPERTY),
            _str(topic),
            _str(MQTT_RETAIN_PROPERTY),
            _TRUE if retain else _FALSE,
        ],
    )
    return properties + application + _DATA + b"\xb0" + _U32.pack(len(payload)) + payload
