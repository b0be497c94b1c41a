"""
Throttles measured where they matter: at the SMTP server.  Small limits
keep each test to a few seconds.
"""

from __future__ import annotations

import pytest_twisted
from fixtures_dns import mxConfig, mxDomain
from helpers_endtoend import brokerURL, publishAll, running
from helpers_mxdelivery import collectIds, job

from mqtwist.config import ThrottleRule
from mqtwist.service import MailerService

#: how much earlier than its token a message may seem to arrive at the server
#: (the server's clock reads the first arrival, not the first send)
SLACK = 0.05


async def deliverAll(rabbitmq, amqp, queues, config, domain: str, count: int) -> None:
    ids = {f"{domain}-{n}" for n in range(count)}
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [job(f"r{n}@{domain}", f"{domain}-{n}") for n in range(count)])
        await collectIds(amqp, queues["success"], ids)


@pytest_twisted.ensureDeferred
async def test_connections_at_once(rabbitmq, amqp, dnsServer, mailHosts, queues):
    limited = mailHosts.scripted("127.0.0.2", messageDelay=0.1)
    free = mailHosts.scripted("127.0.0.3", messageDelay=0.1)
    mxDomain(dnsServer, "limited.test", "127.0.0.2")
    mxDomain(dnsServer, "free.test", "127.0.0.3")
    config = mxConfig(
        brokerURL(rabbitmq), queues, dnsServer, mailHosts,
        throttles=[ThrottleRule(domain="limited.test", connections=2, messagesPerConnection=3)],
        destinationBacklog=100,
    )
    await deliverAll(rabbitmq, amqp, queues, config, "limited.test", 20)
    await deliverAll(rabbitmq, amqp, queues, config, "free.test", 20)
    assert len(limited.messageTimes) == 20
    assert limited.mostAtOnce == 2
    assert all(len(c.messages) <= 3 for c in limited.connections.values())
    # without a rule, the default (10 at once) is what lets this reach more than 2
    assert free.mostAtOnce > 2


@pytest_twisted.ensureDeferred
async def test_messages_per_minute(rabbitmq, amqp, dnsServer, mailHosts, queues):
    server = mailHosts.scripted("127.0.0.2")
    mxDomain(dnsServer, "paced.test", "127.0.0.2")
    config = mxConfig(
        brokerURL(rabbitmq), queues, dnsServer, mailHosts,
        throttles=[ThrottleRule(domain="*.test", messagesPerMinute=120)],  # 2 a second, bursts of 2
        destinationBacklog=100,
    )
    await deliverAll(rabbitmq, amqp, queues, config, "paced.test", 7)
    times = server.messageTimes
    assert len(times) == 7
    for n, arrived in enumerate(times):
        assert arrived - times[0] >= max(0, n - 1) * 0.5 - SLACK


@pytest_twisted.ensureDeferred
async def test_new_connections_per_minute(rabbitmq, amqp, dnsServer, mailHosts, queues):
    server = mailHosts.scripted("127.0.0.2")
    mxDomain(dnsServer, "fresh.test", "127.0.0.2")
    config = mxConfig(
        brokerURL(rabbitmq), queues, dnsServer, mailHosts,
        throttles=[ThrottleRule(mx="mx.fresh.*", connectionsPerMinute=120, messagesPerConnection=1)],
        destinationBacklog=100,
    )
    await deliverAll(rabbitmq, amqp, queues, config, "fresh.test", 5)
    opened = sorted(c.opened for c in server.connections.values())
    assert len(opened) == 5
    for n, at in enumerate(opened):
        assert at - opened[0] >= max(0, n - 1) * 0.5 - SLACK
