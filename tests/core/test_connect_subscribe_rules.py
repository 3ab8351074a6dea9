"""Sans-IO tests of the server's CONNECT and SUBSCRIBE rules (edgebus.core.connect, edgebus.core.subscribe):
packets in, decisions and answer bytes out, no broker and no socket. The behaviour tests in tests/broker
check the same rules end to end with real clients."""

from __future__ import annotations

import pytest

from edgebus.core.connect import (
    ConnectAccepted,
    ConnectRefused,
    ServerFeatures,
    answer_violation,
    decide_connect,
    refusal,
    will_delay,
    will_message,
)
from edgebus.core.server_events import ConnectionLimits
from edgebus.core.session import SESSION_NEVER_EXPIRES
from edgebus.core.subscribe import FAILURE_3_1_1, Grant, plan_subscribe, refusal_code, sends_retained
from edgebus.protocol import MQTT_5, PacketDecoder
from edgebus.protocol.enums import MQTT_3_1_1, ConnectReturnCode, ReasonCode, RetainHandling
from edgebus.protocol.errors import ProtocolError, malformed
from edgebus.protocol.packets import (
    NO_PROPERTIES,
    ConnAck,
    Connect,
    Properties,
    Subscribe,
    Subscription,
    Will,
)

FEATURES = ServerFeatures(max_keep_alive=600, max_session_expiry_interval=3600)


def decode_connack(data: bytes | None, level: int) -> ConnAck:
    assert data is not None
    packets = PacketDecoder(role="client", protocol_level=level).receive_data(data)
    assert len(packets) == 1 and isinstance(packets[0], ConnAck)
    return packets[0]


def accepted(connect: Connect, features: ServerFeatures = FEATURES) -> ConnectAccepted:
    decision = decide_connect(connect, features, lambda: "assigned-1")
    assert isinstance(decision, ConnectAccepted)
    return decision


def refused(connect: Connect) -> ConnectRefused:
    decision = decide_connect(connect, FEATURES, lambda: "assigned-1")
    assert isinstance(decision, ConnectRefused)
    return decision


# --- CONNECT ---------------------------------------------------------------------------------------------


def test_empty_client_id_is_assigned_and_told_on_v5() -> None:
    # [MQTT-3.1.3-6] the Server assigns an id; [MQTT-3.2.2-16] a v5 CONNACK carries it.
    decision = accepted(Connect(client_id="", protocol_level=MQTT_5))
    assert decision.client_id == "assigned-1" and decision.assigned_client_id == "assigned-1"
    connack = decode_connack(decision.connack(False, MQTT_5, ConnectionLimits(), FEATURES), MQTT_5)
    assert connack.properties.assigned_client_identifier == "assigned-1"
    v311 = accepted(Connect(client_id="", protocol_level=MQTT_3_1_1, clean_start=True))
    assert v311.client_id == "assigned-1" and v311.assigned_client_id is None


def test_empty_client_id_without_clean_session_is_rejected_on_3_1_1() -> None:
    # [MQTT-3.1.3-8]: CONNACK 0x02 Identifier rejected, then close.
    decision = refused(Connect(client_id="", protocol_level=MQTT_3_1_1, clean_start=False))
    connack = decode_connack(decision.connack, MQTT_3_1_1)
    assert connack.reason_code == ConnectReturnCode.IDENTIFIER_REJECTED


def test_authentication_method_is_refused_with_0x8c() -> None:
    # [MQTT-4.12.0-1]: no enhanced authentication method is supported.
    connect = Connect(client_id="c", properties=Properties(authentication_method="SCRAM-SHA-1"))
    assert (
        decode_connack(refused(connect).connack, MQTT_5).reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    )


@pytest.mark.parametrize("topic", ["a/+", "a/#", ""])
def test_will_topic_must_be_a_topic_name(topic: str) -> None:
    # [MQTT-4.7.1-1] [MQTT-4.7.3-1]: 0x90 on v5; 3.1.1 has no code, the connection just closes.
    will = Will(topic, b"x", 0, False)
    v5 = refused(Connect(client_id="c", will=will))
    assert decode_connack(v5.connack, MQTT_5).reason_code == ReasonCode.TOPIC_NAME_INVALID
    assert refused(Connect(client_id="c", protocol_level=MQTT_3_1_1, will=will)).connack is None


