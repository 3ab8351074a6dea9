"""Authentication on a live broker: password files (Mosquitto format), anonymous access, refusal codes,
the delayed refusal of repeated failures, and reloading the files without dropping connections."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from edgebus.protocol import ConnAck, Connect, PingReq, PingResp, PubAck, Publish, encode
from tests.clients import BOTH_VERSIONS, MQTT_3_1_1, MQTT_5, PahoClient, RawClient, Sub
from tests.conftest import StartBroker
from tests.processes import free_port
from tests.security.helpers import connack_code, connect_with, password_file
from tests.security.test_auth_files import MOSQUITTO_PASSWD

NO_DELAY = {"auth_failure_delay": 0.0}
REPO_ROOT = str(Path(__file__).resolve().parents[2])


@BOTH_VERSIONS
async def test_anonymous_client_is_refused_when_not_allowed(start_broker: StartBroker, version: int) -> None:
    """allow_anonymous = false: CONNACK 0x05 Not authorized (3.1.1, §3.2.2.3) / 0x87 Not authorized (5.0,
    §3.2.2.2); the server then closes the connection [MQTT-3.2.2-7] (5.0: [MQTT-3.2.2-7])."""
    broker = await start_broker(security={"allow_anonymous": False, **NO_DELAY})
    client, answer = await connect_with(broker, version, "anon")
    assert connack_code(answer) == (0x05 if version == MQTT_3_1_1 else 0x87)
    assert await client.expect_closed() == []
    await client.aclose()


@BOTH_VERSIONS
async def test_wrong_password_and_unknown_user_are_refused(
    start_broker: StartBroker, tmp_path: Path, version: int
) -> None:
    """A bad user name or password: 0x05 on 3.1.1 (as Mosquitto answers) and 0x86 Bad User Name or Password
    on 5.0 (§3.2.2.2); nothing after the refused CONNACK [MQTT-3.2.2-7]."""
    path = password_file(tmp_path, {"alice": "s3cret"})
    broker = await start_broker(security={"password_file": str(path), "allow_anonymous": False, **NO_DELAY})
    expected = 0x05 if version == MQTT_3_1_1 else 0x86
    for username, password in (("alice", b"wrong"), ("mallory", b"s3cret"), ("alice", None)):
        client, answer = await connect_with(broker, version, "c", username, password)
        assert connack_code(answer) == expected, (username, password)
        assert await client.expect_closed() == []
        await client.aclose()
    await client.aclose()
    client, answer = await connect_with(broker, version, "c", "alice", b"s3cret")
    assert connack_code(answer) == 0
    await client.aclose()


async def test_file_from_real_mosquitto_passwd_lets_paho_in(
    start_broker: StartBroker, tmp_path: Path, paho: Callable[..., PahoClient]
) -> None:
    """A password file written by Mosquitto's own mosquitto_passwd works unchanged (Mosquitto format)."""
    path = tmp_path / "passwd"
    await trio.run_process([MOSQUITTO_PASSWD, "-c", "-b", str(path), "gateway", "pa55 word"])
    broker = await start_broker(security={"password_file": str(path), "allow_anonymous": False, **NO_DELAY})
    client = paho("paho-user", MQTT_5)
    assert (await client.connect(*broker.address, username="gateway", password="pa55 word")).reason_code == 0
    await client.subscribe("t/#", 1)
    await client.publish("t/1", b"hello", 1)
    assert (await client.expect_message()).payload == b"hello"
    refused = paho("paho-bad", MQTT_5)
    assert (await refused.connect(*broker.address, username="gateway", password="nope")).reason_code == 0x86


async def test_mosquitto_clients_with_user_and_password(start_broker: StartBroker, tmp_path: Path) -> None:
    """mosquitto_pub -u/-P against a password file written by `edgebus passwd` (here: set_password)."""
    path = password_file(tmp_path, {"meter": "kwh"})
    broker = await start_broker(security={"password_file": str(path), "allow_anonymous": False, **NO_DELAY})
    sub, answer = await connect_with(broker, MQTT_5, "watch", "meter", b"kwh")
    assert connack_code(answer) == 0
    await sub.subscribe(Sub("m/#", 0))
    common = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-u", "meter", "-t", "m/1"]
    common += ["-m", "7"]
    await trio.run_process([*common, "-P", "kwh"])
    message = await sub.receive_packet()
    assert isinstance(message, Publish) and message.payload == b"7"
    failed = await trio.run_process([*common, "-P", "x"], check=False, capture_stderr=True)
    assert failed.returncode != 0
    await sub.aclose()


