"""The configured bridges as a set a reload can change: each runs in its own cancel scope, and the outbox of a
bridge that is no longer configured is kept (in memory and in the store) until one of that name comes back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from edgebus.bridge.outbox import Outbox
from edgebus.bridge.runner import Bridge
from edgebus.config import BridgeConfig
from edgebus.store import OutboxRow, Store

log = logging.getLogger("edgebus.server.bridges")


@dataclass
class BridgePlan:
    """A reload's bridges, built but not yet running: ``bridges`` in configuration order (unchanged ones are
    the running objects), ``started`` the new objects among them, ``stopped`` the running ones they replace
    or that are removed."""

    bridges: list[Bridge]
    started: list[Bridge] = field(default_factory=list)
    stopped: list[Bridge] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)


@dataclass
class _Run:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class BridgeSet:
    """``active`` is THE list fanout, commits and $SYS iterate. A reload changes it in place with no await
    between deciding and changing, so a message routed during a reload goes to exactly the bridges
    configured at that instant. ``make`` builds a Bridge from its config (the broker's callbacks)."""

    def __init__(
        self, make: Callable[[BridgeConfig], Bridge], configs: Sequence[BridgeConfig], store: Store | None
    ):
        self._make = make
        self._store = store
        self.active: list[Bridge] = [make(config) for config in configs]
        #: Outboxes of bridges not configured now, by name: their rows and sequence numbers, kept for a
        #: bridge of that name that a later reload brings back (rows are never dropped by a reload).
        self.parked: dict[str, Outbox] = {}
        self.epoch = ""
        self._runs: dict[Bridge, _Run] = {}
        self._nursery: trio.Nursery | None = None

    def restore(self, outboxes: dict[str, list[OutboxRow]], cursors: dict[str, int], epoch: str) -> None:
        """What the store held at start: each configured bridge's rows; the others are parked."""
        self.epoch = epoch
        configured = {bridge.name for bridge in self.active}
        for bridge in self.active:
            bridge.restore(outboxes.get(bridge.name, []), cursors.get(bridge.name, 0), epoch)
        for name in sorted((outboxes.keys() | cursors.keys()) - configured):
            rows = outboxes.get(name, [])
            # Its budget does not matter while parked (nothing is appended); the adopting bridge sets its own.
            outbox = Outbox(name, self._store, 1, 1, "refuse")
            outbox.restore(rows, cursors.get(name, 0))
            self.parked[name] = outbox
            if rows:
                log.warning(
                    "store: the outbox of bridge %r holds %d messages but no such bridge is configured: "
                    "kept until it is configured again",
                    name,
                    len(outbox.entries),
                )

    def start_all(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        for bridge in self.active:
            self._start(bridge)

    def _start(self, bridge: Bridge) -> None:
        assert self._nursery is not None
        run = self._runs[bridge] = _Run()
        self._nursery.start_soon(self._run, bridge, run, name=f"bridge {bridge.name}")

    async def _run(self, bridge: Bridge, run: _Run) -> None:
        try:
            with run.scope:
                await bridge.run()
        finally:
            run.done.set()

    def plan(self, configs: Sequence[BridgeConfig]) -> BridgePlan:
        """Build the bridges of ``configs`` that are new or changed (a bridge is known by its name: a rename
        is a removal and an addition). Raises what `Bridge` raises for a bridge that cannot run (a missing
        package); nothing has changed then."""
        running = {bridge.name: bridge for bridge in self.active}
        plan = BridgePlan([])
        for config in configs:
            old = running.pop(config.name, None)
            if old is not None and old.config == config:
                plan.bridges.append(old)
                continue
            bridge = self._make(config)
            plan.bridges.append(bridge)
            plan.started.append(bridge)
            if old is not None:
                plan.stopped.append(old)
            plan.changes.append(f"bridge {config.name}: {'added' if old is None else 'changed'}")
        for old in running.values():
            plan.stopped.append(old)
            plan.changes.append(f"bridge {old.name}: removed")
        return plan

    async def apply(self, plan: BridgePlan) -> None:
        """Switch to ``plan``: outboxes handed over and the shared list changed in one synchronous step; then
        the replaced runners stopped (each finishes with its batch in flight unsent, resumed by its
        successor from what the upstream's log holds), then the new ones started."""
        replaced = {bridge.name: bridge for bridge in plan.stopped}
        for bridge in plan.started:
            old = replaced.pop(bridge.name, None)
            outbox = old.outbox if old is not None else self.parked.pop(bridge.name, None)
            if outbox is not None:
                bridge.adopt(outbox, self.epoch)
            else:
                bridge.restore([], 0, self.epoch)
        for name, old in replaced.items():  # removed: the outbox waits for a bridge of that name
            self.parked[name] = old.outbox
        self.active[:] = plan.bridges  # the switch, atomic for the trio thread (reloads are serialised)
        stopping = [(old, self._runs.pop(old, None)) for old in plan.stopped]
        for _, run in stopping:
            if run is not None:
                run.scope.cancel()
        for old, run in stopping:
            if run is not None:
                await run.done.wait()
            if old.name in replaced:
                old.removed()
                if old.outbox.entries:
                    log.info(
                        "bridge %s removed: %d messages kept in its outbox", old.name, len(old.outbox.entries)
                    )
        if self._nursery is not None:
            for bridge in plan.started:
                self._start(bridge)
