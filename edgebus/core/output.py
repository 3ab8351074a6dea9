"""The output half of a server-role connection (sans-IO): the replies it writes, some held until the
store has committed what they promise, and its queued deliveries, sent as the send window allows.

`edgebus.core.server.Connection` is a ConnectionOutput; the input half (decoding, the flows the client
starts, CONNECT) is there. Nothing here awaits or imports trio, sockets or the store."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from edgebus.core.flows import FlowState, TopicAliases
from edgebus.core.message import Message
from edgebus.core.server_events import REPLY_OVERHEAD_BYTES
from edgebus.core.session import Inflight, Session
from edgebus.core.stats import Stats
from edgebus.protocol.encoder import encode
from edgebus.protocol.packets import Packet


class ConnectionState(enum.Enum):
    AWAIT_CONNECT = 1
    CONNECTING = 2  # CONNECT decoded, the broker has not answered yet
    CONNECTED = 3
    CLOSED = 4


class ConnectionOutput:
    """What one connection writes: control packets (acks, SUBACKs, PINGRESPs) first, each in order and
    none before the store commit it waits for, then queued deliveries. `take_output` returns the bytes
    to write, stamping packet ids and aliases as the send window allows."""

    __slots__ = (
        "_control",
        "_held",
        "_held_bytes",
        "aliases",
        "client_max_packet_size",
        "committed_seq",
        "on_hold",
        "output_bytes",
        "protocol_level",
        "session",
        "state",
        "stats",
        "wake",
    )

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.state = ConnectionState.AWAIT_CONNECT
        self.protocol_level = 4
        self.session: Session | None = None
        # Called when there is something new to write; the broker wires it to its writer task.
        self.wake: Callable[[], None] = _nothing
        self._control: list[bytes] = []  # acks, SUBACKs, PINGRESPs: written before queued messages
        # Bytes in `_control` and `_held` (+ overhead): the broker stops reading while past its bound.
        self.output_bytes = 0
        self._held_bytes = 0
        # Replies waiting for a store commit, in order: (commit number, bytes, settling message). Once
        # one waits, everything after it waits too, so acks keep the order of their PUBLISHes
        # [MQTT-4.6.0-2]. A PUBACK whose message wrote nothing but its stored deliveries names it: it may
        # go before the commit once those deliveries are all finished (`settled`).
        # None while nothing is held: an empty deque costs ~600 bytes, and most connections never hold.
        self._held: deque[tuple[int, bytes, Message | None]] | None = None
        self.committed_seq = 0
        # Called when the first reply is held, so the broker knows to call `release` on commits.
        self.on_hold: Callable[[ConnectionOutput], None] = _nothing
        # What the client told us in CONNECT (§3.1.2.11).
        self.client_max_packet_size = 268_435_460
        # Topic aliases, from `accept` on, on 5.0 only: 3.1.1 has none (and an idle connection is smaller).
        self.aliases: TopicAliases | None = None

    # --- replies ---------------------------------------------------------------------------------

    def send(self, packet: Packet, wait: int = 0) -> None:
        """Queue a control packet (SUBACK, UNSUBACK, DISCONNECT, ...), after commit ``wait``."""
        self._reply(encode(packet, self.protocol_level), wait)

    def _reply(self, data: bytes, wait: int = 0, settling: Message | None = None) -> None:
        if not self._held_back(data, wait, settling):
            self._control.append(data)
            self.output_bytes += len(data) + REPLY_OVERHEAD_BYTES
            self.wake()

    def _held_back(self, data: bytes, wait: int, settling: Message | None = None) -> bool:
        """Hold ``data`` back if it must wait for commit ``wait``, or behind a reply held already.
        ``settling``: the message whose PUBACK this is, if all it waits for are its stored deliveries."""
        held = self._held  # None, or not empty (`release` drops it once empty)
        if held is None:
            if wait <= self.committed_seq:
                return False
            self.on_hold(self)
            held = self._held = deque()
        held.append((wait, data, settling))
        if settling is not None:
            settling.on_settled = self.settled
        size = len(data) + REPLY_OVERHEAD_BYTES
        self._held_bytes += size
        self.output_bytes += size
        return True

    def release(self, committed_seq: int) -> bool:
        """The store committed batch ``committed_seq``: replies waiting for it go out. Returns
        whether some still wait."""
        self.committed_seq = committed_seq
        held = self._held
        released = False
        while held and (held[0][0] <= committed_seq or _is_settled(held[0][2])):
            _, data, settling = held.popleft()
            if settling is not None:
                settling.on_settled = None  # a message queued on keeps no reference to this connection
            self._control.append(data)
            self._held_bytes -= len(data) + REPLY_OVERHEAD_BYTES
            released = True
        if released:
            self.wake()
        if held:
            return True
        self._held = None
        return False

    def settled(self) -> None:
        """A held PUBACK's message has no stored delivery left (its subscribers acknowledged it, or it
        was dropped): nothing of it needs the disk any more, so it goes now, in order."""
        if self._held is not None:
            self.release(self.committed_seq)

    # --- output ----------------------------------------------------------------------------------

    def has_output(self) -> bool:
        """Whether `take_output` would return something now."""
        if self._control:
            return True
        session = self.session
        if session is None or self.state is not ConnectionState.CONNECTED or not session.outbox:
            return False
        return session.outbox.peek().qos == 0 or session.inflight.has_room()

    def take_output(self, now: float, limit_bytes: int = 1 << 62) -> list[bytes]:
        """What there is to write now, about ``limit_bytes`` at most: control packets first, then
        queued deliveries as far as the send window (the client's Receive Maximum) allows
        [MQTT-3.3.4-7]."""
        out = self._control
        self._control = []
        self.output_bytes = self._held_bytes
        session = self.session
        if session is None or self.state is not ConnectionState.CONNECTED:
            return out
        outbox = session.outbox
        if not outbox:
            return out
        inflight = session.inflight
        window = inflight.window
        level = self.protocol_level
        stats = self.stats
        max_size = self.client_max_packet_size
        aliases = self.aliases
        if aliases is not None and not aliases.outbound_maximum:
            aliases = None
        journal = session.journal
        size = 0
        while outbox:
            delivery = outbox.peek()
            qos = delivery.qos
            if qos and len(inflight) >= window:
                break
            outbox.pop()
            message = delivery.message
            if message.expiry_deadline is not None and now >= message.expiry_deadline:
                stats.messages_expired += 1  # [MQTT-3.3.2-5]: expired messages are not sent
                if journal is not None:
                    journal.delivery_finished(session, delivery)
                continue
            pid = inflight.allocate() if qos else 0
            alias = 0
            send_topic = True
            if aliases is not None:
                alias = aliases.known(message.topic)
                send_topic = not alias
                if send_topic:
                    alias = aliases.assign(message.topic)
            data = message.encode(
                level,
                qos,
                delivery.retain,
                packet_id=pid,
                subscription_ids=delivery.subscription_ids,
                topic_alias=alias,
                send_topic=send_topic,
                now=now,
            )
            if len(data) > max_size:
                # Never send a packet over the client's Maximum Packet Size; the message is
                # discarded for this client as if it had been sent [MQTT-3.1.2-24, MQTT-3.1.2-25].
                stats.messages_too_large += 1
                if aliases is not None and alias and send_topic:
                    aliases.forget(message.topic)  # the alias was new: the client never got it
                if journal is not None:
                    journal.delivery_finished(session, delivery)
                continue
            stats.messages_sent += 1  # now, or once held back below
            stats.sent_by_qos[qos] += 1
            if qos:
                inflight.send(pid, Inflight(delivery, FlowState.QUEUED), qos)
                # A QoS 2 PUBLISH goes out only once its packet id is on disk: resent after a crash
                # under another id, the client would deliver it twice.
                if (
                    journal is not None
                    and delivery.store_seq
                    and self._held_back(data, journal.delivery_sent(session, delivery, pid))
                ):
                    continue
            out.append(data)
            size += len(data)
            if size >= limit_bytes:
                break
        return out


def _nothing(*_: object) -> None:
    return None


def _is_settled(message: Message | None) -> bool:
    """Every stored delivery of ``message`` was acknowledged (`StoreJournal.delivery_acknowledged`)."""
    return message is not None and message.store_refs == 0 and message.on_settled is None
