"""
C{mqtwist undrain}: have a drained service take outbox messages again
(C{POST /api/undrain}), and print its state.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mqtwist.cli.adminclient import addAdminArguments, addByArgument, adminClient
from mqtwist.cli.common import Settings
from mqtwist.cli.status import showService

NAME = "undrain"
HELP = "take outbox messages again after a drain (admin API)"


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Have the service take outbox messages again after mqtwist drain, and print its state. "
        "Exit status 1 when the API cannot be reached or refuses the token."
    )
    parser.add_argument("--member", metavar="NAME",
                        help="undrain only this process of the cluster (as mqtwist status lists them; "
                        "default: every process of the outbox)")
    addByArgument(parser, "for the service's log")
    addAdminArguments(parser)


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0.
    @raise mqtwist.cli.common.CommandError: the API cannot be reached or
        refuses the call.
    """
    client = adminClient(reactor, arguments, settings)
    body = {key: value for key, value in (("by", arguments.by), ("member", arguments.member)) if value}
    status = await client.call("POST", "undrain", body)
    showService(sys.stdout, status, client.url)
    return 0
