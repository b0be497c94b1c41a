"""
The delivery status notifications (DSNs, "bounces") that mqtwist sends
itself, as MailerQ does when a DSN queue is set (C{--dsn-queue},
C{queues.dsn}).

A report is an RFC 3464 C{multipart/report; report-type=delivery-status}
message to the job's envelope sender: a text part for people, a
C{message/delivery-status} part for programs, and the original's header
block (C{text/rfc822-headers}) or the whole original (C{message/rfc822}) as
C{dsn.ret} asks.  It travels as an outbox job with the null envelope sender
(RFC 5321 section 4.5.5), so it can never be bounced in turn.

Which events make a report follows RFC 3461 section 4.1 with MailerQ's
defaults: C{dsn.notify}, else C{--dsn-notify} (C{FAILURE}); C{NEVER}
makes none.  A success is reported as C{relayed} (RFC 3461 section 5.2.2)
and only when the receiving server did not take that duty over: when it
announced DSN and was given the job's C{NOTIFY}, it reports the delivery
itself.
"""

from __future__ import annotations

import quopri
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from mqtwist.config import Config
from mqtwist.content.headeredits import splitHeaderBlock
from mqtwist.content.joblimits import JobLimits, encodeJSON
from mqtwist.content.message import DSN, Message
from mqtwist.content.mime import _rfc5322Date
from mqtwist.smtp.body import normaliseLineEnds
from mqtwist.timeformat import parseTime

#: what a report says happened (RFC 3464 section 2.3.3)
FAILED = "failed"
DELAYED = "delayed"
RELAYED = "relayed"

#: the C{NOTIFY} event (RFC 3461 section 4.1) that asks for each action
_EVENT = {FAILED: "FAILURE", DELAYED: "DELAY", RELAYED: "SUCCESS"}

#: the status of an action when no reply gave one (RFC 3463): a failure
#: with no code at all, the end of the time given to a message, a delay,
#: a hand-over
_DEFAULT_STATUS = {FAILED: "5.0.0", DELAYED: "4.0.0", RELAYED: "2.0.0"}
_EXPIRED_STATUS = "4.4.7"

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")

_SUBJECT = {
    FAILED: "Undelivered mail: your message to {recipient}",
    DELAYED: "Delayed mail: your message to {recipient} is not delivered yet",
    RELAYED: "Delivery report: your message to {recipient} was handed on",
}

#: the longest line of a field of the delivery-status part before it is
#: folded (RFC 5322 recommends 78 characters)
_FOLD_AT = 78


@dataclass(frozen=True)
class BounceSettings:
    """
    What building reports takes from the service's configuration.

    @ivar hostname: the Reporting-MTA, the domain of the report's From
        (C{mailer-daemon@}) and of its Message-ID: the EHLO name.
    @ivar notify: the events reported for a job without C{dsn.notify}
        (C{--dsn-notify}).
    @ivar ret: C{FULL} or C{HDRS} for a job without C{dsn.ret}
        (C{--dsn-ret}).
    @ivar limits: the outbox's job limits: a report with the whole
        original that would be past C{maxBytes} carries its headers only,
        so that it is not refused when the DSN queue is the outbox.
    """

    hostname: str = "localhost"
    notify: tuple[str, ...] = ("FAILURE",)
    ret: str = "HDRS"
    limits: JobLimits = field(default_factory=JobLimits)

    @classmethod
    def fromConfig(cls, config: Config, limits: JobLimits) -> BounceSettings:
        """
        The settings of C{config} (C{--ehlo-name}, C{--dsn-notify},
        C{--dsn-ret}), which L{Config.check} found valid.
        """
        defaults = DSN.fromJSON({"notify": config.dsnNotify, "ret": config.dsnRet})
        assert defaults.notify is not None and defaults.ret is not None
        return cls(config.ehloName, tuple(defaults.notify), defaults.ret, limits)


def reportDue(message: Message, action: str, settings: BounceSettings) -> bool:
    """
    Whether C{message} gets a report of C{action}: when L{notifies} says
    so, and it is not itself a delivery report or an automatic reply (RFC
    3834: so that no two systems bounce mail back and forth).
    """
    return notifies(message, action, settings) and not _isReportOrReply(message.mime)


