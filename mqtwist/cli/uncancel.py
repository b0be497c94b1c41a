"""
C{mqtwist uncancel}: lift a cancel through the admin API (C{DELETE
/api/cancels}), given by exactly the selectors it was made with.  A
subcommand of its own rather than C{cancel --lift}, as C{resume} is for
C{pause}: it takes none of C{cancel}'s other options.
"""

from __future__ import annotations

import argparse
from typing import Any

from mqtwist.admin.controls import CANCEL_KEYS
from mqtwist.cli.adminclient import addAdminArguments
from mqtwist.cli.common import Settings
from mqtwist.cli.controlling import act, addSelectorArguments

NAME = "uncancel"
HELP = "lift a cancel (admin API)"


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Lift the cancel made with exactly these selectors (mqtwist status lists them): the "
        "messages they match are delivered again; those already cancelled stay so. Exit status "
        "1 when there is no such cancel, or the API cannot be reached or refuses the token."
    )
    addSelectorArguments(parser, CANCEL_KEYS, "uncancel")
    addAdminArguments(parser)


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0.
    @raise mqtwist.cli.common.CommandError: see L{act}.
    """
    return await act(reactor, arguments, settings, ("DELETE", "cancels"), CANCEL_KEYS, "lifted the cancel of")
