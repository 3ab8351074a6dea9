"""The HTTP listener over TLS (type "https", certificates from trustme): HTTP Basic and bearer tokens are
taken there, checked, delayed when wrong, and the read-only / admin roles hold; a client that does not trust
the certificate gets no answer at all."""

from __future__ import annotations

import ssl
import urllib.error
from pathlib import Path

import pytest
import trio

from tests.clients import edgebus_only
from tests.conftest import StartBroker
from tests.http.helpers import ADMIN, TOKEN, VIEWER, basic, request, write_auth_files

pytestmark = edgebus_only("the HTTP listener is edgebus's")

FAILURE_DELAY_S = 0.3


async def test_basic_and_bearer_over_tls(start_broker: StartBroker, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(cert), append=True)
    server.private_key_pem.write_to_path(str(key))
    passwords, tokens = write_auth_files(tmp_path)
    broker = await start_broker(
        security={"password_file": str(passwords), "auth_failure_delay": FAILURE_DELAY_S},
        listeners=[
            {
                "type": "https",
                "certfile": str(cert),
                "keyfile": str(key),
                "admins": ("admin",),
                "token_file": str(tokens),
            }
        ],
    )
    assert broker.broker is not None
    host, port = broker.broker.listener_addresses[0][0]
    api = f"https://{host}:{port}/api/v1"
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)

    # Without credentials: 401 offering both schemes.
    reply = await request(api + "/clients", context=trusted)
    assert reply.status == 401
    assert 'Basic realm="edgebus"' in reply.headers["www-authenticate"]
    assert 'Bearer realm="edgebus"' in reply.headers["www-authenticate"]
    # Basic: a viewer reads, may not act; an admin acts.
    assert (await request(api + "/clients", headers=basic(VIEWER), context=trusted)).status == 200
    reply = await request(api + "/reload", "POST", basic(VIEWER), context=trusted)
    assert reply.status == 403 and "may only read" in reply.json()["error"]
    reply = await request(api + "/reload", "POST", basic(ADMIN), context=trusted)
    assert reply.status == 200 and reply.json()["ok"] is True
    # Bearer: the token's user ("prometheus") is not an admin here: it reads /metrics, may not act.
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    metrics = await request(f"https://{host}:{port}/metrics", headers=bearer, context=trusted)
    assert metrics.status == 200 and b"edgebus_listener_connections{" in metrics.body
    assert (await request(api + "/reload", "POST", bearer, context=trusted)).status == 403
    # Wrong password, wrong token: 401 after the failure delay, as for MQTT.
    for headers in (basic(("admin", "wrong")), {"Authorization": "Bearer wrong-token-0123456789"}):
        started = trio.current_time()
        reply = await request(api + "/clients", headers=headers, context=trusted)
        assert reply.status == 401 and reply.json()["error"] == "bad credentials"
        assert trio.current_time() - started >= FAILURE_DELAY_S * 0.9
    # A client that does not trust the certificate sends nothing (the handshake fails first).
    with pytest.raises(urllib.error.URLError) as failed:
        await request(api + "/clients", headers=basic(ADMIN), context=ssl.create_default_context())
    assert isinstance(failed.value.reason, ssl.SSLCertVerificationError)
    # The broker serves on.
    assert (await request(api + "/broker", headers=basic(VIEWER), context=trusted)).status == 200
