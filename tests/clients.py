"""Independent MQTT client peers (paho-mqtt, amqtt, mosquitto_pub/sub, a raw socket) awaited from trio tests.

Every client only *records* what it sees: callbacks on foreign threads put events into thread-safe queues,
and the test body awaits them and asserts on the returned values (ARCHITECTURE.md, convention 9). Every
wait is bounded, so a broken broker fails a test in seconds instead of hanging the suite.
"""

# Every wait in these clients takes its bound as a ``timeout`` argument (the API the tests read best:
# ``expect_message(timeout=5)``), implemented with trio.fail_after or a blocking get's own timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import functools
import os
import queue
import socket
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import paho.mqtt.client as mqtt
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

if TYPE_CHECKING:
    from edgebus.protocol import ConnAck, Packet, Properties, SubAck, Will

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------
# Which broker the suite runs against
# ---------------------------------------------------------------------------------------------------------

#: "edgebus" (default, in-process) or "mosquitto" (the reference broker, to validate the tests themselves).
PEER: Final = os.environ.get("EDGEBUS_TEST_PEER", "edgebus")
if PEER not in ("edgebus", "mosquitto"):
    raise RuntimeError(f"EDGEBUS_TEST_PEER must be 'edgebus' or 'mosquitto', not {PEER!r}")

MQTT_3_1_1: Final = 4
MQTT_5: Final = 5
BOTH_VERSIONS: Final = pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5], ids=["v311", "v5"])

#: Default bound of a single wait for something that must happen (a CONNACK, a message, a close).
WAIT_S: Final = 5.0
#: How long "nothing arrives" is observed.
QUIET_S: Final = 0.5


def edgebus_only(reason: str) -> pytest.MarkDecorator:
    """Skip on the mosquitto peer: the test checks a behaviour or a knob that only edgebus has."""
    return pytest.mark.skipif(PEER != "edgebus", reason=f"edgebus-specific: {reason}")


def mosquitto_deviates(reason: str) -> pytest.MarkDecorator:
    """Skip on the mosquitto peer where Mosquitto 2.0.11 itself does not follow the cited statement."""
    return pytest.mark.skipif(PEER == "mosquitto", reason=f"mosquitto 2.0.11 deviates: {reason}")


async def _wait_in_thread(get: Callable[[], T], what: str, timeout: float) -> T:
    """Run a blocking, self-timing ``get`` in a worker thread; a timeout becomes a test failure."""
    try:
        return await trio.to_thread.run_sync(get, abandon_on_cancel=True)
    except (queue.Empty, TimeoutError):
        raise AssertionError(f"{what}: nothing within {timeout} s") from None


# ---------------------------------------------------------------------------------------------------------
# What the clients report
# ---------------------------------------------------------------------------------------------------------

#: MQTT 5.0 property name (as in edgebus.protocol.Properties) -> paho's property attribute name.
_PAHO_PROPERTY_NAMES: Final = {
    "payload_format_indicator": "PayloadFormatIndicator",
    "message_expiry_interval": "MessageExpiryInterval",
    "content_type": "ContentType",
    "response_topic": "ResponseTopic",
    "correlation_data": "CorrelationData",
    "subscription_identifiers": "SubscriptionIdentifier",
    "session_expiry_interval": "SessionExpiryInterval",
    "assigned_client_identifier": "AssignedClientIdentifier",
    "server_keep_alive": "ServerKeepAlive",
    "authentication_method": "AuthenticationMethod",
    "authentication_data": "AuthenticationData",
    "request_problem_information": "RequestProblemInformation",
    "will_delay_interval": "WillDelayInterval",
    "request_response_information": "RequestResponseInformation",
    "response_information": "ResponseInformation",
    "server_reference": "ServerReference",
    "reason_string": "ReasonString",
    "receive_maximum": "ReceiveMaximum",
    "topic_alias_maximum": "TopicAliasMaximum",
    "topic_alias": "TopicAlias",
    "maximum_qos": "MaximumQoS",
    "retain_available": "RetainAvailable",
    "user_properties": "UserProperty",
    "maximum_packet_size": "MaximumPacketSize",
    "wildcard_subscription_available": "WildcardSubscriptionAvailable",
    "subscription_identifier_available": "SubscriptionIdentifierAvailable",
    "shared_subscription_available": "SharedSubscriptionAvailable",
}

