"""
The delivery policy end to end: a real RabbitMQ outbox, a real DNS server
and real SMTP servers on loopback addresses (see L{fixtures_dns}).
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from fixtures_dns import mxConfig, mxDomain
from helpers_endtoend import brokerURL, decoded, publishAll, running
from helpers_mxdelivery import collectIds, job

from mqtwist.config import BackoffRule, SMTPTimeouts
from mqtwist.service import MailerService


def kinds(result: dict) -> list[str]:
    return [f"{e['state']}/{e['result']}" for e in result["results"]]


async def fastAndSilent(dnsServer: Any, mailHosts: Any) -> tuple[Any, Any]:
    """
    The mail hosts of fast.test (a sink) and slow.test (accepts TCP
    connections and never greets).
    """
    fast = await mailHosts.sink("127.0.0.2", hostname="mx.fast.test")
    silent = mailHosts.scripted("127.0.0.3", greet=lambda n: None)
    mxDomain(dnsServer, "fast.test", "127.0.0.2")
    mxDomain(dnsServer, "slow.test", "127.0.0.3")
    return fast, silent


@pytest_twisted.ensureDeferred
async def test_a_destination_that_never_greets_does_not_hold_up_the_others(
    rabbitmq, amqp, dnsServer, mailHosts, queues
):
    fast, silent = await fastAndSilent(dnsServer, mailHosts)
    config = mxConfig(
        brokerURL(rabbitmq), queues, dnsServer, mailHosts,
        prefetch=10, maxConnectionsPerDestination=2, destinationBacklog=2,
        downAfterFailures=2, parkDelay=1, timeouts=SMTPTimeouts(greeting=3),
    )
    bodies = []
    for n in range(20):
        bodies += [
            job(f"s{n}@slow.test", f"slow-{n}", maxdelivertime=5),
            job(f"f{n}@fast.test", f"fast-{n}"),
        ]
    slowIds = {f"slow-{n}" for n in range(20)}
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], bodies)
        await fast.waitForMessages(20)
        # the fast half is done while the slow connections still wait for a greeting
        assert silent.open and all(c.greeted is None for c in silent.connections.values())
        assert len(silent.connections) <= 2
        success = await amqp.collect(queues["success"], 20)
        # parked again and again while the destination is stuck or down,
        # every slow message expires in the end (maxdelivertime)
        failures = decoded(await amqp.collect(queues["failure"], 20, timeout=30))
        notices = decoded(await amqp.fetch(queues["retry"]))
    assert sorted(json.loads(r.body)["id"] for r in success) == sorted(f"fast-{n}" for n in range(20))
    assert {r["id"] for r in failures} == slowIds
    assert {kinds(r)[-1] for r in failures} == {"process/timeout"}
    # a retry notice is for an attempt that failed, never for a deferral
    tried = {r["id"] for r in failures if "intro/timeout" in kinds(r)}
    assert len(tried) >= 2 and {r["id"] for r in notices} == tried
    assert {kinds(r)[-1] for r in notices} == {"intro/timeout"}
    deferred = [e for r in failures for e in r["results"] if e["result"] == "deferred"]
    assert deferred and all(e["destination"] == "mx mx.slow.test" and e["until"] for e in deferred)
    reasons = {e["reason"].split(":")[0] for e in deferred}
    # a deferral replaces the one before it and counts them
    assert "down" in reasons and reasons <= {"busy", "down"}
    assert max(e.get("deferrals", 1) for e in deferred) > 1
    # marked down after two failures: only the delivery that took the slot
    # freed by the first failure connected again
    assert len(silent.connections) <= 3


@pytest_twisted.ensureDeferred
async def test_a_silent_destination_is_found_stuck_by_the_deliveries_that_end_elsewhere(
    rabbitmq, amqp, dnsServer, mailHosts, queues
):
    fast, silent = await fastAndSilent(dnsServer, mailHosts)
    # the clock can't find it stuck within the test: only what ends elsewhere can
    config = mxConfig(
        brokerURL(rabbitmq), queues, dnsServer, mailHosts,
        prefetch=10, maxConnectionsPerDestination=1, destinationBacklog=1,
        stuckAfter=600, stuckAfterOthers=5, delayBuckets=[600],
        timeouts=SMTPTimeouts(greeting=600), shutdownTimeout=0.5,
    )
    bodies = []
    for n in range(10):
        bodies += [job(f"s{n}@slow.test", f"slow-{n}"), job(f"f{n}@fast.test", f"fast-{n}")]
    bodies += [job(f"f{n}@fast.test", f"fast-{n}") for n in range(10, 20)]
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], bodies)
        # one slow message waits for the greeting, one in the backlog; the
        # other eight were parked while the fast half went on
        parked = decoded(await amqp.collect(f"{queues['outbox']}.delay.600s", 8))
        await fast.waitForMessages(20)
        assert len(silent.connections) == 1
        assert all(c.greeted is None for c in silent.connections.values())
    assert len({p["id"] for p in parked} & {f"slow-{n}" for n in range(10)}) == 8
    entries = [p["results"][-1] for p in parked]
    assert {kinds(p)[-1] for p in parked} == {"process/deferred"}
    assert all(e["destination"] == "mx mx.slow.test" for e in entries)
    assert all(e["reason"].startswith("busy: 1 deliveries in progress") for e in entries)
    others = {int(e["reason"].rsplit("while ", 1)[1].split()[0]) for e in entries}
    assert min(others) >= 5, entries


@pytest_twisted.ensureDeferred
async def test_421_on_every_other_connection_pauses_the_destination(rabbitmq, amqp, dnsServer, mailHosts, queues):
    server = mailHosts.scripted(
        "127.0.0.2", greet=lambda n: "421 4.7.0 try again later" if n % 2 else "220 mx.flaky.test ready"
    )
    mxDomain(dnsServer, "flaky.test", "127.0.0.2")
    config = mxConfig(
        brokerURL(rabbitmq), queues, dnsServer, mailHosts,
        maxConnectionsPerDestination=1, maxMessagesPerConnection=2,
        backoff=[BackoffRule("pause", 1.5, code="^421$")],
    )
    ids = {f"flaky-{n}" for n in range(4)}
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [job(f"r{n}@flaky.test", f"flaky-{n}") for n in range(4)])
        success = await collectIds(amqp, queues["success"], ids)
    assert {r["id"] for r in success} == ids and len(server.messageTimes) == 4
    connections = [server.connections[n] for n in sorted(server.connections)]
    assert len(connections) >= 3
    for refused, following in zip(connections, connections[1:]):
        if refused.greeted.startswith("421"):
            # nothing was tried during the pause
            assert following.opened - refused.opened >= 1.5 - 0.05
    entries = [e for r in success for e in r["results"]]
    paused = [e for e in entries if e.get("code") == 421]
    assert paused and all(e["backoff"] == "pause" and e["state"] == "intro" for e in paused)
    deferred = [e for e in entries if e["result"] == "deferred"]
    assert deferred and all("421" in e["reason"] for e in deferred)


@pytest_twisted.ensureDeferred
async def test_greylisting_is_retried_after_the_greylist_delay(rabbitmq, amqp, dnsServer, mailHosts, queues):
    server = mailHosts.scripted(
        "127.0.0.2",
        rcpt=lambda recipient, seen: "450 4.2.0 Greylisted, see https://grey.example" if seen == 0 else "250 ok",
    )
    mxDomain(dnsServer, "grey.test", "127.0.0.2")
    config = mxConfig(brokerURL(rabbitmq), queues, dnsServer, mailHosts, retries=[600], greylistDelay=1)
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [job("r@grey.test", "grey")])
        (success,) = decoded(await amqp.collect(queues["success"], 1))
    assert kinds(success) == ["rcptto/error", "message/accepted"]
    assert success["results"][0]["backoff"] == "retry"
    (first, _, code), (second, _, _) = server.rcptTimes
    assert code == 450 and second - first >= 1 - 0.05


@pytest_twisted.ensureDeferred
async def test_retries_survive_a_restart(rabbitmq, amqp, dnsServer, mailHosts, queues):
    server = mailHosts.scripted(
        "127.0.0.2", rcpt=lambda recipient, seen: "451 4.3.0 mailbox busy" if seen == 0 else "250 ok"
    )
    mxDomain(dnsServer, "later.test", "127.0.0.2")
    config = mxConfig(brokerURL(rabbitmq), queues, dnsServer, mailHosts, retries=[3], delayBuckets=[1, 3])
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [job("r@later.test", "later")])
        (notice,) = decoded(await amqp.collect(queues["retry"], 1))
    # stopped: the message waits in RabbitMQ, not in any process
    assert await amqp.count(f"{queues['outbox']}.delay.3s") == 1
    async with running(MailerService(config, plugins=[])):
        (success,) = decoded(await amqp.collect(queues["success"], 1))
    assert kinds(notice) == ["rcptto/error"]
    assert kinds(success) == ["rcptto/error", "message/accepted"]
    (first, _, _), (second, _, _) = server.rcptTimes
    assert second - first >= 3 - 0.05


@pytest_twisted.ensureDeferred
async def test_messages_follow_each_other_on_a_pipelining_connection(rabbitmq, amqp, dnsServer, mailHosts, queues):
    """
    A server that announces PIPELINING and takes its time per message: the
    queued messages share one connection, each result counting its own
    message on it, every reply matched to its own command.
    """
    server = mailHosts.scripted("127.0.0.2", messageDelay=0.05, pipelining=True)
    mxDomain(dnsServer, "piped.test", "127.0.0.2")
    config = mxConfig(brokerURL(rabbitmq), queues, dnsServer, mailHosts, maxConnectionsPerDestination=1)
    ids = {f"piped-{n}" for n in range(6)}
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [job(f"r{n}@piped.test", f"piped-{n}") for n in range(6)])
        success = await collectIds(amqp, queues["success"], ids)
    assert {r["id"] for r in success} == ids and len(server.messageTimes) == 6
    assert len(server.connections) == 1
    assert sorted(r["results"][-1]["messages"] for r in success) == [1, 2, 3, 4, 5, 6]
    assert {kinds(r)[-1] for r in success} == {"message/accepted"}


@pytest_twisted.ensureDeferred
async def test_after_a_pause_a_destination_still_refusing_costs_one_attempt(dnsServer, mailHosts):
    """
    When a pause ends, the messages that come back for the destination are
    tried one first: when its server answers 421 again, that reply pauses
    the destination before the others are let go, so they are deferred
    without an attempt.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults
    from twisted.logger import capturedLogs, formatEvent

    from mqtwist.config import Config
    from mqtwist.content.message import Message
    from mqtwist.delivery.engine import ScheduledEntry
    from mqtwist.service import deliveryEngine

    asked: list[str] = []

    def refuse(recipient: str, before: int) -> str:
        asked.append(recipient)
        return "421 4.7.0 try again later"

    mailHosts.scripted("127.0.0.6", hostname="mx.refusing.test", rcpt=refuse)
    mxDomain(dnsServer, "refusing.test", "127.0.0.6")
    config = Config(nameservers=[dnsServer.nameserver], mxPort=mailHosts.port, ehloName="client.test")
    engine = deliveryEngine(config, [], reactor)

    def message(n: int) -> Message:
        return Message.fromJSON(
            json.dumps({"id": f"m{n}", "recipient": f"r{n}@refusing.test", "mime": "Subject: x\r\n\r\nx\r\n"})
        )

    try:
        with capturedLogs() as events:
            first = await engine.deliver(message(0))
        assert first.connection["backoff"] == "pause"
        # the log says what kind of failure it was, and the reply
        assert any(
            formatEvent(event).startswith(
                "attempt for m0 to r0@refusing.test failed at rcptto/error (temporary, 421 4.7.0, rate-limited): "
                "try again later"
            )
            for event in events
        ), [formatEvent(event) for event in events]
        (state,) = engine.policy._states.values()
        state.pausedUntil = reactor.seconds() - 1  # as if the minute were over
        entries = await gatherResults([engine.deliver(message(n)) for n in range(1, 5)])
    finally:
        await engine.close()
    assert asked == ["r0@refusing.test", "r1@refusing.test"]
    assert (entries[0].state, entries[0].code) == ("rcptto", 421)
    assert [(type(e), e.result) for e in entries[1:]] == [(ScheduledEntry, "deferred")] * 3
