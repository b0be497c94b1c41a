"""
Publish test delivery jobs to an outbox queue, fast, with publisher confirms.

For trying mqtwist out and for the benchmarks (C{bench/})::

    python -m mqtwist.loadgen --amqp amqp://guest:guest@localhost:5672/ \\
        --queue outbox --count 1000 --size 5000

Each job is a persistent JSON message in the format of C{docs/messages.rst}:
an C{id} (C{PREFIX-N}), an C{envelope}, a C{recipient} (C{rcptN@DOMAIN})
and a C{mime} string of about C{--size} bytes: a few headers and a plain
ASCII body of 76-character lines.  With C{--dkim-key} every job also asks
to be DKIM-signed.  The command exits 0 when the broker has confirmed every
message, 1 when it could not publish them all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from twisted.internet import defer, task

from mqtwist.amqp.client import BrokerClient, QueueSpec
from mqtwist.amqp.url import BrokerURL

#: one body line: 74 characters and CRLF
_LINE = ("The quick brown fox jumps over the lazy dog; pack my box with five dozen j" + "\r\n")


def makeMime(number: int, size: int, *, sender: str, recipient: str, prefix: str) -> str:
    """
    @param size: the length the message should have; a message cannot be
        shorter than its headers, so small sizes give the headers alone.
    @return: an RFC 5322 message of C{size} characters (CRLF line ends) with
        From, To, Subject, Message-ID and Date headers and a plain ASCII
        body.
    """
    headers = (
        f"From: <{sender}>\r\n"
        f"To: <{recipient}>\r\n"
        f"Subject: test message {number}\r\n"
        f"Message-ID: <{prefix}-{number}@mqtwist.invalid>\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n"
        f"\r\n"
    )
    missing = max(0, size - len(headers))
    lines, rest = divmod(missing, len(_LINE))
    # the last line is shortened so that the body still ends with CRLF
    tail = _LINE[: rest - 2] + "\r\n" if rest >= 2 else ""
    return headers + _LINE * lines + tail


def makeJob(
    number: int,
    size: int,
    *,
    prefix: str = "job",
    sender: str = "sender@example.org",
    domain: str = "example.com",
    dkim: dict[str, Any] | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """
    @param dkim: a C{dkim} object (C{{domain, selector, key}}) to add to the
        job, or C{None}.
    @param priority: the job's C{priority}, or C{None}.
    @return: one outbox job as a JSON-ready dict.
    """
    recipient = f"rcpt{number}@{domain}"
    job: dict[str, Any] = {
        "id": f"{prefix}-{number}",
        "envelope": sender,
        "recipient": recipient,
        "mime": makeMime(number, size, sender=sender, recipient=recipient, prefix=prefix),
    }
    if dkim is not None:
        job["dkim"] = dkim
    if priority is not None:
        job["priority"] = priority
    return job


async def publishJobs(
    client: BrokerClient,
    queue: str,
    bodies: Iterable[bytes],
    *,
    window: int = 2000,
    priority: int | None = None,
) -> int:
    """
    Publish C{bodies} to C{queue}, at most C{window} of them unconfirmed at
    a time, with the AMQP C{priority} (none when C{None}).

    @return: (a coroutine returning) how many messages were published and
        confirmed.
    @raise mqtwist.amqp.client.PublishFailed: the broker rejected a message
        or the connection was lost; some messages may have been stored.
    """
    if window < 1:
        raise ValueError(f"publish window {window} must be at least 1")
    published = 0
    batch: list[defer.Deferred[None]] = []
    for body in bodies:
        batch.append(client.publish(queue, body, priority=priority))
        if len(batch) >= window:
            await defer.gatherResults(batch, consumeErrors=True).addErrback(_firstError)
            published += len(batch)
            batch = []
    if batch:
        await defer.gatherResults(batch, consumeErrors=True).addErrback(_firstError)
        published += len(batch)
    return published


def _firstError(failure: Any) -> Any:
    # gatherResults wraps the first failure in a FirstError: give the caller
    # the PublishFailed itself
    return failure.value.subFailure


def jobBodies(
    count: int, size: int, *, start: int = 0, **jobOptions: Any
) -> Iterator[bytes]:
    """
    @return: the JSON bodies of jobs C{start} .. C{start + count - 1}, made
        one at a time (100,000 jobs of 100 KB need not all be in memory).
    """
    for number in range(start, start + count):
        yield json.dumps(makeJob(number, size, **jobOptions)).encode("utf-8")


def readDKIM(keyFile: str, domain: str, selector: str) -> dict[str, Any]:
    """
    @return: the C{dkim} object of a job signed with the PEM private key in
        C{keyFile}.
    @raise SystemExit: the file cannot be read (the message names it).
    """
    try:
        with open(keyFile, encoding="ascii") as f:
            key = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"cannot read the DKIM private key file {keyFile}: {e}") from None
    return {"domain": domain, "selector": selector, "key": key}


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mqtwist.loadgen",
        description="Publish persistent test delivery jobs to an mqtwist outbox queue, "
        "with publisher confirms.",
    )
    parser.add_argument("--amqp", default="amqp://guest:guest@localhost:5672/",
                        help="RabbitMQ URL (default: %(default)s)")
    parser.add_argument("--queue", default="outbox", help="queue to publish to (default: %(default)s)")
    parser.add_argument("--count", type=int, default=1, help="how many jobs (default: %(default)s)")
    parser.add_argument("--size", type=int, default=5000,
                        help="size of each message in bytes (default: %(default)s)")
    parser.add_argument("--start", type=int, default=0,
                        help="number of the first job, for ids and recipients (default: %(default)s)")
    parser.add_argument("--prefix", default="job", help="job ids are PREFIX-N (default: %(default)s)")
    parser.add_argument("--sender", default="sender@example.org",
                        help="envelope sender and From (default: %(default)s)")
    parser.add_argument("--domain", default="example.com",
                        help="recipients are rcptN@DOMAIN (default: %(default)s)")
    parser.add_argument("--window", type=int, default=2000,
                        help="messages published before waiting for their confirms "
                        "(default: %(default)s)")
    parser.add_argument("--priority", type=int,
                        help="the jobs' priority, 0-255, in the JSON and as the AMQP priority")
    parser.add_argument("--max-priority", type=int, default=0,
                        help="declare the queue as a priority queue with this x-max-priority, "
                        "as mqtwist --max-priority does (default: %(default)s, an ordinary queue)")
    parser.add_argument("--dkim-key", metavar="FILE",
                        help="PEM private key: every job asks to be DKIM-signed with it")
    parser.add_argument("--dkim-domain", default="example.org",
                        help="signing domain with --dkim-key (default: %(default)s)")
    parser.add_argument("--dkim-selector", default="bench",
                        help="selector with --dkim-key (default: %(default)s)")
    arguments = parser.parse_args(argv)
    for name in ("count", "size", "window"):
        if getattr(arguments, name) < (1 if name == "window" else 0):
            parser.error(f"--{name} {getattr(arguments, name)} is out of range")
    for name in ("priority", "max_priority"):
        value = getattr(arguments, name)
        if value is not None and not 0 <= value <= 255:
            parser.error(f"--{name.replace('_', '-')} {value} is out of range (0-255)")
    try:
        arguments.url = BrokerURL.parse(arguments.amqp)
    except ValueError as e:
        parser.error(str(e))
    return arguments


async def publishFromArguments(reactor: Any, arguments: argparse.Namespace) -> int:
    """
    Connect, publish what C{arguments} ask for, disconnect.

    @return: (a coroutine returning) the number of confirmed messages.
    """
    dkim = (
        readDKIM(arguments.dkim_key, arguments.dkim_domain, arguments.dkim_selector)
        if arguments.dkim_key
        else None
    )
    client = BrokerClient(
        arguments.url,
        [QueueSpec(arguments.queue, {"x-max-priority": arguments.max_priority} if arguments.max_priority else {})],
        consumeFrom=None,
        prefetch=0,
        onDelivery=lambda delivery: None,
        reactor=reactor,
    )
    client.startService()
    try:
        await _connected(reactor, client, arguments.url)
        bodies = jobBodies(
            arguments.count,
            arguments.size,
            start=arguments.start,
            prefix=arguments.prefix,
            sender=arguments.sender,
            domain=arguments.domain,
            dkim=dkim,
            priority=arguments.priority,
        )
        return await publishJobs(
            client, arguments.queue, bodies, window=arguments.window, priority=arguments.priority
        )
    finally:
        await client.stopService()


async def _connected(reactor: Any, client: BrokerClient, url: BrokerURL) -> None:
    timeout = url.connectTimeout
    try:
        await client.whenConnected().addTimeout(timeout, reactor)
    except defer.TimeoutError:
        raise SystemExit(
            f"could not connect to AMQP broker {url.redacted()} within {timeout:g} s: "
            f"is it running, and are the URL and credentials right?"
        ) from None


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parseArguments(sys.argv[1:] if argv is None else argv)

    async def run(reactor: Any) -> None:
        started = time.monotonic()
        published = await publishFromArguments(reactor, arguments)
        elapsed = time.monotonic() - started
        sys.stdout.write(
            f"published {published} messages to queue {arguments.queue!r} in "
            f"{elapsed:.1f} s ({published / elapsed if elapsed else 0:.0f} messages/s)\n"
        )

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
