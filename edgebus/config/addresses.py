"""Listen addresses: ``HOST:PORT`` parsing and the checks of the settings that hold them."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from edgebus.config.schema import Check, Invalid, show

MAX_PORT: Final = 65535


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A TCP address to listen on. ``host`` is kept without IPv6 brackets; port 0 means any free port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("listen address host must not be empty")
        if isinstance(self.port, bool) or not 0 <= self.port <= MAX_PORT:
            raise ValueError(f"listen address port must be from 0 to {MAX_PORT}, got {self.port!r}")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_LISTEN_EXAMPLES: Final = "e.g. 0.0.0.0:1883, localhost:1883 or [::1]:1883"


def parse_listen_address(text: str) -> ListenAddress:
    """Parse ``HOST:PORT`` (IPv6 as ``[ADDR]:PORT``). Raises ValueError saying what is wrong."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"invalid listen address {show(text)}: missing ']' after the IPv6 address")
        if not rest.startswith(":"):
            raise ValueError(f"invalid listen address {show(text)}: expected ':PORT' after ']'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"invalid listen address {show(text)}: {show(host)} is not an IPv6 address"
            ) from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"invalid listen address {show(text)}: expected HOST:PORT, {_LISTEN_EXAMPLES}")
        if ":" in host:
            raise ValueError(
                f"invalid listen address {show(text)}: put an IPv6 address in brackets, e.g. [::1]:1883"
            )
        if not host:
            raise ValueError(
                f"invalid listen address {show(text)}: missing host (use 0.0.0.0 or [::] for all interfaces)"
            )
        if not _is_host(host):
            raise ValueError(
                f"invalid listen address {show(text)}: {show(host)} is not an IPv4 address or host name"
            )
    if not _PORT_RE.fullmatch(port_text) or int(port_text) > MAX_PORT:
        raise ValueError(
            f"invalid listen address {show(text)}: port must be an integer from 0 to {MAX_PORT}, "
            f"got {show(port_text)}"
        )
    return ListenAddress(host, int(port_text))


def _is_host(host: str) -> bool:
    """An IPv4 dotted quad or a DNS host name (RFC 1123 labels)."""
    labels = host.removesuffix(".").split(".")
    if all(label.isascii() and label.isdigit() for label in labels):
        # All-numeric: only a proper dotted quad makes sense ("999.1.1.1" and "1883" do not).
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 253 and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)


@dataclass(frozen=True, slots=True)
class ListenAddresses(Check):
    """A non-empty list of distinct ``HOST:PORT`` strings, converted to a tuple of ``ListenAddress``."""

    def expected(self) -> str:
        return 'a non-empty list of "HOST:PORT" strings'

    def convert(self, value: object) -> object:
        if not isinstance(value, list) or not value:
            raise self.fail(value)
        addresses: list[ListenAddress] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise Invalid(f'must be a "HOST:PORT" string, got {show(item)}', at=(index,))
            try:
                address = parse_listen_address(item)
            except ValueError as error:
                raise Invalid(str(error), at=(index,), needle=item) from None
            if address in addresses:
                raise Invalid(f"{show(item)} is listed twice", at=(index,), needle=item)
            addresses.append(address)
        return tuple(addresses)


@dataclass(frozen=True, slots=True)
class OneListenAddress(Check):
    """One ``HOST:PORT`` string, converted to a ``ListenAddress``."""

    def expected(self) -> str:
        return 'a "HOST:PORT" string'

    def convert(self, value: object) -> object:
        if not isinstance(value, str):
            raise self.fail(value)
        try:
            return parse_listen_address(value)
        except ValueError as error:
            raise Invalid(str(error)) from None
