"""
The benchmarks' delivery jobs: many of them, each of a given size.

Each job is a JSON message in the format of C{docs/messages.rst}: an C{id}
(C{PREFIX-N}), an C{envelope}, a C{recipient} (C{rcptN@DOMAIN}) and a
C{mime} string of the requested size: a few headers and a plain ASCII body
of 76-character lines; it may ask to be DKIM-signed.  They are published
with L{mqtwist.cli.publishing.publishBodies}, as C{mqtwist send --count}
publishes its jobs (which is the way to load a running mqtwist by hand).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

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


def jobBodies(
    count: int, size: int, *, start: int = 0, **jobOptions: Any
) -> Iterator[bytes]:
    """
    @return: the JSON bodies of jobs C{start} .. C{start + count - 1}, made
        one at a time (100,000 jobs of 100 KB need not all be in memory).
    """
    for number in range(start, start + count):
        yield json.dumps(makeJob(number, size, **jobOptions)).encode("utf-8")
