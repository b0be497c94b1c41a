"""
The delivery status notifications of L{mqtwist.content.bounce}: when one is
due, and the report itself, read back by Python's email package and Perl's
MIME::Parser field by field.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from perlmodules import needsPerl

from mqtwist.config import Config
from mqtwist.content.bounce import DELAYED, FAILED, RELAYED, BounceSettings, bounceJob, buildReport, notifies, reportDue
from mqtwist.content.joblimits import JobLimits
from mqtwist.content.message import Message, ParseSettings, ResultEntry
from mqtwist.errors import InvalidMessage
from mqtwist.timeformat import formatTime

HERE = Path(__file__).parent
REFERENCE = HERE.parent.parent / "shared" / "reference" / "mailerq-5.6"
NOW = 1_700_000_000.0
SETTINGS = BounceSettings(hostname="mta.example.net")

#: MailerQ's example job of its "Sending bounces" page, as printed
MAILERQ_EXAMPLE = """{
    "envelope": "youraddress@yourdomain.com",
    "recipient": "info@example.com",
    "mime": "....",
    "dsn": {
        "notify": "FAILURE",
        "ret": "HDRS",
        "envid": "unique-identifier",
        "orcpt": "info@example.com"
    }
}"""

ORIGINAL = (
    "From: Sender <sender@example.org>\r\n"
    "To: rcpt@example.com\r\n"
    "Subject: the original\r\n"
    "Message-ID: <original@example.org>\r\n"
    "\r\n"
    "the body\r\n"
    "of the original\r\n"
)


def message(**extra: Any) -> Message:
    obj: dict[str, Any] = {
        "id": "job-1",
        "envelope": "sender@example.org",
        "recipient": "rcpt@example.com",
        "mime": ORIGINAL,
    }
    obj.update(extra)
    return Message.fromObject(obj)


def refused(m: Message, *, at: float = NOW - 5, final: bool = True, **connection: Any) -> Message:
    facts = {"from": "192.0.2.1", "to": "192.0.2.25", "host": "mx.example.com", "mta": "mx.example.com", "dsn": False}
    facts.update(connection)
    m.record(ResultEntry("rcpt", "error", at, final, code=550, status="5.1.1", description="no such user", connection=facts))
    return m


def parse(mime: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    assert not parsed.defects
    return parsed


def statusBlocks(report: email.message.EmailMessage) -> list[email.message.Message]:
    """
    The per-message and per-recipient field blocks of the report's
    delivery-status part, as the email package parses them.
    """
    parts = list(report.iter_parts())
    assert parts[1].get_content_type() in ("message/delivery-status", "message/global-delivery-status")
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list)
    return blocks


def reportOf(job: bytes | None) -> tuple[dict[str, Any], email.message.EmailMessage]:
    assert job is not None
    obj = json.loads(job)
    return obj, parse(obj["mime"].encode("utf-8"))


def test_mailerqExample() -> None:
    """
    MailerQ's example job, as printed, refused at RCPT: a report to the
    envelope address with its envid and orcpt, and the headers only.
    """
    m = refused(Message.fromJSON(MAILERQ_EXAMPLE))
    job, report = reportOf(bounceJob(m, FAILED, NOW, SETTINGS))
    assert job["envelope"] == ""
    assert job["recipient"] == "youraddress@yourdomain.com"
    assert job["bounceof"] == {"recipient": "info@example.com", "action": "failed"}
    assert report["From"] == "Mail Delivery System <mailer-daemon@mta.example.net>"
    assert report["To"] == "youraddress@yourdomain.com"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert report["Message-ID"].endswith("@mta.example.net>")
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    perMessage, perRecipient = statusBlocks(report)
    assert dict(perMessage) == {
        "Reporting-MTA": "dns; mta.example.net",
        "Original-Envelope-Id": "unique-identifier",
        "Arrival-Date": "Tue, 14 Nov 2023 22:13:15 +0000",
    }
    assert dict(perRecipient) == {
        "Original-Recipient": "rfc822;info@example.com",
        "Final-Recipient": "rfc822;info@example.com",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.com",
        "Diagnostic-Code": "smtp; 550 5.1.1 no such user",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 22:13:15 +0000",
    }
    returned = list(report.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == b"....\r\n"


def test_theParts() -> None:
    """
    Three parts: the explanation, the status, the original's header block.
    """
    report = parse(buildReport(refused(message()), FAILED, NOW, "mta.example.net"))
    text, status, original = report.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content() == (
        "Your message to <rcpt@example.com> could not be delivered: the mail system at "
        "mta.example.net gave it up.\r\n\r\nLast attempt (mx.example.com): 550 5.1.1 no such user\r\n"
        "Status: 5.1.1\r\n"
    )
    assert original.get_content_type() == "text/rfc822-headers"
    assert original.get_payload(decode=True) == ORIGINAL.split("\r\n\r\n")[0].encode() + b"\r\n"
    assert report["Subject"] == "Undelivered mail: your message to rcpt@example.com"


def test_full() -> None:
    """
    C{ret: FULL} returns the whole original as message/rfc822.
    """
    m = refused(message(dsn={"ret": "FULL"}))
    report = parse(buildReport(m, FAILED, NOW, "h", "FULL"))
    original = list(report.iter_parts())[2]
    assert original.get_content_type() == "message/rfc822"
    (inner,) = original.get_payload()
    assert inner["Subject"] == "the original"
    assert inner.get_payload() == "the body\r\nof the original\r\n"
    # the job's dsn.ret picks it; --dsn-ret is for the jobs without one
    _, report = reportOf(bounceJob(m, FAILED, NOW, SETTINGS))
    assert list(report.iter_parts())[2].get_content_type() == "message/rfc822"
    _, report = reportOf(bounceJob(refused(message()), FAILED, NOW, BounceSettings(ret="FULL")))
    assert list(report.iter_parts())[2].get_content_type() == "message/rfc822"


def test_fullTooBigForTheOutbox() -> None:
    """
    A report with the whole original that would be past the outbox's job
    size carries the headers only (RFC 3461 section 4.3 allows it).
    """
    m = refused(message(mime=ORIGINAL + "x" * 5000 + "\r\n", dsn={"ret": "FULL"}))
    small = BounceSettings(limits=JobLimits(maxBytes=4000))
    job, report = reportOf(bounceJob(m, FAILED, NOW, small))
    assert list(report.iter_parts())[2].get_content_type() == "text/rfc822-headers"
    assert len(json.dumps(job)) < 4000


@pytest.mark.parametrize("ret", ["FULL", "HDRS"])
def test_originalNotUTF8(ret: str) -> None:
    """
    An original with bytes that are not UTF-8 (an 8-bit charset, as a
    personalized ISO-8859-1 job or a stored message has) still gets its
    report, which must be UTF-8 to be a job's C{mime}: its header block,
    whatever C{ret} asks, the bytes that are not UTF-8 replaced by U+FFFD.
    """
    m = refused(message(dsn={"ret": ret}))
    m.mime = (
        b"From: Sender <sender@example.org>\r\nTo: rcpt@example.com\r\nSubject: caf\xe9\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\nHello Jos\xe9\r\n"
    )
    job, report = reportOf(bounceJob(m, FAILED, NOW, SETTINGS))
    assert job["recipient"] == "sender@example.org"
    returned = list(report.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert returned.get_payload(decode=True) == (
        b"From: Sender <sender@example.org>\r\nTo: rcpt@example.com\r\nSubject: caf\xef\xbf\xbd\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
    )
    assert b"Hello Jos" not in job["mime"].encode("utf-8")


def test_lfOnlyOriginal() -> None:
    """
    An original with LF line ends is returned with CRLF, like all the rest.
    """
    m = refused(message(mime=ORIGINAL.replace("\r\n", "\n")))
    data = buildReport(m, FAILED, NOW, "h", "FULL")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r\nthe body\r\nof the original\r\n\r\n--" in data


@pytest.mark.parametrize(
    ("extra", "action", "due"),
    [
        ({}, FAILED, True),
        ({}, DELAYED, False),
        ({}, RELAYED, False),
        ({"dsn": {"notify": "NEVER"}}, FAILED, False),
        ({"dsn": {"notify": "SUCCESS,DELAY"}}, FAILED, False),
        ({"dsn": {"notify": "SUCCESS,DELAY"}}, DELAYED, True),
        ({"dsn": {"notify": "SUCCESS,DELAY"}}, RELAYED, True),
        ({"dsn": {"notify": ["delay", "failure"]}}, FAILED, True),
        ({"dsn": {"ret": "FULL"}}, FAILED, True),
        ({"envelope": ""}, FAILED, False),
        ({"envelope": None}, FAILED, False),
    ],
)
def test_whenDue(extra: dict[str, Any], action: str, due: bool) -> None:
    """
    RFC 3461's NOTIFY, FAILURE alone without one (MailerQ's dsn-notify
    default); never for the null envelope sender.
    """
    m = refused(message(**extra))
    assert reportDue(m, action, SETTINGS) is due
    assert (bounceJob(m, action, NOW, SETTINGS) is not None) is due


def test_notifyDefault() -> None:
    """
    --dsn-notify is the events of a job without dsn.notify.
    """
    settings = BounceSettings(notify=("DELAY", "FAILURE"))
    assert reportDue(refused(message()), DELAYED, settings)
    assert not reportDue(refused(message(dsn={"notify": "FAILURE"})), DELAYED, settings)
    assert not reportDue(refused(message()), DELAYED, BounceSettings(notify=("NEVER",)))


def test_successOnlyWhenTheServerDoesNotReport() -> None:
    """
    A server that announced DSN was given NOTIFY=SUCCESS and reports the
    delivery itself (RFC 3461 section 5.2.1); one that did not leaves it to
    mqtwist, which reports the hand-over as relayed (section 5.2.2).
    """
    def accepted(dsn: bool, notify: bool = True) -> Message:
        m = message(dsn={"notify": "SUCCESS"} if notify else {})
        m.record(
            ResultEntry(
                "message", "accepted", NOW, True, code=250, status="2.0.0", description="queued as 1",
                connection={"mta": "mx.example.com", "dsn": dsn},
            )
        )
        return m

    assert bounceJob(accepted(dsn=True), RELAYED, NOW, SETTINGS) is None
    # without dsn.notify the server was given no NOTIFY: --dsn-notify asked
    assert bounceJob(accepted(dsn=True, notify=False), RELAYED, NOW, BounceSettings(notify=("SUCCESS",)))
    job, report = reportOf(bounceJob(accepted(dsn=False), RELAYED, NOW, SETTINGS))
    assert job["bounceof"]["action"] == "relayed"
    _, perRecipient = statusBlocks(report)
    assert perRecipient["Action"] == "relayed"
    assert perRecipient["Status"] == "2.0.0"
    assert perRecipient["Diagnostic-Code"] == "smtp; 250 2.0.0 queued as 1"
    assert report["Subject"] == "Delivery report: your message to rcpt@example.com was handed on"


def test_delayed() -> None:
    """
    A delay report says until when mqtwist tries, and the soft reply.
    """
    m = message(dsn={"notify": "DELAY"})
    m.record(ResultEntry("rcpt", "error", NOW - 60, False, code=451, status="4.3.0", description="try later",
                         connection={"host": "mx.example.com"}))
    _, report = reportOf(bounceJob(m, DELAYED, NOW, SETTINGS, willRetryUntil=NOW + 86400))
    _, perRecipient = statusBlocks(report)
    assert perRecipient["Action"] == "delayed"
    assert perRecipient["Status"] == "4.3.0"
    assert perRecipient["Will-Retry-Until"] == "Wed, 15 Nov 2023 22:13:20 +0000"
    assert perRecipient["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:12:20 +0000"
    text = list(report.iter_parts())[0].get_content()
    assert "It tries until Wed, 15 Nov 2023 22:13:20 +0000." in text


def test_expiredStatus() -> None:
    """
    An expired message: the status of its last (soft) reply, else 4.4.7
    (delivery time expired, RFC 3463); the expiry's reason in the text.
    """
    m = message()
    m.record(ResultEntry("process", "timeout", NOW, True, description="gave up: expired"))
    report = parse(buildReport(m, FAILED, NOW, "h"))
    _, perRecipient = statusBlocks(report)
    assert perRecipient["Status"] == "4.4.7"
    assert "Remote-MTA" not in perRecipient and "Diagnostic-Code" not in perRecipient
    assert "Reason: gave up: expired" in list(report.iter_parts())[0].get_content()

    m = message()
    m.record(ResultEntry("rcpt", "error", NOW - 9, False, code=451, description="later", connection={"to": "192.0.2.9"}))
    m.record(ResultEntry("process", "timeout", NOW, True, description="gave up"))
    _, perRecipient = statusBlocks(parse(buildReport(m, FAILED, NOW, "h")))
    assert perRecipient["Status"] == "4.0.0"
    assert perRecipient["Remote-MTA"] == "dns; 192.0.2.9"
    assert perRecipient["Diagnostic-Code"] == "smtp; 451 later"


def test_noReplyAtAll() -> None:
    m = message()
    m.record(ResultEntry("connect", "error", NOW, True, description="no MX for example.com"))
    _, perRecipient = statusBlocks(parse(buildReport(m, FAILED, NOW, "h")))
    assert perRecipient["Status"] == "5.0.0"
    assert "Diagnostic-Code" not in perRecipient


@pytest.mark.parametrize(
    ("header", "due"),
    [
        ("Content-Type: multipart/report; report-type=delivery-status; boundary=x", False),
        ("Content-Type: multipart/report;\r\n report-type=\"delivery-status\";\r\n boundary=x", False),
        ("Content-Type: multipart/report; report-type=disposition-notification; boundary=x", True),
        ("Auto-Submitted: auto-replied", False),
        ("Auto-Submitted: Auto-Replied (vacation)", False),
        ("Auto-Submitted: auto-generated", True),
        ("Auto-Submitted: no", True),
    ],
)
def test_noLoops(header: str, due: bool) -> None:
    """
    No report on a report, nor on an automatic reply, whatever its
    envelope: two systems would bounce mail at each other for ever.
    """
    m = refused(message(mime=f"{header}\r\nSubject: x\r\n\r\nbody\r\n"))
    assert reportDue(m, FAILED, SETTINGS) is due
    # the envelope asks for one: only the message says no
    assert notifies(m, FAILED, SETTINGS)


def test_reportIsNotBouncedAgain() -> None:
    """
    The report as a job: null envelope sender, so it gets no report.
    """
    job = bounceJob(refused(message()), FAILED, NOW, SETTINGS)
    assert job is not None
    report = refused(Message.fromJSON(job))
    assert report.envelope == ""
    assert not reportDue(report, FAILED, SETTINGS)


def test_carriedProperties() -> None:
    """
    The report job keeps the original's tags and priority, and names its
    id and recipient; nothing else (no ips, no smarthost, no queues).
    """
    m = refused(message(tags=["spring"], priority=7, ips=["192.0.2.1"], queues={"results": "mine"}, custom=1))
    job = json.loads(bounceJob(m, FAILED, NOW, SETTINGS) or b"")
    assert set(job) == {"envelope", "recipient", "mime", "bounceof", "tags", "priority"}
    assert job["tags"] == ["spring"] and job["priority"] == 7
    assert job["bounceof"] == {"id": "job-1", "recipient": "rcpt@example.com", "action": "failed"}


def test_longAndBrokenReplies() -> None:
    """
    A long reply is folded, line ends in it cannot start a field or part.
    """
    m = message()
    text = "mailbox unavailable " * 12 + "\r\nX-Injected: yes"
    m.record(ResultEntry("rcpt", "error", NOW, True, code=550, status="5.2.1", description=text))
    data = buildReport(m, FAILED, NOW, "h")
    assert b"\r\nX-Injected" not in data
    assert all(len(line) <= 78 for line in data.split(b"\r\n") if line.startswith(b"Diagnostic-Code"))
    _, perRecipient = statusBlocks(parse(data))
    assert perRecipient["Diagnostic-Code"] == "smtp; 550 5.2.1 " + " ".join(text.split())


def test_nonAsciiAddresses() -> None:
    """
    SMTPUTF8 addresses: a global report (RFC 6533), utf-8 address type.
    """
    m = refused(message(recipient="j\u00f6rg@example.com", envelope="s\u00e9nder@example.org"))
    data = buildReport(m, FAILED, NOW, "h")
    report = parse(data)
    assert report.get_param("report-type") == "global-delivery-status"
    assert report["To"] == "s\u00e9nder@example.org"
    # the email package reads message/global-delivery-status as one block
    status = data.split(b"Content-Type: message/global-delivery-status\r\n\r\n")[1].split(b"\r\n\r\n--")[0]
    _, perRecipient = [
        dict(line.split(": ", 1) for line in block.decode("utf-8").split("\r\n"))
        for block in status.split(b"\r\n\r\n")
    ]
    assert perRecipient["Final-Recipient"] == "utf-8;j\u00f6rg@example.com"
    assert list(report.iter_parts())[2].get_content_type() == "message/global-headers"
    text = list(report.iter_parts())[0]
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert "j\u00f6rg@example.com" in text.get_content()


def test_nonAsciiReplyInAsciiReport() -> None:
    m = message()
    m.record(ResultEntry("rcpt", "error", NOW, True, code=550, description="unbekannt: M\u00fcller"))
    data = buildReport(m, FAILED, NOW, "h")
    _, perRecipient = statusBlocks(parse(data))
    assert perRecipient["Diagnostic-Code"] == "smtp; 550 unbekannt: M\\xfcller"


needsMimeTools = needsPerl("MIME::Parser", "JSON::PP", package="libmime-tools-perl")


@needsMimeTools
def test_perlMimeParser() -> None:
    """
    Perl's MIME::Parser reads the same structure and fields.
    """
    m = refused(message(dsn={"envid": "env-1", "orcpt": "rfc822;orig@example.com"}))
    data = buildReport(m, FAILED, NOW, "mta.example.net", "FULL")
    done = subprocess.run(["perl", str(HERE / "mimedump.pl")], input=data, capture_output=True, check=True)
    dump = json.loads(done.stdout)
    assert dump["structure"] == [
        "multipart/report",
        "  text/plain",
        "  message/delivery-status",
        "  message/rfc822",
        "    text/plain",
    ]
    assert dump["headers"]["to"] == ["<sender@example.org>"]
    assert dump["headers"]["auto-submitted"] == ["auto-replied"]
    status = base64.b64decode(dump["parts"][1]["body"]).decode("ascii")
    # MIME::Parser ends a part's last line with LF where it was CRLF
    assert status.splitlines() == [
        "Reporting-MTA: dns; mta.example.net",
        "Original-Envelope-Id: env-1",
        "Arrival-Date: Tue, 14 Nov 2023 22:13:15 +0000",
        "",
        "Original-Recipient: rfc822;orig@example.com",
        "Final-Recipient: rfc822;rcpt@example.com",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.example.com",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user",
        "Last-Attempt-Date: Tue, 14 Nov 2023 22:13:15 +0000",
    ]
    assert base64.b64decode(dump["parts"][2]["body"]).splitlines() == [b"the body", b"of the original"]


def test_queuesDsn() -> None:
    """
    queues.dsn: a queue name or null; the outbox is allowed (the reports
    are delivered like any job), the other reserved queues are not, and
    the outbox stays refused for results.
    """
    settings = ParseSettings(reservedQueues=frozenset(["outbox", "outbox.delay-1", "dead"]), outbox="outbox")
    def parsed(queues: dict[str, Any]) -> Message:
        return Message.fromObject({"recipient": "r@example.com", "mime": "x", "queues": queues}, settings)

    assert parsed({"dsn": "outbox"}).queueFor("dsn", "") == "outbox"
    assert parsed({"dsn": "bounces"}).queueFor("dsn", "") == "bounces"
    assert parsed({"dsn": None}).queueFor("dsn", "bounces") is None
    assert parsed({}).queueFor("dsn", "bounces") == "bounces"
    assert parsed({}).queueFor("dsn", "") is None
    with pytest.raises(InvalidMessage, match=r"'queues.dsn' names 'outbox.delay-1', a delay queue"):
        parsed({"dsn": "outbox.delay-1"})
    with pytest.raises(InvalidMessage, match=r"'queues.failure' names 'outbox', a queue of mqtwist's own"):
        parsed({"failure": "outbox"})
    with pytest.raises(InvalidMessage, match=r"'queues.dsn' must be a queue name or null"):
        parsed({"dsn": 3})


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="MailerQ's pages are not beside the checkout")
def test_mailerqQueuesExample() -> None:
    """
    The custom result queues example of MailerQ's JSON specification,
    copied from the page: its dsn queue is taken.
    """
    page = (REFERENCE / "json-messages.md").read_text()
    start = page.index('{\n    "envelope": "my-sender-address@my-domain.com",\n    "recipient": "info@example.org",\n    "mime": "...",\n    "queues"')
    end = page.index("````", start)
    m = Message.fromJSON(page[start:end])
    assert m.queueFor("dsn", "") == "name-of-dsn-queue"


def test_settings() -> None:
    config = Config(dsnNotify="delay, failure", dsnRet="full", ehloName="mx.example.net")
    config.check()
    settings = BounceSettings.fromConfig(config, JobLimits())
    assert settings == BounceSettings("mx.example.net", ("DELAY", "FAILURE"), "FULL", JobLimits())
    with pytest.raises(ValueError, match="NEVER alone"):
        Config(dsnNotify="NEVER,FAILURE").check()
    with pytest.raises(ValueError, match="give FULL or HDRS"):
        Config(dsnRet="SOME").check()
    assert Config().dsnQueue == ""
    assert formatTime(NOW) == "2023-11-14 22:13:20"
