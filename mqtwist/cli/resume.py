"""
C{mqtwist resume}: lift a pause through the admin API (C{DELETE
/api/pauses}), given by exactly the selectors it was made with.
"""

from __future__ import annotations

import argparse
from typing import Any

from mqtwist.admin.controls import PAUSE_KEYS
from mqtwist.cli.adminclient import addAdminArguments
from mqtwist.cli.common import Settings
from mqtwist.cli.controlling import act, addSelectorArguments

NAME = "resume"
HELP = "lift a pause (admin API)"


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Lift the pause made with exactly these selectors (mqtwist status lists them); the held "
        "messages go back to the outbox at once (those another pause matches are held again). "
        "Exit status 1 when there is no such pause, or the API cannot be reached or refuses the "
        "token."
    )
    addSelectorArguments(parser, PAUSE_KEYS, "resume")
    addAdminArguments(parser)


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0.
    @raise mqtwist.cli.common.CommandError: see L{act}.
    """
    return await act(reactor, arguments, settings, ("DELETE", "pauses"), PAUSE_KEYS, "resumed")
