"""
Jobs with C{key} instead of C{mime} through the whole service: the real
RabbitMQ node, a real C{redis-server} as the message store and a real SMTP
server.  The message is loaded once the connection is ready, sent byte for
byte, and removed from the store once its job has ended; a key that is not
there fails the job as C{storage}/C{error}; a store that is down is retried
until it is back; a job that a throttle defers costs no read; without a
store the job is C{process}/C{invalid}.
"""

from __future__ import annotations

import json
from email import message_from_bytes

import pytest_twisted
from helpers_endtoend import decoded, makeConfig, normalised, publishAll, running

from mqtwist.content.headeredits import applyHeaderEdits
from mqtwist.content.personalize import personalize
from mqtwist.service import MailerService

STORED = (
    b"From: News <news@example.org>\r\n"
    b"To: reader@example.com\r\n"
    b"Subject: stored\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus dem Speicher.\r\n"
    b".a line that starts with a dot\r\n"
    b"\r\n"
)


def keyJob(number: int, **extra) -> bytes:
    obj = {
        "id": f"stored-{number}",
        "envelope": "sender@example.org",
        "recipient": f"reader{number}@example.com",
        "key": f"mail/{number}",
    }
    obj.update(extra)
    return json.dumps(obj).encode()


def kinds(result: dict) -> list[str]:
    return [f"{entry['state']}/{entry['result']}" for entry in result["results"]]


@pytest_twisted.ensureDeferred
async def test_delivered_from_the_store_byte_for_byte(rabbitmq, amqp, smtpServer, queues, redisServer):
    store = redisServer.client()
    for number in (1, 2, 3):
        store.set(f"mail/{number}", STORED)
    edits = {"append": {"X-Campaign": "spring"}}
    config = makeConfig(rabbitmq, smtpServer, queues, messageStore=redisServer.url)
    async with running(MailerService(config, plugins=[])):
        await publishAll(
            amqp,
            queues["outbox"],
            [keyJob(1), keyJob(2, keepmime=True), keyJob(3, headers=edits)],
        )
        successes = {r["id"]: r for r in decoded(await amqp.collect(queues["success"], 3))}
        received = {m.rcptTos[0]: m for m in await smtpServer.waitForMessages(3)}

    assert received["reader1@example.com"].data == STORED
    assert received["reader2@example.com"].data == STORED
    assert received["reader3@example.com"].data == applyHeaderEdits(STORED, edits)
    assert b"\r\nX-Campaign: spring\r\n" in received["reader3@example.com"].data
    # its size unknown at MAIL FROM, the message is announced as 8-bit
    assert received["reader1@example.com"].mailOptions == ("BODY=8BITMIME",)
    for number in (1, 2, 3):
        result = successes[f"stored-{number}"]
        assert kinds(result) == ["message/accepted"]
        assert result["key"] == f"mail/{number}" and "mime" not in result
    # removed once delivered, but for the job that has keepmime
    assert [store.exists(f"mail/{number}") for number in (1, 2, 3)] == [0, 1, 0]
    assert redisServer.calls("getrange") == 3


TEMPLATE = (
    b"From: News <news@example.org>\r\n"
    b"To: {$name} <reader@example.com>\r\n"
    b"Subject: Hello {$name}\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<html><head><style>p { color: red }</style></head>"
    b"<body><p>Hello {$name|toupper}, from {$envelope}</p></body></html>\r\n"
)


@pytest_twisted.ensureDeferred
async def test_personalized_and_edited_once_loaded(rabbitmq, amqp, smtpServer, queues, redisServer):
    redisServer.client().set("mail/1", TEMPLATE)
    data = {"name": "Ada & co"}
    edits = {"append": {"X-Campaign": "spring"}}
    config = makeConfig(rabbitmq, smtpServer, queues, messageStore=redisServer.url)
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [keyJob(1, data=data, inlinecss=True, headers=edits)])
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (received,) = await smtpServer.waitForMessages(1)
    expected = personalize(
        TEMPLATE, data, inlinecss=True, recipient="reader1@example.com", envelope="sender@example.org"
    )
    # CRLF line ends on the wire, whatever the message has
    assert received.data == normalised(applyHeaderEdits(expected, edits).decode())
    assert b"Subject: Hello Ada & co\r\n" in received.data
    assert b"Hello ADA &amp; CO, from sender@example.org" in received.data
    assert b'<p style="color: red' in received.data
    assert kinds(success) == ["message/accepted"] and success["data"] == data


@pytest_twisted.ensureDeferred
async def test_kept_in_the_store_when_cleanup_is_keep(rabbitmq, amqp, smtpServer, queues, redisServer):
    redisServer.client().set("mail/1", STORED)
    config = makeConfig(
        rabbitmq, smtpServer, queues, messageStore=redisServer.url, messageStoreCleanup="keep"
    )
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [keyJob(1)])
        await amqp.collect(queues["success"], 1)
    assert redisServer.client().get("mail/1") == STORED
    assert redisServer.calls("del") == 0