def test_session_expiry_is_capped_and_the_cap_announced() -> None:
    # §3.2.2.3.2: the Server's Session Expiry Interval in CONNACK overrides the client's.
    decision = accepted(Connect(client_id="c", properties=Properties(session_expiry_interval=86400)))
    assert decision.session_expiry_interval == 3600
    connack = decode_connack(decision.connack(True, MQTT_5, ConnectionLimits(), FEATURES), MQTT_5)
    assert connack.session_present and connack.properties.session_expiry_interval == 3600
    same = accepted(Connect(client_id="c", properties=Properties(session_expiry_interval=60)))
    props = decode_connack(same.connack(False, MQTT_5, ConnectionLimits(), FEATURES), MQTT_5).properties
    assert props.session_expiry_interval is None  # what the client asked for: not repeated


def test_3_1_1_clean_session_decides_the_session_lifetime() -> None:
    # 3.1.1 §3.1.2.4: Clean Session 0 keeps the session after the connection, 1 ends it with it.
    assert accepted(Connect(client_id="c", protocol_level=4, clean_start=False)).session_expiry_interval == (
        SESSION_NEVER_EXPIRES
    )
    assert accepted(Connect(client_id="c", protocol_level=4, clean_start=True)).session_expiry_interval == 0


def test_keep_alive_over_the_maximum_is_overridden_on_v5() -> None:
    # [MQTT-3.2.2-21]: the client uses the Server Keep Alive the CONNACK carries.
    decision = accepted(Connect(client_id="c", keep_alive=3600))
    assert decision.keep_alive == 600 and decision.server_keep_alive == 600
    connack = decode_connack(decision.connack(False, MQTT_5, ConnectionLimits(), FEATURES), MQTT_5)
    assert connack.properties.server_keep_alive == 600
    v311 = accepted(Connect(client_id="c", protocol_level=4, keep_alive=3600))
    assert v311.keep_alive == 3600 and v311.server_keep_alive is None  # 3.1.1 cannot tell the client


def test_v5_connack_announces_limits_that_differ_from_the_defaults() -> None:
    # §3.2.2.3: Receive Maximum, Maximum QoS, Retain Available, Maximum Packet Size, Topic Alias Maximum,
    # and the three feature flags are only sent when they differ from the default.
    limits = ConnectionLimits(
        max_packet_size=1024, receive_maximum=10, topic_alias_maximum=5, max_qos=1, retain_available=False
    )
    features = ServerFeatures(
        wildcard_subscriptions=False, subscription_identifiers=False, shared_subscriptions=False
    )
    props = decode_connack(
        accepted(Connect(client_id="c")).connack(False, MQTT_5, limits, features), MQTT_5
    ).properties
    assert (props.receive_maximum, props.maximum_qos, props.retain_available) == (10, 1, 0)
    assert (props.maximum_packet_size, props.topic_alias_maximum) == (1024, 5)
    assert props.wildcard_subscription_available == 0
    assert props.subscription_identifier_available == 0 and props.shared_subscription_available == 0
    plain = accepted(Connect(client_id="c")).connack(False, MQTT_5, ConnectionLimits(), ServerFeatures())
    assert decode_connack(plain, MQTT_5).properties == Properties()


def test_refusal_uses_each_versions_code() -> None:
    # 3.1.1 §3.2.2.3 return code 0x05; 5.0 reason code 0x86 / 0x87.
    v311 = refusal(MQTT_3_1_1, ReasonCode.BAD_USER_NAME_OR_PASSWORD, ConnectReturnCode.NOT_AUTHORIZED)
    assert decode_connack(v311, MQTT_3_1_1).reason_code == ConnectReturnCode.NOT_AUTHORIZED
    v5 = refusal(MQTT_5, ReasonCode.BAD_USER_NAME_OR_PASSWORD, ConnectReturnCode.NOT_AUTHORIZED)
    assert decode_connack(v5, MQTT_5).reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD


