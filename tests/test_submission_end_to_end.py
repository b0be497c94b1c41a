"""
Mail taken in over SMTP, end to end, from clients nobody here wrote:
swaks, Python's smtplib and Postfix's smtp-source submit to the service's
C{--submission} server; each recipient's job lands on a real RabbitMQ
queue and is delivered to a receiving SMTP server (aiosmtpd) with exactly
the bytes the client sent, the server's Received header put on top.  A
broker stopped while a client is in DATA gives 451, and once it is back
no message answered with 250 is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import ssl
from typing import Any

import pytest
import pytest_twisted
from helpers_endtoend import makeConfig, running
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from mqtwist.service import MailerService
from mqtwist.submission.access import hashPassword

SWAKS = shutil.which("swaks")
SMTP_SOURCE = shutil.which("smtp-source", path=os.environ.get("PATH", "") + ":/usr/sbin")

needsSwaks = pytest.mark.skipif(SWAKS is None, reason="needs swaks (Debian: apt-get install swaks, or ./dev test)")
needsSmtpSource = pytest.mark.skipif(
    SMTP_SOURCE is None, reason="needs Postfix's smtp-source (Debian: apt-get install postfix, or ./dev test)"
)


def submissionConfig(rabbitmq: Any, smtpServer: Any, queues: dict[str, str], **settings: Any) -> Any:
    return makeConfig(rabbitmq, smtpServer, queues, submission=["tcp:0:interface=127.0.0.1"], **settings)


def portOf(service: MailerService) -> int:
    (listener,) = service.submissionListeners
    assert listener.port is not None, "the submission server is not listening"
    return listener.port.getHost().port


def splitReceived(data: bytes) -> tuple[bytes, bytes]:
    """
    The first header field of C{data} (a Received field, folded lines
    included) and the rest, as delivered.
    """
    assert data.startswith(b"Received: "), data[:200]
    end = 0
    while True:
        end = data.index(b"\r\n", end) + 2
        if data[end : end + 1] not in (b" ", b"\t"):
            return data[:end], data[end:]


def sendmail(port: int, sender: str, recipients: list[str], message: bytes, **kwargs: Any) -> Any:
    """smtplib's sendmail in a thread: a Deferred of its refused recipients."""

    def send() -> Any:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="smtplib.client.test", timeout=30) as client:
            return client.sendmail(sender, recipients, message, **kwargs)

    return threads.deferToThread(send)


# -- smtplib -------------------------------------------------------------------


MESSAGE = (
    b"From: Sender <sender@example.org>\r\n"
    b"To: a@example.com, b@example.net\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <e2e-1@example.org>\r\n"
    b"\r\n"
    b"line one\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b"\r\n"
    b"8-bit UTF-8: caf\xc3\xa9 \xe2\x9c\x93\r\n"
    + b"x" * 990
    + b"\r\n"
)


