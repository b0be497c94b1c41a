"""
L{mqtwist.submission.queueing.OutboxQueue} against a real RabbitMQ node: the
jobs of a submission are on the outbox when its Deferred fires, and it
fails, naming the message, the recipients and the cause, whenever one of
them may not be stored.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
import pytest_twisted
from fixtures_rabbitmq import connectionOf
from twisted.internet import reactor

from mqtwist.amqp.client import BrokerClient, QueueSpec
from mqtwist.content.message import Message
from mqtwist.submission.envelope import Recipient, Submission
from mqtwist.submission.jobs import buildJobs
from mqtwist.submission.queueing import OutboxQueue, QueueingFailed

MIME = b"Received: from c by mx; Sun, 6 Dec 2026 23:40:00 +0000\r\nSubject: q\r\n\r\nbody \xc3\xa9\r\n"
RECIPIENTS = ("b@example.com", "c@example.net", "d@example.org")


def submission(**changes) -> Submission:
    base = Submission(
        sender="a@example.org",
        recipients=tuple(Recipient(address) for address in RECIPIENTS),
        mime=MIME,
        clientAddress="192.0.2.7",
        clientPort=40123,
        heloName="client.example",
        received=1_796_600_400.0,
    )
    return replace(base, **changes)


def uniqueQueue(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest_twisted.ensureDeferred
async def test_every_job_is_on_the_queue_when_it_fires(clients, amqp):
    queue = uniqueQueue("submission")
    client = clients([QueueSpec(queue, {"x-max-priority": 10})])
    await client.whenConnected()
    outbox = OutboxQueue(client, queue, "mx.example.net")
    try:
        result = await outbox(submission(user="alice", defaults={"tags": ["smtp"], "priority": 7}))
        assert result is None
        # confirmed means stored: all three are there before anything waits
        assert await amqp.count(queue) == 3
        received = await amqp.collect(queue, 3)
        jobs = [json.loads(r.body) for r in received]
        assert [job["recipient"] for job in jobs] == list(RECIPIENTS)
        assert len({job["message-id"] for job in jobs}) == 3
        for r, job in zip(received, jobs):
            assert r.properties["delivery-mode"] == 2
            assert r.properties["content-type"] == "application/json"
            assert r.properties["priority"] == 7
            assert job["hostname"] == "mx.example.net"
            assert job["connection"]["user"] == "alice"
            assert job["tags"] == ["smtp"]
            assert Message.fromJSON(r.body).mime == MIME
    finally:
        await amqp.delete(queue)


@pytest_twisted.ensureDeferred
async def test_broker_unreachable_fails(rabbitmq):
    # nothing listens there: the client keeps trying and is never connected
    nowhere = replace(rabbitmq, port=1, connectTimeout=1.0)
    client = BrokerClient(nowhere, [], consumeFrom=None, prefetch=1, onDelivery=lambda d: None, reactor=reactor)
    client.startService()
    try:
        with pytest.raises(QueueingFailed) as info:
            await OutboxQueue(client, "outbox", "h")(submission())
    finally:
        await client.stopService()
    assert info.value.failed == RECIPIENTS
    assert info.value.confirmed == ()
    text = str(info.value)
    assert text.startswith(
        "message from <a@example.org> (client 192.0.2.7) was not queued on 'outbox' for 3 of its 3 recipients "
        "(b@example.com, c@example.net, d@example.org): not connected to AMQP broker amqp://guest:***@"
    )
    assert text.endswith("The client is told to send it again")
    # one cause, said once
    assert text.count("not connected") == 1


@pytest_twisted.ensureDeferred
async def test_nack_fails_naming_the_rejected_and_the_confirmed(clients, amqp):
    queue = uniqueQueue("submission-full")
    client = clients([QueueSpec(queue, {"x-max-length": 1, "x-overflow": "reject-publish"})])
    await client.whenConnected()
    try:
        with pytest.raises(QueueingFailed) as info:
            await OutboxQueue(client, queue, "h")(submission())
        assert info.value.failed == ("c@example.net", "d@example.org")
        assert info.value.confirmed == ("b@example.com",)
        text = str(info.value)
        assert f"was not queued on {queue!r} for 2 of its 3 recipients (c@example.net, d@example.org)" in text
        assert "rejected (basic.nack)" in text
        assert text.endswith(
            "; the jobs of 1 recipients were confirmed, and they get it twice when it comes again (b@example.com)"
        )
        # the one confirmed is stored: at least once, not at most once
        (stored,) = await amqp.fetch(queue)
        assert json.loads(stored.body)["recipient"] == "b@example.com"
    finally:
        await amqp.delete(queue)


@pytest_twisted.ensureDeferred
async def test_connection_lost_before_the_confirms_fails(clients, amqp):
    queue = uniqueQueue("submission-lost")
    client = clients([QueueSpec(queue)], reconnectMaxDelay=1.0)
    connection = await connectionOf(client)
    try:
        queued = OutboxQueue(client, queue, "h")(submission())
        # published, not yet confirmed: the confirms need the reactor
        connection.transport.abortConnection()
        with pytest.raises(QueueingFailed) as info:
            await queued
        assert info.value.failed == RECIPIENTS
        assert "the connection was lost" in str(info.value)
        # after the reconnect the same submission is queued
        await client.whenConnected()
        await OutboxQueue(client, queue, "h")(submission())
    finally:
        await amqp.delete(queue)



@pytest_twisted.ensureDeferred
async def test_a_deleted_queue_fails_instead_of_dropping_the_jobs(clients, amqp):
    """
    The jobs are published mandatory: when the queue was deleted while
    connected, the broker returns them (it would drop them, and the client
    would be told 250 for lost mail) and the submission fails.
    """
    queue = uniqueQueue("submission-deleted")
    client = clients([QueueSpec(queue)])
    await client.whenConnected()
    await amqp.delete(queue)
    with pytest.raises(QueueingFailed) as info:
        await OutboxQueue(client, queue, "h")(submission())
    assert info.value.failed == RECIPIENTS
    assert info.value.confirmed == ()
    assert f"was not queued on {queue!r} for 3 of its 3 recipients" in str(info.value)


@pytest_twisted.ensureDeferred
async def test_cancelled_wait_for_a_blocked_broker_fails_and_the_jobs_may_come_later(clients, amqp, rabbitmqNode):
    queue = uniqueQueue("submission-blocked")
    client = clients([QueueSpec(queue)])
    await client.whenConnected()
    # a memory alarm: the broker stops reading from publishers, confirming nothing
    await rabbitmqNode.rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        queued = OutboxQueue(client, queue, "h")(submission())
        assert not queued.called
        # what the server does when its --submission-queue-timeout is over
        queued.cancel()
        with pytest.raises(QueueingFailed) as info:
            await queued
    finally:
        await rabbitmqNode.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    assert info.value.failed == RECIPIENTS
    assert "the broker had not confirmed it when the wait was cancelled" in str(info.value)
    # the broker takes them once the alarm is over: the client, told 451,
    # sends the message again, so its recipients get it twice
    received = await amqp.collect(queue, 3)
    assert sorted(json.loads(r.body)["recipient"] for r in received) == sorted(RECIPIENTS)
    await amqp.delete(queue)


class CountingBroker:
    """A broker client that counts the publishes not yet answered."""

    def __init__(self, client: BrokerClient) -> None:
        self.client = client
        self.unanswered = 0
        self.most = 0
        self.published = 0

    def publish(self, queue, body, **kwargs):
        self.published += 1
        self.unanswered += 1
        self.most = max(self.most, self.unanswered)

        def answered(result):
            self.unanswered -= 1
            return result

        return self.client.publish(queue, body, **kwargs).addBoth(answered)


@pytest_twisted.ensureDeferred
async def test_many_recipients_are_published_within_the_window(clients, amqp):
    queue = uniqueQueue("submission-window")
    client = clients([QueueSpec(queue)])
    await client.whenConnected()
    many = submission(recipients=tuple(Recipient(f"r{n}@example.com") for n in range(20)))
    counting = CountingBroker(client)
    # room for three jobs of this message at a time
    size = max(job.size for job in buildJobs(many, "h"))
    try:
        await OutboxQueue(counting, queue, "h", windowBytes=3 * size)(many)
        assert counting.published == 20
        assert 1 < counting.most <= 3
        received = await amqp.collect(queue, 20)
        assert [json.loads(r.body)["recipient"] for r in received] == [f"r{n}@example.com" for n in range(20)]
        # a window smaller than one job still publishes, one at a time
        one = CountingBroker(client)
        await OutboxQueue(one, queue, "h", windowBytes=1)(many)
        assert (one.published, one.most) == (20, 1)
    finally:
        await amqp.delete(queue)


@pytest_twisted.ensureDeferred
async def test_no_job_is_published_after_one_failed(clients, amqp):
    queue = uniqueQueue("submission-stop")
    client = clients([QueueSpec(queue, {"x-max-length": 1, "x-overflow": "reject-publish"})])
    await client.whenConnected()
    counting = CountingBroker(client)
    try:
        with pytest.raises(QueueingFailed) as info:
            await OutboxQueue(counting, queue, "h", windowBytes=1)(submission())
        assert counting.published == 2
        assert info.value.failed == ("c@example.net", "d@example.org")
        assert info.value.confirmed == ("b@example.com",)
        assert "rejected (basic.nack)" in str(info.value)
        assert "(1 jobs not published after that). The client is told to send it again" in str(info.value)
        assert await amqp.count(queue) == 1
    finally:
        await amqp.delete(queue)


@pytest_twisted.ensureDeferred
async def test_a_job_bigger_than_the_outbox_takes_fails_at_once_and_publishes_nothing(clients, amqp):
    queue = uniqueQueue("submission-big")
    client = clients([QueueSpec(queue)])
    await client.whenConnected()
    try:
        # each CRLF is 4 characters in JSON: the job outgrows the message
        message = MIME + b"\r\n" * 400
        assert len(message) < 1000
        with pytest.raises(ValueError) as info:
            await OutboxQueue(client, queue, "h", maxJobBytes=1000)(submission(mime=message))
        assert str(info.value).startswith("as an outbox job the message would have ")
        assert str(info.value).endswith(" bytes, more than the 1000 of --max-job-bytes; send it smaller")
        assert await amqp.count(queue) == 0
    finally:
        await amqp.delete(queue)
