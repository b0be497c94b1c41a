"""
Message content through the whole service: a C{mime} object built into a
message, C{headers} edits, a data plugin that changes the body, and DKIM
signatures over the changed body, checked by Perl's Mail::DKIM against keys
served by a name server on loopback.
"""

from __future__ import annotations

import json
import threading

import pytest_twisted
from helpers_dkim import RSA_KEY, needsMailDKIM, pem, verify
from helpers_endtoend import decoded, makeConfig, publishAll, running
from zope.interface import implementer

import mqtwist.content.message
from mqtwist.content.mime import buildMime
from mqtwist.dataplugin.interfaces import IDataPlugin
from mqtwist.service import MailerService


@implementer(IDataPlugin)
class Footer:
    name = "footer"

    def smtpOutData(self, context, connection, message):
        message.setMime(message.mime + b"-- added by a plugin\r\n")


@needsMailDKIM
@pytest_twisted.ensureDeferred
async def test_built_edited_changed_and_signed(rabbitmq, amqp, smtpServer, queues, nameServer, monkeypatch):
    records, dnsPort = nameServer
    builders: list[threading.Thread] = []

    def recordingBuild(*args, **kwargs):
        builders.append(threading.current_thread())
        return buildMime(*args, **kwargs)

    monkeypatch.setattr(mqtwist.content.message, "buildMime", recordingBuild)
    records.publish("s1", "example.com", RSA_KEY)
    job = {
        "id": "content-1",
        "recipient": "reader@example.org",
        "mime": {
            "from": {"name": "News", "address": "news@example.com"},
            "to": "reader@example.org",
            "subject": "Gr\u00fc\u00dfe",
            "text": "Hello\n" * 20,
        },
        "headers": {"append": {"X-Campaign": "spring"}, "remove": ["X-Mailer"]},
        "dkim": {"domain": "example.com", "selector": "s1", "key": pem(RSA_KEY)},
    }
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[Footer()])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [json.dumps(job).encode()])
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (received,) = await smtpServer.waitForMessages(1)

    data = received.data
    assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.com; s=s1;")
    assert b"\r\nX-Campaign: spring\r\n" in data
    assert b"Subject: =?utf-8?" in data
    assert data.endswith(b"-- added by a plugin\r\n")
    assert await verify(dnsPort, data) == [
        ["pass", "example.com", "s1", "rsa-sha256", "pass"],
        ["overall", "pass"],
    ]
    # what the service published: no key, no body, one accepted attempt
    assert success["dkim"] == {"domain": "example.com", "selector": "s1"}
    assert "mime" not in success
    assert [e["result"] for e in success["results"]] == ["accepted"]
    # the message was built once, off the reactor thread
    assert len(builders) == 1 and builders[0] is not threading.main_thread()
