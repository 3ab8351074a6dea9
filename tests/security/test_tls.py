"""TLS listeners (MQTT 5.0 §5.4.9 / 3.1.1 §5.4.9: TLS is how MQTT gets confidentiality and
authentication): server certificates, mutual TLS, identities from client certificates, with paho and the
Mosquitto command-line clients; certificates from trustme."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from edgebus.protocol import Publish
from tests.clients import MQTT_5, RawClient, Sub
from tests.conftest import BrokerHandle, StartBroker
from tests.security.conftest import Certificates
from tests.security.helpers import PahoOverTransport, acl_file

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")  # paho's TLS socket on failed handshakes


def tls_listener(certs: Certificates, **options: Any) -> dict[str, Any]:
    return {"type": "tls", "certfile": str(certs.server_cert), "keyfile": str(certs.server_key), **options}


def tls_port(broker: BrokerHandle) -> int:
    assert broker.broker is not None
    return int(broker.broker.listener_addresses[0][0][1])


async def run(command: list[str]) -> tuple[int, str]:
    result = await trio.run_process(command, check=False, capture_stdout=True, capture_stderr=True)
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


async def test_paho_over_tls(start_broker: StartBroker, certificates: Certificates) -> None:
    """paho with tls_set(ca_certs=...) verifies the server certificate and talks MQTT 5 through TLS."""
    broker = await start_broker(listeners=[tls_listener(certificates)])
    client = PahoOverTransport("paho-tls", ca=certificates.ca)
    assert await client.connect("127.0.0.1", tls_port(broker)) == 0
    assert await client.subscribe("secure/#") == [1]
    await client.publish("secure/t", b"over tls")
    assert await client.expect_message() == ("secure/t", b"over tls")
    await client.close()


async def test_mosquitto_clients_over_tls_and_plain_port_still_plain(
    start_broker: StartBroker, certificates: Certificates
) -> None:
    """mosquitto_sub/pub with --cafile against the TLS listener; a message crosses to the plain listener."""
    broker = await start_broker(listeners=[tls_listener(certificates)])
    port = tls_port(broker)
    plain = await RawClient.connect(*broker.address)
    assert (await plain.mqtt_connect("plain")).reason_code == 0
    await plain.subscribe(Sub("x/#", 0))
    code, output = await run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--cafile",
            str(certificates.ca),
            "-t",
            "x/1",
            "-m",
            "hi",
        ]
    )
    assert code == 0, output
    message = await plain.receive_packet()
    assert isinstance(message, Publish) and message.payload == b"hi"
    await plain.aclose()


async def test_mutual_tls_requires_a_certificate_from_the_ca(
    start_broker: StartBroker, certificates: Certificates
) -> None:
    """require_certificate: a client without a certificate, or with one from another CA, fails the TLS
    handshake; one with a certificate signed by cafile gets in."""
    broker = await start_broker(
        listeners=[tls_listener(certificates, cafile=str(certificates.ca), require_certificate=True)]
    )
    port = tls_port(broker)
    base = [
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--cafile",
        str(certificates.ca),
        "-t",
        "m",
        "-m",
        "1",
    ]
    code, output = await run(
        [*base, "--cert", str(certificates.client_cert), "--key", str(certificates.client_key)]
    )
    assert code == 0, output
    code, _ = await run(base)
    assert code != 0
    stranger = [
        "--cert",
        str(certificates.other_ca_client_cert),
        "--key",
        str(certificates.other_ca_client_key),
    ]
    code, _ = await run([*base, *stranger])
    assert code != 0
    client = PahoOverTransport(
        "paho-mtls", ca=certificates.ca, certfile=certificates.client_cert, keyfile=certificates.client_key
    )
    assert await client.connect("127.0.0.1", port) == 0
    await client.close()


async def test_identity_from_certificate_is_the_user_name(
    start_broker: StartBroker, certificates: Certificates, tmp_path: Path
) -> None:
    """use_identity_as_username: the certificate's CN ("device-7") is the user name the ACL sees, whatever
    user name the client sends; without a certificate the CONNECT is refused (0x87)."""
    acl = acl_file(tmp_path, "user device-7\ntopic readwrite devices/7/#\n")
    broker = await start_broker(
        security={"acl_file": str(acl), "allow_anonymous": False, "auth_failure_delay": 0},
        listeners=[tls_listener(certificates, cafile=str(certificates.ca), use_identity_as_username=True)],
    )
    port = tls_port(broker)
    device = PahoOverTransport(
        "dev7", ca=certificates.ca, certfile=certificates.client_cert, keyfile=certificates.client_key
    )
    assert await device.connect("127.0.0.1", port, username="admin", password="ignored") == 0
    assert await device.subscribe("devices/7/#") == [1]
    assert await device.subscribe("devices/8/#") == [0x87]
    await device.publish("devices/7/up", b"ok")
    assert await device.expect_message() == ("devices/7/up", b"ok")
    await device.close()
    anonymous = PahoOverTransport("nocert", ca=certificates.ca)
    assert await anonymous.connect("127.0.0.1", port) == 0x87
    await trio.to_thread.run_sync(anonymous.client.loop_stop)


async def test_garbage_and_silence_on_a_tls_port_are_closed_quietly(
    start_broker: StartBroker, certificates: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    """Plain MQTT to a TLS port fails the handshake and is closed; a connection that never completes the
    handshake is closed at the CONNECT deadline ([limits] connect_timeout); nothing is logged as failed."""
    caplog.set_level(logging.INFO)
    broker = await start_broker(listeners=[tls_listener(certificates)], limits={"connect_timeout": 0.5})
    port = tls_port(broker)
    plain = await RawClient.connect("127.0.0.1", port, MQTT_5)
    await plain.send_packet(Publish("a", b"b", qos=1, packet_id=1))  # not a ClientHello
    await plain.expect_closed()
    await plain.aclose()
    silent = await RawClient.connect("127.0.0.1", port, MQTT_5)
    start = trio.current_time()
    await silent.expect_closed(timeout=3)
    assert 0.4 < trio.current_time() - start < 2.0
    await silent.aclose()
    assert not [r for r in caplog.records if "failed" in r.getMessage()]
