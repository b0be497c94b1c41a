"""
Priorities (C{--max-priority}, a job's C{priority}) against the session's
real RabbitMQ node and a test SMTP server: the outbox is a priority queue,
the broker hands out high-priority jobs first, and a job keeps its priority
through the delay queues; an outbox declared otherwise is refused with
advice.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from helpers_endtoend import decoded, job, makeConfig, running
from twisted.internet import defer, reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from mqtwist.amqp.client import _priorityAdvice
from mqtwist.config import Config
from mqtwist.outbox.processor import OutboxProcessor
from mqtwist.service import MailerService

# txamqp still uses defer.returnValue
pytestmark = pytest.mark.filterwarnings(
    "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning"
)


@pytest.mark.parametrize("value", [0, 1, 10, 255])
def test_max_priority_accepts_0_to_255(value):
    assert Config(ehloName="x", maxPriority=value).maxPriority == value


@pytest.mark.parametrize("value", [-1, 256])
def test_max_priority_refuses_the_rest(value):
    with pytest.raises(ValueError, match=r"setting maxPriority \(--max-priority\): .* give 0 .* or 1-255"):
        Config(ehloName="x", maxPriority=value)


@pytest_twisted.ensureDeferred
async def test_high_priority_jobs_are_delivered_first(rabbitmq, amqp, smtpServer, queues):
    """
    A backlog published while mqtwist is stopped, to the priority queue it
    declared: the high-priority jobs, published last, arrive first.
    """
    config = makeConfig(rabbitmq, smtpServer, queues, maxPriority=10, prefetch=1)
    # the first service only declares the outbox
    async with running(MailerService(config, plugins=[])):
        pass
    low = [job(n, priority=1) for n in range(20)]
    high = [job(n, priority=9) for n in range(20, 23)]
    for body, priority in [(body, 1) for body in low] + [(body, 9) for body in high]:
        await amqp.publish(queues["outbox"], body, priority=priority)
    async with running(MailerService(config, plugins=[])):
        received = await smtpServer.waitForMessages(23)
        results = await amqp.collect(queues["success"], 23)
    order = [message.rcptTos[0] for message in received]
    assert sorted(order[:3]) == [f"rcpt{n}@example.com" for n in range(20, 23)]
    assert order[3:] == [f"rcpt{n}@example.com" for n in range(20)]
    assert {decoded([r])[0]["id"]: r.properties.get("priority") for r in results} == {
        f"job-{n}": 1 if n < 20 else 9 for n in range(23)
    }


@pytest_twisted.ensureDeferred
async def test_a_retried_job_keeps_its_priority_through_the_delay_queue(
    rabbitmq, amqp, smtpServer, queues, monkeypatch
):
    """
    The copy of a job that mqtwist puts in a delay queue has the job's
    priority (from the JSON, else the AMQP priority it came with), and
    RabbitMQ's dead-lettering brings it back to the outbox with it; a job
    with neither has none.
    """
    seen: list[tuple[str, int | None]] = []
    handle = OutboxProcessor.handle

    def recording(self: OutboxProcessor, delivery: Any) -> None:
        seen.append((decoded([delivery])[0]["id"], delivery.priority))
        handle(self, delivery)

    monkeypatch.setattr(OutboxProcessor, "handle", recording)
    config = makeConfig(rabbitmq, smtpServer, queues, maxPriority=10, retries=[1])
    tempfail = {"recipient": "tempfail@example.com", "maxattempts": 2}
    async with running(MailerService(config, plugins=[])):
        # the sender gave the JSON priority only / the AMQP one only / none
        await amqp.publish(queues["outbox"], job(1, priority=7, **tempfail))
        await amqp.publish(queues["outbox"], job(2, **tempfail), priority=3)
        await amqp.publish(queues["outbox"], job(3, **tempfail))
        notices = await amqp.collect(queues["retry"], 3)
        failures = await amqp.collect(queues["failure"], 3)
    expected = {"job-1": 7, "job-2": 3, "job-3": None}
    assert sorted(seen, key=str) == sorted(
        [("job-1", None), ("job-2", 3), ("job-3", None)] + list(expected.items()), key=str
    )
    for received in (notices, failures):
        assert {decoded([r])[0]["id"]: r.properties.get("priority") for r in received} == expected
    for failure in decoded(failures):
        assert [e["state"] for e in failure["results"]] == ["rcptto", "rcptto", "process"]


class _Logged:
    """
    The log events emitted while it observes the global log publisher.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.waiting: list[tuple[Any, defer.Deferred[dict[str, Any]]]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        for predicate, d in list(self.waiting):
            if not d.called and predicate(event):
                self.waiting.remove((predicate, d))
                d.callback(event)

    def when(self, predicate: Any, timeout: float = 30.0) -> defer.Deferred[dict[str, Any]]:
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiting.append((predicate, d))
        return d.addTimeout(timeout, reactor)


def _failedAttempt(event: dict[str, Any]) -> bool:
    return event.get("attempt") == 1 and "cause" in event


@pytest.mark.parametrize(
    ("existing", "setting", "has", "wants", "startWith"),
    [
        ({}, 10, "no x-max-priority (an ordinary queue)", "x-max-priority 10", 0),
        ({"x-max-priority": 10}, 0, "x-max-priority 10", "none", 10),
        ({"x-max-priority": 5}, 10, "x-max-priority 5", "x-max-priority 10", 5),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_outbox_declared_otherwise_gets_advice(
    rabbitmq, amqp, smtpServer, queues, existing, setting, has, wants, startWith
):
    outbox = queues["outbox"]
    await amqp.declare(outbox, existing)
    await amqp.publish(outbox, job(1))
    config = makeConfig(rabbitmq, smtpServer, queues, maxPriority=setting, reconnectMaxDelay=1.0)
    service = MailerService(config, plugins=[])
    logged = _Logged()
    globalLogPublisher.addObserver(logged)
    try:
        service.startService()
        event = await logged.when(_failedAttempt)
        await service.stopService()
    finally:
        globalLogPublisher.removeObserver(logged)
    assert event["log_level"] == LogLevel.warn
    text = formatEvent(event)
    assert f"inequivalent arg 'x-max-priority' for queue '{outbox}'" in text
    assert (
        f"the outbox '{outbox}' exists with {has}, and mqtwist declares it with {wants} "
        f"(--max-priority {setting}); RabbitMQ cannot change the priorities of an existing "
        f"queue, not even by a policy. Either start mqtwist with --max-priority {startWith} "
        f"to use the queue as it is, or, to "
    ) in text
    assert "move its messages to another queue (a shovel), delete it, start mqtwist" in text
    # nothing was taken from the outbox, nothing delivered
    assert await amqp.count(outbox) == 1
    assert smtpServer.messages == []
    await amqp.delete(outbox)


def test_advice_only_for_the_outbox():
    said = (
        "406 PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'results' in vhost '/': "
        "received none but current is the value '10' of type 'signedint'"
    )
    assert _priorityAdvice(said, "outbox") is None
    assert _priorityAdvice(said, "results") is not None
    both = said.replace("received none but current is the value '10' of type 'signedint'", "received '5' but current is '10'")
    assert "--max-priority 10 to use the queue as it is" in _priorityAdvice(both, "results")
    other = "406 PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'outbox' in vhost '/': ..."
    assert _priorityAdvice(other, "outbox") is None