def notifies(message: Message, action: str, settings: BounceSettings) -> bool:
    """
    Whether the envelope of C{message} asks for a report of C{action}, at
    no cost: never for the null envelope sender; else when its C{NOTIFY}
    events ask for it, and for a success only when the receiving server is
    not the one to report it.
    """
    if not message.envelope:
        return False
    dsn = message.dsn
    notify = dsn.notify if dsn is not None and dsn.notify is not None else settings.notify
    if _EVENT[action] not in notify:
        return False
    if action == RELAYED and dsn is not None and dsn.notify is not None:
        last = _lastAttempt(message)
        # the server was given NOTIFY (delivery/transaction.py) and took on
        # the success report (RFC 3461 section 5.2.1)
        if last is not None and last.get("dsn") is True:
            return False
    return True


def bounceJob(
    message: Message, action: str, now: float, settings: BounceSettings, *, willRetryUntil: float | None = None
) -> bytes | None:
    """
    The outbox job that carries the report of C{action} on C{message}, or
    C{None} when none is due (L{reportDue}).

    The job has the null envelope sender, the original's envelope sender as
    its recipient, the report as its C{mime}, the original's C{tags} and
    C{priority}, and C{bounceof}: the original's C{id} (when it has one),
    recipient and the action, to tie the report to it.

    @param willRetryUntil: for C{delayed}, when mqtwist gives the message up.
    """
    if not reportDue(message, action, settings):
        return None
    dsn = message.dsn
    ret = dsn.ret if dsn is not None and dsn.ret is not None else settings.ret
    job: dict[str, Any] = {
        "envelope": "",
        "recipient": message.envelope,
        "mime": "",
        "bounceof": {"recipient": message.recipient, "action": action},
    }
    if "id" in message.json:
        job["bounceof"] = {"id": message.json["id"], **job["bounceof"]}
    if message.tags:
        job["tags"] = message.tags
    if message.priority is not None:
        job["priority"] = message.priority
    job["mime"] = buildReport(message, action, now, settings.hostname, ret, willRetryUntil).decode("utf-8")
    encoded = encodeJSON(job)
    if ret == "FULL" and len(encoded) > settings.limits.maxBytes:
        # RFC 3461 section 4.3 lets an MTA return the headers only
        job["mime"] = buildReport(message, action, now, settings.hostname, "HDRS", willRetryUntil).decode("utf-8")
        encoded = encodeJSON(job)
    return encoded


