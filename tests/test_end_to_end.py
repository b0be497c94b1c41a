"""
The whole path with real parts: JSON published to a real RabbitMQ outbox,
L{MailerService} delivering to a real SMTP server (aiosmtpd in its own
process), results read back from the real result queues.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import pytest_twisted
from helpers_endtoend import decoded, job, makeConfig, normalised, publishAll, running, stopLogging
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

from mqtwist import COMPLETE, CONTINUE, PermanentFailure
from mqtwist.content.message import Message
from mqtwist.dataplugin.interfaces import IDataPlugin
from mqtwist.service import MailerService

#: messages in the byte-exactness run
MESSAGES = 1000


@pytest_twisted.ensureDeferred
async def test_messages_arrive_byte_exact_with_one_success_result(rabbitmq, amqp, smtpServer, queues):
    bodies = {
        n: [
            "Subject: plain\r\n\r\nhello\r\n",
            "Subject: bare LF\n\nline one\n.dot first\n..two dots\nno final newline",
            "Subject: bare CR\r\rline\r.\r\n",
            "Subject: \u00e9t\u00e9\r\n\r\n8-bit caf\u00e9 \u2713\r\n",
            "Subject: long lines\r\n\r\n" + ("x" * 998 + "\r\n") * 20 + ".\r\n",
        ][n % 5]
        for n in range(MESSAGES)
    }
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [job(n, mime=body, tag=n) for n, body in bodies.items()])
        success = decoded(await amqp.collect(queues["success"], MESSAGES))
        results = decoded(await amqp.collect(queues["results"], MESSAGES))
        received = await smtpServer.waitForMessages(MESSAGES)

    byRecipient = {m.rcptTos[0]: m for m in received}
    assert len(byRecipient) == MESSAGES
    for n, body in bodies.items():
        message = byRecipient[f"rcpt{n}@example.com"]
        assert message.data == normalised(body)
        assert message.mailFrom == "sender@example.org"
    assert sorted(r["id"] for r in success) == sorted(r["id"] for r in results)
    for result in success:
        n = result["tag"]
        assert result["id"] == f"job-{n}"
        assert "mime" not in result
        (entry,) = result["results"]
        assert entry["state"] == "message" and entry["result"] == "accepted"
        assert entry["code"] == 250
        assert entry["to"] == "127.0.0.1" and entry["from"] == "127.0.0.1"
        assert entry["mta"]
        assert entry["messages"] >= 1
        assert entry["sent"]["data"] >= len(normalised(bodies[n]))
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", entry["time"])
    # connections were reused up to the per-connection limit, with no RSET
    config = service.config
    connections = smtpServer.connections.values()
    assert all(c.messages <= config.maxMessagesPerConnection for c in connections)
    assert len(connections) <= MESSAGES // config.maxMessagesPerConnection + config.maxConnectionsPerDestination
    assert sum(c.rsets for c in smtpServer.connections.values()) == 0
    assert await amqp.count(queues["outbox"]) == 0


@implementer(IDataPlugin)
class AsyncRewrite:
    """
    Replaces the body a little later, as a plugin that fetched it would.
    """

    name = "rewrite"

    def smtpOutData(self, context, connection, message):
        async def rewrite():
            await deferLater(context.reactor, 0.001, lambda: None)
            message.setMime(message.mime.replace(b"original", b"rewritten by " + connection.hostname.encode()))
            return CONTINUE

        return rewrite()


@implementer(IDataPlugin)
class Stamp:
    name = "stamp"

    def smtpOutData(self, context, connection, message):
        message.setMime(b"X-Stamp: 1\r\n" + message.mime)
        d: Deferred = Deferred()
        context.reactor.callLater(0, d.callback, COMPLETE)
        return d


@implementer(IDataPlugin)
class NeverRuns:
    name = "zz-never"

    def smtpOutData(self, context, connection, message):
        raise AssertionError("COMPLETE must skip the remaining plugins")


@pytest_twisted.ensureDeferred
async def test_plugins_change_the_body_not_the_published_json(rabbitmq, amqp, smtpServer, queues):
    config = makeConfig(rabbitmq, smtpServer, queues)
    service = MailerService(config, plugins=[AsyncRewrite(), Stamp(), NeverRuns()])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [job(1, mime="Subject: s\r\n\r\noriginal\r\n", keepmime=True)])
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (received,) = await smtpServer.waitForMessages(1)
    assert received.data == b"X-Stamp: 1\r\nSubject: s\r\n\r\nrewritten by " + received_mta(success) + b"\r\n"
    assert success["mime"] == "Subject: s\r\n\r\noriginal\r\n"


def received_mta(result: dict[str, Any]) -> bytes:
    return result["results"][0]["mta"].encode()


@implementer(IDataPlugin)
class AlwaysFails:
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def smtpOutData(self, context, connection, message):
        self.calls += 1
        d: Deferred = Deferred()
        context.reactor.callLater(0, d.errback, RuntimeError("backend down"))
        return d


@pytest_twisted.ensureDeferred
async def test_failing_plugin_gives_data_error_and_retries(rabbitmq, amqp, smtpServer, queues):
    plugin = AlwaysFails()
    config = makeConfig(rabbitmq, smtpServer, queues, pluginRuns=2, retries=[1])
    service = MailerService(config, plugins=[plugin])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [job(1, maxattempts=2)])
        (notice,) = decoded(await amqp.collect(queues["retry"], 1))
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
    assert plugin.calls == 4  # two chain runs in each of two attempts
    assert [e["state"] + "/" + e["result"] for e in failure["results"]] == [
        "data/error", "data/error", "process/timeout",
    ]
    for entry in failure["results"][:2]:
        assert entry["plugin"] == "broken"
        assert "backend down" in entry["description"]
    assert "maxattempts 2" in failure["results"][2]["description"]
    assert len(notice["results"]) == 1 and "mime" not in notice
    assert smtpServer.messages == []
    # the transaction was reset and the connection kept for the next message
    assert sum(c.rsets for c in smtpServer.connections.values()) == 2
    assert len(smtpServer.connections) == 1


@implementer(IDataPlugin)
class Refuses:
    name = "refuses"

    async def smtpOutData(self, context, connection, message):
        raise PermanentFailure("this recipient is blocked by policy")


@pytest_twisted.ensureDeferred
async def test_permanent_failure_from_a_plugin_ends_the_message(rabbitmq, amqp, smtpServer, queues):
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[Refuses()])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [job(1)])
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
        (result,) = decoded(await amqp.collect(queues["results"], 1))
    assert failure == result
    (entry,) = failure["results"]
    assert (entry["state"], entry["result"], entry["plugin"]) == ("data", "error", "refuses")
    assert "blocked by policy" in entry["description"]
    assert await amqp.count(queues["retry"]) == 0


@pytest_twisted.ensureDeferred
async def test_invalid_messages_get_process_invalid_and_are_acked(rabbitmq, amqp, smtpServer, queues):
    bad = [
        b"not json at all",
        b"\xff\xfe binary",
        b"[1, 2, 3]",
        b'{"mime": "x"}',
        b'{"recipient": "no-at-sign", "mime": "x", "id": "keep-me"}',
        b'{"recipient": "a\\r\\nRCPT TO:<evil@x>@example.com", "mime": "x"}',
        b'{"recipient": "a@example.com", "mime": 12}',
        b'{"recipient": "a@example.com", "mime": "x", "retries": "often"}',
        b'{"recipient": "a@example.com", "mime": {"from": "a@example.org", "text": 5}}',
        b'{"id": "nan-1", "recipient": "a@example.com", "mime": "x", "maxattempts": NaN}',
    ]
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    with capturedLogs() as events:
        async with running(service):
            await publishAll(amqp, queues["outbox"], bad)
            published = await amqp.collect(queues["failure"], len(bad))
            results = decoded(await amqp.collect(queues["results"], len(bad)))
            assert await amqp.count(queues["outbox"]) == 0
    failures = decoded(published)
    assert len(results) == len(bad)
    # strict JSON out, whatever came in: a bare NaN would break strict parsers
    for body in published:
        json.loads(body.body, parse_constant=lambda name: pytest.fail(f"{name} in a result"))
    (nan,) = [f for f in failures if "NaN" in f.get("input", "")]
    assert "NaN is not a JSON number" in nan["results"][0]["description"]
    refused = [formatEvent(e) for e in events if "refused outbox message" in e.get("log_format", "")]
    assert len(refused) == len(bad)
    assert any(line.startswith("refused outbox message keep-me: ") for line in refused)
    assert sum(line.startswith("refused outbox message (no id): ") for line in refused) == 5
    # the CR/LF of the bad recipient is escaped in the log
    assert any(line.startswith("refused outbox message to a\\r\\nRCPT TO:") for line in refused)
    for failure in failures:
        (entry,) = failure["results"]
        assert (entry["state"], entry["result"]) == ("process", "invalid")
        assert entry["description"]
    assert {f.get("id") for f in failures} >= {"keep-me"}
    assert any("control character" in f["results"][0]["description"] for f in failures)
    assert any("mime.text" in f["results"][0]["description"] for f in failures)
    assert smtpServer.messages == []


@pytest_twisted.ensureDeferred
async def test_server_replies_become_results(rabbitmq, amqp, smtpServer, queues):
    config = makeConfig(rabbitmq, smtpServer, queues, retries=[1])
    service = MailerService(config, plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [
            job(1, recipient="reject@example.com"),
            job(2, recipient="tempfail@example.com", maxattempts=2),
            job(3, recipient="rejectdata@example.com"),
        ])
        failures = {f["id"]: f for f in decoded(await amqp.collect(queues["failure"], 3))}
        notices = decoded(await amqp.collect(queues["retry"], 1))
    (rejected,) = failures["job-1"]["results"]
    assert (rejected["state"], rejected["result"], rejected["code"], rejected["status"]) == ("rcptto", "error", 550, "5.1.1")
    temp = failures["job-2"]["results"]
    assert [(e["state"], e.get("code")) for e in temp] == [("rcptto", 451), ("rcptto", 451), ("process", None)]
    assert temp[0]["status"] == "4.3.0"
    assert notices[0]["id"] == "job-2"
    (data,) = failures["job-3"]["results"]
    assert (data["state"], data["code"], data["status"]) == ("message", 554, "5.6.0")


@pytest_twisted.ensureDeferred
async def test_queue_overrides_and_unknown_properties(rabbitmq, amqp, smtpServer, queues):
    mine = queues["success"] + ".mine"
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await amqp.declare(mine)
        await publishAll(amqp, queues["outbox"], [
            job(1, queues={"success": mine, "results": None}, campaign={"name": "x", "n": [1, 2]}),
        ])
        (result,) = decoded(await amqp.collect(mine, 1))
        assert await amqp.count(queues["results"]) == 0
        assert await amqp.count(queues["success"]) == 0
    assert result["campaign"] == {"name": "x", "n": [1, 2]}
    assert result["queues"] == {"success": mine, "results": None}


@implementer(IDataPlugin)
class Gate:
    """
    Holds every message until C{release} is called.
    """

    name = "gate"

    def __init__(self) -> None:
        self.waiting: list[Deferred] = []
        self.arrived: Deferred = Deferred()

    def smtpOutData(self, context, connection, message):
        d: Deferred = Deferred()
        self.waiting.append(d)
        if not self.arrived.called:
            self.arrived.callback(None)
        return d

    def release(self) -> None:
        for d in self.waiting:
            d.callback(CONTINUE)


@pytest_twisted.ensureDeferred
async def test_stopping_lets_deliveries_in_flight_finish(rabbitmq, amqp, smtpServer, queues):
    gate = Gate()
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues, pluginTimeout=60), plugins=[gate])
    service.startService()
    await service.whenConnected()
    await publishAll(amqp, queues["outbox"], [job(1)])
    await gate.arrived
    stopped = service.stopService()
    assert not stopped.called
    gate.release()
    await stopped
    (success,) = decoded(await amqp.collect(queues["success"], 1))
    assert success["id"] == "job-1"
    assert await amqp.count(queues["outbox"]) == 0


@pytest_twisted.ensureDeferred
async def test_embedded_in_an_application_and_deliver_without_amqp(rabbitmq, amqp, smtpServer, queues):
    application = MultiService()
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    service.setServiceParent(application)
    application.startService()
    try:
        await service.whenConnected()
        entry = await service.deliver(Message.fromJSON(job(7)))
    finally:
        await application.stopService()
    assert entry.accepted and entry.code == 250
    (received,) = smtpServer.messages
    assert received.rcptTos == ("rcpt7@example.com",)


@pytest_twisted.ensureDeferred
async def test_what_stopping_cannot_finish_goes_back_to_the_outbox(rabbitmq, amqp, smtpServer, queues):
    gate = Gate()  # never released
    config = makeConfig(rabbitmq, smtpServer, queues, pluginTimeout=60, shutdownTimeout=0.5)
    service = MailerService(config, plugins=[gate])
    service.startService()
    await service.whenConnected()
    await publishAll(amqp, queues["outbox"], [job(1)])
    await gate.arrived
    events = await stopLogging(service)
    assert not [e for e in events if e.get("log_failure") is not None]
    assert any("stopped unfinished" in e.get("log_format", "") for e in events)
    # the plugin run was cancelled with the delivery: none goes on (a run
    # left behind timed out 60 s later, in another test's log, and ran again)
    assert [d.called for d in gate.waiting] == [True]
    assert smtpServer.messages == []
    assert await amqp.count(queues["results"]) == 0
    (again,) = await amqp.collect(queues["outbox"], 1)
    assert again.redelivered
    assert json.loads(again.body)["id"] == "job-1"


@pytest_twisted.ensureDeferred
async def test_long_header_edits_are_applied_off_the_reactor_thread(rabbitmq, amqp, smtpServer, queues, monkeypatch):
    """
    The email package parses some header values in quadratic time (an
    8,000-character To of quotes takes 0.7 s): edits longer than a few
    hundred characters are applied in a thread before the attempt, short
    ones on the reactor thread when the message is sent; both arrive.
    """
    import threading

    import mqtwist.delivery.transaction
    import mqtwist.outbox.processor

    threads: list[tuple[str, bool]] = []

    def recording(module: Any) -> Any:
        apply = module.applyHeaderEdits

        def applyHeaderEdits(mime: bytes, edits: Any) -> bytes:
            threads.append((next(iter(edits["append"])), threading.current_thread() is threading.main_thread()))
            return apply(mime, edits)

        return applyHeaderEdits

    for module in (mqtwist.outbox.processor, mqtwist.delivery.transaction):
        monkeypatch.setattr(module, "applyHeaderEdits", recording(module))
    short = job(1, headers={"append": {"X-Short": "s" * 20}})
    words = " ".join(["long"] * 70)
    long = job(2, headers={"append": {"X-Long": words}})
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [short, long])
        await amqp.collect(queues["success"], 2)
        received = await smtpServer.waitForMessages(2)
    assert sorted(threads) == [("X-Long", False), ("X-Short", True)]
    data = {m.rcptTos[0]: m.data for m in received}
    assert b"\r\nX-Short: " + b"s" * 20 + b"\r\n" in data["rcpt1@example.com"]
    assert b"\r\nX-Long: " + words.encode() + b"\r\n" in data["rcpt2@example.com"].replace(b"\r\n ", b" ")


@pytest_twisted.ensureDeferred
async def test_a_pool_and_the_default_addresses_choose_where_mail_comes_from(rabbitmq, amqp, smtpServer, queues):
    """
    A job's C{pool} sends from that pool's addresses, one without C{ips} or
    C{pool} from C{--default-ips}: the receiving server sees the connection
    come from them (loopback addresses, which this host has).
    """
    from mqtwist.config import PoolRule

    config = makeConfig(
        rabbitmq, smtpServer, queues, pools=[PoolRule("bulk", ("127.0.0.7",))], defaultIps=["127.0.0.8"]
    )
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [job(1, pool="bulk"), job(2)])
        await amqp.collect(queues["success"], 2)
        received = await smtpServer.waitForMessages(2)
    assert {m.rcptTos[0]: m.peer[0] for m in received} == {
        "rcpt1@example.com": "127.0.0.7",
        "rcpt2@example.com": "127.0.0.8",
    }
