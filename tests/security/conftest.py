"""Certificates for the TLS tests, made by trustme: a CA, a server certificate for 127.0.0.1 and localhost,
and a client certificate whose Common Name is "device-7"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_client_cert: Path  # signed by a CA the broker does not trust
    other_ca_client_key: Path


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("device-7.example", common_name="device-7")
    stranger = trustme.CA().issue_cert("device-8.example", common_name="device-8")
    paths = Certificates(
        *(directory / name for name in ("ca.pem", "s.pem", "s.key", "c.pem", "c.key", "o.pem", "o.key"))
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    for leaf, cert, key in (
        (server, paths.server_cert, paths.server_key),
        (client, paths.client_cert, paths.client_key),
        (stranger, paths.other_ca_client_cert, paths.other_ca_client_key),
    ):
        for index, pem in enumerate(leaf.cert_chain_pems):
            pem.write_to_path(str(cert), append=index > 0)
        leaf.private_key_pem.write_to_path(str(key))
    return paths
