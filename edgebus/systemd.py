"""systemd's service notification protocol (sd_notify): READY=1, STATUS=, WATCHDOG=1, STOPPING=1 as
datagrams to $NOTIFY_SOCKET, so a `Type=notify` unit with `WatchdogSec=` knows when edgebus serves and
restarts it when its event loop stops answering. Without $NOTIFY_SOCKET every call does nothing."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

log = logging.getLogger("edgebus.systemd")


class Notifier:
    """Sends state changes to the service manager. ``address`` is $NOTIFY_SOCKET: a path, or an
    abstract socket name starting with '@'; ``watchdog_usec`` is $WATCHDOG_USEC (0: no watchdog)."""

    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address: str | bytes | None = None
        if address:
            # '@name' is Linux's abstract namespace, written with a leading NUL on the wire.
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec if self.address is not None else 0
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        # The watchdog is meant for this process only when WATCHDOG_PID (if set) names it.
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0
        return cls(environ.get("NOTIFY_SOCKET"), watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> None:
        """Send one datagram of KEY=value lines; a failure is logged, never raised (the broker serves on)."""
        if self.address is None:
            return
        message = "".join(f"{key}={value}\n" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            log.warning("systemd notification to %r failed: %s", self.address, exc)

    def ready(self, status: str) -> None:
        self.notify(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def reloading(self, status: str) -> None:
        """Before a reload; `ready` after it. MONOTONIC_USEC (CLOCK_MONOTONIC, µs) is what systemd >= 253
        asks of `Type=notify-reload` services; older ones ignore it."""
        self.notify(RELOADING="1", STATUS=status, MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def stopping(self, status: str) -> None:
        self.notify(STOPPING="1", STATUS=status)

    async def watchdog_forever(self) -> None:
        """WATCHDOG=1 at half the interval systemd asked for, from the event loop itself: a loop that
        stops running stops the pings, and systemd restarts the service."""
        if not self.watchdog_usec:
            return
        interval = self.watchdog_usec / 2_000_000
        while True:
            self.notify(WATCHDOG="1")
            await trio.sleep(interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
