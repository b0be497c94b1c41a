"""
The C{mqtwist} command: its options shared by every subcommand, and the
run of one subcommand on the reactor.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from twisted.internet import defer
from twisted.python.failure import Failure

from mqtwist.cli import cancel, drain, hashpassword, pause, results, resume, send, status, uncancel, undrain
from mqtwist.cli.common import DEFAULT_TIMEOUT, CommandError, readSettings
from mqtwist.config.sources import SettingError

#: exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells do)
INTERRUPTED = 130

#: the subcommands, each a module (see L{mqtwist.cli})
SUBCOMMANDS: tuple[ModuleType, ...] = (
    send, results, status, pause, resume, cancel, uncancel, drain, undrain, hashpassword
)


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
        help="give up when the broker (or the admin API) cannot be reached within SECONDS "
        "(default: %(default)g)",
    )
    top = argparse.ArgumentParser(
        prog="mqtwist",
        description="Send delivery jobs to mqtwist's outbox and follow their results; watch and "
        "steer the service through its admin API.",
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
        settings = readSettings(
            arguments.amqp,
            arguments.config,
            arguments.timeout,
            # the options of the admin API's subcommands only
            admin=getattr(arguments, "admin", None),
            adminTokenFile=getattr(arguments, "admin_token_file", None),
        )
    except (SettingError, ValueError) as e:
        _fail(name, str(e), 2)

    from twisted.internet import reactor

    outcome: list[int] = []

    async def run() -> int:
        try:
            status: int = await arguments.subcommand.run(reactor, arguments, settings)
        except CommandError as e:
            sys.stderr.write(f"{name}: error: {e}\n")
            return 1
        return status

    def finished(result: int | Failure) -> None:
        if isinstance(result, Failure):
            sys.stderr.write(f"{name}: error: {result.getTraceback()}")
            result = 1
        outcome.append(result)
        if reactor.running:
            reactor.stop()

    # reactor.run rather than task.react: a command stopped by Ctrl-C
    # (SIGINT stops the reactor) must not exit 0
    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addBoth(finished))
    reactor.run()
    if not outcome:
        sys.stderr.write(f"{name}: interrupted\n")
        raise SystemExit(INTERRUPTED)
    raise SystemExit(outcome[0])


def _fail(name: str, message: str, status: int) -> NoReturn:
    sys.stderr.write(f"{name}: error: {message}\n")
    raise SystemExit(status)


