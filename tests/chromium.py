"""Headless Chromium for the browser tests (Debian's package, installed by scripts/test)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import trio

CHROMIUM: Final = Path("/usr/bin/chromium")


@asynccontextmanager
async def headless_chromium(
    url: str, profile_dir: Path, log_path: Path, *extra_args: str
) -> AsyncIterator[trio.Process]:
    """Chromium showing ``url``, in a session of its own so that leaving kills its helper processes too;
    its output goes to ``log_path``."""
    with log_path.open("wb") as log:
        chromium = await trio.lowlevel.open_process(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                *extra_args,
                f"--user-data-dir={profile_dir}",
                url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield chromium
    finally:
        with trio.CancelScope(shield=True):
            try:
                os.killpg(chromium.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await chromium.wait()
