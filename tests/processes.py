"""edgebus as a real process (for SIGKILL tests): start it and wait until it accepts connections."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import IO

import trio

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A loopback TCP port that was free a moment ago, for a process that cannot bind port 0 and report
    it (Mosquitto, nats-server, an edgebus started as a command)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def edgebus_env() -> dict[str, str]:
    """The environment for a ``python -m edgebus`` (or edgebus_fleet) process: this tree first."""
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'firmware-sim'}")


async def start_edgebus_process(serve_args: list[str], port: int, log_file: IO[bytes]) -> trio.Process:
    """``python -m edgebus serve *serve_args``, its output to ``log_file``; returns once 127.0.0.1:``port``
    accepts a connection (AssertionError if the process exits first)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "edgebus", "serve", *serve_args],
        env=edgebus_env(),
        stdout=log_file,
        stderr=log_file,
    )
    with trio.fail_after(START_TIMEOUT_S):
        while True:
            try:
                probe = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                if process.poll() is not None:
                    raise AssertionError(f"edgebus exited with {process.returncode}") from None
                await trio.sleep(0.05)
                continue
            await probe.aclose()
            return process
