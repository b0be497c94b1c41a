"""
The README's "Moving a classic outbox to a quorum queue", done as written
(rabbitmqctl and RabbitMQ's shovel plugin) on a node of its own: jobs
waiting in a classic outbox and in a classic delay queue are all delivered
by mqtwist with --queue-type quorum afterwards.
"""

from __future__ import annotations

import json
import os

import pytest_twisted
from fixtures_rabbitmq import AMQPHelper
from helpers_endtoend import job, running
from twisted.internet import reactor, task

from mqtwist.config import Config
from mqtwist.localnode import LocalRabbitMQ
from mqtwist.service import MailerService


def shovel(source: str, destination: str) -> str:
    return json.dumps({
        "src-uri": "amqp://", "src-queue": source, "src-delete-after": "queue-length",
        "dest-uri": "amqp://", "dest-queue": destination,
    })


async def moved(node: LocalRabbitMQ, name: str) -> None:
    """Wait until shovel C{name} has moved what it had to and deleted itself."""
    while name in await node.rabbitmqctl("shovel_status", "--quiet"):
        # no event to wait for: the plugin only answers when asked
        await task.deferLater(reactor, 0.2, lambda: None)


@pytest_twisted.ensureDeferred
async def test_moveToQuorum(dataDir, smtpServer):
    with open(os.path.join(dataDir, "enabled_plugins"), "w") as f:
        f.write("[rabbitmq_shovel].\n")
    node = LocalRabbitMQ(dataDir, reactor=reactor)
    url = await node.start()
    helper = AMQPHelper(url, reactor)
    try:
        amqp = f"amqp://guest:guest@{url.host}:{url.port}/"
        settings = dict(
            amqp=amqp, smarthost=f"{smtpServer.host}:{smtpServer.port}", ehloName="client.test",
            delayBuckets=[1, 3600], pluginRetryDelay=0.01,
        )
        # the classic queues of an earlier mqtwist, with jobs waiting
        async with running(MailerService(Config(**settings))):
            pass
        await helper.connect()
        for n in range(20):
            await helper.publish("outbox", job(n))
        for n in range(20, 25):
            await helper.publish("outbox.delay.3600s", job(n))
        listed = await node.rabbitmqctl("list_queues", "name", "type", "messages", "--formatter", "json", "--quiet")
        classic = {q["name"]: q["messages"] for q in json.loads(listed)}
        assert classic["outbox"] == 20 and classic["outbox.delay.3600s"] == 5
        # the procedure: each queue with messages parked, every queue deleted
        for queue, messages in classic.items():
            if messages:
                await node.rabbitmqctl("set_parameter", "shovel", f"park-{queue}", shovel(queue, f"{queue}.parked"))
                await moved(node, f"park-{queue}")
            await node.rabbitmqctl("delete_queue", queue, "--if-empty")
        async with running(MailerService(Config(**settings, queueType="quorum"))):
            for queue, messages in classic.items():
                if messages:
                    await node.rabbitmqctl(
                        "set_parameter", "shovel", f"unpark-{queue}", shovel(f"{queue}.parked", "outbox")
                    )
                    await moved(node, f"unpark-{queue}")
                    await node.rabbitmqctl("delete_queue", f"{queue}.parked", "--if-empty")
            received = await smtpServer.waitForMessages(25, timeout=60)
            results = await helper.collect("results", 25)
        listed = await node.rabbitmqctl("list_queues", "name", "type", "messages", "--formatter", "json", "--quiet")
    finally:
        await helper.close()
        await node.stop()
    assert sorted(m.data for m in received) == sorted(f"Subject: {n}\r\n\r\nbody {n}\r\n".encode() for n in range(25))
    assert sorted(json.loads(r.body)["id"] for r in results) == sorted(f"job-{n}" for n in range(25))
    queues = {q["name"]: (q["type"], q["messages"]) for q in json.loads(listed)}
    assert queues["outbox"] == ("quorum", 0)
    assert queues["outbox.delay.3600s"] == ("quorum", 0)
    assert not [name for name in queues if name.endswith(".parked")]
