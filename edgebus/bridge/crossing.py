"""A sink's call into its asyncio client (`edgebus.bridge.aio`), every failure but a cancellation turned into
SinkError, and the connect loop around it: one copy for the JetStream, RabbitMQ stream and Redis Streams
sinks, each of which binds its engine's name (``functools.partial(cross_to_sink, "JetStream")``) and
connects with `connect_first`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import trio

from edgebus.bridge.aio import CrossingTimeout, LoopThread, describe, open_loop_thread
from edgebus.bridge.sink import SinkError
from edgebus.config import BridgeConfig, ListenAddress

log = logging.getLogger("edgebus.bridge")

T = TypeVar("T")


class AsyncLink(Protocol):
    """An asyncio client's connection, as `connect_first` handles it: closed on its loop thread, bounded
    on that side."""

    async def close(self) -> None: ...


L = TypeVar("L", bound=AsyncLink)

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


def host_port(address: ListenAddress) -> str:
    return f"{address.host}:{address.port}"


@asynccontextmanager
async def connect_first(
    engine: str,
    bridge: BridgeConfig,
    thread_name: str,
    new_link: Callable[[ListenAddress], L],
    open_link: Callable[[L, ListenAddress], Coroutine[Any, Any, None]],
    close_timeout: float,
    where: Callable[[ListenAddress], str] = host_port,
) -> AsyncIterator[tuple[LoopThread, L]]:
    """An asyncio loop thread (``thread_name``) and a link on it to the first of the bridge's addresses
    that opens: each gets a fresh ``new_link(address)`` and ``open_link(link, address)`` (on the asyncio
    side) within connect_timeout; a link that did not open is closed before the next try. On exit the link
    is closed, then the thread stopped. None opening: SinkError naming each address (``where``) and why."""
    async with open_loop_thread(thread_name) as loop_thread:
        failures: list[str] = []
        for address in bridge.addresses:
            link = new_link(address)
            try:
                await cross_to_sink(
                    engine,
                    "connect",
                    loop_thread,
                    open_link,
                    link,
                    address,
                    timeout=bridge.connect_timeout + CROSSING_MARGIN_S,
                )
            except SinkError as error:
                # TimeoutError as the cause: the client's own connect timeout, raised on the asyncio side.
                if isinstance(error.__cause__, TimeoutError):
                    failures.append(f"{where(address)}: no answer within {bridge.connect_timeout:g} s")
                else:
                    failures.append(f"{where(address)}: {error}")
                log.info("%s bridge %r: %s", engine, bridge.name, failures[-1])
                await close_link(engine, loop_thread, link.close, close_timeout)
                continue
            except BaseException:  # cancelled mid-connect: the half-open link goes too
                await close_link(engine, loop_thread, link.close, close_timeout)
                raise
            try:
                yield loop_thread, link
            finally:
                await close_link(engine, loop_thread, link.close, close_timeout)
            return
        raise SinkError(f"could not connect to {engine}: " + "; ".join(failures))
