"""
The C{mqtwist} command: its options shared by every subcommand, and the
run of one subcommand on the reactor.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

from twisted.internet import defer, task

from mqtwist.cli import results, send
from mqtwist.cli.common import DEFAULT_TIMEOUT, CommandError, readSettings
from mqtwist.config.sources import SettingError

#: the subcommands, each a module (see L{mqtwist.cli})
SUBCOMMANDS: tuple[ModuleType, ...] = (send, results)


def parser() -> argparse.ArgumentParser:
    """
    @return: the parser of the whole command line.
    """
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection (as for the service)")
    group.add_argument(
        "--amqp", metavar="URL",
        help="RabbitMQ URL, amqp[s]://user:password@host:port/vhost (default: the service's: "
        "MQTWIST_AMQP, the config file's amqp, else its private node on 127.0.0.1)",
    )
    group.add_argument(
        "--config", metavar="FILE",
        help="the service's TOML configuration file, for amqp, outbox and results "
        "(default: the one MQTWIST_CONFIG names)",
    )
    group.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="give up when the broker cannot be reached within SECONDS (default: %(default)g)",
    )
    top = argparse.ArgumentParser(
        prog="mqtwist",
        description="Send delivery jobs to mqtwist's outbox and follow their results.",
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        sub = commands.add_parser(module.NAME, help=module.HELP, parents=[common])
        module.addArguments(sub)
        sub.set_defaults(subcommand=module)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the command line C{argv} (default: C{sys.argv[1:]}) and exit with
    its status.
    """
    arguments = parser().parse_args(sys.argv[1:] if argv is None else argv)
    name = f"mqtwist {arguments.command}"
    if not arguments.timeout > 0:
        _fail(name, f"--timeout {arguments.timeout:g} is out of range: give seconds above 0", 2)
    try:
        settings = readSettings(arguments.amqp, arguments.config, arguments.timeout)
    except (SettingError, ValueError) as e:
        _fail(name, str(e), 2)

    async def run(reactor: Any) -> None:
        try:
            status = await arguments.subcommand.run(reactor, arguments, settings)
        except CommandError as e:
            _fail(name, str(e), 1)
        raise SystemExit(status)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


def _fail(name: str, message: str, status: int) -> NoReturn:
    sys.stderr.write(f"{name}: error: {message}\n")
    raise SystemExit(status)


