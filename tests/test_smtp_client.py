"""
The SMTP client against a real server (aiosmtpd, see L{fixtures_smtp}):
connecting, byte-exact bodies, several messages per connection, scripted
failures, connect and bind failures.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from fixtures_smtp import unusedPort
from twisted.internet import reactor
from twisted.internet.error import TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mqtwist.config import SMTPTimeouts
from mqtwist.errors import AttemptFailed
from mqtwist.smtp.body import encodeBody
from mqtwist.smtp.connect import openConnection
from mqtwist.smtp.protocol import ESMTPClient

TIMEOUTS = SMTPTimeouts(connect=5, greeting=5, ehlo=5, mailfrom=5, rcptto=5, data=5, message=5, rset=5, quit=5)


async def connect(server, **options) -> ESMTPClient:
    return await openConnection(
        reactor, server.host, server.port, ehloName="client.test", timeouts=TIMEOUTS, **options
    )


async def send(client: ESMTPClient, sender: str, recipient: str, body: bytes) -> tuple[int, int, int, int]:
    """One transaction; the codes of the four replies."""
    mail, rcpt = client.mailFrom(sender), client.rcptTo(recipient)
    mailReply, rcptReply = await mail, await rcpt
    data = await client.data()
    final = await client.sendBody(body)
    return mailReply.code, rcptReply.code, data.code, final.code


@pytest_twisted.ensureDeferred
async def test_byteExactBodies(smtpServer) -> None:
    bodies = [
        b"Subject: lf\n\nbare LF line\n.leading dot\n..two dots\n.\nlast line without newline",
        b"Subject: cr\r\rbare CR\rmixed\r\n\n\r",
        b"Subject: 8bit\r\n\r\n\xc3\xa9t\xc3\xa9 \xff\x80 raw bytes\r\n.\r\n",
        b"",
        b"." + b"x" * 900 + b"\n",
    ]
    client = await connect(smtpServer)
    assert client.esmtp and client.pipelining and client.mta == "mx.sink.test"
    assert client.remoteAddress == "127.0.0.1" and client.localAddress == "127.0.0.1"
    for index, body in enumerate(bodies):
        assert await send(client, "sender@example.org", f"rcpt{index}@example.net", body) == (250, 250, 354, 250)
    await client.quit()
    messages = await smtpServer.waitForMessages(len(bodies))
    assert [message.data for message in messages] == [
        b"Subject: lf\r\n\r\nbare LF line\r\n.leading dot\r\n..two dots\r\n.\r\nlast line without newline\r\n",
        b"Subject: cr\r\n\r\nbare CR\r\nmixed\r\n\r\n\r\n",
        b"Subject: 8bit\r\n\r\n\xc3\xa9t\xc3\xa9 \xff\x80 raw bytes\r\n.\r\n",
        b"",
        b"." + b"x" * 900 + b"\r\n",
    ]
    assert [message.rcptTos for message in messages] == [(f"rcpt{i}@example.net",) for i in range(5)]
    assert {message.connection for message in messages} == {1}
    # several messages, no RSET between successful transactions, one QUIT
    assert smtpServer.connections[1].commands == ["ehlo", "quit"]
    assert client.messages == 5
    assert client.bodyBytesSent == sum(len(encodeBody(body)) for body in bodies)
    assert client.bytesSent > client.bodyBytesSent


@pytest_twisted.ensureDeferred
async def test_nullSenderAndOptions(smtpServer) -> None:
    client = await connect(smtpServer)
    mail = await client.mailFrom("", ["BODY=8BITMIME"])
    assert mail.code == 250
    assert (await client.rcptTo("someone@example.net")).code == 250
    assert (await client.data()).code == 354
    assert (await client.sendBody(b"x\n")).code == 250
    await client.quit()
    [message] = await smtpServer.waitForMessages(1)
    assert (message.mailFrom, message.mailOptions) == ("", ("BODY=8BITMIME",))


@pytest_twisted.ensureDeferred
async def test_scriptedReplies(smtpServer) -> None:
    client = await connect(smtpServer)
    mail, rcpt = client.mailFrom("a@example.org"), client.rcptTo("reject@example.net")
    assert (await mail).code == 250
    reply = await rcpt
    assert (reply.code, reply.status, reply.text) == (550, "5.1.1", "recipient rejected by script")
    assert (await client.rset()).code == 250

    mail, rcpt = client.mailFrom("a@example.org"), client.rcptTo("tempfail@example.net")
    await mail
    failure = (await rcpt).failure("rcptto")
    assert (failure.code, failure.status, failure.permanent) == (451, "4.3.0", False)
    await client.rset()

    assert await send(client, "a@example.org", "rejectdata@example.net", b"hi\n") == (250, 250, 354, 554)
    assert await send(client, "a@example.org", "tempdata@example.net", b"hi\n") == (250, 250, 354, 452)
    assert await send(client, "a@example.org", "ok@example.net", b"hi\n") == (250, 250, 354, 250)
    assert client.usable
    await client.quit()
    await smtpServer.waitForMessages(1)
    assert [m.rcptTos for m in smtpServer.rejected] == [("rejectdata@example.net",), ("tempdata@example.net",)]
    assert smtpServer.connections[1].rsets == 2


@pytest_twisted.ensureDeferred
async def test_disconnectAtRcpt(smtpServer) -> None:
    client = await connect(smtpServer)
    mail, rcpt = client.mailFrom("a@example.org"), client.rcptTo("disconnect@example.net")
    assert (await mail).code == 250
    with pytest.raises(AttemptFailed) as caught:
        await rcpt
    assert (caught.value.state, caught.value.result) == ("rcptto", "lost")
    assert not client.usable
    await client.quit()


@pytest_twisted.ensureDeferred
async def test_421AtRcpt(smtpServer) -> None:
    client = await connect(smtpServer)
    mail, rcpt = client.mailFrom("a@example.org"), client.rcptTo("close421@example.net")
    await mail
    assert (await rcpt).code == 421
    assert not client.usable
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_rcptTimeout(smtpServer) -> None:
    timeouts = SMTPTimeouts(connect=5, greeting=5, ehlo=5, rcptto=0.2)
    client = await openConnection(
        reactor, smtpServer.host, smtpServer.port, ehloName="client.test", timeouts=timeouts
    )
    mail, rcpt = client.mailFrom("a@example.org"), client.rcptTo("hang@example.net")
    await mail
    with pytest.raises(AttemptFailed) as caught:
        await rcpt
    assert (caught.value.state, caught.value.result) == ("rcptto", "timeout")
    await client.whenClosed()
    await smtpServer.waitForClosedConnections(1)


@pytest_twisted.ensureDeferred
async def test_heloFallback(startSMTPServer) -> None:
    server = await startSMTPServer(noEhlo=True)
    client = await connect(server)
    assert not client.esmtp and not client.pipelining
    assert await send(client, "a@example.org", "b@example.net", b"hello\n") == (250, 250, 354, 250)
    await client.quit()
    await server.waitForMessages(1)
    assert server.connections[1].commands == ["helo", "quit"]


@pytest_twisted.ensureDeferred
async def test_lockStepServer(startSMTPServer) -> None:
    server = await startSMTPServer(pipelining=False)
    client = await connect(server)
    assert client.esmtp and not client.pipelining
    for n in range(3):
        assert await send(client, "a@example.org", f"b{n}@example.net", b"hello\n") == (250, 250, 354, 250)
    await client.quit()
    assert len(await server.waitForMessages(3)) == 3


#: 1.6 MB: more than socket buffers hold, so that most of it is still unsent
BIG_BODY = (b"x" * 78 + b"\n") * 20000


class DropsMidBody(Protocol):
    """
    An SMTP server that answers the envelope and DATA, then aborts the
    connection once 64 KB of the body have come in.
    """

    def connectionMade(self) -> None:
        self.buffer = b""
        self.bodyBytes: int | None = None
        self.transport.write(b"220 dropper.test ESMTP\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.bodyBytes is not None:
            self.bodyBytes += len(data)
            if self.bodyBytes >= 65536:
                self.transport.abortConnection()
            return
        self.buffer += data
        while b"\r\n" in self.buffer and self.bodyBytes is None:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line.upper() == b"DATA":
                self.transport.write(b"354 go ahead\r\n")
                self.bodyBytes = 0
            else:
                self.transport.write(b"250 dropper.test\r\n")


@pytest_twisted.ensureDeferred
async def test_droppedWhileTheBodyWasBeingSent() -> None:
    """
    A server that goes away in the middle of a body: the description says
    that the body was being sent (and how big it is), and that the message
    may have arrived.
    """
    port = reactor.listenTCP(0, Factory.forProtocol(DropsMidBody), interface="127.0.0.1")
    try:
        client = await openConnection(
            reactor, "127.0.0.1", port.getHost().port, ehloName="client.test", timeouts=TIMEOUTS
        )
        await client.mailFrom("a@example.org")
        await client.rcptTo("b@example.net")
        assert (await client.data()).code == 354
        with pytest.raises(AttemptFailed) as caught:
            await client.sendBody(BIG_BODY)
    finally:
        await port.stopListening()
    size = len(encodeBody(BIG_BODY))
    assert (caught.value.state, caught.value.result) == ("message", "lost")
    assert caught.value.description == (
        f"the connection to 127.0.0.1 was reset or broken off while the message body ({size} bytes) "
        f"was being sent or before the reply to it; the server may or may not have the message"
    )


@pytest_twisted.ensureDeferred
async def test_connectRefused() -> None:
    port = unusedPort()
    with pytest.raises(AttemptFailed) as caught:
        await openConnection(reactor, "127.0.0.1", port, ehloName="client.test", timeouts=TIMEOUTS)
    assert (caught.value.state, caught.value.result) == ("connect", "error")
    assert f"127.0.0.1:{port}" in caught.value.description
    assert "refused" in caught.value.description.lower()


@pytest_twisted.ensureDeferred
async def test_bindToForeignAddress(smtpServer) -> None:
    with pytest.raises(AttemptFailed) as caught:
        await connect(smtpServer, bindAddress="192.0.2.1")
    assert (caught.value.state, caught.value.result) == ("bind", "error")
    assert "192.0.2.1" in caught.value.description
    with pytest.raises(AttemptFailed) as caught:
        await connect(smtpServer, bindAddress="not-an-address")
    assert (caught.value.state, caught.value.result) == ("bind", "error")


@pytest_twisted.ensureDeferred
async def test_bindToLocalAddress(smtpServer) -> None:
    client = await connect(smtpServer, bindAddress="127.0.0.2")
    assert client.localAddress == "127.0.0.2"
    await client.quit()
    await smtpServer.waitUntil(lambda s: s.connections.get(1) and s.connections[1].closed, "close")
    assert smtpServer.connections[1].peer[0] == "127.0.0.2"


@pytest_twisted.ensureDeferred
async def test_hostNameAndNoDelay(smtpServer) -> None:
    client = await openConnection(
        reactor, "localhost", smtpServer.port, ehloName="client.test", timeouts=TIMEOUTS
    )
    assert client.remoteAddress == "127.0.0.1"
    assert client.transport.getTcpNoDelay()
    await client.quit()


@pytest_twisted.ensureDeferred
async def test_noFactoryLinesPerConnection(smtpServer) -> None:
    """
    A connection logs no "Starting factory" / "Stopping factory" lines: at
    level info they would come twice per SMTP connection.
    """
    from twisted.logger import capturedLogs, formatEvent

    with capturedLogs() as events:
        client = await openConnection(
            reactor, "127.0.0.1", smtpServer.port, ehloName="client.test", timeouts=TIMEOUTS
        )
        await client.quit()
    assert [formatEvent(e) for e in events if "factory" in formatEvent(e).lower()] == []


@pytest_twisted.ensureDeferred
async def test_ipv6Refused() -> None:
    probe = socket.socket(socket.AF_INET6)
    try:
        probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(AttemptFailed) as caught:
        await openConnection(reactor, "::1", port, ehloName="client.test", timeouts=TIMEOUTS)
    assert (caught.value.state, caught.value.result) == ("connect", "error")
    assert f"[::1]:{port}" in caught.value.description


def test_connectTimeoutAndArguments() -> None:
    """The endpoint gets the time-out and bind address; a time-out is connect/timeout."""
    memory = MemoryReactorClock()
    opening = openConnection(
        memory, "192.0.2.7", 2525, ehloName="client.test", timeouts=TIMEOUTS, bindAddress="192.0.2.1"
    )
    host, port, factory, timeout, bindAddress = memory.tcpClients[0]
    assert (host, port, timeout, bindAddress) == ("192.0.2.7", 2525, 5, ("192.0.2.1", 0))
    factory.clientConnectionFailed(memory.connectors[0], Failure(TimeoutError()))
    failure = SynchronousTestCase().failureResultOf(opening, AttemptFailed).value
    assert (failure.state, failure.result) == ("connect", "timeout")
    assert "192.0.2.7:2525" in failure.description and "5 seconds" in failure.description
