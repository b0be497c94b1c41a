"""
Stopping the service with messages at every wait (in progress, in a
destination's backlog, for a slot, for a DNS answer), against a real
RabbitMQ node, DNS server and mail hosts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from fixtures_dns import mxConfig, mxDomain
from helpers_endtoend import brokerURL, decoded, publishAll, stopLogging
from twisted.internet.defer import Deferred

from mqtwist.config import SMTPTimeouts
from mqtwist.service import MailerService


def job(recipient: str, ident: str) -> bytes:
    return json.dumps({"id": ident, "recipient": recipient, "envelope": "s@example.org",
                       "mime": f"Subject: {ident}\r\n\r\nx\r\n"}).encode()


@pytest_twisted.ensureDeferred
async def test_stopping_cancels_every_wait_and_flushes_the_deferral_log(
    rabbitmq, amqp, dnsServer, mailHosts, queues
):
    """
    A service stopped with messages in progress (a server that never
    greets), waiting in their destination's backlog, waiting for a slot,
    and waiting for a DNS answer that never comes: none is acknowledged or
    given a result, each is logged as stopped unfinished (no unexpected
    error), all go back to the outbox; the deferrals gathered before (the
    stuck destination's excess, parked) are logged by the time the stop is
    done, and no DeferralLog timer is left.
    """
    silent = mailHosts.scripted("127.0.0.3", greet=lambda n: None)
    mailHosts.scripted("127.0.0.4", greet=lambda n: None)
    mxDomain(dnsServer, "slow.test", "127.0.0.3")
    mxDomain(dnsServer, "other.test", "127.0.0.4")
    dnsServer.fail("dark.test", "timeout")
    config = mxConfig(
        brokerURL(rabbitmq), queues, dnsServer, mailHosts,
        prefetch=20, concurrency=1, maxConnectionsPerDestination=1, destinationBacklog=1,
        stuckAfter=0.2, stuckAfterOthers=0, delayBuckets=[600], parkDelay=600, dnsTimeout=3,
        timeouts=SMTPTimeouts(greeting=600), shutdownTimeout=0.5, deferralLogInterval=600,
    )
    darkAsked = askedFor(dnsServer, "dark.test")
    service = MailerService(config, plugins=[])
    slotAwaited = awaitedSlot(service)
    service.startService()
    try:
        await service.whenConnected()
        # slow-0 takes the only slot and waits for a greeting; slow-1 waits
        # in the backlog; slow-2..5 are turned away once slow.test is stuck
        await publishAll(amqp, queues["outbox"], [job(f"r{n}@slow.test", f"slow-{n}") for n in range(6)])
        parked = decoded(await amqp.collect(f"{queues['outbox']}.delay.600s", 4))
        assert sorted(p["id"] for p in parked) == [f"slow-{n}" for n in range(2, 6)]
        # other-0 gets leave from its destination, then waits for the slot
        await publishAll(amqp, queues["outbox"], [job("r@other.test", "other-0"), job("r@dark.test", "dark-0")])
        await silent.waitUntil(lambda: len(silent.connections) == 1, "slow-0's connection")
        await darkAsked
        await slotAwaited
        # the lookup goes on after the stop: wait for its end, so that its
        # timers are gone when the test ends
        lookupEnded: Deferred[Any] = Deferred()
        service.engine.router._pending["dark.test"].append(lookupEnded)
        assert service.engine.slots.tokens == 0 and len(service.engine.slots.waiting) == 1
        assert service.processor is not None and len(service.processor.inFlight) == 4
    finally:
        events = await stopLogging(service)
    assert not [e for e in events if e.get("log_failure") is not None]
    assert sum("stopped unfinished" in e.get("log_format", "") for e in events) == 4
    assert service.engine.deferrals._timer is None
    flushed = [e for e in events if e.get("log_namespace", "").startswith("mqtwist.delivery.deferrallog")]
    assert [m for e in flushed for m in e["messages"]] == [f"slow-{n}" for n in range(2, 6)]
    for kind in ("results", "success", "failure", "retry"):
        assert await amqp.count(queues[kind]) == 0, kind
    again = decoded(await amqp.collect(queues["outbox"], 4))
    assert sorted(a["id"] for a in again) == ["dark-0", "other-0", "slow-0", "slow-1"]
    await lookupEnded.addErrback(lambda failure: None)


def awaitedSlot(service: MailerService) -> Deferred[None]:
    """
    @return: a Deferred firing when a delivery first waits for one of the
        engine's slots (the concurrency limit).
    """
    waited: Deferred[None] = Deferred()
    slots = service.engine.slots
    acquire = slots.acquire

    def noting() -> Deferred[Any]:
        acquired = acquire()
        if not acquired.called and not waited.called:
            waited.callback(None)
        return acquired

    slots.acquire = noting  # type: ignore[method-assign]
    return waited


def askedFor(dnsServer: Any, name: str) -> Deferred[None]:
    """
    @return: a Deferred firing when the DNS server (in this process) is
        first asked about C{name}.
    """
    asked: Deferred[None] = Deferred()
    lookup = dnsServer._lookup

    def noting(query: bytes, cls: int, type: int, timeout: Any) -> Any:
        if query.decode().lower() == name and not asked.called:
            asked.callback(None)
        return lookup(query, cls, type, timeout)

    dnsServer._lookup = noting
    return asked

