"""One connection to an upstream MQTT broker: records out under fixed packet ids, each slice followed by
its retained checkpoint; resume from that checkpoint; in-rule messages in, acknowledged after delivery.

Why this adds up to exactly once is told in edgebus.bridge.mqtt, whose `MqttSink` opens these uplinks.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence

import trio

from edgebus.bridge.sink import (
    MESSAGE_ID_PROPERTY,
    Deliver,
    InboundMessage,
    Record,
    SinkBase,
    SinkError,
)
from edgebus.client_trio import MqttConnection
from edgebus.core.client import (
    ClientOptions,
    Connected,
    Event,
    MessageReceived,
    MqttClient,
    PublishAcknowledged,
    SubscribeAcknowledged,
    UnsubscribeAcknowledged,
)
from edgebus.core.flows import MAX_PACKET_ID
from edgebus.protocol.enums import MQTT_5, RetainHandling
from edgebus.protocol.packets import NO_PROPERTIES, Properties, Subscription, UserProperties

__all__ = ["CHECKPOINT_QOS", "INBOUND_QOS0_BUFFER", "MqttUplink", "packet_id_of"]

# The sink's logger: one name to configure for the MQTT bridge.
log = logging.getLogger("edgebus.bridge")

#: Inbound QoS 0 messages buffered for `deliver` beyond which new ones are dropped (counted, logged):
#: QoS 0 has no flow control, and at most once allows dropping.
INBOUND_QOS0_BUFFER = 10_000


def packet_id_of(seq: int) -> int:
    """The fixed packet id of outbox entry ``seq``: 1..MAX_PACKET_ID (65535), the same in every process."""
    return (seq - 1) % MAX_PACKET_ID + 1


#: The checkpoint's QoS: 1, so that an upstream refusing it (ACL) is noticed.
CHECKPOINT_QOS = 1


class MqttUplink:
    """One connection to the upstream MQTT broker (the `Uplink` of `MqttSink`): a fresh client with
    ``options``; the records' checkpoint is kept on ``checkpoint_topic``."""

    def __init__(self, sink: SinkBase, options: ClientOptions, checkpoint_topic: str) -> None:
        self.sink = sink
        self.bridge = sink.bridge
        self.checkpoint_topic = checkpoint_topic
        self.client = MqttClient(options)
        self._connection: MqttConnection | None = None
        self.session_present = False
        # Waiters sleep on `_changed`; every event and the close set it and replace it.
        self._changed = trio.Event()
        # Outbound flows this connection waits for: token -> the record (None: a release in resume).
        self._pending: dict[object, Record | None] = {}
        self._failures: list[str] = []
        self._rejected: list[int] = []  # seqs of records the upstream refused
        # SUBACK / UNSUBACK by packet id, until the request that waits for it takes it.
        self._answers: dict[int, SubscribeAcknowledged | UnsubscribeAcknowledged] = {}
        # The last seq passed to resume(): records up to it may have been sent on an earlier connection.
        self._resumed_last = 0
        # Checkpoint payloads seen while resume() reads the checkpoint topic.
        self._reading_checkpoint = False
        self._checkpoints: list[bytes] = []
        # In rules: messages waiting for deliver(), in arrival order.
        self._inbound: deque[MessageReceived] = deque()
        self._inbound_qos0 = 0
        self._inbound_ready = trio.Event()
        self.dropped_qos0 = 0
        self.closing = False  # the runner is leaving: the connection's end is no failure

    @property
    def connection(self) -> MqttConnection:
        if self._connection is None:  # pragma: no cover - set by MqttSink.connect before use
            raise RuntimeError("uplink not connected")
        return self._connection

    def attach(self, connection: MqttConnection) -> None:
        """The connection `connect_mqtt` opened for this uplink's client (MqttSink.connect, before use)."""
        self._connection = connection

    @property
    def max_qos(self) -> int:
        """The highest QoS this upstream takes: the bridge's ``max_qos`` (a 3.1.1 server cannot say; AWS
        IoT Core leaves a QoS 2 PUBLISH unanswered, RabbitMQ 3.10 answers it with a PUBACK), capped by an
        MQTT 5 server's Maximum QoS (CONNACK) [MQTT-3.2.2-9]."""
        return min(self.bridge.max_qos, self.client.server_maximum_qos)

    # --- events (synchronous, from the connection's reader and writer tasks) ------------------------------

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self._inbound_ready.set()

    def on_event(self, event: Event) -> None:
        if isinstance(event, PublishAcknowledged):
            if event.token in self._pending:
                record = self._pending.pop(event.token)
                if record is not None and not event.success:
                    self._rejected.append(record.seq)
                    self._failures.append(
                        f"record {record.message_id} (seq {record.seq}, topic {record.topic!r}) refused "
                        f"with reason code 0x{event.reason_code:02X}"
                    )
                elif not event.success and isinstance(event.token, tuple) and event.token[0] == "checkpoint":
                    # Without its checkpoint a resend after a crash could duplicate: stop here, loudly.
                    self._failures.append(
                        f"the checkpoint on {self.checkpoint_topic!r} was refused with reason code "
                        f"0x{event.reason_code:02X} (does the upstream's ACL allow it?)"
                    )
        elif isinstance(event, MessageReceived):
            self._on_message(event)
        elif isinstance(event, SubscribeAcknowledged):
            self._answers[event.suback.packet_id] = event
        elif isinstance(event, UnsubscribeAcknowledged):
            self._answers[event.unsuback.packet_id] = event
        elif isinstance(event, Connected):
            self.session_present = event.session_present
        self.notify()

    def _on_message(self, event: MessageReceived) -> None:
        publish = event.publish
        if publish.topic == self.checkpoint_topic:
            # Our own checkpoint, never an inbound message (even if an in rule's filter matches it).
            if self._reading_checkpoint and publish.retain:
                self._checkpoints.append(publish.payload)
            self._acknowledge(publish.packet_id, publish.qos)
            return
        if self.sink.topic_map.route_in(publish.topic) is None:
            self._acknowledge(publish.packet_id, publish.qos)  # matched no in rule: nothing to deliver
            return
        if publish.qos == 0:
            if self._inbound_qos0 >= INBOUND_QOS0_BUFFER:
                self.dropped_qos0 += 1
                return
            self._inbound_qos0 += 1
        self._inbound.append(event)

    def _acknowledge(self, packet_id: int | None, qos: int) -> None:
        if qos and packet_id is not None:
            self.client.acknowledge(packet_id)
            # From an event handler the connection wakes its writer itself (it checks for output after
            # every batch of events); a message may arrive before connect_mqtt returned.
            if self._connection is not None:
                self._connection.wake()

    # --- waiting --------------------------------------------------------------------------------------------

    def _raise_if_closed(self, what: str) -> None:
        connection = self.connection
        if connection.closed.is_set():
            raise SinkError(f"upstream connection lost ({connection.close_reason}) while {what}")

    async def _wait_until(self, done: Callable[[], bool], what: str) -> None:
        """Wait until ``done()``; SinkError when the connection closes first or after ack_timeout."""
        timeout = self.bridge.ack_timeout
        deadline = trio.current_time() + timeout
        while True:
            changed = self._changed
            if done():
                return
            self._raise_if_closed(what)
            if trio.current_time() >= deadline:
                raise SinkError(f"upstream did not answer within {timeout:g} s while {what}")
            with trio.move_on_at(deadline):
                await changed.wait()

    # --- in rules -------------------------------------------------------------------------------------------

    async def subscribe_in_rules(self) -> None:
        filters = self.sink.topic_map.remote_filters()
        if not filters:
            return
        v5 = self.client.protocol_level == MQTT_5
        # Retain handling 1: retained messages only for a subscription the (persistent) session does not
        # have yet, so a reconnect does not bring them in again (§3.8.3.1; 3.1.1 has no such option).
        subscriptions = [
            # v5: No Local, so a "both" rule's own messages do not come back down [MQTT-3.8.3-3];
            # Retain As Published, so a retained command stays retained here [MQTT-3.3.1-12].
            Subscription(
                topic_filter,
                min(qos, self.bridge.max_qos),
                no_local=v5,
                retain_as_published=v5,
                retain_handling=RetainHandling.SEND_IF_NEW_SUBSCRIPTION,
            )
            for topic_filter, qos in filters
        ]
        answer = await self._request(
            lambda: self.client.subscribe(subscriptions), "subscribing to the in rules"
        )
        assert isinstance(answer, SubscribeAcknowledged)
        codes = answer.suback.reason_codes
        refused = [
            f"{topic_filter!r}: 0x{code:02X}"
            for (topic_filter, _), code in zip(filters, codes, strict=False)
            if code >= 0x80
        ]
        if refused:
            raise SinkError(f"upstream refused the in-rule subscriptions: {', '.join(refused)}")

    async def _request(
        self, queue_request: Callable[[], int], what: str
    ) -> SubscribeAcknowledged | UnsubscribeAcknowledged:
        """Queue a SUBSCRIBE / UNSUBSCRIBE (``queue_request`` returns its packet id), wake the writer and
        wait (ack_timeout) for its answer. SinkError when the connection is gone, even just now."""
        self._raise_if_closed(what)
        try:
            packet_id = queue_request()
        except RuntimeError as exc:  # the client saw the connection end before we did
            raise SinkError(f"upstream connection lost while {what}: {exc}") from None
        self.connection.wake()
        answers = self._answers
        await self._wait_until(lambda: packet_id in answers, what)
        return answers.pop(packet_id)

    async def deliver_inbound(self) -> None:
        """Hand inbound messages to deliver() in order, one at a time; acknowledge each only after
        deliver returned (it then is committed locally). A message not acknowledged when the connection
        ends is sent again by the upstream on the next one [MQTT-4.4.0-1].

        Also the link's watchdog: a connection that ends while the runner is idle (keep-alive timeout,
        EOF) raises SinkError here, which cancels the runner's body: an idle bridge notices too."""
        deliver = self.sink.deliver
        connection = self.connection
        await self._deliver_until_closed(deliver, connection)
        if not self.closing:
            raise SinkError(f"upstream connection lost ({connection.close_reason})")

    async def _deliver_until_closed(self, deliver: Deliver, connection: MqttConnection) -> None:
        while not connection.closed.is_set():
            if not self._inbound:
                self._inbound_ready = trio.Event()
                await self._inbound_ready.wait()
                continue
            event = self._inbound.popleft()
            publish = event.publish
            if publish.qos == 0:
                self._inbound_qos0 -= 1
            await deliver(InboundMessage(publish.topic, publish.payload, publish.qos, publish.retain))
            if connection.closed.is_set():
                return
            self._acknowledge(publish.packet_id, publish.qos)

    # --- the Uplink interface ---------------------------------------------------------------------------

    async def resume(self, first_seq: int, last_seq: int) -> int:
        """Read the checkpoint C, release the ids of the records up to C the upstream may still hold,
        and return C (0 when there is none, or it is another gateway's or store epoch's)."""
        self._resumed_last = last_seq
        bridge = self.bridge
        client = self.client
        if not client.server_retain_available:
            raise SinkError("the upstream does not keep retained messages: the checkpoint cannot work")
        checkpoint = await self._read_checkpoint()
        qos_2 = self.max_qos >= 2
        if checkpoint and not self.session_present and qos_2:
            # The upstream lost our session: records it received but we never released are gone with
            # it (their PUBREL cannot deliver them now). Nothing here can tell which; say so. (At QoS 1
            # a record is delivered on receipt: nothing waits for a release.)
            log.warning(
                "bridge %s: upstream has no session for us but a checkpoint at %d: records up to it that "
                "were received and not yet released may be lost upstream",
                bridge.name,
                checkpoint,
            )
        last_release = min(checkpoint, last_seq, first_seq + bridge.batch_window - 1)
        if not qos_2:
            # No QoS 2 flow was ever started here, so none to release; and a PUBREL would hurt: RabbitMQ
            # 3.10's MQTT plugin answers one for an id it does not hold with silence, PINGRESP included.
            last_release = first_seq - 1
        tokens: list[object] = []
        try:
            for seq in range(first_seq, last_release + 1):
                token = ("release", seq)
                self._pending[token] = None
                tokens.append(token)
                client.release(packet_id_of(seq), token)
        except RuntimeError as exc:  # the connection ended while we were reading the checkpoint
            raise SinkError(f"upstream connection lost while releasing packet ids: {exc}") from None
        if tokens:
            self.connection.wake()
            pending = self._pending
            await self._wait_until(
                lambda: not pending,  # only this wait's tokens are pending (one wait at a time)
                f"releasing {len(tokens)} packet ids",
            )
        log.info("bridge %s: resumed at %d (%d ids released)", bridge.name, checkpoint, len(tokens))
        return checkpoint

    async def _read_checkpoint(self) -> int:
        topic = self.checkpoint_topic
        client = self.client
        self._checkpoints = []
        self._reading_checkpoint = True
        try:
            # Retain handling 0 (send retained messages on subscribe): the server sends the retained
            # checkpoint [MQTT-3.8.4-4] (5.0; [MQTT-3.3.1-6] in 3.1.1).
            answer = await self._request(
                lambda: client.subscribe([Subscription(topic, 0)]), "reading the checkpoint (SUBACK)"
            )
            assert isinstance(answer, SubscribeAcknowledged)
            code = answer.suback.reason_codes[0]
            if code >= 0x80:
                raise SinkError(f"upstream refused the checkpoint subscription {topic!r}: 0x{code:02X}")
            # The server handles our packets in order, so the retained message (sent for the SUBSCRIBE)
            # is on the wire before the UNSUBACK.
            await self._request(lambda: client.unsubscribe([topic]), "reading the checkpoint (UNSUBACK)")
        finally:
            self._reading_checkpoint = False
        if not self._checkpoints:
            return 0
        payload = self._checkpoints[-1]
        try:
            message_id = payload.decode("utf-8")
        except UnicodeDecodeError:
            return 0
        return self.sink.identity.seq_of(message_id)

    async def send(self, records: Sequence[Record]) -> None:
        """Publish ``records`` in order, each slice (at most the send window) followed by the checkpoint
        of its last record; return once every QoS 1/2 record's flow completed. SinkError on a refusal,
        a lost connection, or a slice unanswered for ack_timeout."""
        if not records:
            return
        self._raise_if_closed("sending")
        client = self.client
        start = 0
        while start < len(records):
            # A slice holds at most send-window QoS 1/2 records: they all go out at once, with the
            # checkpoint right behind them, before any of their PUBRELs.
            window = max(1, client.send_window - CHECKPOINT_QOS) if client.send_window > 1 else 1
            end = start
            counted = 0
            while end < len(records) and (counted < window or not records[end].qos):
                counted += 1 if records[end].qos else 0
                end += 1
            await self._send_slice(records[start:end])
            start = end

    async def _send_slice(self, records: Sequence[Record]) -> None:
        client = self.client
        v5 = client.protocol_level == MQTT_5
        max_qos = self.max_qos
        tokens: list[object] = []
        for record in records:
            properties = NO_PROPERTIES
            if v5:
                # Ours first, then the device's in their order [MQTT-3.3.2-18]; 3.1.1 has no properties.
                user_properties: UserProperties = ((MESSAGE_ID_PROPERTY, record.message_id),)
                if record.user_properties:
                    user_properties += record.user_properties
                properties = Properties(
                    message_expiry_interval=record.expiry_interval,
                    user_properties=user_properties,
                    content_type=record.content_type,
                )
            qos = record.qos
            if qos > max_qos:
                # [MQTT-3.2.2-11]: never above the server's Maximum QoS (CONNACK) or the bridge's max_qos;
                # at least once, then.
                self.sink.note_qos_downgrade(qos, max_qos)
                qos = max_qos
            token: object = None
            if qos:
                token = ("record", record.seq)
                self._pending[token] = record
                tokens.append(token)
            accepted = client.publish(
                record.topic,
                record.payload,
                qos,
                record.retain,
                properties,
                token,
                packet_id=packet_id_of(record.seq) if qos else 0,
                dup=bool(qos) and record.seq <= self._resumed_last,
            )
            if not accepted:
                self._raise_if_closed("sending")
                raise SinkError(f"record {record.message_id} refused by the client queue (full)")
        # [MQTT-3.3.1-5]: a retained message replaces the retained one on the topic. QoS 1 so that a
        # refusal (an ACL) is seen; the slice leaves it a window slot, so it goes out right behind the
        # records, before any of their PUBRELs (a window of 1 leaves no slot: QoS 0 then).
        last = records[-1]
        checkpoint_qos = CHECKPOINT_QOS if client.send_window > 1 else 0
        checkpoint_token = ("checkpoint", last.seq)
        if checkpoint_qos:
            self._pending[checkpoint_token] = None
            tokens.append(checkpoint_token)
        if not client.publish(
            self.checkpoint_topic, last.message_id.encode(), checkpoint_qos, True, token=checkpoint_token
        ):
            self._raise_if_closed("sending the checkpoint")
            raise SinkError("checkpoint refused by the client queue (full)")
        self.connection.wake()
        pending = self._pending
        failures = self._failures
        try:
            await self._wait_until(
                # One wait at a time: pending holds this slice's tokens only, so empty means done.
                lambda: bool(failures) or not pending,
                f"waiting for the acknowledgements of records {records[0].seq}..{last.seq}",
            )
        finally:
            for token in tokens:
                pending.pop(token, None)
        if failures:
            raise SinkError("; ".join(failures), rejected_seq=min(self._rejected) if self._rejected else None)