#: Properties that are sent as lists of values.
_LIST_PROPERTIES: Final = frozenset({"user_properties", "subscription_identifiers"})


def _properties_to_dict(properties: PahoProperties | None) -> dict[str, Any]:
    """The properties paho parsed, keyed by edgebus's snake_case names; absent properties are left out."""
    if properties is None:
        return {}
    result: dict[str, Any] = {}
    for name, paho_name in _PAHO_PROPERTY_NAMES.items():
        if hasattr(properties, paho_name):
            value = getattr(properties, paho_name)
            if name in _LIST_PROPERTIES:
                value = tuple(tuple(v) if isinstance(v, list | tuple) else v for v in value)
            result[name] = value
    return result


def _paho_properties(packet_type: int, values: dict[str, Any]) -> PahoProperties | None:
    """Build paho Properties from snake_case names; None when there is nothing to send."""
    if not values:
        return None
    properties = PahoProperties(packet_type)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        paho_name = _PAHO_PROPERTY_NAMES[name]
        if name in _LIST_PROPERTIES:
            setattr(properties, paho_name, list(value))
        else:
            setattr(properties, paho_name, value)
    return properties


@dataclass(frozen=True)
class ConnAckInfo:
    """A CONNACK as the client saw it (on 3.1.1 ``reason_code`` is paho's 5.0 mapping of the return code)."""

    reason_code: int
    session_present: bool
    properties: dict[str, Any]


@dataclass(frozen=True)
class DisconnectInfo:
    """The end of a connection: ``from_server`` is True when a DISCONNECT packet from the server caused it."""

    reason_code: int
    from_server: bool
    properties: dict[str, Any]


@dataclass(frozen=True)
class MessageProperties:
    """The MQTT 5.0 properties of a received PUBLISH (all empty on 3.1.1)."""

    user_properties: tuple[tuple[str, str], ...] = ()
    subscription_identifiers: tuple[int, ...] = ()
    message_expiry_interval: int | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    content_type: str | None = None
    payload_format_indicator: int | None = None
    topic_alias: int | None = None


_MESSAGE_PROPERTIES: Final = frozenset(MessageProperties.__dataclass_fields__)


@dataclass(frozen=True)
class ReceivedMessage:
    """An application message delivered to a client."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False
    properties: MessageProperties = field(default_factory=MessageProperties)


@dataclass(frozen=True)
class PublishResult:
    """Completion of a publish: PUBACK/PUBCOMP reason code on 5.0 (0 for QoS 0 and on 3.1.1)."""

    mid: int
    reason_code: int


@dataclass(frozen=True)
class WillSpec:
    """A Will Message for :meth:`PahoClient.connect`."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sub:
    """One subscription request with its MQTT 5.0 subscription options."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


class _Completions:
    """Completed acknowledgements keyed by paho message id; a completion may arrive before it is awaited."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._done: dict[object, Any] = {}

    def complete(self, key: object, value: Any) -> None:
        with self._condition:
            self._done[key] = value
            self._condition.notify_all()

    def wait(self, key: object, timeout: float) -> Any:
        with self._condition:
            if not self._condition.wait_for(lambda: key in self._done, timeout):
                raise TimeoutError
            return self._done.pop(key)


# ---------------------------------------------------------------------------------------------------------
# paho-mqtt 2.x
# ---------------------------------------------------------------------------------------------------------


