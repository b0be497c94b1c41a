"""
Helpers of the tests of the SMTP engine against real servers
(L{fixtures_smtp}, L{fixtures_postfix}): a connection pool, a job and one
delivery attempt through the pool, as its result entry.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor

from mqtwist.config import Config, SMTPTimeouts
from mqtwist.content.message import Message, ResultEntry
from mqtwist.dataplugin.chain import PluginChain
from mqtwist.delivery.transaction import TransactionFailed, sendThroughPool
from mqtwist.errors import AttemptFailed
from mqtwist.smtp.pool import ConnectionPool, Destination

TIMEOUTS = SMTPTimeouts(
    connect=5, greeting=5, ehlo=5, mailfrom=5, rcptto=5, data=5, message=5, rset=5, quit=5, starttls=5, auth=5
)
PASSWORD = "s3cret-Pa55word"


def makePool(**options: Any) -> ConnectionPool:
    """A pool to real servers: 2 connections a destination unless C{options} say otherwise."""
    settings: dict[str, Any] = dict(
        ehloName="client.test",
        timeouts=TIMEOUTS,
        maxConnectionsPerDestination=2,
        maxMessagesPerConnection=100,
        idleTimeout=30,
    )
    return ConnectionPool(reactor, **{**settings, **options})


CHAIN = PluginChain([], reactor=reactor, config=Config(ehloName="client.test"))


def job(recipient: str = "rcpt@example.com", **extra: Any) -> Message:
    obj = {"envelope": "sender@example.org", "recipient": recipient, "mime": "Subject: t\r\n\r\nbody\r\n"}
    obj.update(extra)
    return Message.fromObject(obj)


async def attempt(pool: ConnectionPool, destination: Destination, message: Message) -> dict[str, Any]:
    """
    One delivery attempt; the result entry as published (JSON), with
    C{final} added.
    """
    try:
        sent = await sendThroughPool(pool, destination, message, CHAIN)
        reply = sent.reply
        entry = ResultEntry("message", "accepted", 0, True, reply.code, reply.status, reply.text, None, sent.facts)
    except TransactionFailed as failure:
        entry = ResultEntry.fromFailure(failure, 0, failure.facts)
    except AttemptFailed as failure:
        entry = ResultEntry.fromFailure(failure, 0)
    result = entry.toJSON()
    result["final"] = entry.final
    return result