async def test_packets_pipelined_behind_a_connect_wait_for_its_verification(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    """The CONNACK is the first packet the server sends [MQTT-3.2.0-1] and packets sent right behind the
    CONNECT are processed after it is accepted [MQTT-3.1.4-?, §3.1.4: the server may start processing
    them only once it has accepted the connection]; hashing runs in a worker thread meanwhile."""
    path = password_file(tmp_path, {"u": "p"})
    broker = await start_broker(security={"password_file": str(path), "allow_anonymous": False, **NO_DELAY})
    client, answer = await connect_with(broker, MQTT_5, "pipe", "u", b"p")
    assert connack_code(answer) == 0
    await client.aclose()
    # Now all in one write: CONNECT, PUBLISH QoS 1, PINGREQ.
    client = await RawClient.connect(*broker.address)
    data = encode(Connect(client_id="pipe2", username="u", password=b"p"), MQTT_5)
    data += encode(Publish("x/y", b"1", qos=1, packet_id=7), MQTT_5) + encode(PingReq(), MQTT_5)
    await client.send(data)
    first, second, third = await client.receive_packets(3)
    assert isinstance(first, ConnAck) and first.reason_code == 0
    assert isinstance(second, PubAck) and second.packet_id == 7
    assert isinstance(third, PingResp)
    await client.aclose()


async def test_repeated_failures_are_delayed_without_stalling_other_clients(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    """Each further failure from one address doubles the wait for the refusing CONNACK ([security]
    auth_failure_delay); the event loop keeps serving others meanwhile (a PINGREQ is answered at once
    [MQTT-3.12.4-1])."""
    path = password_file(tmp_path, {"u": "p"})
    broker = await start_broker(
        security={"password_file": str(path), "auth_failure_delay": 0.2, "auth_failure_delay_max": 0.4}
    )
    other, answer = await connect_with(broker, MQTT_5, "bystander")  # anonymous is allowed here
    assert connack_code(answer) == 0
    waits = []
    refused: list[int] = []

    async def attempt() -> None:
        client, answer = await connect_with(broker, MQTT_5, "guess", "u", b"bad")
        refused.append(connack_code(answer))
        await client.aclose()

    for _ in range(3):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt)
            await trio.sleep(0.05)
            ping_start = trio.current_time()
            await other.send_packet(PingReq())
            assert isinstance(await other.receive_packet(), PingResp)
            assert trio.current_time() - ping_start < 0.1  # not stuck behind the delayed refusal
        assert refused.pop() == 0x86
        waits.append(trio.current_time() - start)
    assert waits[0] >= 0.2
    assert waits[1] >= 0.4
    assert waits[2] < 0.4 + 0.3  # capped at auth_failure_delay_max
    # A correct password is not delayed, and clears the count.
    start = trio.current_time()
    client, answer = await connect_with(broker, MQTT_5, "right", "u", b"p")
    assert connack_code(answer) == 0
    assert trio.current_time() - start < 0.2
    await client.aclose()
    await other.aclose()


async def test_reload_picks_up_new_files_and_keeps_connections(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    """SIGHUP (here: `Broker.reload_security`, which the CLI calls on SIGHUP) re-reads the password file; an
    established connection stays up, new CONNECTs meet the new file."""
    path = password_file(tmp_path, {"old": "1"})
    broker = await start_broker(security={"password_file": str(path), "allow_anonymous": False, **NO_DELAY})
    kept, answer = await connect_with(broker, MQTT_5, "kept", "old", b"1")
    assert connack_code(answer) == 0
    path.unlink()
    password_file(tmp_path, {"new": "2"})
    assert broker.broker is not None
    broker.broker.reload_security()
    refused, answer = await connect_with(broker, MQTT_5, "c1", "old", b"1")
    assert connack_code(answer) == 0x86
    accepted, answer = await connect_with(broker, MQTT_5, "c2", "new", b"2")
    assert connack_code(answer) == 0
    await kept.send_packet(PingReq())
    assert isinstance(await kept.receive_packet(), PingResp)
    for client in (refused, accepted, kept):
        await client.aclose()


async def test_mosquitto_reads_a_file_written_by_edgebus_passwd(tmp_path: Path) -> None:
    """Compatibility the other way: Mosquitto 2.0 accepts users from `edgebus passwd -b` (100,000 rounds)."""
    path = tmp_path / "passwd"
    result = await trio.run_process(
        [sys.executable, "-m", "edgebus", "passwd", "-b", str(path), "dev", "pw"],
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    # "user root": Mosquitto started as root would drop to user mosquitto, which cannot read a 0600 file.
    config.write_text(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {path}\n")
    process = await trio.lowlevel.open_process(["/usr/sbin/mosquitto", "-c", str(config)])
    try:
        with trio.fail_after(5):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)
        ok = await trio.run_process(
            ["mosquitto_pub", "-p", str(port), "-u", "dev", "-P", "pw", "-t", "t", "-m", "x"], check=False
        )
        bad = await trio.run_process(
            ["mosquitto_pub", "-p", str(port), "-u", "dev", "-P", "px", "-t", "t", "-m", "x"],
            check=False,
            capture_stderr=True,
        )
        assert ok.returncode == 0
        assert bad.returncode != 0
    finally:
        process.kill()
        await process.wait()
