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
    addByArgument(parser, "for the service's log")
    addAdminArguments(parser)


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0.
    @raise mqtwist.cli.common.CommandError: the API cannot be reached or
        refuses the call.
    """
    client = adminClient(reactor, arguments, settings)
    status = await client.call("POST", "undrain", {"by": arguments.by} if arguments.by else {})
    showService(sys.stdout, status, client.url)
    return 0
