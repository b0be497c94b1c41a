"""
Bounce categories through the service: a real RabbitMQ outbox, a real DNS
server and SMTP servers on loopback addresses (see L{fixtures_dns}) that
refuse recipients as the large providers do.  The failure results, the
retry notices and the expired job's result carry the category; the log line
of a failure says it; a C{[[categories]]} table of the configuration wins
over the shipped rules, and a C{[[backoff]]} rule that names a category
pauses the destination.
"""

from __future__ import annotations

import pytest_twisted
from fixtures_dns import mxConfig, mxDomain
from helpers_endtoend import brokerURL, publishAll, running
from helpers_mxdelivery import collectIds, job
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from mqtwist.config import BackoffRule, Config
from mqtwist.config.rules import CategoryRule
from mqtwist.content.message import Message
from mqtwist.service import MailerService, deliveryEngine

#: what the scripted server answers to RCPT TO, by local part
REPLIES = {
    "gone": "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    "550 5.1.1 double-checking the recipient's email address. https://support.google.com/mail/?p=NoSuchUser - gsmtp",
    "full": "452 4.2.2 The email account that you tried to reach is over quota. - gsmtp",
    "vip": "550 5.7.1 VIP mailbox: senders must be on the list",
    "listed": "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org",
}


def _rcpt(recipient: str, seen: int) -> str:
    local = recipient.strip("<>").split("@")[0]
    return REPLIES.get(local, "250 2.1.5 ok")


@pytest_twisted.ensureDeferred
async def test_results_and_logs_carry_the_category(rabbitmq, amqp, dnsServer, mailHosts, queues):
    mailHosts.scripted("127.0.0.2", rcpt=_rcpt)
    mxDomain(dnsServer, "provider.test", "127.0.0.2")
    config = mxConfig(
        brokerURL(rabbitmq), queues, dnsServer, mailHosts,
        # the job to a full mailbox gives up after its second attempt
        categories=[CategoryRule("vip-only", text="VIP mailbox")],
    )
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async with running(MailerService(config, plugins=[])):
            await publishAll(amqp, queues["outbox"], [
                job("gone@provider.test", "gone"),
                job("full@provider.test", "full", maxattempts=2),
                job("vip@provider.test", "vip"),
                job("ok@provider.test", "ok"),
            ])
            failed = {r["id"]: r for r in await collectIds(amqp, queues["failure"], {"gone", "full", "vip"})}
            (delivered,) = await collectIds(amqp, queues["success"], {"ok"})
            retried = await collectIds(amqp, queues["retry"], {"full"})
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert failed["gone"]["results"][-1]["category"] == "bad-recipient"
    assert failed["gone"]["results"][-1]["status"] == "5.1.1"
    assert failed["vip"]["results"][-1]["category"] == "vip-only"
    # each attempt is mailbox-full; the job expired in the same category
    assert [e["category"] for e in failed["full"]["results"]] == ["mailbox-full"] * 3
    assert [e["state"] + "/" + e["result"] for e in failed["full"]["results"]][-1] == "process/timeout"
    assert retried[0]["results"][-1]["category"] == "mailbox-full"
    assert "category" not in delivered["results"][-1]
    lines = [formatEvent(e) for e in events]
    assert any("gone@provider.test failed at rcptto/error (permanent, 550 5.1.1, bad-recipient)" in line
               for line in lines), lines
    assert any("expired (mailbox-full)" in line for line in lines), lines


@pytest_twisted.ensureDeferred
async def test_a_backoff_rule_on_a_category_pauses_the_destination(dnsServer, mailHosts):
    """
    Through the delivery engine the service uses: a reply in the category
    a C{[[backoff]]} rule names pauses the destination, and the next
    message for it is deferred with that category, not tried.
    """
    server = mailHosts.scripted("127.0.0.2", rcpt=_rcpt)
    mxDomain(dnsServer, "provider.test", "127.0.0.2")
    config = Config(
        nameservers=[dnsServer.nameserver], mxPort=mailHosts.port, ehloName="client.test",
        backoff=[BackoffRule.fromTable({"action": "pause", "seconds": 600, "category": "spam-block"}, "t")],
    )
    engine = deliveryEngine(config, [], reactor)
    try:
        blocked = await engine.deliver(Message.fromJSON(job("listed@provider.test", "listed")))
        later = await engine.deliver(Message.fromJSON(job("ok@provider.test", "later")))
    finally:
        await engine.close()
    assert (blocked.category, blocked.connection["backoff"]) == ("spam-block", "pause")
    assert (later.result, later.category) == ("deferred", "spam-block")
    assert "blocked using zen.spamhaus.org" in later.toJSON()["reason"]
    assert len(server.rcptTimes) == 1
