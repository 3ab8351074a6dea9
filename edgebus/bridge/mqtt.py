"""The MQTT upstream sink: forwards outbox records to an MQTT broker exactly once, and brings in rules in.

An MQTT broker is not a log we can query, so exactly-once rests on three things together:

1. **Packet ids derived from the outbox sequence**: ``pid(seq) = (seq - 1) % 65535 + 1``. A record goes out
   at its QoS (normally 2) with that fixed id, so a resend after any reconnect, by this process or by a
   new one after a crash, carries the id the upstream may still hold in its inbound QoS 2 state (PUBREC
   sent, PUBREL awaited), and the upstream does not deliver it again [MQTT-4.3.3-10] (3.1.1:
   [MQTT-4.3.3-2]). The window (at most 30,000) keeps ids in flight distinct.
2. **A retained checkpoint**: after the PUBLISH packets of each slice of a batch, on the same connection
   and so after them in the stream, a QoS 0 retained PUBLISH of the slice's last message id to the
   checkpoint topic. The upstream handles the packets of one connection in order, so once it has
   processed the checkpoint of seq N it has received every record up to N. A slice never exceeds the
   send window, and the next slice is queued only once the previous one completed, so every record's
   checkpoint is written before its PUBREL can be (a PUBREL goes out only after the PUBREC, which
   answers a PUBLISH written together with its checkpoint): a record the upstream has released and
   forgotten is always covered by the checkpoint.
3. **resume(first, last)** on every connection (persistent session): read the checkpoint C (subscribe,
   SUBACK, unsubscribe, UNSUBACK: the retained message comes before the UNSUBACK as the server handles
   our packets in order), release the ids of [first, min(C, last, first + window - 1)] with PUBREL (a
   record the upstream received but whose PUBREL we never sent is delivered now, once) and wait for
   their PUBCOMPs, then report C: the runner skips records up to C and sends the rest, those it may have
   sent before with DUP set [MQTT-3.3.1-1].

Each connection uses a fresh `MqttClient`, so a link cut and a crash take the same path. This module
makes the client's options and TLS context and connects; the connection's work is `MqttUplink`
(edgebus.bridge.mqtt_uplink).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from edgebus.bridge.mqtt_uplink import MqttUplink
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import BridgeIdentity, Deliver, SinkBase, SinkError
from edgebus.client_trio import ConnectError, connect_mqtt
from edgebus.config import BridgeConfig
from edgebus.core.client import ClientOptions, ClientState
from edgebus.nursery import unwrap_single_error
from edgebus.protocol.enums import MQTT_5
from edgebus.transport.tls import client_context

__all__ = ["MqttSink", "checkpoint_topic"]

log = logging.getLogger("edgebus.bridge")

#: Seconds a graceful close (DISCONNECT written) may take when the uplink context is left.
CLOSE_TIMEOUT_S = 1.0
#: Inbound QoS 1/2 messages we let the upstream have unacknowledged at once (our MQTT 5 Receive Maximum):
#: they are handed to `deliver` one at a time, so a larger window would only buffer.
INBOUND_RECEIVE_MAXIMUM = 100
#: Most QoS 1/2 records in flight to a 3.1.1 upstream, whatever bridge.window says. 3.1.1 has no Receive
#: Maximum to learn the server's limit from, and a server past its limit may refuse silently: Mosquitto
#: (max_inflight_messages, default 20) answers a plain PUBREC and drops the message (0x97 has no 3.1.1
#: encoding), which would be a record lost behind a checkpoint that covers it.
MQTT_3_1_1_MAX_INFLIGHT = 20


def checkpoint_topic(bridge: BridgeConfig, client_id: str) -> str:
    """Where the retained checkpoint lives: ``bridge.checkpoint_topic`` or a per-client default."""
    return bridge.checkpoint_topic or f"edgebus/bridge/{client_id}/checkpoint"


class MqttSink(SinkBase):
    """An upstream MQTT broker (3.1.1 or 5.0, TCP or TLS); `connect` opens one `MqttUplink`."""

    def __init__(
        self,
        bridge: BridgeConfig,
        identity: BridgeIdentity,
        topic_map: TopicMap,
        deliver: Deliver,
        client_id: str,
    ) -> None:
        super().__init__(bridge, identity, topic_map, deliver, client_id)
        self.checkpoint_topic = checkpoint_topic(bridge, client_id)

    def _client_options(self) -> ClientOptions:
        bridge = self.bridge
        v5 = bridge.protocol_level == MQTT_5
        username = bridge.username or None
        # 3.1.1 allows a password only with a user name [MQTT-3.1.2-22]; 5.0 allows it alone.
        password = bridge.password.encode() if bridge.password and (username or v5) else None
        return ClientOptions(
            client_id=self.client_id,
            protocol_level=bridge.protocol_level,
            clean_start=False,  # the upstream keeps our inbound QoS 2 state across connections
            keep_alive=max(1, int(bridge.keep_alive)),
            session_expiry_interval=bridge.session_expiry if v5 else 0,
            username=username,
            password=password,
            receive_maximum=INBOUND_RECEIVE_MAXIMUM,
            max_inflight=bridge.batch_window if v5 else min(bridge.batch_window, MQTT_3_1_1_MAX_INFLIGHT),
            auto_acknowledge=False,  # in rules: PUBACK / PUBREC only once deliver() returned
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        bridge = self.bridge
        if not bridge.tls:
            return None
        try:
            # Verifies the chain and the host name (check_hostname) of the address we connect to.
            return client_context(bridge.cafile, bridge.certfile, bridge.keyfile)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise SinkError(f"bridge {bridge.name!r}: cannot load the TLS files: {exc}") from None

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[MqttUplink]:
        """Connect to the first address that accepts (each within connect_timeout) and subscribe the in
        rules; the runner then calls `MqttUplink.resume`. Leaving the context sends DISCONNECT (within
        CLOSE_TIMEOUT_S, shielded) and closes. SinkError when no address accepts; an exception raised by
        ``deliver`` ends the connection (the message stays unacknowledged) and leaves the context as is."""
        bridge = self.bridge
        ssl_context = self._ssl_context()
        with unwrap_single_error():
            async with trio.open_nursery() as nursery:
                problems: list[str] = []
                uplink: MqttUplink | None = None
                remote = ""
                for address in bridge.addresses:
                    link = MqttUplink(self, self._client_options(), self.checkpoint_topic)
                    try:
                        connection = await connect_mqtt(
                            nursery,
                            address.host,
                            address.port,
                            link.client,
                            on_event=link.on_event,
                            on_close=link.notify,
                            connect_timeout=bridge.connect_timeout,
                            ssl_context=ssl_context,
                        )
                    except ConnectError as exc:
                        problems.append(str(exc))
                        log.warning("bridge %s: %s", bridge.name, exc)
                        continue
                    link.attach(connection)
                    uplink = link
                    remote = str(address)
                    break
                if uplink is None:
                    raise SinkError(f"bridge {bridge.name!r}: no upstream accepted: {'; '.join(problems)}")
                connection = uplink.connection
                log.info(
                    "bridge %s: connected to %s (session present: %s)",
                    bridge.name,
                    remote,
                    uplink.session_present,
                )
                nursery.start_soon(uplink.deliver_inbound)
                try:
                    await uplink.subscribe_in_rules()
                    yield uplink
                finally:
                    uplink.closing = True
                    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                        if not connection.closed.is_set() and uplink.client.state is ClientState.CONNECTED:
                            connection.disconnect()
                            await connection.closed.wait()
                    connection.abort("uplink closed")
                    nursery.cancel_scope.cancel()
