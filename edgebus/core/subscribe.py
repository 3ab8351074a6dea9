"""The server's SUBSCRIBE rules (sans-IO): which filters are granted at which QoS, with what options,
and which refusal code each other one gets on 3.1.1 and 5.0 (§3.8, §3.9, §4.8.2)."""

from __future__ import annotations

from dataclasses import dataclass

from edgebus.core.connect import ServerFeatures
from edgebus.core.session import SubscriptionOptions
from edgebus.core.topics import is_valid_topic_filter, parse_shared
from edgebus.protocol.enums import MQTT_5, ReasonCode, RetainHandling
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import Subscribe

#: The one refusal code 3.1.1 has (§3.9.3); MQTT 3.1 defines none and gets it too.
FAILURE_3_1_1 = 0x80


@dataclass(frozen=True, slots=True)
class Grant:
    """One filter of a SUBSCRIBE, granted: subscribe ``topic_filter`` (as sent, $share prefix included)
    with ``options``."""

    topic_filter: str
    shared: bool
    match_filter: str  # the filter without any $share/<group>/ prefix
    options: SubscriptionOptions


def plan_subscribe(
    subscribe: Subscribe, level: int, max_qos: int, features: ServerFeatures, bridge: bool = False
) -> list[Grant | int]:
    """Per filter, in order: a Grant, or the code to put in the SUBACK [MQTT-3.8.4-1]. Raises
    ProtocolError for a SUBSCRIBE that closes the connection, before anything of it took effect.
    What the broker adds (ACL, limits) it checks per Grant as it applies them (`refusal_code`).

    ``bridge``: the connection set the bridge bit of its CONNECT level (a Mosquitto bridge,
    ``try_private``): as Mosquitto does, its subscriptions get No Local and Retain As Published, so
    that what it forwards is never sent back to it and retained flags cross the bridge as published.
    A refused filter on MQTT 3.1 (which defines no failure code) gets 0x80, as on 3.1.1 and Mosquitto."""
    v5 = level == MQTT_5
    sub_ids = subscribe.properties.subscription_identifiers
    if sub_ids and not features.subscription_identifiers:
        # §3.2.2.3.12: 0xA1 when Subscription Identifiers are not supported.
        raise ProtocolError(ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED, "")
    sub_id = sub_ids[0] if sub_ids else None
    plan: list[Grant | int] = []
    for sub in subscribe.subscriptions:
        try:
            group, topic_filter = parse_shared(sub.topic_filter)
        except ValueError:
            plan.append(ReasonCode.TOPIC_FILTER_INVALID if v5 else FAILURE_3_1_1)
            continue
        if not is_valid_topic_filter(topic_filter):
            plan.append(ReasonCode.TOPIC_FILTER_INVALID if v5 else FAILURE_3_1_1)  # [MQTT-4.7.1-1]
            continue
        if group is not None and not features.shared_subscriptions:
            plan.append(ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED if v5 else FAILURE_3_1_1)
            continue
        if group is not None and sub.no_local:
            # [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
            raise ProtocolError(ReasonCode.PROTOCOL_ERROR, "No Local on a shared subscription")
        if not features.wildcard_subscriptions and ("+" in topic_filter or "#" in topic_filter):
            plan.append(ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED if v5 else FAILURE_3_1_1)
            continue
        options = SubscriptionOptions(
            qos=min(sub.qos, max_qos),  # §3.8.4: the Server may grant a lower QoS
            no_local=(sub.no_local and v5) or (bridge and group is None),  # No Local: never shared
            retain_as_published=(sub.retain_as_published and v5) or bridge,
            retain_handling=sub.retain_handling if v5 else RetainHandling.SEND_ON_SUBSCRIBE,
            subscription_id=sub_id,
        )
        plan.append(Grant(sub.topic_filter, group is not None, topic_filter, options))
    return plan


def refusal_code(reason_code: int, level: int) -> int:
    """A v5 SUBACK refusal (ACL 0x87, limits 0x8F / 0x97) as ``level`` can say it."""
    return reason_code if level == MQTT_5 else FAILURE_3_1_1


def sends_retained(grant: Grant, is_new: bool) -> bool:
    """Whether a granted subscription gets the matching retained messages now [MQTT-3.3.1-9],
    [MQTT-3.3.1-10]; never for a shared subscription (§4.8.2)."""
    if grant.shared:
        return False
    handling = grant.options.retain_handling
    return handling is RetainHandling.SEND_ON_SUBSCRIBE or (
        handling is RetainHandling.SEND_IF_NEW_SUBSCRIPTION and is_new
    )
