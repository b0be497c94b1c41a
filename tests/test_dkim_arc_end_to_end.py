"""
MailerQ's C{dkim} options through the whole service: extra signed
headers, C{report}, C{protocols} with ARC, and a key that means nothing to
mqtwist; the delivered message checked by mailauth (DKIM and the ARC
chain, whose results name the EHLO name) against keys served by a name
server on loopback.
"""

from __future__ import annotations

import json
import re

import pytest_twisted
from helpers_dkim import RSA_KEY, needsMailauth, pem, rsaKey, verify, verifyARC
from helpers_endtoend import decoded, makeConfig, publishAll, running

from mqtwist.service import MailerService

KEY_2 = rsaKey()


@needsMailauth
@pytest_twisted.ensureDeferred
async def test_dkimAndARCDelivered(rabbitmq, amqp, smtpServer, queues, nameServer):
    records, dnsPort = nameServer
    records.publish("x", "example.com", RSA_KEY)
    records.publish("y", "example.com", KEY_2)
    job = {
        "id": "arc-1",
        "recipient": "reader@example.org",
        "mime": "From: news@example.com\r\nTo: reader@example.org\r\nSubject: hi\r\n"
        "Feedback-ID: a:b:c\r\n\r\nHello\r\n",
        "dkim": [
            {"domain": "example.com", "selector": "x", "key": pem(RSA_KEY),
             "protocols": ["dkim", "arc"], "report": True, "headers": ["feedback-id"],
             "comment": "kept"},
            {"domain": "example.com", "selector": "y", "key": pem(KEY_2), "protocols": ["arc"]},
        ],
    }
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [json.dumps(job).encode()])
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (received,) = await smtpServer.waitForMessages(1)

    data = received.data
    head = re.sub(rb"\r\n[ \t]+", b" ", data[: data.index(b"\r\n\r\n")])
    (dkimField,) = [f for f in head.split(b"\r\n") if f.startswith(b"DKIM-Signature:")]
    assert b" r=y;" in dkimField and b":feedback-id:from;" in dkimField.replace(b" ", b"")
    assert (await verify(dnsPort, data, "node"))[0] == ["pass", "example.com", "x", "rsa-sha256"]
    assert await verifyARC(dnsPort, data) == [
        ["arc", "pass", "2"],
        ["comment", "i=2"],
        ["aar", "client.test", "pass"],
        ["ams", "pass", "example.com", "y"],
    ]
    assert success["dkim"] == [
        {"domain": "example.com", "selector": "x", "protocols": ["dkim", "arc"], "report": True,
         "headers": ["feedback-id"], "comment": "kept"},
        {"domain": "example.com", "selector": "y", "protocols": ["arc"]},
    ]
    assert [e["result"] for e in success["results"]] == ["accepted"]


@pytest_twisted.ensureDeferred
async def test_configuredKeysSignWhatTheyMatch(rabbitmq, amqp, smtpServer, queues, nameServer, tmp_path):
    """
    As MailerQ signs with the matching keys of its database, a
    [[dkim-keys]] key signs every message whose From address is at its
    domain or below, with no dkim property in the job; a message from
    another domain goes unsigned, and with --dkim-sign named none is
    signed on its own.
    """
    from mqtwist.config import DKIMKeyRule

    records, dnsPort = nameServer
    records.publish("conf", "example.com", RSA_KEY)
    keyfile = tmp_path / "example.com.pem"
    keyfile.write_text(pem(RSA_KEY))
    jobs = [
        {"id": "own", "recipient": "a@example.org", "mime": "From: news@mail.example.com\r\nSubject: 1\r\n\r\nx\r\n"},
        {"id": "other", "recipient": "b@example.org", "mime": "From: x@example.net\r\nSubject: 2\r\n\r\nx\r\n"},
    ]
    rules = [DKIMKeyRule("example.com", "conf", str(keyfile))]
    async with running(MailerService(makeConfig(rabbitmq, smtpServer, queues, dkimKeys=rules), plugins=[])):
        await publishAll(amqp, queues["outbox"], [json.dumps(job).encode() for job in jobs])
        await amqp.collect(queues["success"], 2)
        received = {m.rcptTos[0]: m.data for m in await smtpServer.waitForMessages(2)}
    assert await verify(dnsPort, received["a@example.org"]) == [
        ["pass", "example.com", "conf", "rsa-sha256", "pass"], ["overall", "pass"]
    ]
    assert received["b@example.org"] == b"From: x@example.net\r\nSubject: 2\r\n\r\nx\r\n"

    config = makeConfig(rabbitmq, smtpServer, queues, dkimKeys=rules, dkimSign="named")
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [json.dumps(dict(jobs[0], id="named")).encode()])
        await amqp.collect(queues["success"], 1)
        (named,) = (await smtpServer.waitForMessages(3))[2:]
    assert b"DKIM-Signature" not in named.data
