"""A sink's call into its asyncio client (`edgebus.bridge.aio`), every failure but a cancellation turned into
SinkError: one copy for the JetStream, RabbitMQ stream and Redis Streams sinks, each of which binds its
engine's name (``functools.partial(cross_to_sink, "JetStream")``)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio

from edgebus.bridge.aio import CrossingTimeout, LoopThread, describe
from edgebus.bridge.sink import SinkError

T = TypeVar("T")


async def cross_to_sink(
    engine: str,
    what: str,
    loop_thread: LoopThread,
    async_fn: Callable[..., Coroutine[Any, Any, T]],
    *args: Any,
    timeout: float,  # noqa: ASYNC109 - LoopThread.run's bound, which also cancels the asyncio side
) -> T:
    """One crossing, bounded by ``timeout``."""
    try:
        return await loop_thread.run(async_fn, *args, timeout=timeout)
    except SinkError:
        raise
    except CrossingTimeout:
        raise SinkError(f"{engine} {what}: no answer within {timeout:g} s") from None
    except Exception as error:
        # Cancelled on the trio side while the asyncio side failed on its way out (nats-py turns its
        # CancelledError into ConnectionClosedError on a closed connection): the cancellation wins.
        await trio.lowlevel.checkpoint_if_cancelled()
        raise SinkError(f"{engine} {what} failed: {describe(error)}") from error