class PahoClient:
    """A paho-mqtt 2.x client on its own network thread; each :meth:`connect` makes a fresh paho client
    (so one object can reconnect to resume its session) and fresh event queues."""

    def __init__(self, client_id: str = "", version: int = MQTT_5) -> None:
        self.client_id = client_id
        self.version = version
        self._client: mqtt.Client | None = None
        self._new_queues()

    def _new_queues(self) -> None:
        self._connacks: queue.Queue[ConnAckInfo] = queue.Queue()
        self._messages: queue.Queue[ReceivedMessage] = queue.Queue()
        self._disconnects: queue.Queue[DisconnectInfo] = queue.Queue()
        self._acks = _Completions()

    @property
    def paho(self) -> mqtt.Client:
        """The underlying paho client of the current connection."""
        if self._client is None:
            raise AssertionError("PahoClient is not connected")
        return self._client

    # -- callbacks: they only record --------------------------------------------------------------------

    def _on_connect(
        self, _c: mqtt.Client, _u: object, flags: Any, reason_code: PahoReasonCode, props: Any
    ) -> None:
        self._connacks.put(
            ConnAckInfo(int(reason_code.value), bool(flags.session_present), _properties_to_dict(props))
        )

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        props = _properties_to_dict(getattr(message, "properties", None))
        self._messages.put(
            ReceivedMessage(
                topic=message.topic,
                payload=bytes(message.payload),
                qos=int(message.qos),
                retain=bool(message.retain),
                dup=bool(message.dup),
                properties=MessageProperties(**{k: v for k, v in props.items() if k in _MESSAGE_PROPERTIES}),
            )
        )

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, reason_code: PahoReasonCode, _props: Any
    ) -> None:
        self._acks.complete(("publish", mid), int(reason_code.value))

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, reason_codes: list[PahoReasonCode], _props: Any
    ) -> None:
        self._acks.complete(("subscribe", mid), [int(rc.value) for rc in reason_codes])

    def _on_unsubscribe(self, _c: mqtt.Client, _u: object, mid: int, reason_codes: Any, _props: Any) -> None:
        codes = reason_codes if isinstance(reason_codes, list) else [reason_codes]
        self._acks.complete(("unsubscribe", mid), [int(rc.value) for rc in codes])

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, flags: Any, reason_code: PahoReasonCode, props: Any
    ) -> None:
        self._disconnects.put(
            DisconnectInfo(
                int(reason_code.value) if reason_code is not None else 0,
                bool(flags.is_disconnect_packet_from_server),
                _properties_to_dict(props),
            )
        )

    # -- operations ---------------------------------------------------------------------------------------

    async def connect(
        self,
        host: str,
        port: int,
        *,
        clean_start: bool = True,
        keep_alive: int = 30,
        session_expiry_interval: int | None = None,
        will: WillSpec | None = None,
        username: str | None = None,
        password: str | None = None,
        properties: dict[str, Any] | None = None,
        timeout: float = WAIT_S,
    ) -> ConnAckInfo:
        """Open a new connection (``clean_start`` is Clean Session on 3.1.1) and return its CONNACK."""
        await self._stop_loop()
        self._new_queues()
        v5 = self.version == MQTT_5
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv31 if self.version == 3 else mqtt.MQTTv311,
            clean_session=None if v5 else clean_start,
            reconnect_on_failure=False,
        )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_disconnect = self._on_disconnect
        if will is not None:
            client.will_set(
                will.topic,
                will.payload,
                will.qos,
                will.retain,
                properties=_paho_properties(PacketTypes.WILLMESSAGE, will.properties) if v5 else None,
            )
        if username is not None:
            client.username_pw_set(username, password)
        connect_properties = dict(properties or {})
        if session_expiry_interval is not None:
            connect_properties["session_expiry_interval"] = session_expiry_interval
        self._client = client

        def open_connection() -> None:
            if v5:
                client.connect(
                    host,
                    port,
                    keep_alive,
                    clean_start=clean_start,
                    properties=_paho_properties(PacketTypes.CONNECT, connect_properties),
                )
            else:
                client.connect(host, port, keep_alive)
            client.loop_start()

        with trio.fail_after(timeout):
            await trio.to_thread.run_sync(open_connection, abandon_on_cancel=True)
        return await self.expect_connack(timeout)

    async def expect_connack(self, timeout: float = WAIT_S) -> ConnAckInfo:
        return await _wait_in_thread(
            functools.partial(self._connacks.get, timeout=timeout), f"{self.client_id}: CONNACK", timeout
        )

    async def subscribe(
        self,
        topic_filter: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        subscription_identifier: int | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        timeout: float = WAIT_S,
    ) -> int:
        """Subscribe to one filter; return the SUBACK code (granted QoS or a failure code)."""
        (code,) = await self.subscribe_many(
            [Sub(topic_filter, qos, no_local, retain_as_published, retain_handling)],
            subscription_identifier=subscription_identifier,
            user_properties=user_properties,
            timeout=timeout,
        )
        return code

    async def subscribe_many(
        self,
        subscriptions: Sequence[Sub],
        *,
        subscription_identifier: int | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        timeout: float = WAIT_S,
    ) -> list[int]:
        """One SUBSCRIBE with several filters; return the SUBACK codes in order."""
        client = self.paho
        if self.version == MQTT_5:
            props: dict[str, Any] = {}
            if subscription_identifier is not None:
                props["subscription_identifiers"] = [subscription_identifier]
            if user_properties:
                props["user_properties"] = list(user_properties)
            result, mid = client.subscribe(
                [
                    (
                        s.topic_filter,
                        SubscribeOptions(s.qos, s.no_local, s.retain_as_published, s.retain_handling),
                    )
                    for s in subscriptions
                ],
                properties=_paho_properties(PacketTypes.SUBSCRIBE, props),
            )
        else:
            result, mid = client.subscribe([(s.topic_filter, s.qos) for s in subscriptions])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise AssertionError(f"{self.client_id}: paho could not send SUBSCRIBE: {result!r}")
        codes: list[int] = await _wait_in_thread(
            functools.partial(self._acks.wait, ("subscribe", mid), timeout), "SUBACK", timeout
        )
        return codes

    async def unsubscribe(self, *topic_filters: str, timeout: float = WAIT_S) -> list[int]:
        """Return the UNSUBACK reason codes (5.0; an empty list on 3.1.1)."""
        result, mid = self.paho.unsubscribe(list(topic_filters))
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise AssertionError(f"{self.client_id}: paho could not send UNSUBSCRIBE: {result!r}")
        codes: list[int] = await _wait_in_thread(
            functools.partial(self._acks.wait, ("unsubscribe", mid), timeout), "UNSUBACK", timeout
        )
        return codes if self.version == MQTT_5 else []

    async def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        *,
        properties: dict[str, Any] | None = None,
        wait: bool = True,
        timeout: float = WAIT_S,
    ) -> PublishResult:
        """Publish and (unless ``wait=False``) wait for its completion: written for QoS 0, PUBACK for QoS 1,
        PUBCOMP for QoS 2."""
        info = self.paho.publish(
            topic,
            payload,
            qos,
            retain,
            properties=_paho_properties(PacketTypes.PUBLISH, properties or {})
            if self.version == MQTT_5
            else None,
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise AssertionError(f"{self.client_id}: paho could not publish: {info.rc!r}")
        if not wait:
            return PublishResult(info.mid, 0)
        return await self.wait_published(info.mid, timeout)

    async def wait_published(self, mid: int, timeout: float = WAIT_S) -> PublishResult:
        code: int = await _wait_in_thread(
            functools.partial(self._acks.wait, ("publish", mid), timeout),
            f"completion of publish {mid}",
            timeout,
        )
        return PublishResult(mid, code)

    async def expect_message(self, timeout: float = WAIT_S) -> ReceivedMessage:
        return await _wait_in_thread(
            functools.partial(self._messages.get, timeout=timeout), f"{self.client_id}: message", timeout
        )

    async def expect_messages(self, count: int, timeout: float = WAIT_S) -> list[ReceivedMessage]:
        """``count`` messages, the whole wait bounded by ``timeout``."""
        received: list[ReceivedMessage] = []
        deadline = trio.current_time() + timeout
        while len(received) < count:
            left = max(deadline - trio.current_time(), 0.01)
            try:
                received.append(await self.expect_message(left))
            except AssertionError:
                raise AssertionError(
                    f"{self.client_id}: {len(received)} of {count} messages within {timeout} s: {received}"
                ) from None
        return received

    async def expect_no_message(self, timeout: float = QUIET_S) -> None:
        try:
            message = await trio.to_thread.run_sync(
                functools.partial(self._messages.get, timeout=timeout), abandon_on_cancel=True
            )
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {message}")

    def drain_messages(self) -> list[ReceivedMessage]:
        """The messages received so far and not yet taken, without waiting."""
        drained: list[ReceivedMessage] = []
        while True:
            try:
                drained.append(self._messages.get_nowait())
            except queue.Empty:
                return drained

    async def expect_disconnect(self, timeout: float = WAIT_S) -> DisconnectInfo:
        """Wait until the connection ends (server DISCONNECT, close, or our own disconnect)."""
        return await _wait_in_thread(
            functools.partial(self._disconnects.get, timeout=timeout),
            f"{self.client_id}: disconnect",
            timeout,
        )

    async def disconnect(
        self,
        reason_code: int = 0,
        *,
        session_expiry_interval: int | None = None,
        properties: dict[str, Any] | None = None,
        timeout: float = WAIT_S,
    ) -> None:
        """Send DISCONNECT (on 5.0 with a reason code and properties, e.g. a Session Expiry Interval) and
        stop the network thread."""
        client = self.paho
        if self.version == MQTT_5:
            props = dict(properties or {})
            if session_expiry_interval is not None:
                props["session_expiry_interval"] = session_expiry_interval
            client.disconnect(
                reasoncode=PahoReasonCode(PacketTypes.DISCONNECT, identifier=reason_code),
                properties=_paho_properties(PacketTypes.DISCONNECT, props),
            )
        else:
            client.disconnect()
        await self.expect_disconnect(timeout)
        await self._stop_loop()

    async def close(self, timeout: float = WAIT_S) -> None:
        """Drop the TCP connection without sending DISCONNECT (so that a Will Message is published)."""
        _shut_down_socket(self.paho)
        await self.expect_disconnect(timeout)
        await self._stop_loop()

    async def _stop_loop(self) -> None:
        if self._client is not None:
            await trio.to_thread.run_sync(self.force_close)

    def force_close(self) -> None:
        """Synchronous cleanup for fixture teardown: drop the connection, join the network thread."""
        client = self._client
        if client is None:
            return
        _shut_down_socket(client)
        client.loop_stop()
        self._client = None


def _shut_down_socket(client: mqtt.Client) -> None:
    """Shut the TCP connection down under paho (its network thread then sees EOF and ends)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------------------
# amqtt 0.12 (asyncio), one event loop in a dedicated thread per client
# ---------------------------------------------------------------------------------------------------------


class AmqttClient:
    """An amqtt MQTTClient (MQTT 3.1.1) driven from trio: every call crosses into the client's own asyncio
    loop with ``run_coroutine_threadsafe(...).result(timeout)`` inside a trio worker thread."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"amqtt-{client_id}", daemon=True)
        self._thread.start()
        self._client: Any = None

    async def _run(self, make: Callable[[], Coroutine[Any, Any, T]], what: str, timeout: float) -> T:
        def call() -> T:
            future = asyncio.run_coroutine_threadsafe(make(), self._loop)
            try:
                return future.result(timeout)
            except TimeoutError:
                future.cancel()
                raise

        return await _wait_in_thread(call, f"amqtt {self.client_id}: {what}", timeout)

    async def connect(
        self, host: str, port: int, *, clean_session: bool = True, timeout: float = WAIT_S
    ) -> int:
        """Connect; returns the CONNACK return code (amqtt raises on a refusal)."""

        async def connect() -> int:
            from amqtt.client import MQTTClient  # type: ignore[import-untyped]

            self._client = MQTTClient(
                client_id=self.client_id,
                config={"keep_alive": 30, "auto_reconnect": False, "default_qos": 0},
            )
            return int(await self._client.connect(f"mqtt://{host}:{port}/", cleansession=clean_session))

        return await self._run(connect, "connect", timeout)

    async def subscribe(self, topics: Sequence[tuple[str, int]], timeout: float = WAIT_S) -> list[int]:
        async def subscribe() -> list[int]:
            return [int(code) for code in await self._client.subscribe(list(topics))]

        return await self._run(subscribe, "subscribe", timeout)

    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, timeout: float = WAIT_S
    ) -> None:
        """Publish; for QoS 1 and 2 this returns after the PUBACK / PUBCOMP."""

        async def publish() -> None:
            await self._client.publish(topic, payload, qos=qos, retain=retain)

        await self._run(publish, "publish", timeout)

    async def expect_message(self, timeout: float = WAIT_S) -> ReceivedMessage:
        async def deliver() -> ReceivedMessage:
            message = await self._client.deliver_message(timeout_duration=timeout)
            packet = message.publish_packet
            return ReceivedMessage(
                topic=message.topic,
                payload=bytes(message.data),
                qos=int(message.qos or 0),
                retain=bool(packet.retain_flag),
                dup=bool(packet.dup_flag),
            )

        # amqtt's own deliver timeout fires first; the outer bound only guards against a stuck loop.
        return await self._run(deliver, "message", timeout + 1.0)

    async def disconnect(self, timeout: float = WAIT_S) -> None:
        async def disconnect() -> None:
            await self._client.disconnect()

        await self._run(disconnect, "disconnect", timeout)
        self._client = None

    def force_close(self) -> None:
        """Synchronous cleanup for fixture teardown: disconnect if still connected, stop the loop."""
        if self._client is not None:
            future = asyncio.run_coroutine_threadsafe(self._client.disconnect(), self._loop)
            try:
                future.result(2.0)
            except Exception:
                future.cancel()
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2.0)
        if not self._thread.is_alive():
            self._loop.close()