# --- violations ------------------------------------------------------------------------------------------


def test_unsupported_protocol_version_is_answered_per_version() -> None:
    # [MQTT-3.1.2-2]: CONNACK 0x01 (3.1.1) / 0x84 (5.0), then close.
    error = ProtocolError(ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, "level 9")
    v5 = answer_violation(error, accepted=False, decoded_level=9)
    assert v5 is not None and decode_connack(v5.connack, MQTT_5).reason_code == 0x84
    old = answer_violation(error, accepted=False, decoded_level=3)
    assert old is not None
    assert (
        decode_connack(old.connack, MQTT_3_1_1).reason_code == ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION
    )


def test_a_v5_violation_before_connack_is_answered_with_a_connack() -> None:
    # [MQTT-4.13.1-1]: the reason code goes in a CONNACK before the connection is accepted ...
    refused_early = answer_violation(malformed("bad"), accepted=False, decoded_level=MQTT_5)
    assert refused_early is not None
    assert decode_connack(refused_early.connack, MQTT_5).reason_code == ReasonCode.MALFORMED_PACKET
    # ... in a DISCONNECT after it (None: the broker closes with the reason code), and 3.1.1 just closes.
    assert answer_violation(malformed("bad"), accepted=True, decoded_level=MQTT_5) is None
    assert answer_violation(malformed("bad"), accepted=False, decoded_level=MQTT_3_1_1) is None


# --- wills -----------------------------------------------------------------------------------------------


def test_will_delay_never_outlasts_the_session() -> None:
    # [MQTT-3.1.3-9]: sent when the delay passes or the session ends, whichever is first; 3.1.1 has no delay.
    will = Will("w", b"x", 1, False, Properties(will_delay_interval=30))
    assert will_delay(will, MQTT_5) == 30
    assert will_delay(will, MQTT_5, session_expiry_interval=10) == 10
    assert will_delay(will, MQTT_3_1_1) == 0


def test_will_message_keeps_its_properties_and_expiry() -> None:
    # §3.1.3.2: the Will Properties go with the message; the Message Expiry Interval counts from publication.
    props = Properties(message_expiry_interval=5, content_type="text/plain", will_delay_interval=3)
    message = will_message(Will("w/t", b"gone", 1, True, props), "dev-1", MQTT_5, now=100.0)
    assert (message.topic, message.payload, message.qos, message.retain) == ("w/t", b"gone", 1, True)
    assert message.expiry_deadline == 105.0 and message.publisher_id == "dev-1"
    assert message.properties.content_type == "text/plain"
    assert message.properties.will_delay_interval is None  # a will property, not a PUBLISH one


# --- SUBSCRIBE -------------------------------------------------------------------------------------------


def subscribe(*subs: Subscription, props: Properties = NO_PROPERTIES) -> Subscribe:
    return Subscribe(1, subs, props)


def test_granted_qos_is_capped_by_maximum_qos() -> None:
    # §3.8.4: the Server may grant a lower QoS than requested [MQTT-3.8.4-8 context].
    plan = plan_subscribe(subscribe(Subscription("a/#", qos=2)), MQTT_5, 1, FEATURES)
    assert isinstance(plan[0], Grant) and plan[0].options.qos == 1


def test_invalid_filters_get_0x8f_on_v5_and_0x80_on_3_1_1() -> None:
    # [MQTT-4.7.1-1] / [MQTT-4.7.1-2]: misplaced wildcards; a malformed $share filter (§4.8.2).
    subs = (Subscription("a/#/b", qos=0), Subscription("$share/g", qos=0), Subscription("ok", qos=0))
    v5 = plan_subscribe(subscribe(*subs), MQTT_5, 2, FEATURES)
    assert v5[:2] == [ReasonCode.TOPIC_FILTER_INVALID, ReasonCode.TOPIC_FILTER_INVALID]
    assert isinstance(v5[2], Grant)
    v311 = plan_subscribe(subscribe(*subs), MQTT_3_1_1, 2, FEATURES)
    assert v311[:2] == [FAILURE_3_1_1, FAILURE_3_1_1]


