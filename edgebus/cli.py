"""The `edgebus` command: `serve` and `check-config`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from edgebus import __version__
from edgebus.config import Config, ConfigError, load_config, parse_listen_address

log = logging.getLogger("edgebus")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgebus", description="A durable MQTT 3.1.1 / 5.0 broker.")
    parser.add_argument("--version", action="version", version=f"edgebus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the broker")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file (see configs/edgebus.toml)")
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        help="listen address; repeat for several (replaces server.listen)",
    )
    serve.add_argument("--data-dir", metavar="DIR", help="directory of the durable state")
    serve.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="overrides server.log_level"
    )
    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", metavar="FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        try:
            load_config(args.file)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{args.file}: OK")
        return 0
    try:
        config = load_config(args.config) if args.config else Config()
        server = config.server
        if args.listen:
            server = dataclasses.replace(server, listen=tuple(parse_listen_address(a) for a in args.listen))
        if args.data_dir:
            server = dataclasses.replace(server, data_dir=args.data_dir)
        if args.log_level:
            server = dataclasses.replace(server, log_level=args.log_level)
        config = dataclasses.replace(config, server=server)
    except (ConfigError, ValueError) as exc:
        print(f"edgebus: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(serve, config)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


async def serve(config: Config) -> None:
    """Run the broker until SIGINT or SIGTERM, then shut down gracefully (v5 clients are sent
    DISCONNECT 0x8B Server shutting down)."""
    from edgebus.broker import Broker

    broker = Broker(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    broker.shutdown()

            nursery.start_soon(stop_on_signal)
            await broker.serve()
            nursery.cancel_scope.cancel()
