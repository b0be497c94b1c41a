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