@pytest_twisted.ensureDeferred
async def test_removed_when_the_job_fails_for_good(rabbitmq, amqp, smtpServer, queues, redisServer):
    store = redisServer.client()
    store.set("mail/1", STORED)
    store.set("mail/2", STORED)
    config = makeConfig(rabbitmq, smtpServer, queues, messageStore=redisServer.url, retries=[1])
    async with running(MailerService(config, plugins=[])):
        await publishAll(
            amqp,
            queues["outbox"],
            # refused at RCPT (550), and refused for now (451): retried
            [keyJob(1, recipient="reject@example.com"), keyJob(2, recipient="tempfail@example.com")],
        )
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
        (notice,) = decoded(await amqp.collect(queues["retry"], 1))
    assert kinds(failure) == ["rcptto/error"] and kinds(notice) == ["rcptto/error"]
    # the job that ended lost its message; the one to retry keeps it
    assert store.exists("mail/1") == 0 and store.get("mail/2") == STORED


@pytest_twisted.ensureDeferred
async def test_a_bounce_quotes_the_loaded_message(rabbitmq, amqp, smtpServer, queues, redisServer):
    redisServer.client().set("mail/1", STORED)
    dsnQueue = queues["outbox"] + ".dsn"
    config = makeConfig(rabbitmq, smtpServer, queues, messageStore=redisServer.url, dsnQueue=dsnQueue)
    async with running(MailerService(config, plugins=[])):
        await publishAll(
            # refused after its body: the message was loaded
            amqp, queues["outbox"], [keyJob(1, recipient="rejectdata@example.com", dsn={"ret": "FULL"})]
        )
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
        (bounce,) = decoded(await amqp.collect(dsnQueue, 1))
    assert kinds(failure) == ["message/error"]
    report = message_from_bytes(bounce["mime"].encode())
    (original,) = [part for part in report.walk() if part.get_content_type() == "message/rfc822"]
    # the message as loaded from the store, though the store no longer has it
    assert original.get_payload(0)["Subject"] == "stored"
    assert redisServer.client().exists("mail/1") == 0


@pytest_twisted.ensureDeferred
async def test_a_missing_key_is_storage_error(rabbitmq, amqp, smtpServer, queues, redisServer):
    config = makeConfig(rabbitmq, smtpServer, queues, messageStore=redisServer.url)
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [keyJob(1)])
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
        # the envelope went while the store was read; the transaction is reset
        await smtpServer.waitUntil(
            lambda server: any("rset" in c.commands for c in server.connections.values()), "RSET"
        )
    assert kinds(failure) == ["storage/error"]
    assert failure["results"][0]["description"] == (
        f"the message store {redisServer.url} has nothing under the key 'mail/1'; the job fails for good; "
        f"store the message before publishing its job, or give it in 'mime'"
    )
    assert smtpServer.messages == []


@pytest_twisted.ensureDeferred
async def test_a_store_that_is_down_is_retried_until_it_is_back(
    rabbitmq, amqp, smtpServer, queues, startRedis
):
    server = startRedis(password="s3cret-pw")
    server.stop()
    config = makeConfig(rabbitmq, smtpServer, queues, messageStore=server.url, retries=[1])
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [keyJob(1)])
        (notice,) = decoded(await amqp.collect(queues["retry"], 1))
        server.start()
        server.client().set("mail/1", STORED)
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (received,) = await smtpServer.waitForMessages(1)
    assert kinds(notice) == ["storage/lost"]
    entry = notice["results"][0]
    assert entry["description"].startswith(
        f"the message store redis://***@127.0.0.1:{server.port}/0 could not be used for key 'mail/1': ConnectionError"
    )
    assert entry["description"].endswith("; the job is tried again later")
    assert "s3cret-pw" not in json.dumps(success)
    assert kinds(success)[-1] == "message/accepted"
    assert set(kinds(success)[:-1]) == {"storage/lost"}
    assert received.data == STORED


@pytest_twisted.ensureDeferred
async def test_a_job_deferred_by_a_throttle_is_not_read(rabbitmq, amqp, smtpServer, queues, redisServer):
    store = redisServer.client()
    store.set("mail/1", STORED)
    store.set("mail/2", STORED)
    config = makeConfig(
        rabbitmq,
        smtpServer,
        queues,
        messageStore=redisServer.url,
        messagesPerMinute=1,
        destinationBacklog=0,
        delayBuckets=[600],
    )
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [keyJob(1), keyJob(2)])
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (parked,) = decoded(await amqp.collect(f"{queues['outbox']}.delay.600s", 1))
    assert kinds(parked) == ["process/deferred"]
    # one read, for the job that was sent; the parked one keeps its message
    assert redisServer.calls("getrange") == 1
    assert store.exists(success["key"]) == 0 and store.get(parked["key"]) == STORED


@pytest_twisted.ensureDeferred
async def test_without_a_store_a_key_job_is_invalid(rabbitmq, amqp, smtpServer, queues):
    config = makeConfig(rabbitmq, smtpServer, queues)
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [keyJob(1)])
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
    assert kinds(failure) == ["process/invalid"]
    assert failure["results"][0]["description"] == (
        "the job has 'key' 'mail/1' and no 'mime', and no message store is configured to load it from; "
        "start mqtwist with --message-store (e.g. redis://127.0.0.1:6379/0), or give the message in 'mime'"
    )
    # decided before any connection
    assert smtpServer.connections == {}
