"""
C{mqtwist drain}: have the service stop taking outbox messages and finish
those in flight (C{POST /api/drain}), for a rolling restart; the command
waits until it is drained and prints the service's state.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mqtwist.cli.adminclient import addAdminArguments, addByArgument, adminClient
from mqtwist.cli.common import CommandError, Settings
from mqtwist.cli.status import showService

NAME = "drain"
HELP = "stop taking outbox messages and wait for those in flight (admin API)"

#: exit status when --wait-timeout passed before the service was drained
TIMED_OUT = 3
#: the default of --wait-timeout, in seconds
WAIT_TIMEOUT = 600.0


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Have the service stop taking outbox messages and finish the deliveries in flight (at "
        "most its --shutdown-timeout; unfinished ones go back to the outbox), then print its "
        "state. The messages stay in the outbox, for another process or for mqtwist undrain. "
        f"Exit status 1 when the API cannot be reached or refuses the token, {TIMED_OUT} when "
        "--wait-timeout passed first (the service goes on draining)."
    )
    parser.add_argument("--wait-timeout", type=float, default=WAIT_TIMEOUT, metavar="SECONDS",
                        help="give up waiting after SECONDS (default: %(default)g)")
    parser.add_argument("--member", metavar="NAME",
                        help="drain only this process of the cluster (as mqtwist status lists them; "
                        "default: every process of the outbox)")
    addByArgument(parser, "for the service's log")
    addAdminArguments(parser)


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0 once drained,
        L{TIMED_OUT} when C{--wait-timeout} passed first.
    @raise CommandError: the API cannot be reached or refuses the call.
    """
    if not arguments.wait_timeout > 0:
        raise CommandError(f"--wait-timeout {arguments.wait_timeout:g} is out of range: give seconds above 0")
    client = adminClient(reactor, arguments, settings)
    body = {key: value for key, value in (("by", arguments.by), ("member", arguments.member)) if value}
    try:
        status = await client.call("POST", "drain", body, wait=arguments.wait_timeout)
    except TimeoutError:
        sys.stderr.write(
            f"mqtwist drain: still draining after {arguments.wait_timeout:g} s: the service goes on; "
            f"mqtwist status tells when it is drained\n"
        )
        return TIMED_OUT
    showService(sys.stdout, status, client.url)
    return 0

