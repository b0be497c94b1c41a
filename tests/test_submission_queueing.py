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
from mqtwist.submission.jobs import NotUTF8
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
        serverName="mx.example.net",
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
async def test_not_utf8_fails_at_once_and_publishes_nothing(clients, amqp):
    queue = uniqueQueue("submission-8bit")
    client = clients([QueueSpec(queue)])
    await client.whenConnected()
    try:
        with pytest.raises(NotUTF8):
            await OutboxQueue(client, queue, "h")(submission(mime=MIME + b"K\xf6ln\r\n"))
        assert await amqp.count(queue) == 0
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