# ---------------------------------------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub (Debian package mosquitto-clients)
# ---------------------------------------------------------------------------------------------------------

MOSQUITTO_PUB: Final = "/usr/bin/mosquitto_pub"
MOSQUITTO_SUB: Final = "/usr/bin/mosquitto_sub"
#: mosquitto_sub's output line per message: topic, QoS, retain flag, payload in hex, user properties.
_SUB_FORMAT: Final = r"MSG\t%t\t%q\t%r\t%x\t%P"


@dataclass(frozen=True)
class SubLine:
    """One message as printed by mosquitto_sub."""

    topic: str
    qos: int
    retain: bool
    payload: bytes
    user_properties: str  # "k:v k2:v2" as mosquitto_sub prints them


async def mosquitto_pub(
    host: str,
    port: int,
    topic: str,
    message: bytes | str,
    *,
    qos: int = 0,
    retain: bool = False,
    v5: bool = False,
    client_id: str | None = None,
    properties: Iterable[Sequence[str]] = (),
    timeout: float = WAIT_S,
) -> None:
    """Publish one message with mosquitto_pub; ``properties`` are ``-D`` arguments such as
    ``("PUBLISH", "user-property", "k", "v")``."""
    payload = message.encode() if isinstance(message, str) else message
    args = [MOSQUITTO_PUB, "-h", host, "-p", str(port), "-t", topic, "-q", str(qos)]
    args += ["-V", "mqttv5" if v5 else "mqttv311"]
    args += ["-n"] if not payload else ["-s"]
    if retain:
        args.append("-r")
    if client_id is not None:
        args += ["-i", client_id]
    for prop in properties:
        args += ["-D", *prop]
    with trio.fail_after(timeout):
        result = await trio.run_process(
            args, stdin=payload, capture_stdout=True, capture_stderr=True, check=False
        )
    if result.returncode != 0:
        raise AssertionError(
            f"mosquitto_pub failed ({result.returncode}): {result.stderr.decode(errors='replace')}"
        )


