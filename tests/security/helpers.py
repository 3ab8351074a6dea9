"""Helpers of the security tests: password and ACL files, CONNECT with credentials over a raw socket."""

from __future__ import annotations

from pathlib import Path

from edgebus.auth import set_password
from edgebus.protocol import ConnAck, Connect, Packet
from edgebus.protocol.packets import Will
from tests.clients import RawClient
from tests.conftest import BrokerHandle

#: Few PBKDF2 rounds: the tests check the logic, not the hash's cost.
TEST_ITERATIONS = 1000


def password_file(directory: Path, users: dict[str, str], name: str = "passwd") -> Path:
    path = directory / name
    for user, password in users.items():
        set_password(path, user, password, TEST_ITERATIONS)
    return path


def acl_file(directory: Path, text: str, name: str = "acl") -> Path:
    path = directory / name
    path.write_text(text)
    return path


async def connect_with(
    broker: BrokerHandle,
    version: int,
    client_id: str,
    username: str | None = None,
    password: bytes | None = None,
    will: Will | None = None,
    address: tuple[str, int] | None = None,
) -> tuple[RawClient, Packet | None]:
    """A raw connection that sent CONNECT with these credentials, and what came back first (None: closed)."""
    host, port = address or broker.address
    client = await RawClient.connect(host, port, version)
    await client.send_packet(
        Connect(client_id=client_id, protocol_level=version, username=username, password=password, will=will)
    )
    return client, await client.receive_packet_or_close()


def connack_code(packet: Packet | None) -> int:
    assert isinstance(packet, ConnAck), f"expected CONNACK, got {packet}"
    return packet.reason_code


class PahoOverTransport:
    """A paho-mqtt 2.x client over TLS and/or WebSocket (tests.clients.PahoClient speaks plain TCP only).
    Callbacks only record; every wait happens in a worker thread with a timeout."""

    def __init__(
        self,
        client_id: str,
        *,
        version: int = 5,
        websocket_path: str | None = None,
        ca: Path | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        import queue

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311,
            transport="websockets" if websocket_path is not None else "tcp",
            reconnect_on_failure=False,
        )
        if websocket_path is not None:
            self.client.ws_set_options(path=websocket_path)
        if ca is not None:
            self.client.tls_set(
                ca_certs=str(ca),
                certfile=None if certfile is None else str(certfile),
                keyfile=None if keyfile is None else str(keyfile),
            )
        self.connacks: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connacks.put(int(rc.value))
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self.subacks.put([int(rc.value) for rc in rcs])

    async def connect(
        self, host: str, port: int, username: str | None = None, password: str | None = None
    ) -> int:
        import trio

        if username is not None:
            self.client.username_pw_set(username, password)

        def run() -> int:
            self.client.connect(host, port, keepalive=30)
            self.client.loop_start()
            return self.connacks.get(timeout=5)

        return await trio.to_thread.run_sync(run)

    async def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        import trio

        self.client.subscribe(topic, qos)
        return await trio.to_thread.run_sync(lambda: self.subacks.get(timeout=5))

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        import trio

        info = self.client.publish(topic, payload, qos)
        await trio.to_thread.run_sync(lambda: info.wait_for_publish(timeout=5))

    async def expect_message(self) -> tuple[str, bytes]:
        import trio

        return await trio.to_thread.run_sync(lambda: self.messages.get(timeout=5))

    async def close(self) -> None:
        import trio

        def stop() -> None:
            self.client.disconnect()
            self.client.loop_stop()

        await trio.to_thread.run_sync(stop)
