"""
What C{mqtwist pause}, C{resume}, C{cancel} and C{uncancel} share: the
selector options, the request they make of the admin API, and the line
that says what was done.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from mqtwist.cli.adminclient import addByArgument, adminClient
from mqtwist.cli.common import CommandError, Settings
from mqtwist.cli.status import selectorOf

#: what each selector option matches, for --help
SELECTOR_HELP = {
    "destination": "a destination as the service names it ('mx mx.example.com', a smarthost's host:port)",
    "domain": "a recipient domain",
    "mta": "a source address (the job's ips or pool)",
    "tag": "a value of the jobs' tags",
}


def addSelectorArguments(parser: argparse.ArgumentParser, keys: Sequence[str], what: str) -> None:
    """
    Add the selector options C{keys} (C{--domain}, ...) to C{parser}.

    @param what: the action, for the help (C{"pause"}).
    """
    group = parser.add_argument_group(
        f"what to {what} (one or more: the messages that match all of them)"
    )
    for key in keys:
        group.add_argument(f"--{key}", metavar=key.upper(), help=SELECTOR_HELP[key])


def addActionArguments(parser: argparse.ArgumentParser, lifted: str) -> None:
    """
    Add C{--seconds}, C{--reason} and C{--by} to C{parser}.

    @param lifted: what ends it early, for the help (C{"resume"}).
    """
    parser.add_argument("--seconds", type=float, metavar="N",
                        help=f"for N seconds (default: until mqtwist {lifted})")
    parser.add_argument("--reason", metavar="TEXT", help="why, shown in the results of the messages it matches")
    addByArgument(parser, "logged and shown in the results")


def selector(arguments: argparse.Namespace, keys: Sequence[str]) -> dict[str, str]:
    """
    The selector fields given on the command line.

    @raise CommandError: none was given.
    """
    given = {key: getattr(arguments, key) for key in keys if getattr(arguments, key) is not None}
    if not given:
        raise CommandError(f"say what to {arguments.command}: give one or more of "
                           f"{', '.join('--' + key for key in keys)}")
    return given


async def act(
    reactor: Any,
    arguments: argparse.Namespace,
    settings: Settings,
    request: tuple[str, str],
    keys: Sequence[str],
    done: str,
) -> int:
    """
    Make the request C{(method, call)} of C{/api/CALL} with the selector
    C{keys} of the command line (and its C{--seconds}, C{--reason} and
    C{--by} when it has them), and print what was done.

    @param done: what the command did (C{"paused"}, or C{"resumed"} for a
        C{DELETE}, which answers with the pause it ended).
    @return: (a coroutine returning) the exit status: 0.
    @raise CommandError: no selector given, or the API cannot be reached
        or refuses the request (its message says why).
    """
    method, call = request
    body: dict[str, Any] = selector(arguments, keys)
    for key in ("seconds", "reason", "by"):
        if getattr(arguments, key, None) is not None:
            body[key] = getattr(arguments, key)
    client = adminClient(reactor, arguments, settings)
    control = await client.call(method, call, body)
    if method == "DELETE":
        when = f"in force since {control.get('since')}"
    else:
        when = f"until {control['until']}" if control.get("until") else "until lifted"
    sys.stdout.write(f"{done} {selectorOf(control)} ({when}, by {control.get('by')}: {control.get('reason')})\n")
    return 0
