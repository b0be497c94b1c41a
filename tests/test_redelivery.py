"""
A message the broker hands out again (C{redelivered}) after mqtwist
delivered it is not sent a second time: the delivery journal has it, and
its result is published again instead.  With a real RabbitMQ node, a real
SMTP server and the journal's file across a restart of the service.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from helpers_endtoend import decoded, job, makeConfig, running

from mqtwist.service import MailerService


async def handOutAgain(amqp: Any, queue: str) -> None:
    """
    Take the one message of C{queue} on a channel of its own and close the
    channel without acknowledging it, as a broker that lost an
    acknowledgement does: the message is back, marked C{redelivered}.
    """
    channel = await amqp._protocol.channel(next(amqp._channelIds))
    await channel.channel_open()
    reply = await channel.basic_get(queue=queue)
    assert reply.method.name == "get-ok"
    await channel.channel_close()
    channel.close(None)


@pytest_twisted.ensureDeferred
async def test_a_delivered_message_handed_out_again_is_not_sent_again(
    rabbitmq, amqp, smtpServer, queues, tmp_path: Path
):
    journal = str(tmp_path / "journal")
    body = job(1)
    config = makeConfig(rabbitmq, smtpServer, queues, deliveryJournal=journal)
    async with running(MailerService(config, plugins=[])):
        await amqp.declare(queues["outbox"])
        await amqp.publish(queues["outbox"], body)
        (first,) = decoded(await amqp.collect(queues["success"], 1))
    assert len(smtpServer.messages) == 1
    # the same bytes back on the outbox, redelivered: as after a broker crash
    await amqp.publish(queues["outbox"], body)
    await handOutAgain(amqp, queues["outbox"])
    async with running(MailerService(makeConfig(rabbitmq, smtpServer, queues, deliveryJournal=journal), plugins=[])):
        (again,) = decoded(await amqp.collect(queues["success"], 1))
        assert await amqp.count(queues["outbox"]) == 0
    assert len(smtpServer.messages) == 1
    assert again == first
    assert [(e["result"], e["code"]) for e in again["results"]] == [("accepted", 250)]
    assert json.loads(body)["id"] == again["id"] == "job-1"


@pytest_twisted.ensureDeferred
async def test_a_message_handed_out_again_that_was_not_delivered_is_delivered(rabbitmq, amqp, smtpServer, queues):
    """
    Only a delivered message is skipped: one handed out again before any
    delivery (mqtwist stopped, a consumer gave it back) is delivered.
    """
    await amqp.declare(queues["outbox"])
    await amqp.publish(queues["outbox"], job(2))
    await handOutAgain(amqp, queues["outbox"])
    async with running(MailerService(makeConfig(rabbitmq, smtpServer, queues, deliveryJournal=""), plugins=[])):
        (result,) = decoded(await amqp.collect(queues["success"], 1))
    assert result["id"] == "job-2"
    assert [m.rcptTos for m in smtpServer.messages] == [("rcpt2@example.com",)]
