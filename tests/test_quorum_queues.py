"""
--queue-type quorum on a three-node cluster (L{fixtures_cluster}): the
queues mqtwist declares, as the broker lists them; a retried job that comes
back through a quorum delay queue; --max-priority refused with quorum
queues; and the advice for a queue of the other type.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from fixtures_rabbitmq import AMQPHelper
from fixtures_smtp import unusedPort
from helpers_endtoend import job, running
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from mqtwist.amqp.client import BrokerClient, QueueSpec
from mqtwist.config import Config
from mqtwist.service import MailerService


def quorumConfig(amqp: str, smarthost: str, queues: dict[str, str], **settings) -> Config:
    return Config(
        amqp=amqp,
        queueType="quorum",
        smarthost=smarthost,
        ehloName="client.test",
        delayBuckets=[1, 5],
        deadLetterQueue=f"{queues['outbox']}.dead",
        pluginRetryDelay=0.01,
        **queues,
        **settings,
    )


async def listQueues(cluster, prefix: str) -> dict[str, dict]:
    """The broker's view of the queues whose names start with C{prefix}."""
    out = await cluster.rabbitmqctl(0, "list_queues", "name", "type", "arguments", "--formatter", "json", "--quiet")
    # (arguments come as [name, type, value])
    return {
        q["name"]: {**q, "arguments": {name: value for name, _, value in q["arguments"]}}
        for q in json.loads(out)
        if q["name"].startswith(prefix)
    }


@pytest_twisted.ensureDeferred
async def test_quorumQueuesDeclared(cluster, queues, smtpServer):
    """
    With --queue-type quorum every queue mqtwist declares is a quorum
    queue, and the delay queues dead-letter into the outbox at least once
    (with reject-publish, which RabbitMQ requires for it).
    """
    config = quorumConfig(cluster.amqp, f"{smtpServer.host}:{smtpServer.port}", queues)
    async with running(MailerService(config, reactor=reactor)):
        listed = await listQueues(cluster, queues["outbox"].rsplit(".", 1)[0])
    outbox = queues["outbox"]
    expected = {
        outbox, queues["results"], queues["success"], queues["failure"], queues["retry"],
        f"{outbox}.dead", f"{outbox}.held", f"{outbox}.delay.1s", f"{outbox}.delay.5s",
    }
    assert set(listed) == expected
    assert {name: q["type"] for name, q in listed.items()} == dict.fromkeys(expected, "quorum")
    assert listed[f"{outbox}.delay.5s"]["arguments"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-message-ttl": 5000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": outbox,
    }
    assert listed[outbox]["arguments"] == {"x-queue-type": "quorum"}


@pytest_twisted.ensureDeferred
async def test_retriedJobComesBack(cluster, queues, startSMTPServer):
    """
    A job whose first attempt fails softly (nothing listens at the
    smarthost yet) waits in a quorum delay queue, comes back to the
    outbox and is delivered once a server listens.
    """
    port = unusedPort()
    config = quorumConfig(cluster.amqp, f"127.0.0.1:{port}", queues, retries=[1])
    helper = AMQPHelper(cluster.urls[1], reactor)
    await helper.connect()
    try:
        async with running(MailerService(config, reactor=reactor)):
            await helper.publish(queues["outbox"], job(1))
            (retry,) = await helper.collect(queues["retry"], 1)
            assert json.loads(retry.body)["id"] == "job-1"
            server = await startSMTPServer(port=port)
            (message,) = await server.waitForMessages(1, timeout=30)
            (result,) = await helper.collect(queues["results"], 1)
    finally:
        await helper.close()
    assert message.data == b"Subject: 1\r\n\r\nbody 1\r\n"
    first, last = json.loads(result.body)["results"]
    assert (first["state"], first["result"]) == ("connect", "error")
    assert (last["state"], last["result"], last["code"]) == ("message", "accepted", 250)


def test_maxPriorityRefusedWithQuorum():
    """
    Quorum queues of RabbitMQ before 4.0 have no priorities: the
    combination is refused before anything starts, saying what to do.
    """
    with pytest.raises(ValueError) as caught:
        Config(amqp="amqp://localhost/", queueType="quorum", maxPriority=10)
    assert str(caught.value) == (
        "setting maxPriority (--max-priority) is 10 with queueType (--queue-type) quorum: "
        "RabbitMQ's quorum queues (before 4.0) have no priorities (no x-max-priority); give "
        "--max-priority 0 with quorum queues, or keep classic queues"
    )
    with pytest.raises(ValueError, match=r"queueType \(--queue-type\): 'mirrored' is neither classic nor quorum"):
        Config(queueType="mirrored")


@pytest.mark.parametrize("existing, declared", [("classic", "quorum"), ("quorum", "classic")])
@pytest_twisted.ensureDeferred
async def test_otherTypeAdvice(cluster, queues, existing, declared):
    """
    An outbox that exists as a queue of the other type: the failed attempt
    says which type it has, which mqtwist declares, and how to go on.
    """
    outbox = queues["outbox"]
    helper = AMQPHelper(cluster.urls[0], reactor)
    await helper.connect()
    failed: Deferred[str] = Deferred()
    client = BrokerClient(
        cluster.urls,
        [QueueSpec(outbox, {"x-queue-type": declared} if declared == "quorum" else {})],
        consumeFrom=outbox,
        prefetch=1,
        onDelivery=lambda delivery: None,
        reactor=reactor,
        onAttemptFailed=lambda cause: None if failed.called else failed.callback(cause),
    )
    try:
        await helper.declare(outbox, {"x-queue-type": existing} if existing == "quorum" else {})
        client.startService()
        cause = await failed.addTimeout(60, reactor)
    finally:
        await client.stopService()
        await helper.delete(outbox)
        await helper.close()
    assert f"queue {outbox!r} exists as a {existing} queue, and mqtwist declares it as a {declared} queue" in cause
    assert f"start mqtwist with --queue-type {existing} to use the queues as they are" in cause
    assert "README" in cause


def test_maxPriorityRefusedByTwistd():
    """twistd mqtwist refuses the combination as a usage error, with the same words."""
    from twisted.python.usage import UsageError

    from mqtwist.tap import Options

    with pytest.raises(UsageError) as caught:
        Options({}).parseOptions(["--queue-type", "quorum", "--max-priority", "10", "--amqp", "amqp://localhost/"])
    assert str(caught.value).startswith(
        "setting maxPriority (--max-priority) is 10 with queueType (--queue-type) quorum: "
    )