@pytest_twisted.ensureDeferred
async def test_smtplib_each_recipient_delivered_byte_exact(rabbitmq, amqp, smtpServer, queues):
    service = MailerService(submissionConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        refused = await sendmail(portOf(service), "sender@example.org", ["a@example.com", "b@example.net"], MESSAGE)
        assert refused == {}
        received = await smtpServer.waitForMessages(2)
    assert sorted(m.rcptTos for m in received) == [("a@example.com",), ("b@example.net",)]
    for message in received:
        assert message.mailFrom == "sender@example.org"
        header, rest = splitReceived(message.data)
        assert rest == MESSAGE
        assert b"smtplib.client.test" in header
        assert b"127.0.0.1" in header
    # one Received header for both jobs: the message was taken in once
    assert splitReceived(received[0].data)[0] == splitReceived(received[1].data)[0]
    assert await amqp.count(queues["outbox"]) == 0


@pytest_twisted.ensureDeferred
async def test_smtplib_dsn_parameters_and_incoming_properties_are_in_the_jobs(rabbitmq, amqp, smtpServer, queues):
    inbox = queues["outbox"] + ".in"
    config = submissionConfig(rabbitmq, smtpServer, queues, submissionQueue=inbox, submissionHostname="mx.submission.test")
    service = MailerService(config, plugins=[])
    async with running(service):
        port = portOf(service)
        await sendmail(
            port,
            "sender@example.org",
            ["a@example.com", "b@example.net"],
            MESSAGE,
            mail_options=["RET=HDRS", "ENVID=QQ+2B314"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;a+2Bx@example.com"],
        )
        received = await amqp.collect(inbox, 2)
    jobs = sorted((json.loads(r.body) for r in received), key=lambda job: job["recipient"])
    assert [job["recipient"] for job in jobs] == ["a@example.com", "b@example.net"]
    assert all(r.properties["delivery-mode"] == 2 for r in received)
    for job in jobs:
        assert job["envelope"] == "sender@example.org"
        assert job["dsn"] == {"notify": ["SUCCESS", "FAILURE"], "ret": "HDRS", "orcpt": "rfc822;a+x@example.com", "envid": "QQ+314"}
        header, rest = splitReceived(job["mime"].encode())
        assert rest == MESSAGE
        assert b"mx.submission.test" in header
        assert job["hostname"] == "mx.submission.test"
        assert job["connection"]["remote-ip"] == "127.0.0.1"
        assert (job["connection"]["local-ip"], job["connection"]["local-port"]) == ("127.0.0.1", port)
        assert job["connection"]["helo"] == "smtplib.client.test"
        assert job["connection"]["secure"] is False
        assert "user" not in job["connection"]
    assert jobs[0]["message-id"] != jobs[1]["message-id"]
    assert jobs[0]["received"] == jobs[1]["received"]
    # nothing went to the outbox, so nothing was delivered
    assert await amqp.count(queues["outbox"]) == 0
    assert smtpServer.messages == []
    await amqp.delete(inbox)


@pytest_twisted.ensureDeferred
async def test_a_message_that_is_not_utf8_is_delivered_byte_for_byte(rabbitmq, amqp, smtpServer, queues):
    # 8-bit ISO-8859-1, as a legacy system sends it: the job carries the
    # bytes that are not UTF-8 as escapes, and they go out as they came,
    # through a retry copy too (the first attempt gets 451)
    latin1 = b"From: a@example.org\r\nSubject: K\xf6ln\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nGr\xfc\xdfe\r\n"
    service = MailerService(submissionConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        refused = await sendmail(portOf(service), "sender@example.org", ["a@example.com", "tempfail@example.com"], latin1)
        assert refused == {}
        (delivered,) = await smtpServer.waitForMessages(1)
        # tempfail@ is refused with 451: its copy waits for the next attempt
        # in the 1 s delay queue, and is read again each time it comes back
        for _ in range(200):
            if service.metrics.totals("mqtwist_outcomes_total", "outcome").get("waiting", 0) >= 2:
                break
            await deferLater(reactor, 0.1)
        waiting = service.metrics.totals("mqtwist_outcomes_total", "outcome")
    _, body = splitReceived(delivered.data)
    assert body == latin1
    assert waiting.get("waiting", 0) >= 2 and "invalid" not in waiting, waiting


# -- swaks ---------------------------------------------------------------------


async def swaks(*arguments: str) -> str:
    """Run swaks; its whole transcript, which the test fails with if it failed."""
    out, err, code = await getProcessOutputAndValue(SWAKS, arguments, env=dict(os.environ), reactor=reactor)
    transcript = (out + err).decode("utf-8", "replace")
    assert code == 0, f"swaks {' '.join(arguments)} exited with {code}:\n{transcript}"
    return transcript


SWAKS_MESSAGE = (
    b"From: swaks@example.org\r\nTo: c@example.com\r\nSubject: swaks\r\nMessage-ID: <swaks-1@example.org>\r\n\r\n"
    b"from swaks\r\n.\r\n..\r\n.dot\r\n\r\ntrailing blank line above\r\n"
)


@needsSwaks
@pytest_twisted.ensureDeferred
async def test_swaks_through_a_recording_proxy_delivered_as_sent(
    rabbitmq, amqp, smtpServer, queues, startRecordingProxy, tmp_path
):
    data = tmp_path / "message.eml"
    data.write_bytes(SWAKS_MESSAGE)
    service = MailerService(submissionConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        proxy = startRecordingProxy(portOf(service))
        transcript = await swaks(
            "--server", f"127.0.0.1:{proxy.port}", "--helo", "swaks.client.test",
            "--from", "swaks@example.org", "--to", "c@example.com,d@example.net", "--data", str(data),
        )
        # the reply to the final dot
        assert transcript.split("\n -> .\n", 1)[1].startswith("<-  250 "), transcript
        received = await smtpServer.waitForMessages(2)
        (connection,) = await proxy.waitForClosed()
    commands, bodies = connection.transcript()
    (sent,) = bodies
    # swaks ends the file with a CRLF of its own: the proxy's bytes are the reference
    assert sent.startswith(SWAKS_MESSAGE)
    assert sorted(m.rcptTos for m in received) == [("c@example.com",), ("d@example.net",)]
    for message in received:
        assert message.mailFrom == "swaks@example.org"
        assert splitReceived(message.data)[1] == sent


# -- smtp-source ---------------------------------------------------------------


@needsSmtpSource
@pytest_twisted.ensureDeferred
async def test_smtp_source_parallel_sessions_every_message_delivered_as_sent(
    rabbitmq, amqp, smtpServer, queues, startRecordingProxy
):
    count = 40
    service = MailerService(submissionConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        proxy = startRecordingProxy(portOf(service))
        out, err, code = await getProcessOutputAndValue(
            SMTP_SOURCE,
            ["-s", "5", "-m", str(count), "-l", "3000", "-N", "-M", "source.client.test",
             "-f", "source@example.org", "-t", "rcpt@example.com", f"127.0.0.1:{proxy.port}"],
            env=dict(os.environ),
            reactor=reactor,
        )
        # smtp-source stops at the first reply that is not positive
        assert code == 0, (out + err).decode(errors="replace")
        received = await smtpServer.waitForMessages(count, timeout=60)
        connections = await proxy.waitForClosed()
    sent = [body for connection in connections for body in connection.transcript()[1]]
    assert len(sent) == count
    # -N numbers the recipients: each message has its own
    recipients = {m.rcptTos[0] for m in received}
    assert len(recipients) == count
    assert all(r.endswith("rcpt@example.com") for r in recipients)
    delivered = sorted(splitReceived(m.data)[1] for m in received)
    assert delivered == sorted(sent)
    assert all(len(body) >= 3000 for body in sent)


# -- the broker goes away --------------------------------------------------------


def numbered(n: int) -> bytes:
    return (
        f"From: sender@example.org\r\nTo: r{n}@example.com\r\nMessage-ID: <outage-{n}@example.org>\r\n"
        f"Subject: {n}\r\n\r\nmessage {n}\r\n"
    ).encode()


def sendNumbered(port: int, n: int) -> int:
    """Send message C{n} with smtplib; the reply code that ended it (250 when accepted)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="outage.client.test", timeout=60) as client:
            client.sendmail("sender@example.org", [f"r{n}@example.com"], numbered(n))
    except smtplib.SMTPResponseException as e:
        return e.smtp_code
    except smtplib.SMTPRecipientsRefused as e:
        return next(iter(e.recipients.values()))[0]
    return 250


def deliveredNumbers(smtpServer: Any) -> list[int]:
    return [int(m.group(1)) for m in (re.search(rb"<outage-(\d+)@", msg.data) for msg in smtpServer.messages) if m]


@pytest_twisted.ensureDeferred
async def test_broker_stopped_during_data_gives_451(rabbitmq, rabbitmqNode, amqp, smtpServer, queues):
    service = MailerService(submissionConfig(rabbitmq, smtpServer, queues, reconnectMaxDelay=1.0), plugins=[])
    async with running(service):
        port = portOf(service)
        # (connecting reads the greeting: in a thread, as every blocking call)
        client = await threads.deferToThread(
            smtplib.SMTP, "127.0.0.1", port, local_hostname="outage.client.test", timeout=60
        )
        try:
            await threads.deferToThread(client.ehlo)
            assert (await threads.deferToThread(client.mail, "sender@example.org"))[0] == 250
            assert (await threads.deferToThread(client.rcpt, "r1@example.com"))[0] == 250
            await rabbitmqNode.rabbitmqctl("stop_app")
            try:
                code, text = await threads.deferToThread(client.data, numbered(1))
            finally:
                await rabbitmqNode.rabbitmqctl("start_app")
            assert (code, text) == (451, b"4.3.0 Message not queued: the queue is not available; try again later")
            await threads.deferToThread(client.quit)
        finally:
            client.close()
        await service.whenConnected()
        await amqp.connect()
        # the client sends it again, now accepted and delivered
        assert await threads.deferToThread(sendNumbered, port, 1) == 250
        (delivered,) = await smtpServer.waitForMessages(1, timeout=30)
    assert splitReceived(delivered.data)[1] == numbered(1)


@pytest_twisted.ensureDeferred
async def test_no_message_answered_250_is_lost_when_the_broker_stops_under_load(
    rabbitmq, rabbitmqNode, amqp, smtpServer, queues
):
    workers, perWorker = 4, 15
    service = MailerService(submissionConfig(rabbitmq, smtpServer, queues, reconnectMaxDelay=1.0), plugins=[])
    replies: dict[int, int] = {}
    stopped: defer.Deferred[None] | None = None
    restarted: defer.Deferred[None] | None = None

    async def stopBroker() -> None:
        await rabbitmqNode.rabbitmqctl("stop_app")

    async def restartBroker() -> None:
        await stopped
        await rabbitmqNode.rabbitmqctl("start_app")

    async def worker(port: int, numbers: range) -> None:
        nonlocal stopped, restarted
        for n in numbers:
            if stopped is not None:
                # the clients carry on once the broker is down
                await stopped
            replies[n] = await threads.deferToThread(sendNumbered, port, n)
            accepted = sum(code == 250 for code in replies.values())
            refused = sum(code != 250 for code in replies.values())
            # the broker stops once ten were accepted, and comes back once
            # several clients were refused
            if stopped is None and accepted >= 10:
                stopped = defer.ensureDeferred(stopBroker())
            if restarted is None and refused >= 4:
                restarted = defer.ensureDeferred(restartBroker())

    async with running(service):
        port = portOf(service)
        try:
            await defer.gatherResults(
                [defer.ensureDeferred(worker(port, range(w * perWorker, (w + 1) * perWorker))) for w in range(workers)],
                consumeErrors=True,
            )
        finally:
            if restarted is None:
                restarted = defer.ensureDeferred(restartBroker() if stopped else rabbitmqNode.rabbitmqctl("start_app"))
            await restarted
        await service.whenConnected()
        await amqp.connect()
        # after the outage every message is taken again
        more = range(workers * perWorker, workers * perWorker + 5)
        for n in more:
            replies[n] = await threads.deferToThread(sendNumbered, port, n)
        accepted = {n for n, code in replies.items() if code == 250}
        await smtpServer.waitUntil(
            lambda server: accepted <= set(deliveredNumbers(server)), "every message answered 250 delivered", timeout=60
        )
    refused = {n: code for n, code in replies.items() if code != 250}
    assert len(accepted) >= 10 + len(more)
    assert refused and set(refused.values()) <= {451, 421}, refused
    assert all(replies[n] == 250 for n in more)
    delivered = deliveredNumbers(smtpServer)
    # at least once: every 250 is there; a refused one may be there too
    # (its jobs were stored but their confirms were lost with the broker)
    assert accepted <= set(delivered)


# -- TLS and AUTH ----------------------------------------------------------------

PASSWORD = "correct horse battery staple"


@pytest.fixture
def usersFile(tmp_path) -> str:
    path = tmp_path / "users.toml"
    path.write_text(
        f'[users.alice]\npassword = "{hashPassword(PASSWORD)}"\n'
        'defaults = { tags = ["alice", "smtp"] }\n'
    )
    return str(path)


def authConfig(rabbitmq: Any, smtpServer: Any, queues: dict[str, str], certificates: dict[str, str], users: str,
               endpoint: str = "tcp:0:interface=127.0.0.1") -> Any:
    return makeConfig(
        rabbitmq, smtpServer, queues,
        submission=[endpoint],
        submissionTrustedNetworks=[],
        submissionUsers=users,
        submissionTlsCertificate=certificates["cert"],
        submissionTlsKey=certificates["key"],
    )


def clientContext(certificates: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certificates["ca"])


@pytest_twisted.ensureDeferred
async def test_smtplib_starttls_and_auth_login(rabbitmq, amqp, smtpServer, queues, certificates, usersFile):
    service = MailerService(authConfig(rabbitmq, smtpServer, queues, certificates, usersFile), plugins=[])

    def send(port: int) -> dict:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="tls.client.test", timeout=30) as client:
            client.starttls(context=clientContext(certificates))
            client.ehlo("tls.client.test")
            client.login("alice", PASSWORD)
            return client.sendmail("sender@example.org", ["a@example.com"], MESSAGE)

    async with running(service):
        assert await threads.deferToThread(send, portOf(service)) == {}
        (delivered,) = await smtpServer.waitForMessages(1)
        (result,) = [json.loads(r.body) for r in await amqp.collect(queues["success"], 1)]
    assert splitReceived(delivered.data)[1] == MESSAGE
    assert result["connection"]["user"] == "alice"
    assert result["connection"]["secure"] is True
    assert result["tags"] == ["alice", "smtp"]
    assert PASSWORD not in json.dumps(result)


@pytest_twisted.ensureDeferred
async def test_untrusted_client_without_auth_or_with_a_wrong_password_queues_nothing(
    rabbitmq, amqp, smtpServer, queues, certificates, usersFile
):
    service = MailerService(authConfig(rabbitmq, smtpServer, queues, certificates, usersFile), plugins=[])

    def withoutAuth(port: int) -> Any:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.starttls(context=clientContext(certificates))
            client.sendmail("sender@example.org", ["a@example.com"], MESSAGE)

    def wrongPassword(port: int) -> Any:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.starttls(context=clientContext(certificates))
            client.login("alice", "wrong")

    async with running(service):
        port = portOf(service)
        with pytest.raises((smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused)) as refused:
            await threads.deferToThread(withoutAuth, port)
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            await threads.deferToThread(wrongPassword, port)
    assert failed.value.smtp_code == 535
    if isinstance(refused.value, smtplib.SMTPRecipientsRefused):
        assert all(500 <= code < 600 for code, _ in refused.value.recipients.values())
    else:
        assert 500 <= refused.value.smtp_code < 600
    assert await amqp.count(queues["outbox"]) == 0
    assert smtpServer.messages == []


@needsSwaks
@pytest_twisted.ensureDeferred
async def test_swaks_starttls_auth_plain_and_implicit_tls(
    rabbitmq, amqp, smtpServer, queues, certificates, usersFile, tmp_path
):
    data = tmp_path / "message.eml"
    data.write_bytes(SWAKS_MESSAGE)
    config = authConfig(rabbitmq, smtpServer, queues, certificates, usersFile)
    config.submission = ["tcp:0:interface=127.0.0.1", "ssl:0:interface=127.0.0.1"]
    service = MailerService(config, plugins=[])
    async with running(service):
        starttls, implicit = (listener.port.getHost().port for listener in service.submissionListeners)
        common = ["--from", "swaks@example.org", "--data", str(data), "--auth-user", "alice", "--auth-password", PASSWORD]
        await swaks("--server", f"127.0.0.1:{starttls}", "--tls", "--auth", "PLAIN", "--to", "c@example.com", *common)
        await swaks("--server", f"127.0.0.1:{implicit}", "--tlsc", "--auth", "LOGIN", "--to", "d@example.net", *common)
        received = await smtpServer.waitForMessages(2)
    assert sorted(m.rcptTos for m in received) == [("c@example.com",), ("d@example.net",)]
    for message in received:
        # swaks ends the file with a CRLF of its own (as the proxied test shows)
        assert splitReceived(message.data)[1] == SWAKS_MESSAGE + b"\r\n"
