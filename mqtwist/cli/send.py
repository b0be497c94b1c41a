"""
C{mqtwist send}: publish delivery jobs to the outbox, and follow their
results.

A job is built from flags (C{--from}, C{--to}, C{--subject}, C{--body} or
C{--body-file}, C{--html-file}, C{--header}) as a MailerQ C{mime} object,
which the service turns into the message; or read whole from a JSON file or
standard input (C{--json}).  One job is published per C{--to}, C{--count}
times each, every one with its own C{id}.  Publishing is C{mandatory} with
publisher confirms: a queue that does not exist is an error, not a silent
loss.

With C{--wait} the jobs name a queue of this run as their C{results} and
C{retry} queues (their C{queues} property; success and failure results
still go where the configuration says), the command prints each result as
it comes, and exits 0 only if every job was delivered.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer

from mqtwist.amqp.client import BrokerClient, Delivery, PublishFailed, QueueSpec
from mqtwist.cli.common import CommandError, Settings, connected
from mqtwist.cli.progress import Progress
from mqtwist.cli.publishing import publishBodies
from mqtwist.cli.results import ResultPrinter, decodeResult, outcome
from mqtwist.content.mime import buildMime
from mqtwist.errors import InvalidMessage
from mqtwist.validation import checkAddress, excerpt

NAME = "send"
HELP = "publish delivery jobs to the outbox (and follow their results with --wait)"

#: exit status when a job failed or could not be published
FAILED = 1
#: exit status when --wait-timeout passed before every final result came
TIMED_OUT = 3
#: the default of --wait-timeout, in seconds
WAIT_TIMEOUT = 600.0


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Publish delivery jobs to the outbox: one built from the flags (one job per --to), or "
        "one read as JSON (--json). Publishing is mandatory, with publisher confirms: a queue "
        "that does not exist is an error. Exit status: 0 when every job was published (and "
        f"with --wait delivered), {FAILED} when one failed or could not be published, "
        f"{TIMED_OUT} when --wait-timeout passed first, 2 for wrong options."
    )
    built = parser.add_argument_group("a job built from flags")
    built.add_argument("--from", dest="sender", metavar="ADDRESS", help="envelope sender and From")
    built.add_argument("--to", action="append", default=[], metavar="ADDRESS",
                       help="recipient, and To (repeatable: one job per recipient; with --json it "
                       "replaces the job's recipient)")
    built.add_argument("--subject", help="the Subject")
    body = built.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="the plain text body")
    body.add_argument("--body-file", metavar="FILE", help="read the plain text body from FILE (- for stdin)")
    built.add_argument("--html-file", metavar="FILE",
                       help="read an HTML body from FILE (with a text body: multipart/alternative)")
    built.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                       help="a further header field (repeatable)")
    parser.add_argument("--json", metavar="FILE",
                        help="read the whole job (a JSON object, docs/messages.rst) from FILE, - for "
                        "stdin, instead of building it from flags")
    parser.add_argument("--id", help="the job's id (with several jobs ID-1, ID-2, ...; default: the "
                        "JSON job's, else cli-<random>)")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG",
                        help="add TAG to the job's tags (repeatable)")
    parser.add_argument("--priority", type=int, metavar="0-255",
                        help="the job's priority, in the JSON and as the AMQP priority")
    parser.add_argument("--queue", help="publish to this queue (default: the configured outbox)")
    parser.add_argument("--count", type=int, default=1, metavar="N",
                        help="publish N copies of each job, each with its own id (default: %(default)s)")
    parser.add_argument("--window", type=int, default=1000, metavar="N",
                        help="messages published before waiting for their confirms (default: %(default)s)")
    parser.add_argument("--wait", action="store_true",
                        help="follow the jobs' results (sent to a queue of this run instead of the "
                        "results and retry queues) and print each as it comes")
    parser.add_argument("--wait-timeout", type=float, default=WAIT_TIMEOUT, metavar="SECONDS",
                        help="with --wait, give up after SECONDS (default: %(default)g)")
    parser.add_argument("--output", choices=("table", "json"), default="table",
                        help="with --wait, print the results as a table or as JSON lines (default: %(default)s)")


def checkArguments(arguments: argparse.Namespace) -> None:
    """
    @raise CommandError: options that do not go together, or values out of
        range.
    """
    if arguments.json is not None:
        given = [
            option
            for option, value in (
                ("--from", arguments.sender), ("--subject", arguments.subject), ("--body", arguments.body),
                ("--body-file", arguments.body_file), ("--html-file", arguments.html_file),
                ("--header", arguments.header),
            )
            if value
        ]
        if given:
            raise CommandError(f"--json reads the whole job: {', '.join(given)} cannot go with it")
    else:
        if not arguments.sender or not arguments.to:
            raise CommandError("give --from and --to (or a whole job with --json)")
        if arguments.body is None and arguments.body_file is None and arguments.html_file is None:
            raise CommandError("give the message's body: --body, --body-file or --html-file")
    for option, value, low in (("--count", arguments.count, 1), ("--window", arguments.window, 1)):
        if value < low:
            raise CommandError(f"{option} {value} is out of range: give {low} or more")
    if arguments.priority is not None and not 0 <= arguments.priority <= 255:
        raise CommandError(f"--priority {arguments.priority} is out of range: give 0-255")
    if arguments.wait_timeout <= 0:
        raise CommandError(f"--wait-timeout {arguments.wait_timeout:g} is out of range: give seconds above 0")


def _readText(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"cannot read {what} {path}: {e}") from None


def readJob(path: str) -> dict[str, Any]:
    """
    @return: the job in the JSON file C{path} (C{-}: standard input).
    @raise CommandError: it cannot be read, or is not a JSON object.
    """
    text = _readText(path, "the job file")
    try:
        job = json.loads(text)
    except ValueError as e:
        raise CommandError(f"the job in {path} is not JSON: {e}") from None
    if not isinstance(job, dict):
        raise CommandError(f"the job in {path} is {excerpt(job)}, not a JSON object: see docs/messages.rst")
    return job


def headerFields(given: list[str]) -> dict[str, list[str]]:
    """
    @param given: C{--header} values, C{Name: value}.
    @return: the C{headers} of a C{mime} object.
    @raise CommandError: one has no colon or no name.
    """
    fields: dict[str, list[str]] = {}
    for header in given:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            raise CommandError(f"--header {excerpt(header)} is not NAME:VALUE")
        fields.setdefault(name.strip(), []).append(value.strip())
    return fields


def buildJob(arguments: argparse.Namespace) -> dict[str, Any]:
    """
    The job of the flags, its C{mime} an object the service builds the
    message from; checked here as the service will, so that a mistake is
    told now rather than in a result.

    @raise CommandError: an address or a header is not usable, or a file
        cannot be read.
    """
    mime: dict[str, Any] = {"from": arguments.sender, "to": arguments.to[0]}
    if arguments.subject is not None:
        mime["subject"] = arguments.subject
    if arguments.body is not None:
        mime["text"] = arguments.body
    elif arguments.body_file is not None:
        mime["text"] = _readText(arguments.body_file, "the body file")
    if arguments.html_file is not None:
        mime["html"] = _readText(arguments.html_file, "the HTML file")
    if arguments.header:
        mime["headers"] = headerFields(arguments.header)
    try:
        checkAddress("--from", arguments.sender)
        for recipient in arguments.to:
            checkAddress("--to", recipient)
        buildMime(mime, now=time.time(), hostname="mqtwist.invalid")
    except InvalidMessage as e:
        raise CommandError(f"the message cannot be built: {e.description}") from None
    return {"envelope": arguments.sender, "recipient": arguments.to[0], "mime": mime}


def jobs(
    job: dict[str, Any], recipients: list[str], count: int, baseId: str, replyQueue: str | None
) -> Iterator[dict[str, Any]]:
    """
    @return: C{count} copies of C{job} for each of C{recipients} (or for
        its own recipient when there are none), each with its own id:
        C{baseId} when there is one job in all, else C{baseId-1},
        C{baseId-2}, ...; with C{replyQueue}, its results and retry
        notices go there.
    """
    total = max(len(recipients), 1) * count
    number = 0
    targets: list[str | None] = list(recipients) or [None]
    for recipient in targets:
        for _ in range(count):
            number += 1
            copy = dict(job)
            copy["id"] = baseId if total == 1 else f"{baseId}-{number}"
            if recipient is not None:
                copy["recipient"] = recipient
                if isinstance(copy.get("mime"), dict) and "to" in copy["mime"]:
                    copy["mime"] = {**copy["mime"], "to": recipient}
            if replyQueue is not None:
                queues = copy.get("queues")
                copy["queues"] = {
                    **(queues if isinstance(queues, dict) else {}),
                    "results": replyQueue,
                    "retry": replyQueue,
                }
            yield copy


class Follower:
    """
    Prints the results that come to this run's queue and keeps count of
    the jobs that are done.
    """

    def __init__(self, ids: set[str], printer: ResultPrinter) -> None:
        self.pending = set(ids)
        self.printer = printer
        self.delivered = 0
        self.failed = 0
        #: fires with None once every job has its final result
        self.done: defer.Deferred[None] = defer.Deferred()

    def received(self, delivery: Delivery) -> None:
        result = decodeResult(delivery.body)
        if result is not None:
            self.printer.show(delivery.body, result)
            kind = outcome(result)
            jobId = result.get("id")
            if kind != "retry" and jobId in self.pending:
                self.pending.discard(jobId)
                if kind == "delivered":
                    self.delivered += 1
                else:
                    self.failed += 1
        delivery.ack()
        if not self.pending and not self.done.called:
            self.done.callback(None)


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status.
    @raise CommandError: wrong options, a job that cannot be built, a
        broker that cannot be reached, a publish that failed.
    """
    checkArguments(arguments)
    if arguments.json is not None:
        job = readJob(arguments.json)
    else:
        job = buildJob(arguments)
    if arguments.tag:
        tags = job.get("tags")
        job["tags"] = (tags if isinstance(tags, list) else []) + arguments.tag
    if arguments.priority is not None:
        job["priority"] = arguments.priority
    jobId = job.get("id")
    baseId = arguments.id or (jobId if isinstance(jobId, str) and jobId else f"cli-{uuid.uuid4().hex[:12]}")
    recipients = list(arguments.to)
    total = max(len(recipients), 1) * arguments.count
    queue = arguments.queue if arguments.queue is not None else settings.outbox
    replyQueue = f"mqtwist-send-{uuid.uuid4().hex}" if arguments.wait else None
    follower = None
    if replyQueue is not None:
        ids = {copy["id"] for copy in jobs({}, recipients, arguments.count, baseId, None)}
        follower = Follower(ids, ResultPrinter(sys.stdout, asJSON=arguments.output == "json"))

    async def deleteReplyQueue(client: BrokerClient) -> None:
        if replyQueue is not None:
            await client.deleteQueue(replyQueue)

    # this run's queue is declared as the service declares a job's result
    # queue (durable, no arguments): the service's own declaration of it
    # then agrees, where an exclusive or auto-delete queue would be refused
    async with connected(
        reactor,
        settings,
        queues=[QueueSpec(replyQueue)] if replyQueue else [],
        consumeFrom=replyQueue,
        prefetch=100,
        onDelivery=follower.received if follower else lambda delivery: None,
        cleanup=deleteReplyQueue,
    ) as client:
        published = await _publish(reactor, client, queue, arguments, job, recipients, baseId, replyQueue, total)
        if follower is None:
            return 0
        try:
            await follower.done.addTimeout(arguments.wait_timeout, reactor)
        except defer.TimeoutError:
            missing = sorted(follower.pending)
            sys.stderr.write(
                f"no final result within {arguments.wait_timeout:g} s (--wait-timeout) for "
                f"{len(missing)} of {published} job(s): {', '.join(missing[:10])}"
                f"{' ...' if len(missing) > 10 else ''}; their results go to a queue that this "
                f"command deletes now: look for them in the log of mqtwist\n"
            )
            return TIMED_OUT
        sys.stderr.write(f"{follower.delivered} delivered, {follower.failed} failed\n")
        return 0 if follower.failed == 0 else FAILED


async def _publish(
    reactor: Any,
    client: BrokerClient,
    queue: str,
    arguments: argparse.Namespace,
    job: dict[str, Any],
    recipients: list[str],
    baseId: str,
    replyQueue: str | None,
    total: int,
) -> int:
    progress = Progress(total, sys.stderr, clock=reactor) if total > 1 else None
    bodies = (
        json.dumps(copy, ensure_ascii=False).encode("utf-8")
        for copy in jobs(job, recipients, arguments.count, baseId, replyQueue)
    )
    try:
        published = await publishBodies(
            client,
            queue,
            bodies,
            window=arguments.window,
            priority=arguments.priority,
            mandatory=True,
            onConfirmed=progress.update if progress else None,
        )
    except PublishFailed as e:
        raise CommandError(str(e)) from None
    finally:
        if progress is not None:
            progress.finish()
    if progress is None:
        print(f"published job {baseId} to queue {queue!r}", flush=True)
    else:
        elapsed = progress.elapsed()
        rate = f"{published / elapsed:.0f}" if elapsed > 0 else "-"
        print(
            f"published {published} jobs to queue {queue!r} in {elapsed:.2f} s ({rate} messages/s)",
            flush=True,
        )
    return published
