"""
A L{Submission} as outbox jobs: one MailerQ job for each accepted
recipient (C{docs/messages.rst}), with the properties MailerQ puts on the
messages it takes in over SMTP (its "JSON for incoming messages" page):
C{hostname}, C{received}, a C{message-id} of each recipient's own and the
C{connection} the message came over.

The job's C{mime} is the message as received, as JSON text: the job parser
sends a C{mime} string as its UTF-8 bytes, so a message that is UTF-8
(ASCII included) is delivered byte for byte as it came.  The bytes of a
message that are not UTF-8 (an 8-bit ISO-8859-1 body) are in it as the
escapes C{\\udc80} to C{\\udcff} (Python's C{surrogateescape}), which the
parser takes in C{mime} and sends as those bytes
(L{mqtwist.content.joblimits}): such a message is delivered byte for byte
too.  (A consumer of the outbox other than mqtwist may not read them.)
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mqtwist.content.joblimits import encodeJSON, encodeMime
from mqtwist.content.message import DSN
from mqtwist.errors import InvalidMessage
from mqtwist.submission.envelope import Recipient, Submission
from mqtwist.submission.syntax import xtextDecode
from mqtwist.timeformat import formatTime
from mqtwist.validation import checkAddress


@dataclass(frozen=True)
class Job:
    """
    The outbox job of one recipient.

    @ivar recipient: the recipient's address.
    @ivar messageId: the job's C{message-id}, unique to this recipient.
    @ivar priority: the job's C{priority}, when it has one, for the AMQP
        priority of the publish.
    """

    recipient: str
    messageId: str
    priority: int | None
    #: the C{mime} property's JSON string, one for all the jobs of a message
    mimeJSON: bytes = field(repr=False)
    #: the JSON object of the other properties
    rest: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """The length of L{body}, without making it."""
        return len(self.mimeJSON) + len(self.rest) + 10

    @property
    def body(self) -> bytes:
        """
        The job as it is published, UTF-8 JSON, made anew at each call: the
        jobs of a message share their C{mime}, which is copied into each
        body only when it is published.
        """
        return b'{"mime": ' + self.mimeJSON + b", " + self.rest[1:]


def newMessageId() -> str:
    """
    A fresh C{message-id}: 20 random lower-case hexadecimal digits (80
    bits, so that no two jobs share one in any installation's lifetime).
    """
    return secrets.token_hex(10)


def buildJobs(
    submission: Submission, hostname: str, newId: Callable[[], str] = newMessageId
) -> list[Job]:
    """
    The outbox jobs of C{submission}, one for each recipient, in the
    client's order.

    Each job has C{envelope} (C{""} for the null sender), C{recipient},
    C{mime}, C{dsn} when the client gave DSN parameters (C{notify} and
    C{orcpt} of the recipient, C{ret} and C{envid} of the message; ORCPT's
    xtext decoded, as the delivery side encodes it again), C{hostname},
    C{received} (UTC C{YYYY-MM-DD HH:MM:SS}), C{message-id} and
    C{connection} (C{local-ip}, C{local-port}, C{remote-ip},
    C{remote-port}, C{helo}, C{secure}, and C{user} when the client
    authenticated).  The submission's C{defaults}
    fill in every top-level property the job does not set itself.

    @param hostname: the C{hostname} of the jobs: the server that took the
        message in.
    @param newId: makes each job's C{message-id}.
    @raise ValueError: when the sender, a recipient or a DSN value could
        not be sent on (a control character, a malformed address or ORCPT),
        naming it; the server should have refused it with its command.
    """
    mime = submission.mime.decode("utf-8", "surrogateescape")
    if submission.sender:
        _check("the sender", submission.sender)
    connection: dict[str, Any] = {
        "local-ip": submission.localAddress,
        "local-port": submission.localPort,
        "remote-ip": submission.clientAddress,
        "remote-port": submission.clientPort,
        "helo": submission.heloName,
        "secure": submission.tls,
    }
    if submission.user is not None:
        connection["user"] = submission.user
    received = formatTime(submission.received)
    mimeJSON = encodeMime(mime)
    jobs = []
    for recipient in submission.recipients:
        _check("a recipient", recipient.address)
        messageId = newId()
        own: dict[str, Any] = {
            "envelope": submission.sender,
            "recipient": recipient.address,
            "mime": mime,
        }
        dsn = _dsn(submission, recipient)
        if dsn:
            own["dsn"] = dsn
        own.update(
            {
                "hostname": hostname,
                "received": received,
                "message-id": messageId,
                "connection": connection,
            }
        )
        job = own | {key: value for key, value in submission.defaults.items() if key not in own}
        del job["mime"]
        priority = job.get("priority")
        jobs.append(
            Job(
                recipient.address,
                messageId,
                priority if isinstance(priority, int) and not isinstance(priority, bool) else None,
                mimeJSON,
                encodeJSON(job),
            )
        )
    return jobs


def _dsn(submission: Submission, recipient: Recipient) -> dict[str, Any]:
    dsn: dict[str, Any] = {}
    if recipient.notify:
        dsn["notify"] = list(recipient.notify)
    if submission.ret is not None:
        dsn["ret"] = submission.ret
    if recipient.orcpt is not None:
        kind, semicolon, address = recipient.orcpt.partition(";")
        if not semicolon or not kind or not address:
            raise ValueError(
                f"ORCPT {recipient.orcpt!r} of recipient <{recipient.address}> is not "
                f"addr-type;xtext (RFC 3461 section 4.2)"
            )
        try:
            dsn["orcpt"] = f"{kind};{xtextDecode(address)}"
        except ValueError as e:
            raise ValueError(f"ORCPT of recipient <{recipient.address}>: {e}") from None
    if submission.envid is not None:
        dsn["envid"] = submission.envid
    if dsn:
        # the parser's own rules: a job it would refuse must not be queued
        try:
            DSN.fromJSON(dsn)
        except InvalidMessage as e:
            raise ValueError(f"the DSN parameters of recipient <{recipient.address}>: {e.description}") from None
    return dsn


def _check(what: str, address: str) -> None:
    # the parser's own rules: a job it would refuse must not be queued
    try:
        checkAddress(what, address)
    except InvalidMessage as e:
        raise ValueError(e.description) from None
