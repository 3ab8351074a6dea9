"""A sink's call into its asyncio client (`edgebus.bridge.aio`), every failure but a cancellation turned into
SinkError: one copy for the JetStream, RabbitMQ stream and Redis Streams sinks, each of which binds its
engine's name (``functools.partial(cross_to_sink, "JetStream")``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio

from edgebus.bridge.aio import CrossingTimeout, LoopThread, describe
from edgebus.bridge.sink import SinkError

log = logging.getLogger("edgebus.bridge")

T = TypeVar("T")

#: What a crossing may take beyond the asyncio side's own bound: the thread hops, a busy loop.
CROSSING_MARGIN_S = 1.0


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


async def close_link(
    engine: str,
    loop_thread: LoopThread,
    close: Callable[[], Coroutine[Any, Any, object]],
    close_timeout: float,
) -> None:
    """Close an asyncio client's connection (``close``, bounded by ``close_timeout`` on its side), even in a
    cancelled scope; a failure is only logged, as the link is being dropped anyway."""
    with trio.move_on_after(close_timeout + CROSSING_MARGIN_S) as scope:
        scope.shield = True
        try:
            await loop_thread.run(close, timeout=close_timeout + CROSSING_MARGIN_S / 2)
        except Exception as error:
            log.debug("closing a %s link: %s", engine, describe(error))
