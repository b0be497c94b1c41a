"""
Publishing with confirms: L{mqtwist.cli.publishing.publishBodies} and the
C{mandatory} publishes of L{mqtwist.amqp.client.BrokerClient} against a real
RabbitMQ node, and the benchmarks' jobs (C{bench/loadgen.py}).
"""

from __future__ import annotations

import json
import uuid

import pytest
import pytest_twisted
from twisted.internet import defer

from bench.loadgen import jobBodies, makeJob, makeMime
from mqtwist.amqp.client import PublishReturned, QueueSpec
from mqtwist.cli.publishing import publishBodies
from mqtwist.content.message import Message


@pytest.mark.parametrize("size", [0, 200, 301, 5000, 100_000])
def test_mime_has_the_size_asked_for(size):
    mime = makeMime(7, size, sender="a@example.org", recipient="b@example.com", prefix="p")
    headers, _, body = mime.partition("\r\n\r\n")
    assert len(mime) == max(size, len(headers) + 4)
    assert "Message-ID: <p-7@mqtwist.invalid>" in headers
    # CRLF line ends only, lines well within RFC 5322's 78 characters
    assert mime.endswith("\r\n")
    assert "\n" not in mime.replace("\r\n", "")
    assert max(len(line) for line in mime.split("\r\n")) <= 78
    assert body.isascii()


def test_job_is_a_valid_outbox_message():
    dkim = {"domain": "example.org", "selector": "s1", "key": "PEM"}
    job = makeJob(3, 1000, prefix="run1", sender="s@example.org", domain="example.net", dkim=dkim)
    assert job["id"] == "run1-3"
    assert job["envelope"] == "s@example.org"
    assert job["recipient"] == "rcpt3@example.net"
    assert job["dkim"] == dkim
    assert len(job["mime"]) == 1000
    assert "dkim" not in makeJob(3, 1000)
    message = Message.fromJSON(json.dumps(makeJob(3, 1000)).encode())
    assert message.recipient == "rcpt3@example.com"


@pytest_twisted.ensureDeferred
async def test_publishes_every_job_confirmed(clients, amqp):
    queue = f"publish-{uuid.uuid4().hex[:8]}"
    client = clients([QueueSpec(queue)])
    await client.whenConnected()
    confirmed: list[int] = []
    try:
        published = await publishBodies(
            client, queue, jobBodies(25, 3000, start=100, prefix="t"), window=7, onConfirmed=confirmed.append
        )
        assert published == 25
        assert confirmed == [7, 14, 21, 25]
        received = await amqp.collect(queue, 25)
        jobs = [json.loads(r.body) for r in received]
        assert sorted(job["id"] for job in jobs) == sorted(f"t-{n}" for n in range(100, 125))
        assert all(len(job["mime"]) == 3000 for job in jobs)
        assert all(r.properties["delivery-mode"] == 2 for r in received)
    finally:
        await amqp.delete(queue)


@pytest_twisted.ensureDeferred
async def test_mandatory_publishes_to_a_missing_queue_fail_the_others_not(clients, amqp):
    present = f"mandatory-{uuid.uuid4().hex[:8]}"
    missing = f"mandatory-missing-{uuid.uuid4().hex[:8]}"
    await amqp.declare(present)
    client = clients()
    await client.whenConnected()
    try:
        # interleaved in one window, some bodies alike: each return finds
        # its own publish
        sent = [(present if n % 3 else missing, b"same" if n % 2 else b"%d" % n) for n in range(12)]
        outcomes = await defer.DeferredList(
            [client.publish(queue, body, mandatory=True) for queue, body in sent], consumeErrors=True
        )
        for (queue, _), (ok, value) in zip(sent, outcomes):
            if queue == present:
                assert ok, value
            else:
                assert not ok and isinstance(value.value, PublishReturned)
                assert f"queue {missing!r} (312 NO_ROUTE)" in str(value.value)
        assert sorted(r.body for r in await amqp.collect(present, 8)) == sorted(
            body for queue, body in sent if queue == present
        )
        # the connection is still good
        await client.publish(present, b"after", mandatory=True)
    finally:
        await amqp.delete(present)
    # mandatory publishes declare nothing (this closes the helper's channel)
    with pytest.raises(Exception, match="NOT_FOUND"):
        await amqp.count(missing)
