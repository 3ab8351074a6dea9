"""The trio <-> asyncio crossing: results, exceptions, timeouts, cancellation and the thread's lifetime."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from edgebus.bridge.aio import CrossingTimeout, LoopClosed, LoopThread, open_loop_thread


async def _thread_name_and_sum(a: int, b: int) -> tuple[str, int]:
    await asyncio.sleep(0)
    return threading.current_thread().name, a + b


async def test_run_returns_the_result_computed_on_the_loop_thread() -> None:
    async with open_loop_thread("aio-test") as loop_thread:
        name, total = await loop_thread.run(_thread_name_and_sum, 2, 3, timeout=5)
    assert (name, total) == ("aio-test", 5)
    assert name != threading.current_thread().name


async def test_exceptions_of_the_coroutine_propagate() -> None:
    async def fail() -> None:
        raise ValueError("bad value")

    async with open_loop_thread("aio-test") as loop_thread:
        with pytest.raises(ValueError, match="bad value"):
            await loop_thread.run(fail, timeout=5)
        # The loop is still usable after a failed call.
        assert (await loop_thread.run(_thread_name_and_sum, 1, 1, timeout=5))[1] == 2


async def test_timeout_raises_and_cancels_the_asyncio_task() -> None:
    cancelled = threading.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with open_loop_thread("aio-test") as loop_thread:
        started = trio.current_time()
        with pytest.raises(CrossingTimeout):
            await loop_thread.run(hang, timeout=0.2)
        assert trio.current_time() - started < 2
        # The cancellation reaches the asyncio task through the loop: wait for it without blocking trio.
        with trio.fail_after(2):
            while not cancelled.is_set():  # noqa: ASYNC110 - set on the asyncio thread
                await trio.sleep(0.01)


async def test_trio_cancellation_cancels_the_asyncio_task() -> None:
    entered = threading.Event()
    cancelled = threading.Event()

    async def hang() -> None:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with open_loop_thread("aio-test") as loop_thread:
        with trio.move_on_after(0.3) as scope:
            await loop_thread.run(hang, timeout=30)
        assert scope.cancelled_caught
        assert entered.is_set()
        with trio.fail_after(2):
            while not cancelled.is_set():  # noqa: ASYNC110 - set on the asyncio thread
                await trio.sleep(0.01)


async def test_waiting_does_not_block_trio() -> None:
    """Other trio tasks keep running while a crossing waits."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with open_loop_thread("aio-test") as loop_thread, trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await loop_thread.run(asyncio.sleep, 0.3, timeout=5)
        nursery.cancel_scope.cancel()
    assert ticks >= 10


async def test_the_thread_stops_on_exit_and_leftover_tasks_are_cancelled() -> None:
    cancelled = threading.Event()

    async def leave_a_task_behind() -> None:
        async def forever() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        # Keep a reference on the loop object so the task is not collected before the loop cancels it.
        loop = asyncio.get_running_loop()
        loop.leftover = asyncio.create_task(forever())  # type: ignore[attr-defined]

    async with open_loop_thread("aio-test-stop") as loop_thread:
        await loop_thread.run(leave_a_task_behind, timeout=5)
        thread = loop_thread._thread
        assert thread is not None and thread.is_alive()
    assert not thread.is_alive()
    assert cancelled.is_set()
    assert not loop_thread.running
    with pytest.raises(LoopClosed):
        await loop_thread.run(_thread_name_and_sum, 1, 2, timeout=5)


async def test_run_before_start_raises_loop_closed() -> None:
    loop_thread = LoopThread("never-started")
    with pytest.raises(LoopClosed):
        await loop_thread.run(_thread_name_and_sum, 1, 2, timeout=5)


async def test_the_thread_stops_when_the_body_is_cancelled() -> None:
    with trio.move_on_after(0.2):
        async with open_loop_thread("aio-test-cancel") as loop_thread:
            await trio.sleep_forever()
    thread = loop_thread._thread
    assert thread is not None and not thread.is_alive()
