"""
C{mqtwist status}: the service's state as its admin API tells it, for a
person: the state and counts, the destinations table, the pauses and
cancels in force; or the API's own JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from twisted.internet import defer

from mqtwist.admin.controls import Selector
from mqtwist.cli.adminclient import addAdminArguments, adminClient
from mqtwist.cli.common import Settings
from mqtwist.cli.results import cell

NAME = "status"
HELP = "show the service's state, destinations, pauses and cancels (admin API)"

#: the API calls shown, by the key of each in the --json object
CALLS = ("status", "destinations", "pauses", "cancels")
#: the widest a cell of a table grows; longer text is cut with ...
CELL_WIDTH = 60


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show what the service's admin API tells: its state (consuming, draining, drained, "
        "connecting), the outbox depth, the messages in flight, the totals by outcome, the "
        "destinations (in flight, waiting, parked, state, last reply) and the pauses and cancels "
        "in force. Exit status 1 when the API cannot be reached or refuses the token."
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print the API's answers as one JSON object: status, destinations, pauses, cancels "
        "(those of GET /api/status, /api/destinations, ...)",
    )
    addAdminArguments(parser)


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0.
    @raise mqtwist.cli.common.CommandError: the API cannot be reached or
        refuses the call.
    """
    client = adminClient(reactor, arguments, settings)
    try:
        answers = await defer.gatherResults(
            [defer.ensureDeferred(client.call("GET", name)) for name in CALLS], consumeErrors=True
        )
    except defer.FirstError as e:
        e.subFailure.raiseException()
    shown = dict(zip(CALLS, answers))
    if arguments.json:
        sys.stdout.write(json.dumps(shown, indent=1) + "\n")
        return 0
    showService(sys.stdout, shown["status"], client.url)
    showDestinations(sys.stdout, shown["destinations"]["destinations"])
    for title, controls in (("pauses", shown["pauses"]), ("cancels", shown["cancels"])):
        showControls(sys.stdout, title, controls)
    return 0


def showService(stream: TextIO, status: dict[str, Any], url: str) -> None:
    """
    Print the state and the counts of C{GET /api/status}.
    """
    depth = status.get("outboxDepth")
    totals = ", ".join(f"{count} {outcome}" for outcome, count in status.get("totals", {}).items())
    stream.write(
        f"mqtwist {status.get('version', '')} at {url}: {status.get('state')}\n"
        f"outbox {status.get('outbox')!r}: {'not read yet' if depth is None else f'{depth} ready'}, "
        f"{status.get('inFlight', 0)} in flight, {int(status.get('consumed', 0))} consumed\n"
        f"totals: {totals or 'none yet'}\n"
    )
    cluster = status.get("cluster")
    if cluster:
        stream.write(
            f"cluster: {len(cluster['members'])} member(s): {', '.join(cluster['members'])}; "
            f"this one is {cluster['member']}{'' if cluster['settled'] else ' (still listening for the others)'}\n"
        )


def showDestinations(stream: TextIO, destinations: list[dict[str, Any]]) -> None:
    """
    Print the destinations of C{GET /api/destinations} as a table.
    """
    stream.write("\n")
    if not destinations:
        stream.write("no destinations yet\n")
        return
    table(
        stream,
        ["DESTINATION", "IN FLIGHT", "WAITING", "PARKED", "STATE", "LAST REPLY"],
        [
            [d["destination"], d["inFlight"], d["waiting"], d["parked"], destinationState(d.get("paused")),
             d.get("lastReply")]
            for d in destinations
        ],
    )


def destinationState(paused: dict[str, Any] | None) -> str:
    """
    A destination's state in a few words: C{open}, or paused by whom (an
    operator) or why (a reply), until when.
    """
    if paused is None:
        return "open"
    until = f"until {paused['until']}" if paused.get("until") else "until resumed"
    if paused.get("admin"):
        return f"paused by {paused.get('by')} {until}"
    return f"paused {until}: {paused.get('reason')}"


def showControls(stream: TextIO, title: str, controls: list[dict[str, Any]]) -> None:
    """
    Print the pauses or cancels (C{title}) of C{GET /api/pauses} or
    C{/api/cancels} as a table.
    """
    stream.write("\n")
    if not controls:
        stream.write(f"no {title}\n")
        return
    stream.write(f"{title}:\n")
    table(
        stream,
        ["SELECTOR", "UNTIL", "SINCE", "BY", "REASON"],
        [
            [selectorOf(control), control.get("until") or "when lifted", control.get("since"), control.get("by"),
             control.get("reason")]
            for control in controls
        ],
    )


def selectorOf(control: dict[str, Any]) -> str:
    """
    What a pause or cancel of the API selects, as the service writes it
    (C{domain=example.com tag=spring}).
    """
    return str(Selector(**{key: control[key] for key in vars(Selector()) if control.get(key) is not None}))


def table(stream: TextIO, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """
    Print C{rows} under C{headers}, in columns as wide as their widest
    cell (at most L{CELL_WIDTH}); text from the service is escaped and cut
    as in C{mqtwist results}.
    """
    cells = [list(headers)] + [[cell(value, CELL_WIDTH) for value in row] for row in rows]
    widths = [max(len(row[n]) for row in cells) for n in range(len(headers))]
    for row in cells:
        stream.write("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() + "\n")
