"""
C{mqtwist cancel}: end the messages of a recipient domain or a tag with
a final C{process}/C{cancelled} result, through the admin API (C{POST
/api/cancels}).
"""

from __future__ import annotations

import argparse
from typing import Any

from mqtwist.admin.controls import CANCEL_KEYS
from mqtwist.cli.adminclient import addAdminArguments
from mqtwist.cli.common import Settings
from mqtwist.cli.controlling import act, addActionArguments, addSelectorArguments

NAME = "cancel"
HELP = "end the messages of a domain or tag as cancelled, without a bounce (admin API)"


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Cancel the messages that match all the given selectors: while the cancel lasts, each "
        "one taken from the outbox (or back from a delay queue) ends with a final "
        "process/cancelled result that says who cancelled it and why, without a bounce. "
        "mqtwist uncancel lifts it. Exit status 1 when the API cannot be reached or refuses "
        "the request."
    )
    addSelectorArguments(parser, CANCEL_KEYS, "cancel")
    addActionArguments(parser, "uncancel")
    addAdminArguments(parser)


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0.
    @raise mqtwist.cli.common.CommandError: see L{act}.
    """
    return await act(reactor, arguments, settings, ("POST", "cancels"), CANCEL_KEYS, "cancelled")
