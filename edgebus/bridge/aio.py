"""The one crossing between trio and asyncio: an asyncio event loop in a thread of its own, called from trio.

Some upstream clients (nats-py) exist only for asyncio. Each such connection gets one `LoopThread`:
`open_loop_thread` starts it and, on exit, stops it (every task left on the loop is cancelled) and joins
the thread, bounded in time. The trio side calls ``await loop_thread.run(async_fn, *args, timeout=...)``:
the coroutine runs on the asyncio loop while the trio task waits without blocking its own loop, for at
most ``timeout`` seconds. A timeout or a trio cancellation cancels the asyncio task.

Every call crosses two threads and two schedulers, so callers cross once per batch, never per message.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import trio

__all__ = ["CrossingTimeout", "LoopClosed", "LoopThread", "describe", "open_loop_thread"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds `open_loop_thread` waits for the thread to stop before it leaves it behind (a daemon thread).
STOP_TIMEOUT_S = 5.0


def describe(error: BaseException) -> str:
    """An asyncio client's error for a log line or a SinkError: its type, and its text if it has one."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class CrossingTimeout(TimeoutError):
    """The asyncio side did not finish within the crossing's timeout (its task was cancelled)."""


class LoopClosed(RuntimeError):
    """The asyncio loop is not running (not started yet, or stopped): nothing can cross."""


class LoopThread:
    """An asyncio event loop running in a thread of its own, driven from trio."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = trio.Event()
        self._finished = trio.Event()
        self._failure: BaseException | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        loop = self._loop
        return loop is not None and loop.is_running() and not self._stopping and not self._finished.is_set()

    async def start(self) -> None:
        """Start the thread and wait until its loop runs."""
        if self._thread is not None:
            raise RuntimeError("a LoopThread starts once")
        token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._main, args=(token,), name=self.name, daemon=True)
        self._thread.start()
        await self._started.wait()
        if self._failure is not None:
            raise LoopClosed(f"the asyncio loop of {self.name} failed to start") from self._failure

    def _main(self, token: trio.lowlevel.TrioToken) -> None:
        """The thread: ``asyncio.run`` until told to stop; it cancels and awaits whatever is left."""
        try:
            asyncio.run(self._serve(token))
        except BaseException as error:  # reported to the trio side; a thread has nobody else to tell
            self._failure = error
            log.error("the asyncio loop of %s failed", self.name, exc_info=error)
        finally:
            self._loop = None
            _notify(token, self._started.set)
            _notify(token, self._finished.set)

    async def _serve(self, token: trio.lowlevel.TrioToken) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        _notify(token, self._started.set)
        await self._stop.wait()
        # Cancel and await what is left here rather than in asyncio.run, which logs an error for every task
        # that ends with an exception after its cancellation (crossings nobody waits for any more).
        current = asyncio.current_task()
        left = [task for task in asyncio.all_tasks() if task is not current]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=STOP_TIMEOUT_S)
            for task in left:
                if task.done() and not task.cancelled():
                    task.exception()

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:  # noqa: ASYNC109 - a bound, not a deadline
        """Stop the loop (cancelling its remaining tasks) and join the thread, waiting at most ``timeout``."""
        self._stopping = True  # no new crossings: one submitted now might never start
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread is None:
            return
        with trio.move_on_after(timeout) as waited:
            waited.shield = True  # stopping is part of cleaning up; a cancelled caller still stops its thread
            await self._finished.wait()
        if waited.cancelled_caught:
            log.warning("the asyncio loop of %s did not stop within %.1f s; left behind", self.name, timeout)
            return
        self._thread.join()  # the thread has returned from asyncio.run: this does not block

    async def run(
        self,
        async_fn: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        timeout: float,  # noqa: ASYNC109 - it also cancels the asyncio task, which trio.fail_after cannot
    ) -> T:
        """``await async_fn(*args)`` on the asyncio loop and return its result (or raise its exception).

        Raises CrossingTimeout after ``timeout`` seconds and LoopClosed when the loop is not running; in
        both cases, and when the calling trio task is cancelled, the asyncio task is cancelled.
        """
        loop = self._loop
        if loop is None or not self.running:
            raise LoopClosed(f"the asyncio loop of {self.name} is not running")
        call = _Call(async_fn(*args), trio.lowlevel.current_trio_token())
        try:
            loop.call_soon_threadsafe(call.start)
        except RuntimeError as error:  # the loop closed between the check and the submission
            call.coroutine.close()
            raise LoopClosed(f"the asyncio loop of {self.name} is not running") from error
        try:
            with trio.fail_after(timeout):
                await call.done.wait()
        except trio.TooSlowError:
            _cancel_on(loop, call)
            name = getattr(async_fn, "__name__", repr(async_fn))
            raise CrossingTimeout(f"{name} took over {timeout:g} s") from None
        except BaseException:  # trio cancellation (or KeyboardInterrupt): the asyncio task must not go on
            _cancel_on(loop, call)
            raise
        if call.error is not None:
            raise call.error
        if call.cancelled:
            # Only the loop cancels it here: stopping cancels every task left on it.
            raise LoopClosed(f"the asyncio loop of {self.name} stopped during the call")
        return cast(T, call.result)  # set: neither an error nor a cancellation


class _Call:
    """One crossing: the coroutine, its task on the asyncio loop, and its outcome for the trio side.

    The task's done-callback always collects the outcome, so a result that nobody waits for any more (the
    trio side timed out or was cancelled) is not reported by asyncio as "exception was never retrieved"."""

    def __init__(self, coroutine: Coroutine[Any, Any, object], token: trio.lowlevel.TrioToken) -> None:
        self.coroutine = coroutine
        self.token = token
        self.done = trio.Event()
        self.task: asyncio.Task[object] | None = None
        self.result: object = None
        self.error: BaseException | None = None
        self.cancelled = False

    def start(self) -> None:  # on the asyncio loop
        self.task = asyncio.get_running_loop().create_task(self.coroutine)
        self.task.add_done_callback(self._finished)

    def cancel(self) -> None:  # on the asyncio loop; runs after start (call_soon_threadsafe keeps the order)
        if self.task is not None:
            self.task.cancel()

    def _finished(self, task: asyncio.Task[object]) -> None:  # on the asyncio loop
        if task.cancelled():
            self.cancelled = True
        elif (error := task.exception()) is not None:
            self.error = error
        else:
            self.result = task.result()
        _notify(self.token, self.done.set)


def _cancel_on(loop: asyncio.AbstractEventLoop, call: _Call) -> None:
    try:
        loop.call_soon_threadsafe(call.cancel)
    except RuntimeError:  # the loop is closed: its tasks are finished
        pass


def _notify(token: trio.lowlevel.TrioToken, callback: Callable[[], object]) -> None:
    """Run ``callback`` on the trio loop; nothing to do when that run has ended."""
    try:
        token.run_sync_soon(callback)
    except trio.RunFinishedError:
        pass


@asynccontextmanager
async def open_loop_thread(name: str, stop_timeout: float = STOP_TIMEOUT_S) -> AsyncIterator[LoopThread]:
    """A running `LoopThread` for the body of an ``async with``; stopped and joined on exit."""
    loop_thread = LoopThread(name)
    try:
        await loop_thread.start()
        yield loop_thread
    finally:
        await loop_thread.stop(stop_timeout)
