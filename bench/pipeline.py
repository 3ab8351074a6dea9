"""A no-I/O microbenchmark of the broker's publish hot path through the server-role machine.

    python -m bench.pipeline [--subscribers N] [--messages M] [--repeats R] [--batch B]

One publisher `Connection` is fed encoded PUBLISH bytes, B at a time; each MessageReceived is routed (as
the broker does, without the router) into N subscriber sessions' outboxes and acknowledged; each
subscriber connection's `take_output` is read and its PUBACK / PUBREC ... PUBCOMP are fed back, so every
QoS 1/2 flow runs to its end in both directions. Printed: microseconds per published message (fanned
out to N subscribers), the median of R repeats, for QoS 0/1/2 on MQTT 3.1.1 and 5.0. No sockets, no
trio, no store: what it measures is the sans-IO code only. Times are the process's CPU time, so that
other processes on a shared machine do not count (they still disturb caches: compare medians).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from edgebus.core.outbox import Delivery, Outbox
from edgebus.core.server import Connection
from edgebus.core.server_events import ConnectionLimits, ConnectReceived, MessageReceived
from edgebus.core.session import Session
from edgebus.core.stats import Stats
from edgebus.protocol import MQTT_3_1_1, MQTT_5, Connect, PubAck, PubComp, Publish, PubRec, PubRel, encode

TOPIC = "sensors/device-1/temperature"
PAYLOAD = bytes(range(64))
LEVELS = {"3.1.1": MQTT_3_1_1, "5.0": MQTT_5}


def connected(client_id: str, level: int, stats: Stats) -> Connection:
    """A server-role connection past CONNECT, with a session and an outbox roomy enough never to drop."""
    conn = Connection(ConnectionLimits(), stats)
    connect = Connect(client_id=client_id, protocol_level=level)
    conn.receive_data(encode(connect, level))
    assert isinstance(conn.next_event(0.0), ConnectReceived)
    conn.accept(Session(client_id, Outbox(1 << 20, 1 << 40, "drop-oldest", stats)), b"", connect)
    conn.take_output(0.0)
    return conn


class Pipeline:
    """One publisher and N subscribers at one protocol level and QoS, ready to run batches."""

    def __init__(self, level: int, qos: int, subscribers: int, batch: int) -> None:
        self.level = level
        self.qos = qos
        self.batch = batch
        stats = Stats()
        self.publisher = connected("pub", level, stats)
        self.subscribers = [connected(f"sub-{n}", level, stats) for n in range(subscribers)]
        self.sessions = [sub.session for sub in self.subscribers]
        ids = range(1, batch + 1)
        self.publishes = b"".join(
            encode(Publish(TOPIC, PAYLOAD, qos, packet_id=pid if qos else None), level) for pid in ids
        )
        self.pubrels = b"".join(encode(PubRel(pid), level) for pid in ids)
        # The subscriber's answers by the packet id bytes of the PUBLISH it received.
        self.answers = {
            pid.to_bytes(2, "big"): encode(PubAck(pid) if qos == 1 else PubRec(pid), level)
            for pid in range(1, 0x10000)
        }
        self.pubcomps = {pid.to_bytes(2, "big"): encode(PubComp(pid), level) for pid in range(1, 0x10000)}
        # Where the packet id stands in every PUBLISH the subscribers get (no alias, no properties
        # but the empty block on 5.0): fixed header, topic length and topic.
        self.id_at = 0
        if qos:
            probe = Publish(TOPIC, PAYLOAD, qos, packet_id=1)
            whole = encode(probe, level)
            self.id_at = len(whole) - len(PAYLOAD) - 2 - (1 if level == MQTT_5 else 0)

    def run(self, messages: int) -> int:
        """Publish about ``messages`` messages through the pipeline; returns how many it did."""
        publisher = self.publisher
        subscribers = self.subscribers
        sessions = self.sessions
        publishes = self.publishes
        pubrels = self.pubrels
        answers = self.answers
        pubcomps = self.pubcomps
        qos = self.qos
        id_at = self.id_at
        id_end = id_at + 2
        done = 0
        now = 1.0
        while done < messages:
            publisher.receive_data(publishes)
            while (event := publisher.next_event(now)) is not None:
                assert isinstance(event, MessageReceived)
                message = event.message
                for session in sessions:
                    session.outbox.offer(Delivery(message, qos, False))
                if qos:
                    publisher.acknowledge(qos, event.packet_id)
            publisher.take_output(now)
            if qos == 2:
                publisher.receive_data(pubrels)
                while publisher.next_event(now) is not None:
                    pass
                publisher.take_output(now)
            for sub in subscribers:
                out = sub.take_output(now)
                if not qos:
                    continue
                keys = [chunk[id_at:id_end] for chunk in out]
                sub.receive_data(b"".join([answers[key] for key in keys]))
                while sub.next_event(now) is not None:
                    pass
                if qos == 2:
                    sub.take_output(now)  # the PUBRELs
                    sub.receive_data(b"".join([pubcomps[key] for key in keys]))
                    while sub.next_event(now) is not None:
                        pass
            done += self.batch
        for sub in subscribers:
            assert not sub.session.inflight and not sub.session.outbox, "a flow did not end"
        return done


def measure(level: int, qos: int, subscribers: int, messages: int, repeats: int, batch: int) -> float:
    """Median CPU microseconds per published message over ``repeats`` runs (after one warm-up run)."""
    pipeline = Pipeline(level, qos, subscribers, batch)
    pipeline.run(batch * 10)
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.process_time_ns()
        done = pipeline.run(messages)
        samples.append((time.process_time_ns() - start) / 1000 / done)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=4, help="subscriber connections (default 4)")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (default 20000)")
    parser.add_argument("--repeats", type=int, default=7, help="runs per figure; the median is shown")
    parser.add_argument("--batch", type=int, default=64, help="PUBLISH packets per receive_data (default 64)")
    args = parser.parse_args()
    print(
        f"sans-IO publish pipeline: 1 publisher -> {args.subscribers} subscribers, {len(PAYLOAD)}-byte "
        f"payloads, batches of {args.batch}; us per message, median of {args.repeats}"
    )
    print(f"{'':8}" + "".join(f"{name:>10}" for name in LEVELS))
    for qos in (0, 1, 2):
        row = [
            measure(level, qos, args.subscribers, args.messages, args.repeats, args.batch)
            for level in LEVELS.values()
        ]
        print(f"QoS {qos:<4}" + "".join(f"{value:10.2f}" for value in row))


if __name__ == "__main__":
    main()
