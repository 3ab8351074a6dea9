"""Bytes edgebus writes to disk per message queued for an offline persistent session, checkpoints included.

`python -m bench.run --only drain-q1` counts the writes from the first message queued to the last one
delivered; 10,000 messages append less than the 4 MiB of write-ahead log that makes sqlite copy its
pages into the database (the checkpoint), so that copy falls after the window. This runs several
queue-and-drain cycles on one broker, stops it (the shutdown checkpoints what is left) and divides
everything the process wrote to the block layer in its whole life (its rusage, taken when it is
reaped: ru_oublock is write_bytes in 512-byte units on Linux) by the messages queued.

    python -m bench.offline_disk [--cycles 4] [--messages 10000] [--workdir /var/tmp]

Startup (a new store) is counted too and shown apart: one run with no cycle measures it.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from bench import generator
from bench.run import DEFAULT_WORK_ROOT, EDGEBUS_SCENARIO_CONFIG, HOST, EdgebusBroker

BLOCK_BYTES = 512  # ru_oublock's unit (Linux: task_io_get_oublock = write_bytes / 512)
STOP_TIMEOUT_S = 30.0


def lifetime_write_bytes(broker: EdgebusBroker) -> int:
    """SIGTERM the broker (a clean shutdown) and return all it wrote to the block layer in its life."""
    proc = broker.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                log = broker.log_path.read_text(errors="replace")[-6000:]
                raise SystemExit(f"edgebus exited with {proc.returncode}:\n{log}")
            return usage.ru_oublock * BLOCK_BYTES
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"edgebus did not stop within {STOP_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def run(cycles: int, messages: int, work_root: Path, binary: Path) -> tuple[int, int]:
    """(bytes written in the broker's whole life, messages queued and drained)."""
    settings = generator.ScenarioSettings(drain_messages=messages)
    # drain-q1's queue setting: room for the whole queue (the default session queue holds 1,000).
    broker = EdgebusBroker(work_root=work_root, overrides=EDGEBUS_SCENARIO_CONFIG.get("drain-q1"))
    broker.start()
    queued = 0
    try:
        for cycle in range(cycles):
            options = generator.generator_options("drain-q1", HOST, broker.port, settings)
            result = generator.run_generator(binary, options, None, timeout_s=300).result
            if result["drained"] != result["queued"] or result.get("lost_acked"):
                raise SystemExit(f"cycle {cycle + 1}: queued {result['queued']}, "
                                 f"drained {result['drained']}, lost {result.get('lost_acked')}")
            queued += result["queued"]
        written = lifetime_write_bytes(broker)
    finally:
        broker.stop()
    return written, queued


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=4,
                        help="queue-and-drain cycles on one broker (4)")
    parser.add_argument("--messages", type=int, default=10_000, help="messages queued per cycle (10000)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORK_ROOT,
                        help=f"where the data directory is made, on a disk (default {DEFAULT_WORK_ROOT})")
    args = parser.parse_args()
    binary = generator.build()
    baseline, _ = run(0, args.messages, args.workdir, binary)
    written, queued = run(args.cycles, args.messages, args.workdir, binary)
    print(f"start and stop alone: {baseline:,} B")
    print(f"{args.cycles} cycles of {args.messages:,} messages: {written:,} B written in all, "
          f"{queued:,} queued")
    print(f"per offline message, checkpoints included: {written / queued:.0f} B "
          f"({(written - baseline) / queued:.0f} B without start and stop)")


if __name__ == "__main__":
    main()
