"""
Delivery status notifications through the whole service: jobs through the
session's RabbitMQ node to a test SMTP server that refuses some recipients;
the reports published to a DSN queue, or to the outbox and from there
delivered to the envelope sender's address on the same server, read back
by Python's email package field by field.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import threading
from typing import Any

import pytest_twisted
from fixtures_smtp import unusedPort
from helpers_endtoend import decoded, makeConfig, publishAll, running
from test_bounce import MAILERQ_EXAMPLE
from twisted.logger import globalLogPublisher

import mqtwist.outbox.processor
from mqtwist.content.bounce import bounceJob
from mqtwist.service import MailerService


def parse(mime: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    assert not parsed.defects
    return parsed


def fields(report: email.message.EmailMessage) -> tuple[dict[str, str], dict[str, str]]:
    """
    The per-message and per-recipient fields of the delivery-status part.
    """
    text, status, original = report.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    perMessage, perRecipient = status.get_payload()
    return dict(perMessage), dict(perRecipient)


def job(ident: str, recipient: str, **extra: Any) -> bytes:
    obj = {
        "id": ident,
        "envelope": "sender@example.org",
        "recipient": recipient,
        "mime": f"From: sender@example.org\r\nSubject: {ident}\r\n\r\nbody of {ident}\r\n",
    }
    obj.update(extra)
    return json.dumps(obj).encode()


@pytest_twisted.ensureDeferred
async def test_mailerqExampleToADsnQueue(rabbitmq, amqp, smtpServer, queues):
    """
    MailerQ's example, as printed, to a server that is not there, given up
    after its first attempt: its failure result as ever, and its report as
    an outbox job in the DSN queue, to the envelope address.
    """
    dsnQueue = queues["outbox"] + ".dsn"
    config = makeConfig(rabbitmq, smtpServer, queues, dsnQueue=dsnQueue, retries=[60], maxDeliverTime=30)
    config.smarthost = f"127.0.0.1:{unusedPort()}"
    async with running(MailerService(config)):
        await publishAll(amqp, queues["outbox"], [MAILERQ_EXAMPLE.encode()])
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
        (received,) = await amqp.collect(dsnQueue, 1)

    # the result is MailerQ's: the job's properties and its entries, no more
    assert set(failure) == {"envelope", "recipient", "dsn", "results"}
    assert [(e["state"], e["result"]) for e in failure["results"]] == [("connect", "error"), ("process", "timeout")]
    report = json.loads(received.body)
    assert set(report) == {"envelope", "recipient", "mime", "bounceof"}
    assert report["envelope"] == ""
    assert report["recipient"] == "youraddress@yourdomain.com"
    assert report["bounceof"] == {"recipient": "info@example.com", "action": "failed"}
    mime = parse(report["mime"].encode())
    assert mime["To"] == "youraddress@yourdomain.com"
    assert mime["From"] == "Mail Delivery System <mailer-daemon@client.test>"
    perMessage, perRecipient = fields(mime)
    assert perMessage["Reporting-MTA"] == "dns; client.test"
    assert perMessage["Original-Envelope-Id"] == "unique-identifier"
    assert perRecipient == {
        "Original-Recipient": "rfc822;info@example.com",
        "Final-Recipient": "rfc822;info@example.com",
        "Action": "failed",
        # no reply, then the message's time ran out (RFC 3463 4.4.7)
        "Status": "4.4.7",
        "Last-Attempt-Date": perRecipient["Last-Attempt-Date"],
    }
    assert list(mime.iter_parts())[2].get_payload(decode=True) == b"....\r\n"


@pytest_twisted.ensureDeferred
async def test_bounceDeliveredThroughTheOutbox(rabbitmq, amqp, smtpServer, queues):
    """
    With the outbox as DSN queue, the report of a refused recipient is
    delivered like any job: from the null sender to the envelope sender, at
    the same server; the report itself has a success result.
    """
    config = makeConfig(rabbitmq, smtpServer, queues, dsnQueue=queues["outbox"])
    original = job("refused-1", "reject@example.com", dsn={"envid": "env-77", "orcpt": "rfc822;list@example.com", "ret": "FULL"}, tags=["spring"])
    async with running(MailerService(config)):
        await publishAll(amqp, queues["outbox"], [original])
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (delivered,) = await smtpServer.waitForMessages(1)

    (refusal,) = failure["results"]
    assert (refusal["state"], refusal["code"], refusal["status"]) == ("rcptto", 550, "5.1.1")
    assert delivered.mailFrom == ""
    assert delivered.rcptTos == ("sender@example.org",)
    assert success["envelope"] == "" and success["recipient"] == "sender@example.org"
    assert success["bounceof"] == {"id": "refused-1", "recipient": "reject@example.com", "action": "failed"}
    assert success["tags"] == ["spring"]

    report = parse(delivered.data)
    assert report["To"] == "sender@example.org"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report.get_param("report-type") == "delivery-status"
    perMessage, perRecipient = fields(report)
    assert perMessage == {
        "Reporting-MTA": "dns; client.test",
        "Original-Envelope-Id": "env-77",
        "Arrival-Date": perMessage["Arrival-Date"],
    }
    assert perRecipient == {
        "Original-Recipient": "rfc822;list@example.com",
        "Final-Recipient": "rfc822;reject@example.com",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": f"dns; {refusal.get('host') or refusal['mta']}",
        "Diagnostic-Code": f"smtp; 550 5.1.1 {refusal['description']}",
        "Last-Attempt-Date": perMessage["Arrival-Date"],
    }
    returned = list(report.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    (inner,) = returned.get_payload()
    assert inner["Subject"] == "refused-1"
    assert inner.get_payload() == "body of refused-1\r\n"


@pytest_twisted.ensureDeferred
async def test_successAndDelay(rabbitmq, amqp, startSMTPServer, queues):
    """
    NOTIFY=SUCCESS,DELAY: a soft refusal is reported as delayed, with the
    time mqtwist tries until; a delivery to a server without DSN as relayed;
    a server with DSN was given NOTIFY and reports it itself: none from
    mqtwist.
    """
    plain = await startSMTPServer()
    dsnQueue = queues["outbox"] + ".dsn"
    notify = {"dsn": {"notify": "SUCCESS,DELAY"}}
    config = makeConfig(rabbitmq, plain, queues, dsnQueue=dsnQueue, retries=[3600])
    async with running(MailerService(config)):
        await publishAll(amqp, queues["outbox"], [job("late", "tempfail@example.com", **notify)])
        (retry,) = decoded(await amqp.collect(queues["retry"], 1))
        await publishAll(amqp, queues["outbox"], [job("fine", "fine@example.com", **notify)])
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        delayed, relayed = [json.loads(r.body) for r in await amqp.collect(dsnQueue, 2)]

    assert delayed["bounceof"] == {"id": "late", "recipient": "tempfail@example.com", "action": "delayed"}
    report = parse(delayed["mime"].encode())
    _, perRecipient = fields(report)
    assert perRecipient["Action"] == "delayed"
    assert perRecipient["Status"] == "4.3.0"
    assert perRecipient["Diagnostic-Code"].startswith("smtp; 451 4.3.0 ")
    assert "Will-Retry-Until" in perRecipient
    assert retry["results"][-1]["code"] == 451

    assert relayed["bounceof"] == {"id": "fine", "recipient": "fine@example.com", "action": "relayed"}
    _, perRecipient = fields(parse(relayed["mime"].encode()))
    assert (perRecipient["Action"], perRecipient["Status"]) == ("relayed", "2.0.0")
    assert success["results"][-1]["dsn"] is False

    withDSN = await startSMTPServer(dsn=True)
    queues = {**queues, "outbox": queues["outbox"] + "-2"}
    config = makeConfig(rabbitmq, withDSN, queues, dsnQueue=dsnQueue)
    async with running(MailerService(config)):
        await publishAll(amqp, queues["outbox"], [job("fine2", "fine@example.com", **notify)])
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (received,) = await withDSN.waitForMessages(1)
    # stopped: every publication of the job was confirmed before its ack
    assert received.rcptOptions == ("NOTIFY=SUCCESS,DELAY",)
    assert success["results"][-1]["dsn"] is True
    assert await amqp.count(dsnQueue) == 0


@pytest_twisted.ensureDeferred
async def test_noReport(rabbitmq, amqp, smtpServer, queues):
    """
    No report for NOTIFY=NEVER, for the null envelope sender, with
    queues.dsn null, nor for a job that is itself a report; the one job
    that asks for none of that gets one, to the queue its queues.dsn names,
    with its priority.
    """
    dsnQueue = queues["outbox"] + ".dsn"
    own = queues["outbox"] + ".own-dsn"
    await amqp.declare(own)
    bounceLike = (
        "From: MAILER-DAEMON@example.org\r\nContent-Type: multipart/report; report-type=delivery-status;"
        ' boundary="b"\r\n\r\n--b--\r\n'
    )
    jobs = [
        job("never", "reject@example.com", dsn={"notify": "NEVER"}),
        job("null", "reject@example.com", envelope=""),
        job("nulled", "reject@example.com", queues={"dsn": None}),
        job("report", "reject@example.com", mime=bounceLike),
        job("wanted", "reject@example.com", queues={"dsn": own}, priority=5),
    ]
    config = makeConfig(rabbitmq, smtpServer, queues, dsnQueue=dsnQueue)
    async with running(MailerService(config)):
        await publishAll(amqp, queues["outbox"], jobs)
        failures = decoded(await amqp.collect(queues["failure"], len(jobs)))
        (received,) = await amqp.collect(own, 1)
    assert sorted(f["id"] for f in failures) == ["never", "null", "nulled", "report", "wanted"]
    wanted = json.loads(received.body)
    assert wanted["bounceof"]["id"] == "wanted"
    # the job's priority, in the JSON and as the AMQP priority of the report
    assert wanted["priority"] == 5 and received.properties["priority"] == 5
    # stopped: every publication of the jobs was confirmed before their ack
    assert await amqp.count(dsnQueue) == 0
    assert await amqp.count(own) == 0


@pytest_twisted.ensureDeferred
async def test_bigMessageReportBuiltInAThread(rabbitmq, amqp, smtpServer, queues, monkeypatch):
    """
    The report with the whole of a big message is built off the reactor
    thread, and delivered whole.
    """
    builders: list[threading.Thread] = []

    def recordingBounceJob(*args: Any, **kwargs: Any) -> bytes | None:
        builders.append(threading.current_thread())
        return bounceJob(*args, **kwargs)

    monkeypatch.setattr(mqtwist.outbox.processor, "bounceJob", recordingBounceJob)
    body = ("0123456789" * 7 + "abcdef\r\n") * 3000
    config = makeConfig(rabbitmq, smtpServer, queues, dsnQueue=queues["outbox"])
    big = job("big", "reject@example.com", dsn={"ret": "FULL"}, mime="Subject: big\r\n\r\n" + body)
    async with running(MailerService(config)):
        await publishAll(amqp, queues["outbox"], [big])
        (delivered,) = await smtpServer.waitForMessages(1)

    assert len(delivered.data) > len(body)
    (inner,) = list(parse(delivered.data).iter_parts())[2].get_payload()
    assert inner.get_payload() == body
    # in a thread; the report's own success makes none (null sender), at
    # no cost: nothing is built for it
    (builder,) = builders
    assert builder is not threading.main_thread()


@pytest_twisted.ensureDeferred
async def test_aBrokenReportCostsNoResult(rabbitmq, amqp, smtpServer, queues, monkeypatch):
    """
    A report that cannot be built (a bug) is logged and left out; the job's
    result is published as ever.
    """
    def broken(*args: Any, **kwargs: Any) -> bytes | None:
        raise RuntimeError("a bug in the report")

    monkeypatch.setattr(mqtwist.outbox.processor, "bounceJob", broken)
    dsnQueue = queues["outbox"] + ".dsn"
    config = makeConfig(rabbitmq, smtpServer, queues, dsnQueue=dsnQueue)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async with running(MailerService(config)):
            await publishAll(amqp, queues["outbox"], [job("broken", "reject@example.com")])
            (failure,) = decoded(await amqp.collect(queues["failure"], 1))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e["result"] for e in failure["results"]] == ["error"]
    assert await amqp.count(dsnQueue) == 0
    (logged,) = [e for e in events if "could not build the" in e.get("log_format", "")]
    assert logged["message"] == "broken" and logged["action"] == "failed"
    assert logged["log_failure"].check(RuntimeError)


@pytest_twisted.ensureDeferred
async def test_reportOnAnOriginalThatIsNotUTF8(rabbitmq, amqp, smtpServer, queues):
    """
    A plain ISO-8859-1 job whose personalization puts an 8-bit byte in its
    body, refused, with C{ret: FULL}: its report is still written, with the
    original's header block, since a job's mime must be UTF-8.
    """
    dsnQueue = queues["outbox"] + ".dsn"
    config = makeConfig(rabbitmq, smtpServer, queues, dsnQueue=dsnQueue)
    head = (
        "From: sender@example.org\r\nTo: reject@example.com\r\nSubject: latin-1\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
    )
    original = job("latin-1", "reject@example.com", mime=head + "\r\nHello {$name}\r\n", data={"name": "Jos\u00e9"}, dsn={"ret": "FULL"})
    async with running(MailerService(config)):
        await publishAll(amqp, queues["outbox"], [original])
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
        (received,) = await amqp.collect(dsnQueue, 1)

    assert [(e["state"], e["code"]) for e in failure["results"]] == [("rcptto", 550)]
    report = json.loads(received.body)
    assert report["bounceof"] == {"id": "latin-1", "recipient": "reject@example.com", "action": "failed"}
    mime = parse(report["mime"].encode())
    _, perRecipient = fields(mime)
    assert perRecipient["Status"] == "5.1.1"
    returned = list(mime.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == head.encode()