def test_features_switched_off_refuse_what_uses_them() -> None:
    # §3.2.2.3.11-13: 0x9E shared, 0xA2 wildcards; 0xA1 subscription identifiers closes the connection.
    off = ServerFeatures(
        wildcard_subscriptions=False, shared_subscriptions=False, subscription_identifiers=False
    )
    plan = plan_subscribe(
        subscribe(Subscription("$share/g/a", qos=0), Subscription("a/+", qos=0)), MQTT_5, 2, off
    )
    assert plan == [
        ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    ]
    with pytest.raises(ProtocolError) as raised:
        plan_subscribe(
            subscribe(Subscription("a", qos=0), props=Properties(subscription_identifiers=(7,))),
            MQTT_5,
            2,
            off,
        )
    assert raised.value.reason_code == ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED


def test_no_local_on_a_shared_subscription_is_a_protocol_error() -> None:
    # [MQTT-3.8.3-4].
    with pytest.raises(ProtocolError) as raised:
        plan_subscribe(subscribe(Subscription("$share/g/a", qos=0, no_local=True)), MQTT_5, 2, FEATURES)
    assert raised.value.reason_code == ReasonCode.PROTOCOL_ERROR


def test_refusals_of_the_brokers_own_checks_per_version() -> None:
    # ACL 0x87 / quota 0x97 on v5 (§3.9.3); 3.1.1 has only 0x80.
    assert refusal_code(ReasonCode.NOT_AUTHORIZED, MQTT_5) == ReasonCode.NOT_AUTHORIZED
    assert refusal_code(ReasonCode.QUOTA_EXCEEDED, MQTT_3_1_1) == FAILURE_3_1_1


def test_v5_options_are_kept_and_3_1_1_gets_the_defaults() -> None:
    # §3.8.3.1: No Local, Retain As Published, Retain Handling and the Subscription Identifier.
    sub = Subscription(
        "a", qos=1, no_local=True, retain_as_published=True, retain_handling=RetainHandling.DO_NOT_SEND
    )
    v5 = plan_subscribe(subscribe(sub, props=Properties(subscription_identifiers=(9,))), MQTT_5, 2, FEATURES)
    assert isinstance(v5[0], Grant)
    opts = v5[0].options
    assert (opts.no_local, opts.retain_as_published, opts.subscription_id) == (True, True, 9)
    assert opts.retain_handling is RetainHandling.DO_NOT_SEND
    v311 = plan_subscribe(subscribe(sub), MQTT_3_1_1, 2, FEATURES)
    assert isinstance(v311[0], Grant)
    assert (
        v311[0].options.retain_handling is RetainHandling.SEND_ON_SUBSCRIBE and not v311[0].options.no_local
    )


@pytest.mark.parametrize(
    ("handling", "shared", "is_new", "expected"),
    [
        (RetainHandling.SEND_ON_SUBSCRIBE, False, False, True),  # [MQTT-3.3.1-9]
        (RetainHandling.SEND_IF_NEW_SUBSCRIPTION, False, True, True),  # [MQTT-3.3.1-10]
        (RetainHandling.SEND_IF_NEW_SUBSCRIPTION, False, False, False),
        (RetainHandling.DO_NOT_SEND, False, True, False),  # [MQTT-3.3.1-11]
        (RetainHandling.SEND_ON_SUBSCRIBE, True, True, False),  # §4.8.2: none for shared subscriptions
    ],
)
def test_which_grants_send_retained_messages(
    handling: RetainHandling, shared: bool, is_new: bool, expected: bool
) -> None:
    sub = Subscription("$share/g/a" if shared else "a", qos=0, retain_handling=handling)
    plan = plan_subscribe(subscribe(sub), MQTT_5, 2, FEATURES)
    assert isinstance(plan[0], Grant)
    assert sends_retained(plan[0], is_new) is expected
