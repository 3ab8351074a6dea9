"""The `edgebus` command: `serve`, `check-config` and `passwd`."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import getpass
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from edgebus import __version__
from edgebus.auth import PBKDF2_ITERATIONS, AclError, PasswordFileError, set_password
from edgebus.config import Config, ConfigError, load_config, parse_listen_address
from edgebus.nursery import unwrap_single_error
from edgebus.server.config_file import StartupProblems, read_config_file, startup_problems
from edgebus.server.reload import ReloadRefused
from edgebus.systemd import Notifier

if TYPE_CHECKING:
    from edgebus.server.broker import Broker

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
    passwd = commands.add_parser(
        "passwd",
        help="create or update a user in a password file (Mosquitto format, like mosquitto_passwd)",
        description="Prompts for the password twice; with -b it is the third argument (beware the shell "
        "history). Send the broker SIGHUP to make it re-read the file.",
    )
    passwd.add_argument("-b", "--batch", action="store_true", help="take the password from the command line")
    passwd.add_argument(
        "-I", "--iterations", type=int, default=PBKDF2_ITERATIONS, help="PBKDF2-SHA512 rounds (%(default)s)"
    )
    passwd.add_argument("file", metavar="FILE")
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument("password", metavar="PASSWORD", nargs="?")
    return parser


def _passwd(args: argparse.Namespace) -> int:
    if args.batch:
        if args.password is None:
            print("edgebus passwd: -b needs the password as third argument", file=sys.stderr)
            return 2
        password = args.password
    else:
        if args.password is not None:
            print("edgebus passwd: a password on the command line needs -b", file=sys.stderr)
            return 2
        try:
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Reenter password: "):
                print("edgebus passwd: passwords do not match", file=sys.stderr)
                return 1
        except EOFError:
            print("edgebus passwd: no password given", file=sys.stderr)
            return 1
    if args.iterations < 1:
        print("edgebus passwd: --iterations must be at least 1", file=sys.stderr)
        return 2
    try:
        set_password(args.file, args.user, password, args.iterations)
    except (OSError, PasswordFileError) as exc:
        print(f"edgebus passwd: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "passwd":
        return _passwd(args)
    if args.command == "check-config":
        try:
            problems = [f"{args.file}: {problem}" for problem in startup_problems(load_config(args.file))]
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 2
        print(f"{args.file}: OK")
        return 0

    def overrides(config: Config) -> Config:
        """The command line's settings over the file's; the same on start and on every reload."""
        server = config.server
        if args.listen:
            server = dataclasses.replace(server, listen=tuple(parse_listen_address(a) for a in args.listen))
        if args.data_dir:
            server = dataclasses.replace(server, data_dir=args.data_dir)
        if args.log_level:
            server = dataclasses.replace(server, log_level=args.log_level)
        return dataclasses.replace(config, server=server)

    read_config = functools.partial(read_config_file, args.config, overrides)

    try:
        config = read_config()
    except (ConfigError, ValueError) as exc:
        print(f"edgebus: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        with unwrap_single_error():  # the nursery wraps a failed bind in an exception group
            trio.run(serve, config, read_config)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


async def serve(config: Config, read_config: Callable[[], Config] | None = None) -> None:
    """Run the broker until SIGINT or SIGTERM, then shut down gracefully (v5 clients are sent
    DISCONNECT 0x8B Server shutting down). SIGHUP reloads: ``read_config()`` (the config file again) is
    applied with `Broker.reload_config`, keeping every connection open; without ``read_config`` SIGHUP
    re-reads the password and ACL files only. Under systemd (`Type=notify`) it reports READY=1 once every
    listener is bound, RELOADING=1 then READY=1 around a reload, pings the watchdog, and reports
    STOPPING=1 when asked to stop."""
    from edgebus.server.broker import Broker

    broker = Broker(config, read_config)
    notifier = Notifier.from_environment()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        notifier.reloading("reloading the configuration (SIGHUP)")
                        if read_config is None:
                            _reload_security(broker)
                        else:
                            await _reload(broker)
                        notifier.ready(
                            "serving MQTT on " + ", ".join(f"{h}:{p}" for h, p in broker.addresses)
                        )
                        continue
                    name = signal.Signals(signum).name
                    log.info("received %s, shutting down", name)
                    notifier.stopping(f"shutting down ({name})")
                    broker.shutdown()

            async def run_broker(task_status: trio.TaskStatus[list[tuple[str, int]]]) -> None:
                await broker.serve(task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            addresses = await nursery.start(run_broker)
            notifier.ready("serving MQTT on " + ", ".join(f"{host}:{port}" for host, port in addresses))
            nursery.start_soon(notifier.watchdog_forever)
    notifier.close()


def _reload_security(broker: Broker) -> None:
    try:
        broker.reload_security()
    except (PasswordFileError, AclError) as exc:
        log.error("reload failed, keeping the previous rules: %s", exc)
    else:
        log.info("received SIGHUP: password and ACL files reloaded")


async def _reload(broker: Broker) -> None:
    """SIGHUP: the whole configuration file again (`Broker.reload_from_file`, as the HTTP API's reload). One
    that does not load is refused, its problems logged with their file:line, and the running configuration
    stays."""
    try:
        # A small file, read once per signal: not worth a thread.
        report = await broker.reload_from_file()
    except ConfigError as exc:
        log.error("reload refused, the configuration stays as it was:\n%s", exc)
        return
    except (StartupProblems, ReloadRefused) as exc:
        log.error("reload refused, the configuration stays as it was: %s", exc)
        return
    source = broker.config.source or "(built-in)"
    log.info("received SIGHUP: configuration %s reloaded; %s", source, report.summary)
    if report.needs_restart:
        log.warning("reload: needs a restart to take effect: %s", ", ".join(report.needs_restart))
