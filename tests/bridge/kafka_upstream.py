"""A real Apache Kafka broker for the bridge tests: one JVM as broker and KRaft controller on 127.0.0.1, its
storage formatted by Kafka's own StorageTool, stopped by PID (SIGTERM, then SIGKILL), and SIGKILLed and
restarted on the same ports and data directory.

The jars come from Maven (tests/engines/kafka/pom.xml) into the git-ignored .cache/kafka/lib; scripts/test
fetches them. A JVM starts in seconds, so the tests share one broker (`shared_kafka`), each test on topics
of its own.

Two client listeners: ``PLAIN`` for the tests' own clients and direct bridges, and ``PROXIED``, whose
advertised address is a port chosen up front for a ChaosProxy in front of it. A Kafka client connects to
the addresses the metadata advertises, so a proxy in front of ``PLAIN`` would be bypassed after the first
request; through ``PROXIED`` every connection goes through the proxy.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO

import trio
from confluent_kafka.admin import AdminClient

from tests.processes import free_port

__all__ = ["KAFKA_LIB", "KafkaServer", "kafka_available", "shared_kafka"]

REPO = Path(__file__).resolve().parents[2]
KAFKA_LIB = REPO / ".cache" / "kafka" / "lib"
JAVA = "/usr/bin/java"
#: Seconds a starting broker has to answer a metadata request (a JVM on a busy 2-core machine).
START_TIMEOUT_S = 90.0
#: Seconds SIGTERM has before SIGKILL.
STOP_TIMEOUT_S = 10.0
#: C1 only (TieredStopAtLevel=1): the JVM starts and restarts about a second faster on two busy cores.
JVM_OPTIONS = [
    "-Xmx512m",
    "-Xms64m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
]

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
"""


def kafka_available() -> bool:
    return (KAFKA_LIB / "kafka_2.13-4.1.1.jar").exists() and os.access(JAVA, os.X_OK)


def _port_below_32768() -> int:
    """A free loopback port outside the ephemeral range (32768-60999 here), so that no client socket
    takes it while the broker is down between a SIGKILL and its restart."""
    for _ in range(200):
        port = free_port()
        if port < 32768:
            return port
    import socket  # the kernel's range starts lower: pick from 20000-32767 and probe

    for _ in range(500):
        candidate = 20000 + int.from_bytes(os.urandom(2), "big") % 12768
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError("no free port below 32768")


class KafkaServer:
    """One Kafka 4 process (``process.roles=broker,controller``) with its data in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = _port_below_32768()  # PLAIN: tests' clients and direct bridges
        self.proxied_port = _port_below_32768()  # PROXIED: what a ChaosProxy forwards to
        self.proxy_port = _port_below_32768()  # where that proxy listens: advertised by PROXIED
        self.controller_port = _port_below_32768()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.properties = directory / "server.properties"
        self._write_config()
        self._format()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": (
                f"PLAIN://127.0.0.1:{self.port},PROXIED://127.0.0.1:{self.proxied_port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": (
                f"PLAIN://127.0.0.1:{self.port},PROXIED://127.0.0.1:{self.proxy_port}"
            ),
            "listener.security.protocol.map": "PLAIN:PLAINTEXT,PROXIED:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAIN",
            "log.dirs": str(self.data),
            "num.partitions": "3",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            # A SIGKILLed broker's registration is fenced after this long; its restart waits for that.
            "broker.session.timeout.ms": "2000",
            "broker.heartbeat.interval.ms": "500",
            "log.segment.bytes": str(8 * 1024 * 1024),
            "log.retention.check.interval.ms": "60000",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "2",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
        }
        self.properties.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        (self.directory / "log4j2.properties").write_text(
            LOG4J2.format(log=self.directory / "kafka.log", level="INFO")
        )

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            JAVA,
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.directory}",
            "-cp",
            f"{KAFKA_LIB}/*",
            main,
            *args,
        ]

    def _format(self) -> None:
        """StorageTool format: KRaft metadata for a one-node quorum (``--standalone``), random cluster id."""
        # StorageTool's parser takes an id starting with "-" for an option (Kafka's own random ids avoid it):
        # 1 format in 64 failed with its usage text (seen in the outage campaign).
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        command = self._java(
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.properties), "--standalone"
        )
        done = subprocess.run(command, capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kafka StorageTool format failed: {done.stdout!r} {done.stderr!r}")

    # -- life cycle (blocking; the async wrappers run them on a thread) ------------------------------------

    def start(self) -> None:
        """Start the JVM and wait until the broker answers a metadata request."""
        if self.process is not None:
            raise RuntimeError("kafka is already running")
        self._log = (self.directory / "kafka.out").open("ab")
        self.process = subprocess.Popen(
            self._java("kafka.Kafka", str(self.properties)), stdout=self._log, stderr=subprocess.STDOUT
        )
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.connection.setup.timeout.ms": 1000, "log_level": 2}
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._reap()
                raise RuntimeError(f"kafka exited with {code}; see {self.directory / 'kafka.log'}")
            try:
                metadata = admin.list_topics(timeout=1.0)
                if metadata.brokers:
                    return
            except Exception:  # KafkaException while it starts
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"kafka did not answer within {START_TIMEOUT_S:g} s")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: Kafka keeps what it acknowledged only as far as the OS has it (no fsync per write);
        the OS stays up here, so nothing acknowledged is lost."""
        process = self.process
        if process is None:
            return
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        self._reap()

    def stop(self) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL if it takes too long; idempotent."""
        process = self.process
        if process is None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        self._reap()

    def _reap(self) -> None:
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def restart(self, down_s: float = 0.5) -> None:
        """SIGKILL, a pause, then start again on the same ports and data."""
        self.kill()
        await trio.sleep(down_s)
        await trio.to_thread.run_sync(self.start)


_shared: KafkaServer | None = None
#: Held while the shared broker starts: a test asking for it waits for a start already under way (the
#: session may begin one in the background, tests/shared_engines.py).
_shared_lock = threading.Lock()


def shared_kafka() -> KafkaServer:
    """The test session's Kafka, started on first use and stopped (by PID) when the interpreter exits.
    A test that kills it restarts it before it ends (`KafkaServer.restart`); this starts it again if not."""
    global _shared
    with _shared_lock:
        if _shared is None:
            directory = Path(tempfile.mkdtemp(prefix="edgebus-kafka-"))
            server = KafkaServer(directory)
            atexit.register(shutil.rmtree, directory, True)
            atexit.register(server.stop)
            _shared = server
        if _shared.process is None:
            _shared.start()
            _warm_transactions(_shared)
        return _shared


def _warm_transactions(server: KafkaServer) -> None:
    """Wait until the new broker's transaction coordinator answers: it loads its log for about a second
    after the port opens (longer on a busy machine), and a test's first bridge would otherwise spend that
    in init_transactions, where a fault meant for a connected link (test_outages' proxy flaps) lands on
    a connection attempt instead."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": server.bootstrap, "transactional.id": "edgebus-tests-warm-up", "log_level": 2}
    )
    producer.init_transactions(START_TIMEOUT_S)
    producer.flush(0)
