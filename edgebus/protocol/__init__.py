"""Sans-IO MQTT 3.1.1 and 5.0 codec: bytes in, packets out; packets in, bytes out.

Imports no trio, socket, sqlite3, time or logging (a test walks the imports).
"""

from edgebus.protocol.decoder import PacketDecoder
from edgebus.protocol.encoder import encode
from edgebus.protocol.enums import (
    MQTT_3_1_1,
    MQTT_5,
    ConnectReturnCode,
    PacketType,
    QoS,
    ReasonCode,
    RetainHandling,
)
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)

__all__ = [
    "MQTT_3_1_1",
    "MQTT_5",
    "Auth",
    "ConnAck",
    "Connect",
    "ConnectReturnCode",
    "Disconnect",
    "Packet",
    "PacketDecoder",
    "PacketType",
    "PingReq",
    "PingResp",
    "Properties",
    "ProtocolError",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "QoS",
    "ReasonCode",
    "RetainHandling",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "encode",
]
