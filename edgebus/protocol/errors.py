"""The one error the codec and session logic raise: it carries the reason code to answer with."""

from __future__ import annotations

from edgebus.protocol.enums import ReasonCode


class ProtocolError(Exception):
    """Input that breaks the protocol. The connection is closed, with a DISCONNECT carrying
    ``reason_code`` first where the version and state allow it (§4.13)."""

    def __init__(self, reason_code: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.reason_code.name}, {self.message!r})"


def malformed(message: str) -> ProtocolError:
    """A Malformed Packet (0x81): the bytes cannot be parsed per the specification."""
    return ProtocolError(ReasonCode.MALFORMED_PACKET, message)


def protocol_violation(message: str) -> ProtocolError:
    """A Protocol Error (0x82): parsed fine but breaks a rule of the protocol."""
    return ProtocolError(ReasonCode.PROTOCOL_ERROR, message)
