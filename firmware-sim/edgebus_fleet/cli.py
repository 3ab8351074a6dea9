"""The ``edgebus-fleet`` command: run a fleet against a broker, show progress, write the report, judge it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio
from rich.console import Console

from edgebus.config import ConfigError
from edgebus_fleet.engine import BrokerUnreachable, Engine, RunResult
from edgebus_fleet.live import LiveDisplay
from edgebus_fleet.profiles import load_fleet, load_profile
from edgebus_fleet.report import print_summary, write_plots, write_report

#: Exit statuses.
EXIT_OK = 0
EXIT_AUDIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3

__all__ = ["main"]


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgebus-fleet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="simulate a fleet against a broker and audit every message")
    run.add_argument("--broker", type=parse_host_port, required=True, metavar="HOST:PORT")
    run.add_argument("--fleet", type=Path, required=True, metavar="FILE.toml")
    run.add_argument("--duration", type=float, required=True, metavar="SECONDS")
    run.add_argument("--report", type=Path, metavar="DIR", help="write DIR/report.json and PNG plots")
    run.add_argument(
        "--broker-cmd",
        metavar="COMMAND",
        help="start the broker with this command ({host} and {port} are filled in) and restart it for chaos",
    )
    run.add_argument("--no-plots", action="store_true", help="write report.json only")
    run.add_argument("--quiet", action="store_true", help="no live display")
    run.add_argument("--max-inflight", type=int, default=20, help="per-device outbound window (default 20)")
    check = commands.add_parser("check", help="validate profile and fleet files")
    check.add_argument("files", nargs="+", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=False, highlight=False, width=180)  # a log file: do not wrap the table
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    logging.basicConfig(level=logging.WARNING)
    if args.command == "check":
        status = EXIT_OK
        for path in args.files:
            try:
                with path.open("rb") as file:
                    is_fleet = b"[[group]]" in file.read()
                (load_fleet if is_fleet else load_profile)(path)
                console.print(f"{path}: OK")
            except ConfigError as error:
                errors.print(str(error), markup=False)
                status = EXIT_BAD_INPUT
            except OSError as error:
                errors.print(f"{path}: {error.strerror or error}", markup=False)
                status = EXIT_BAD_INPUT
        return status
    try:
        fleet = load_fleet(args.fleet)
    except ConfigError as error:
        errors.print(str(error), markup=False)
        return EXIT_BAD_INPUT
    if args.duration <= 0:
        errors.print("--duration must be positive")
        return EXIT_BAD_INPUT
    host, port = args.broker
    display = LiveDisplay(console)
    try:
        engine = Engine(
            fleet,
            host,
            port,
            args.duration,
            broker_command=args.broker_cmd,
            on_progress=None if args.quiet else display.update,
            max_inflight=args.max_inflight,
        )
    except ValueError as error:
        errors.print(f"{args.fleet}: {error}", markup=False)
        return EXIT_BAD_INPUT
    try:
        with display if not args.quiet else _nothing():
            result: RunResult = trio.run(engine.run)
    except BrokerUnreachable as error:
        errors.print(f"edgebus-fleet: cannot reach the broker at {host}:{port}: {error}", markup=False)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        errors.print("edgebus-fleet: interrupted")
        return 130
    print_summary(result, console)
    if args.report is not None:
        path = write_report(result, args.report)
        written = [path]
        if not args.no_plots:
            written += write_plots(result, args.report)
        console.print("report: " + ", ".join(str(p) for p in written))
    return EXIT_OK if result.passed else EXIT_AUDIT_FAILED


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
