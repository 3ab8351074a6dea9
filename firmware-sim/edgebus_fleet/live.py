"""The live display: devices connected, msgs/s, in flight and losses so far, refreshed once a second."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgebus_fleet.engine import Engine

__all__ = ["LiveDisplay"]


class LiveDisplay:
    """Engine progress with rich.Live on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, console: Console, plain_every_s: float = 5.0) -> None:
        self.console = console
        self.live: Live | None = None
        self.plain_every_s = plain_every_s
        self._last_plain = -1e9
        self._last: tuple[float, int, int] | None = None
        self.rate = 0.0

    def __enter__(self) -> LiveDisplay:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, engine: Engine) -> None:
        if not engine.samples:
            return
        sample = engine.samples[-1]
        if self._last is not None and sample.t > self._last[0]:
            self.rate = (sample.delivered - self._last[1]) / (sample.t - self._last[0])
            send_rate = (sample.sent - self._last[2]) / (sample.t - self._last[0])
        else:
            send_rate = 0.0
        self._last = (sample.t, sample.delivered, sample.sent)
        total = len(engine.devices)
        if self.live is not None:
            table = Table(title=f"edgebus-fleet {engine.fleet.name}: {engine.phase}", show_header=True)
            for name in (
                "t (s)",
                "connected",
                "asleep",
                "sent/s",
                "delivered/s",
                "in flight",
                "overdue",
                "dups",
                "sent",
                "delivered",
            ):
                table.add_column(name, justify="right")
            table.add_row(
                f"{sample.t:.0f}/{engine.duration:g}",
                f"{sample.connected}/{total}",
                str(sample.asleep),
                f"{send_rate:.0f}",
                f"{self.rate:.0f}",
                str(sample.in_flight),
                str(sample.overdue),
                str(sample.duplicates),
                str(sample.sent),
                str(sample.delivered),
            )
            self.live.update(table)
        elif sample.t - self._last_plain >= self.plain_every_s:
            self._last_plain = sample.t
            self.console.print(
                f"[{engine.phase}] t={sample.t:.0f}s connected={sample.connected}/{total} "
                f"asleep={sample.asleep} "
                f"sent/s={send_rate:.0f} delivered/s={self.rate:.0f} in_flight={sample.in_flight} "
                f"overdue={sample.overdue} dups={sample.duplicates}",
                highlight=False,
                markup=False,
            )
