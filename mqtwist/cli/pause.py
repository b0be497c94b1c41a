"""
C{mqtwist pause}: hold back the messages of a destination, recipient
domain, source address or tag, through the admin API (C{POST
/api/pauses}); they wait in the service's held queue until the pause
ends.
"""

from __future__ import annotations

import argparse
from typing import Any

from mqtwist.admin.controls import PAUSE_KEYS
from mqtwist.cli.adminclient import addAdminArguments
from mqtwist.cli.common import Settings
from mqtwist.cli.controlling import act, addActionArguments, addSelectorArguments

NAME = "pause"
HELP = "hold back the messages of a destination, domain, source address or tag (admin API)"


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Pause the messages that match all the given selectors: they wait in the service's "
        "held queue (their result entry says who paused them and why) and go back to the "
        "outbox when the pause ends or mqtwist resume lifts it. Exit status 1 when the API "
        "cannot be reached or refuses the request (a wrong selector: its message says why)."
    )
    addSelectorArguments(parser, PAUSE_KEYS, "pause")
    addActionArguments(parser, "resume")
    addAdminArguments(parser)


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0.
    @raise mqtwist.cli.common.CommandError: see L{act}.
    """
    return await act(reactor, arguments, settings, ("POST", "pauses"), PAUSE_KEYS, "paused")
