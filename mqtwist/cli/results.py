"""
C{mqtwist results}: follow a result queue and print its results, as a table
or as JSON lines, with filters.

Reading a queue takes its messages away: AMQP has no way to look at a
queue's messages without taking them (a consumer that keeps them
unacknowledged holds them back from every other consumer until it goes,
and they come back out of order).  So this command is for a results queue
that nothing else reads, or for a person who wants them gone; the filters
choose what is printed, not what is taken.  To follow some jobs without
disturbing anyone, give them their own result queue (their C{queues}
property, as C{mqtwist send --wait} does).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from twisted.internet import defer

from mqtwist.amqp.client import Delivery
from mqtwist.cli.common import CommandError, Settings, connected
from mqtwist.validation import excerpt

NAME = "results"
HELP = "follow a result queue and print its results (taking them from the queue)"

#: the widths of the table's columns (the description takes the rest)
COLUMNS = (("id", 24), ("recipient", 28), ("outcome", 9), ("state", 9), ("result", 9), ("code", 4))
#: characters of the description shown in the table by default
DESCRIPTION_WIDTH = 70
#: deliveries the broker hands over before they are acknowledged
PREFETCH = 100


def outcome(result: dict[str, Any]) -> str:
    """
    @return: C{"retry"} for a retry notice (it has a C{nextattempt}),
        C{"delivered"} when the last entry is an accepted message,
        C{"failed"} otherwise.
    """
    if "nextattempt" in result:
        return "retry"
    return "delivered" if lastEntry(result).get("result") == "accepted" else "failed"


def lastEntry(result: dict[str, Any]) -> dict[str, Any]:
    """
    @return: the last entry of the result's C{results}, or C{{}}.
    """
    entries = result.get("results")
    if isinstance(entries, list) and entries and isinstance(entries[-1], dict):
        return entries[-1]
    return {}


def cell(value: Any, width: int) -> str:
    """
    A value from a result as a table cell of at most C{width} characters:
    control characters escaped (a result's text never moves the terminal's
    cursor), cut with C{...} when too long.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    if not text.isprintable():
        # excerpt escapes what is not printable (and quotes: dropped here)
        text = excerpt(text, limit=len(text))[1:-1]
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


class ResultPrinter:
    """
    Prints results one by one: a table (a header line first) or JSON lines
    (each result as it was published).
    """

    def __init__(self, stream: TextIO, *, asJSON: bool, descriptionWidth: int = DESCRIPTION_WIDTH) -> None:
        self.stream = stream
        self.asJSON = asJSON
        self.descriptionWidth = descriptionWidth
        self._headerShown = False

    def show(self, body: bytes, result: dict[str, Any]) -> None:
        """
        Print C{result}, which is C{body} decoded.
        """
        if self.asJSON:
            # results are compact JSON: one line each, as published
            self.stream.write(body.decode("utf-8", "replace") + "\n")
        else:
            if not self._headerShown:
                self._headerShown = True
                self._row([name.upper() for name, _ in COLUMNS] + ["DESCRIPTION"])
            entry = lastEntry(result)
            self._row(
                [
                    cell(result.get("id"), COLUMNS[0][1]),
                    cell(result.get("recipient"), COLUMNS[1][1]),
                    outcome(result),
                    cell(entry.get("state"), COLUMNS[3][1]),
                    cell(entry.get("result"), COLUMNS[4][1]),
                    cell(entry.get("code"), COLUMNS[5][1]),
                    cell(entry.get("description"), self.descriptionWidth),
                ]
            )
        self.stream.flush()

    def _row(self, cells: list[str]) -> None:
        padded = [text.ljust(width) for text, (_, width) in zip(cells, COLUMNS)]
        self.stream.write("  ".join(padded + cells[len(COLUMNS) :]).rstrip() + "\n")


def decodeResult(body: bytes) -> dict[str, Any] | None:
    """
    @return: the result object in C{body}, or C{None} (after saying so on
        standard error) when it is not a JSON object.
    """
    try:
        result = json.loads(body)
    except ValueError as e:
        result, why = None, f"not JSON ({e})"
    else:
        why = "not a JSON object"
    if isinstance(result, dict):
        return result
    sys.stderr.write(f"skipped a message that is no result, {why}: {excerpt(body.decode('utf-8', 'replace'))}\n")
    return None


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the results in a result queue as they come, as a table or JSON lines. Reading "
        "takes them from the queue (AMQP cannot show a queue's messages without taking them): "
        "use it on a queue nothing else reads. The filters choose what is printed, not what is "
        "taken."
    )
    parser.add_argument("--queue", help="the queue to read (default: the configured results queue)")
    parser.add_argument("--json", action="store_true", help="print each result as a JSON line, as published")
    parser.add_argument("--failed", action="store_true", help="print only failed results")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG",
                        help="print only results whose tags have TAG (repeatable: any of them)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="stop after reading N results, printed or not (default: follow until Ctrl-C)")
    parser.add_argument("--description-width", type=int, default=DESCRIPTION_WIDTH, metavar="CHARACTERS",
                        help="characters of the description in the table (default: %(default)s)")


def wanted(result: dict[str, Any], *, failed: bool, tags: list[str]) -> bool:
    """
    @return: whether C{result} passes the filters C{--failed} and C{--tag}.
    """
    if failed and outcome(result) != "failed":
        return False
    if tags:
        its = result.get("tags")
        return isinstance(its, list) and any(tag in its for tag in tags)
    return True


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0.
    @raise CommandError: no queue to read, a queue of mqtwist's own that
        holds jobs, or the broker cannot be reached.
    """
    queue = arguments.queue if arguments.queue is not None else settings.results
    if not queue:
        raise CommandError("the configuration switches the results queue off (results = ''): give --queue")
    if queue == settings.outbox:
        raise CommandError(
            f"{queue!r} is the outbox: reading it would take the delivery jobs from mqtwist; "
            f"give a result queue"
        )
    if queue in settings.reserved:
        # held, waiting and dead-lettered jobs: acknowledged here, they would be lost
        raise CommandError(
            f"{queue!r} is one of mqtwist's own queues (its held queue, a delay queue or the "
            f"dead-letter queue): reading it would take the jobs in it away for good; give a result queue"
        )
    limit = arguments.limit
    if limit is not None and limit < 1:
        raise CommandError(f"--limit {limit} is out of range: give 1 or more")
    printer = ResultPrinter(sys.stdout, asJSON=arguments.json, descriptionWidth=arguments.description_width)
    done: defer.Deferred[None] = defer.Deferred()
    read = 0

    def received(delivery: Delivery) -> None:
        nonlocal read
        if done.called:
            delivery.release()
            return
        result = decodeResult(delivery.body)
        if result is not None and wanted(result, failed=arguments.failed, tags=arguments.tag):
            printer.show(delivery.body, result)
        delivery.ack()
        read += 1
        if limit is not None and read >= limit:
            done.callback(None)

    async with connected(
        reactor,
        settings,
        consumeFrom=queue,
        prefetch=min(limit, PREFETCH) if limit else PREFETCH,
        onDelivery=received,
    ) as client:
        await done
        await client.stopConsuming()
    return 0