def buildReport(
    message: Message,
    action: str,
    now: float,
    hostname: str,
    ret: str = "HDRS",
    willRetryUntil: float | None = None,
) -> bytes:
    """
    The RFC 3464 report of C{action} on C{message}, with CRLF line ends.

    The per-recipient fields come from the message's last attempt (its last
    result entry that is not C{process}): Status (its enhanced status code,
    else one derived from its reply code, else C{4.4.7} for an expired
    message and C{5.0.0}, C{4.0.0} or C{2.0.0} by the action),
    Remote-MTA, Diagnostic-Code (when the server replied) and
    Last-Attempt-Date.

    The report is always valid UTF-8, whatever bytes the original has.

    @param ret: C{FULL} for the whole original, C{HDRS} for its header
        block.  An original that is not valid UTF-8 is returned as its
        header block whatever C{ret} says, its other bytes replaced by
        U+FFFD.
    """
    envelope, recipient = message.envelope, message.recipient
    # RFC 6533: addresses of SMTPUTF8 mail go as utf-8, in a global report
    orcpt = message.dsn.orcpt if message.dsn is not None else None
    utf8 = not (envelope.isascii() and recipient.isascii() and (orcpt or "").isascii())
    last = _lastAttempt(message)
    ended = message.results[-1] if message.results else {}
    status = _status(action, last, ended)
    boundary = f"=_report_{uuid.uuid4().hex}"
    crlf = "\r\n"

    head = [
        f"From: Mail Delivery System <mailer-daemon@{hostname}>",
        f"To: <{envelope}>",
        "Subject: " + _SUBJECT[action].format(recipient=recipient),
        f"Date: {_rfc5322Date(now)}",
        f"Message-ID: <{uuid.uuid4().hex}@{hostname}>",
        # RFC 3834: an automatic message, which no responder answers
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type={"global-" if utf8 else ""}delivery-status;',
        f' boundary="{boundary}"',
    ]

    text = _explanation(action, hostname, message, status, last, ended, willRetryUntil)
    textBytes = text.encode("utf-8")
    textEncoding = "7bit"
    if not text.isascii():
        textBytes = quopri.encodestring(textBytes.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
        textEncoding = "quoted-printable"

    addressType = "utf-8" if utf8 else "rfc822"
    perMessage = [("Reporting-MTA", f"dns; {hostname}")]
    if message.dsn is not None and message.dsn.envid is not None:
        perMessage.append(("Original-Envelope-Id", message.dsn.envid))
    arrival = message.firstTryTime
    if arrival is not None:
        perMessage.append(("Arrival-Date", _rfc5322Date(arrival)))
    perRecipient = []
    if orcpt is not None:
        perRecipient.append(("Original-Recipient", orcpt))
    perRecipient += [
        ("Final-Recipient", f"{addressType};{recipient}"),
        ("Action", action),
        ("Status", status),
    ]
    if last is not None:
        remote = last.get("host") or last.get("mta") or last.get("to")
        if isinstance(remote, str) and remote:
            perRecipient.append(("Remote-MTA", f"dns; {remote}"))
        code = last.get("code")
        if isinstance(code, int):
            reply = " ".join(str(last[key]) for key in ("code", "status", "description") if last.get(key))
            perRecipient.append(("Diagnostic-Code", f"smtp; {reply}"))
        if isinstance(last.get("time"), str):
            perRecipient.append(("Last-Attempt-Date", _rfc5322Date(_parsedTime(last["time"], now))))
    if action == DELAYED and willRetryUntil is not None:
        perRecipient.append(("Will-Retry-Until", _rfc5322Date(willRetryUntil)))
    statusPart = crlf.join(
        [_field(name, value, utf8) for name, value in perMessage]
        + [""]
        + [_field(name, value, utf8) for name, value in perRecipient]
    )

    fields, _, rest = splitHeaderBlock(message.mime)
    if ret == "FULL" and _isUTF8(message.mime):
        original, originalType = normaliseLineEnds(message.mime), "message/global" if utf8 else "message/rfc822"
    else:
        # the report travels in a job's mime, a JSON string: an original
        # that is not UTF-8 (an 8-bit charset) returns its header block,
        # with the bytes that are not UTF-8 replaced by U+FFFD
        headers = b"".join(fields).decode("utf-8", "replace").encode("utf-8")
        original, originalType = normaliseLineEnds(headers), (
            "message/global-headers" if utf8 else "text/rfc822-headers"
        )
    if original and not original.endswith(b"\r\n"):
        original += b"\r\n"

    parts = [
        crlf.join(head).encode("utf-8"),
        b"",
        b"This is a delivery status notification (RFC 3464) in MIME format.",
        b"",
        f"--{boundary}".encode("ascii"),
        f"Content-Type: text/plain; charset=utf-8{crlf}Content-Transfer-Encoding: {textEncoding}".encode("ascii"),
        b"",
        textBytes,
        f"--{boundary}".encode("ascii"),
        f"Content-Type: message/{'global-' if utf8 else ''}delivery-status".encode("ascii"),
        b"",
        statusPart.encode("utf-8"),
        b"",
        f"--{boundary}".encode("ascii"),
        f"Content-Type: {originalType}".encode("ascii")
        + ("" if original.isascii() else f"{crlf}Content-Transfer-Encoding: 8bit").encode("ascii"),
        b"",
        # the line end before a boundary is the boundary's (RFC 2046)
        original + f"{crlf}--{boundary}--{crlf}".encode("ascii"),
    ]
    return b"\r\n".join(parts)


def _isUTF8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _lastAttempt(message: Message) -> dict[str, Any] | None:
    # process entries record decisions (deferrals, expiry), not attempts
    for entry in reversed(message.results):
        if entry.get("state") != "process":
            last: dict[str, Any] = entry
            return last
    return None


def _status(action: str, last: dict[str, Any] | None, ended: dict[str, Any]) -> str:
    """
    The Status of the report: the enhanced status code of the last attempt
    when it has one of the action's kind, else one derived from its reply
    code, else the action's default.
    """
    if last is not None:
        status = last.get("status")
        if isinstance(status, str) and _STATUS.match(status) and (status[0] == "2") == (action == RELAYED):
            return status
        code = str(last.get("code"))
        if re.fullmatch("[245][0-9][0-9]", code) and (code[0] == "2") == (action == RELAYED):
            return f"{code[0]}.0.0"
    if action == FAILED and ended.get("state") == "process" and ended.get("result") == "timeout":
        return _EXPIRED_STATUS
    return _DEFAULT_STATUS[action]


def _explanation(
    action: str,
    hostname: str,
    message: Message,
    status: str,
    last: dict[str, Any] | None,
    ended: dict[str, Any],
    willRetryUntil: float | None,
) -> str:
    recipient = message.recipient
    if action == FAILED:
        lines = [
            f"Your message to <{recipient}> could not be delivered: the mail system at {hostname} gave it up.",
        ]
    elif action == DELAYED:
        lines = [
            f"Your message to <{recipient}> has not been delivered yet; the mail system at {hostname} "
            f"keeps trying."
        ]
        if willRetryUntil is not None:
            lines.append(f"It tries until {_rfc5322Date(willRetryUntil)}. You do not need to send it again.")
    else:
        lines = [
            f"Your message to <{recipient}> was handed on by the mail system at {hostname} to a server "
            f"that sends no delivery reports itself; this is the last report about it."
        ]
    lines.append("")
    if ended is not last and ended.get("description"):
        lines.append(f"Reason: {ended['description']}")
    if last is not None:
        where = last.get("host") or last.get("mta") or last.get("to")
        reply = " ".join(str(last[key]) for key in ("code", "status", "description") if last.get(key))
        if reply:
            lines.append(f"Last attempt{f' ({where})' if where else ''}: {reply}")
    lines.append(f"Status: {status}")
    # a CR or LF from a server's reply must not break the part
    return "\r\n".join(" ".join(line.split()) if line else line for line in lines) + "\r\n"


def _field(name: str, value: str, utf8: bool) -> str:
    """
    One field of the delivery-status part: on one line, folded at spaces
    past L{_FOLD_AT} characters; outside a global report, non-ASCII
    characters are escaped (the part is 7-bit, RFC 3464 section 2.1).
    """
    value = " ".join(value.split())
    if not utf8 and not value.isascii():
        value = value.encode("ascii", "backslashreplace").decode("ascii")
    line = f"{name}: {value}"
    if len(line) <= _FOLD_AT:
        return line
    folded: list[str] = []
    current = ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > _FOLD_AT:
            folded.append(current)
            current = " " + word
        else:
            current = f"{current} {word}" if current else word
    folded.append(current)
    return "\r\n".join(folded)


def _parsedTime(text: str, default: float) -> float:
    try:
        return parseTime(text)
    except ValueError:
        return default


def _isReportOrReply(mime: bytes) -> bool:
    """
    Whether the message is a delivery report, or says it is an automatic
    reply (C{Auto-Submitted: auto-replied}, RFC 3834): reporting on it
    could start two systems bouncing mail at each other.
    """
    fields, _, _ = splitHeaderBlock(mime)
    for raw in fields:
        name, _, value = raw.partition(b":")
        name = name.strip().lower()
        if name not in (b"content-type", b"auto-submitted"):
            continue
        text = b" ".join(value.split()).lower()
        # the keyword, before any parameter or comment (RFC 3834 section 5)
        if name == b"auto-submitted" and re.match(rb"auto-replied\b", text):
            return True
        if name == b"content-type" and text.startswith(b"multipart/report") and b"delivery-status" in text:
            return True
    return False
