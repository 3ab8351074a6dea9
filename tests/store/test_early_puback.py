"""A QoS 1 PUBACK waits for the store only while the disk owes the message something.

edgebus acknowledges a QoS 1 PUBLISH once what it wrote is on disk. When all it wrote are deliveries to
persistent sessions, and every one of those deliveries is already finished (the subscriber's PUBACK came
first), nothing needs the disk any more: the PUBACK goes at once, still in the order of the PUBLISHes
[MQTT-4.6.0-2]. Messages still owed to an offline session, retained messages and bridged messages wait
for their commit as before. Here the store's commits are held back while the PUBACKs are watched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

from edgebus.config import BridgeTopic
from edgebus.store.committer import Store
from tests.bridge.test_outbox import unreachable_bridge
from tests.clients import MQTT_5, PahoClient, edgebus_only
from tests.conftest import BrokerHandle, StartBroker

pytestmark = edgebus_only("edgebus's store")

#: Long enough that a PUBACK waiting for a commit would have come by now if commits were not held.
NOT_BEFORE_S = 1.0


@contextmanager
def commits_held(broker: BrokerHandle) -> Iterator[Store]:
    """The store commits nothing until the block ends (then all that gathered, in one commit)."""
    assert broker.broker is not None and broker.broker.store is not None
    store = broker.broker.store
    release = trio.Event()
    commit_now = store.commit_now

    async def held(*args: Any, **kwargs: Any) -> None:
        await release.wait()
        await commit_now(*args, **kwargs)

    store.commit_now = held
    try:
        yield store
    finally:
        store.commit_now = commit_now
        release.set()


async def persistent(
    paho: Callable[..., PahoClient], broker: BrokerHandle, name: str, topic: str
) -> PahoClient:
    client = paho(name, MQTT_5)
    await client.connect(*broker.address, clean_start=False, session_expiry_interval=300)
    await client.subscribe(topic, 1)
    return client


async def not_acknowledged(publisher: PahoClient, mid: int) -> None:
    with pytest.raises(AssertionError, match="nothing within"):
        await publisher.wait_published(mid, NOT_BEFORE_S)


async def test_a_message_its_persistent_subscribers_have_is_acknowledged_before_its_commit(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    broker = await start_broker()
    subscribers = [await persistent(paho, broker, f"sub-{n}", "t/#") for n in range(2)]
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    with commits_held(broker) as store:
        committed = store.committed_seq
        for number in range(3):
            await publisher.publish(f"t/{number}", b"%d" % number, qos=1)  # its PUBACK came
        for subscriber in subscribers:
            assert [m.payload for m in await subscriber.expect_messages(3)] == [b"0", b"1", b"2"]
        assert store.committed_seq == committed  # all of it without a commit


async def test_a_message_still_owed_to_an_offline_session_waits_for_its_commit(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    broker = await start_broker()
    online = await persistent(paho, broker, "online", "t/#")
    sleeper = await persistent(paho, broker, "sleeper", "t/owed")
    await sleeper.disconnect()
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    with commits_held(broker):
        owed = (await publisher.publish("t/owed", b"owed", qos=1, wait=False)).mid
        free = (await publisher.publish("t/free", b"free", qos=1, wait=False)).mid
        assert [m.payload for m in await online.expect_messages(2)] == [b"owed", b"free"]
        await not_acknowledged(publisher, owed)
        # The second is owed nothing, but its PUBACK keeps its place behind the first [MQTT-4.6.0-2].
        await not_acknowledged(publisher, free)
    await publisher.wait_published(owed)
    await publisher.wait_published(free)
    await sleeper.connect(*broker.address, clean_start=False, session_expiry_interval=300)
    assert [m.payload for m in await sleeper.expect_messages(1)] == [b"owed"]


@pytest.mark.parametrize("case", ["retained", "bridged"])
async def test_retained_and_bridged_messages_wait_for_their_commit(
    start_broker: StartBroker, paho: Callable[..., PahoClient], case: str
) -> None:
    bridges = (unreachable_bridge(topics=(BridgeTopic("t/#", direction="out", qos=1),)),)
    broker = await start_broker(bridges=bridges if case == "bridged" else ())
    await persistent(paho, broker, "online", "t/#")
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    with commits_held(broker):
        mid = (await publisher.publish("t/x", b"x", qos=1, retain=case == "retained", wait=False)).mid
        await not_acknowledged(publisher, mid)
    await publisher.wait_published(mid)
