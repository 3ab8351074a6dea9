"""The NATS headers of a forwarded record: ours, then one per MQTT 5 user property, in order.

NATS headers may repeat (the server stores the header block as written; Go's ``nats.Header`` is a map of
lists), but nats-py's ``publish`` takes a dict. It only iterates the dict's ``items()`` to write the block,
so `HeaderLines` hands it the ordered list of lines, repeats included (tests/bridge/test_user_properties.py
reads the stored block back raw, so a nats-py that stops doing this fails there).

A user property's name is a header name only when it is a header token (what nats-py and NATS accept) and
names nothing NATS acts on (``Nats-*``: ``Nats-Msg-Id`` de-duplication, ``Nats-Expected-*``, ``Nats-Rollup``,
``Nats-TTL`` ...) or edgebus writes (``Edgebus-Retain``, ``Content-Type``): a device must not steer the
stream. Any other name is percent-encoded (RFC 3986: each UTF-8 byte outside the token set, ``%`` itself,
and a reserved name's first byte, as ``%XX``), so percent-decoding a header name always gives the MQTT name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from edgebus.bridge.sink import MESSAGE_ID_HEADER, Record
from edgebus.protocol.packets import UserProperties

__all__ = ["CONTENT_TYPE_HEADER", "RETAIN_HEADER", "HeaderLines", "record_headers", "user_property_header"]

#: NATS has no retain flag; this header carries it both ways ("1" = retained).
RETAIN_HEADER = "Edgebus-Retain"
CONTENT_TYPE_HEADER = "Content-Type"

# An HTTP token (RFC 9110 section 5.6.2; nats-py's check) without "%", which starts an escape here.
_PLAIN_NAME = re.compile(r"[!#$&'*+\-.^_`|~0-9A-Za-z]+")
_PLAIN_BYTES = frozenset(b"!#$&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_RESERVED_PREFIX = "nats-"
_OWN_HEADERS = frozenset({RETAIN_HEADER.lower(), CONTENT_TYPE_HEADER.lower()})


class HeaderLines(dict[str, str]):
    """A publish's headers for nats-py, in order with repeated names: `items` is the list of lines (the
    dict itself holds the last value of each name, for lookups)."""

    __slots__ = ("lines",)

    def __init__(self, lines: Sequence[tuple[str, str]]) -> None:
        super().__init__(lines)
        self.lines = lines

    def items(self) -> Sequence[tuple[str, str]]:  # type: ignore[override]
        return self.lines


def user_property_header(name: str) -> str | None:
    """The NATS header name of a user property (see the module's docstring); None for an empty name,
    which a NATS header cannot have."""
    if not name:
        return None
    lowered = name.lower()
    reserved = lowered.startswith(_RESERVED_PREFIX) or lowered in _OWN_HEADERS
    if not reserved and _PLAIN_NAME.fullmatch(name):
        return name
    raw = name.encode()
    return "".join(
        chr(byte) if byte in _PLAIN_BYTES and not (reserved and index == 0) else f"%{byte:02X}"
        for index, byte in enumerate(raw)
    )


def _user_property_lines(user_properties: UserProperties) -> list[tuple[str, str]]:
    lines = []
    for name, value in user_properties:
        header = user_property_header(name)
        if header is not None:
            lines.append((header, value))
    return lines


def record_headers(record: Record) -> dict[str, str]:
    """The headers of one record: Nats-Msg-Id, Content-Type, Edgebus-Retain, then the user properties.
    nats-py trims each value and turns CR and LF into spaces (a value cannot end the header line)."""
    headers = {MESSAGE_ID_HEADER: record.message_id}
    if record.content_type:
        headers[CONTENT_TYPE_HEADER] = record.content_type
    if record.retain:
        headers[RETAIN_HEADER] = "1"
    if not record.user_properties:
        return headers
    return HeaderLines([*headers.items(), *_user_property_lines(record.user_properties)])