class MosquittoSub:
    """A running mosquitto_sub that exits after ``count`` messages. ``async with`` waits for its SUBACK, so a
    message published inside the block is guaranteed to match; :meth:`collect` returns the messages."""

    def __init__(
        self,
        host: str,
        port: int,
        topics: str | Sequence[str],
        *,
        count: int,
        qos: int = 0,
        v5: bool = False,
        client_id: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = WAIT_S,
    ) -> None:
        self.timeout = timeout
        # Line-buffered stdout (stdbuf), or the SUBACK line waits in mosquitto_sub's pipe buffer.
        self.args = ["stdbuf", "-oL", MOSQUITTO_SUB, "-d", "-h", host, "-p", str(port)]
        self.args += ["-q", str(qos), "-C", str(count)]
        self.args += ["-V", "mqttv5" if v5 else "mqttv311", "-F", _SUB_FORMAT, "-W", str(int(timeout) + 2)]
        for topic in [topics] if isinstance(topics, str) else topics:
            self.args += ["-t", topic]
        if client_id is not None:
            self.args += ["-i", client_id]
        self.args += list(extra_args)
        self._process: trio.Process | None = None
        self._output = bytearray()

    async def __aenter__(self) -> MosquittoSub:
        self._process = await trio.lowlevel.open_process(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            with trio.fail_after(self.timeout):
                while b"received SUBACK" not in self._output:
                    if not await self._read():
                        raise AssertionError(f"mosquitto_sub ended before SUBACK: {self._text()}")
        except BaseException:
            await self._kill()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._kill()

    async def _read(self) -> bool:
        assert self._process is not None and self._process.stdout is not None
        data = await self._process.stdout.receive_some(65536)
        self._output += data
        return bool(data)

    def _text(self) -> str:
        return self._output.decode(errors="replace")

    async def collect(self) -> list[SubLine]:
        """Wait until mosquitto_sub has printed its ``count`` messages and exited; return them in order."""
        assert self._process is not None
        try:
            with trio.fail_after(self.timeout):
                while await self._read():
                    pass
                await self._process.wait()
        except trio.TooSlowError:
            raise AssertionError(f"mosquitto_sub did not get its messages: {self._text()}") from None
        if self._process.returncode != 0:
            raise AssertionError(f"mosquitto_sub exited with {self._process.returncode}: {self._text()}")
        lines = []
        for line in self._text().splitlines():
            if line.startswith("MSG\t"):
                _, topic, qos, retain, payload_hex, user_properties = line.split("\t", 5)
                lines.append(
                    SubLine(topic, int(qos), retain == "1", bytes.fromhex(payload_hex), user_properties)
                )
        return lines

    async def _kill(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            with trio.move_on_after(2):
                await process.wait()


async def mosquitto_sub(
    host: str,
    port: int,
    topics: str | Sequence[str],
    *,
    count: int,
    qos: int = 0,
    v5: bool = False,
    timeout: float = WAIT_S,
) -> list[SubLine]:
    """Subscribe with mosquitto_sub and return ``count`` messages (e.g. retained ones already there)."""
    async with MosquittoSub(host, port, topics, count=count, qos=qos, v5=v5, timeout=timeout) as sub:
        return await sub.collect()


# ---------------------------------------------------------------------------------------------------------
# Raw socket client with edgebus's codec, for exact protocol checks and bad input
# ---------------------------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """A Variable Byte Integer (§1.5.5 of 5.0, §2.2.3 of 3.1.1), written here independently of the codec."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def utf8(text: str | bytes) -> bytes:
    """A length-prefixed string; bytes are taken as they are (to send invalid UTF-8 or U+0000)."""
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def raw_packet(first_byte: int, body: bytes) -> bytes:
    """Fixed header + body, built without the codec so that bad packets can be sent."""
    return bytes((first_byte,)) + varint(len(body)) + body


class ConnectionClosedError(AssertionError):
    """The broker closed the connection while a packet was awaited."""


class RawClient:
    """A bare trio TCP connection that sends exactly the bytes or packets it is given and decodes what the
    broker answers with ``edgebus.protocol`` (decoder in the client role). Nothing is acknowledged
    automatically."""

    def __init__(self, stream: trio.SocketStream, protocol_level: int) -> None:
        from edgebus.protocol import PacketDecoder

        self.stream = stream
        self.protocol_level = protocol_level
        self._decoder = PacketDecoder(role="client", protocol_level=protocol_level)
        self._pending: deque[Packet] = deque()
        self._eof = False

    def reset_decoder(self, protocol_level: int | None) -> None:
        """Decode what follows as ``protocol_level`` (None: tell a 3.1.1 from a 5.0 CONNACK by its length)."""
        from edgebus.protocol import PacketDecoder

        self._decoder = PacketDecoder(role="client", protocol_level=protocol_level)

    @classmethod
    async def connect(
        cls, host: str, port: int, protocol_level: int = MQTT_5, timeout: float = WAIT_S
    ) -> RawClient:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
        return cls(stream, protocol_level)

    async def send(self, data: bytes) -> None:
        """Send raw bytes. A broker that already closed the connection is not an error here: the test
        checks the close with :meth:`expect_closed`."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def send_packet(self, packet: Packet, protocol_level: int | None = None) -> None:
        from edgebus.protocol import encode

        await self.send(encode(packet, protocol_level or self.protocol_level))

    async def _fill(self) -> bool:
        """Read once from the socket into the decoder; False on EOF or reset."""
        if self._eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self._eof = True
            return False
        self._pending.extend(self._decoder.receive_data(data))
        return True

    async def receive_packet(self, timeout: float = WAIT_S) -> Packet:
        """The next packet from the broker; fails the test on timeout or close."""
        try:
            with trio.fail_after(timeout):
                while not self._pending:
                    if not await self._fill():
                        raise ConnectionClosedError("the broker closed the connection")
        except trio.TooSlowError:
            raise AssertionError(f"no packet within {timeout} s") from None
        return self._pending.popleft()

    async def receive_packet_or_close(self, timeout: float = WAIT_S) -> Packet | None:
        """The next packet, or None when the broker closes the connection instead."""
        try:
            return await self.receive_packet(timeout)
        except ConnectionClosedError:
            return None

    async def receive_packets(self, count: int, timeout: float = WAIT_S) -> list[Packet]:
        with trio.fail_after(timeout):
            return [await self.receive_packet(timeout) for _ in range(count)]

    async def expect_no_packet(self, timeout: float = QUIET_S) -> None:
        with trio.move_on_after(timeout):
            while not self._pending:
                if not await self._fill():
                    raise ConnectionClosedError("the broker closed the connection")
        if self._pending:
            raise AssertionError(f"unexpected packet {self._pending[0]}")

    async def expect_closed(self, timeout: float = 3.0) -> list[Packet]:
        """Wait for EOF or reset; return the packets the broker sent before closing."""
        before: list[Packet] = []
        try:
            with trio.fail_after(timeout):
                while True:
                    before.extend(self._pending)
                    self._pending.clear()
                    if not await self._fill():
                        break
        except trio.TooSlowError:
            raise AssertionError(f"the broker did not close the connection within {timeout} s") from None
        before.extend(self._pending)
        self._pending.clear()
        return before

    async def mqtt_connect(
        self,
        client_id: str = "raw",
        *,
        clean_start: bool = True,
        keep_alive: int = 30,
        will: Will | None = None,
        properties: Properties | None = None,
        timeout: float = WAIT_S,
    ) -> ConnAck:
        """Send CONNECT and return the CONNACK (fails if anything else comes back)."""
        from edgebus.protocol import ConnAck, Connect
        from edgebus.protocol.packets import NO_PROPERTIES

        await self.send_packet(
            Connect(
                client_id=client_id,
                protocol_level=self.protocol_level,
                clean_start=clean_start,
                keep_alive=keep_alive,
                will=will,
                properties=properties or NO_PROPERTIES,
            )
        )
        packet = await self.receive_packet(timeout)
        if not isinstance(packet, ConnAck):
            raise AssertionError(f"expected CONNACK, got {packet}")
        return packet

    async def subscribe(
        self,
        *subscriptions: Sub,
        packet_id: int = 1,
        properties: Properties | None = None,
        timeout: float = WAIT_S,
    ) -> SubAck:
        """Send SUBSCRIBE and return the SUBACK."""
        from edgebus.protocol import RetainHandling, SubAck, Subscribe, Subscription
        from edgebus.protocol.packets import NO_PROPERTIES

        await self.send_packet(
            Subscribe(
                packet_id=packet_id,
                subscriptions=tuple(
                    Subscription(
                        s.topic_filter,
                        s.qos,
                        s.no_local,
                        s.retain_as_published,
                        RetainHandling(s.retain_handling),
                    )
                    for s in subscriptions
                ),
                properties=properties or NO_PROPERTIES,
            )
        )
        packet = await self.receive_packet(timeout)
        if not isinstance(packet, SubAck):
            raise AssertionError(f"expected SUBACK, got {packet}")
        return packet

    async def aclose(self) -> None:
        await self.stream.aclose()


def assert_protocol_close(
    packets: Sequence[Packet], protocol_level: int, reason_codes: Collection[int], *, connack: bool = False
) -> None:
    """Check what a broker sent before closing a connection for a protocol error.

    3.1.1 has no server DISCONNECT: nothing may be sent [MQTT-4.8.0-1]. On 5.0 the server closes the
    connection and SHOULD first send a DISCONNECT (or, for a bad CONNECT, MAY send a CONNACK) carrying a
    reason code of 0x80 or more (§4.13.1); edgebus always sends it, so on the edgebus peer it is required.
    """
    from edgebus.protocol import ConnAck, Disconnect

    if protocol_level == MQTT_3_1_1:
        assert list(packets) == [], f"a 3.1.1 server sends nothing before closing, got {packets}"
        return
    expected_type = ConnAck if connack else Disconnect
    if PEER == "mosquitto" and not packets:
        return
    assert len(packets) == 1, f"expected one {expected_type.__name__} before the close, got {packets}"
    (packet,) = packets
    assert isinstance(packet, expected_type), f"expected {expected_type.__name__}, got {packet}"
    assert packet.reason_code in reason_codes, (
        f"reason code {packet.reason_code:#04x} not in {[hex(c) for c in reason_codes]}"
    )
