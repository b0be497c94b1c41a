"""
Unit tests of L{mqtwist.smtp.protocol.ESMTPClient} and the reply parser,
driven through a L{StringTransport} and a L{MemoryReactorClock}.
"""

from __future__ import annotations

import pytest
from helpers_smtpprotocol import EHLO_PIPELINING, EHLO_PLAIN, Connection, failureOf, resultOf
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from mqtwist.smtp.reply import MalformedReply, Reply, ReplyParser

# -- replies ---------------------------------------------------------------


def test_replyParsesStatusAndText() -> None:
    parser = ReplyParser()
    assert parser.lineReceived(b"550-5.1.1 The account does not exist.") is None
    reply = parser.lineReceived(b"550 5.1.1 Please check the address.")
    assert reply == Reply(550, ("5.1.1 The account does not exist.", "5.1.1 Please check the address."), "5.1.1")
    assert reply.text == "The account does not exist. Please check the address."
    assert reply.permanent and not reply.transient
    failure = reply.failure("rcptto")
    assert (failure.state, failure.result, failure.code, failure.status, failure.permanent) == (
        "rcptto", "error", 550, "5.1.1", True,
    )
    assert failure.description == reply.text


def test_replyWithoutTextOrStatus() -> None:
    parser = ReplyParser()
    reply = parser.lineReceived(b"250")
    assert reply == Reply(250, ("",), None)
    assert reply.text == ""
    assert reply.failure("data").description == "the server replied 250 without text"
    # a status of another class than the code is not a status
    mismatched = ReplyParser().lineReceived(b"451 5.1.1 odd")
    assert mismatched.status is None and mismatched.text == "5.1.1 odd" and mismatched.transient


@pytest.mark.parametrize(
    "lines",
    [[b"hello"], [b"25 short"], [b"2500 too long"], [b"600 out of range"], [b"250-first", b"251 second"]],
)
def test_replyMalformed(lines) -> None:
    parser = ReplyParser()
    with pytest.raises(MalformedReply):
        for line in lines:
            parser.lineReceived(line)


# -- introduction ----------------------------------------------------------


def test_greetingAndEhlo() -> None:
    connection = Connection()
    assert connection.transport.noDelay
    client = connection.introduce()
    assert client is connection.client
    assert client.mta == "mx.example.com"
    assert client.greeting.code == 220
    assert client.extensions == {"SIZE": "1000000", "8BITMIME": "", "PIPELINING": "", "DSN": ""}
    assert client.esmtp and client.pipelining and client.usable
    assert (client.localAddress, client.remoteAddress) == ("192.0.2.10", "198.51.100.5")
    assert client.bytesSent == len(b"EHLO client.example.org\r\n")


def test_heloFallback() -> None:
    connection = Connection()
    connection.reply(b"220 old.example.com\r\n")
    assert connection.sent() == b"EHLO client.example.org\r\n"
    connection.reply(b"502 5.5.2 command not recognised\r\n")
    assert connection.sent() == b"HELO client.example.org\r\n"
    connection.reply(b"250 old.example.com\r\n")
    client = resultOf(connection.client.ready)
    assert not client.esmtp and not client.pipelining and client.extensions == {}


def test_heloRefused() -> None:
    connection = Connection()
    connection.reply(b"220 old.example.com\r\n")
    connection.reply(b"500 what\r\n")
    connection.sent()
    connection.reply(b"550 5.7.1 go away\r\n")
    failure = failureOf(connection.client.ready)
    assert (failure.state, failure.result, failure.code, failure.permanent) == ("helo", "error", 550, True)
    assert connection.sent() == b"QUIT\r\n"


def test_ehloTransientFailure() -> None:
    connection = Connection()
    connection.reply(b"220 mx.example.com\r\n")
    connection.reply(b"451 4.3.2 try later\r\n")
    failure = failureOf(connection.client.ready)
    assert (failure.state, failure.result, failure.code, failure.status) == ("ehlo", "error", 451, "4.3.2")
    assert failure.description == "try later"


def test_greetingRefusedQuits() -> None:
    connection = Connection()
    connection.reply(b"554 5.7.1 mx.example.com no mail from you\r\n")
    failure = failureOf(connection.client.ready)
    assert (failure.state, failure.result, failure.code, failure.permanent) == ("intro", "error", 554, True)
    assert connection.sent() == b"QUIT\r\n"
    connection.reply(b"221 bye\r\n")
    assert connection.transport.disconnecting


def test_greetingTimeout() -> None:
    connection = Connection()
    connection.clock.advance(10.9)
    assert not connection.client.ready.called
    connection.clock.advance(0.2)
    failure = failureOf(connection.client.ready)
    assert (failure.state, failure.result) == ("intro", "timeout")
    assert "11 seconds" in failure.description and "198.51.100.5" in failure.description
    assert connection.transport.disconnecting
    assert not connection.clock.getDelayedCalls()


def test_ehloTimeout() -> None:
    connection = Connection()
    connection.reply(b"220 mx.example.com\r\n")
    connection.clock.advance(12)
    failure = failureOf(connection.client.ready)
    assert (failure.state, failure.result) == ("ehlo", "timeout")


def test_lostDuringGreeting() -> None:
    connection = Connection()
    connection.lose()
    failure = failureOf(connection.client.ready)
    assert (failure.state, failure.result) == ("intro", "lost")
    assert "peer reset" in failure.description


# -- replies across reads, multi-line --------------------------------------


def test_multiLineReplySplitAcrossReads() -> None:
    connection = Connection()
    data = b"220-mx.example.com first\r\n220 second\r\n" + EHLO_PIPELINING
    for i in range(len(data)):
        connection.client.dataReceived(data[i : i + 1])
    client = resultOf(connection.client.ready)
    assert client.greeting.lines == ("mx.example.com first", "second")
    assert client.pipelining


def test_malformedReplyIsLost() -> None:
    connection = Connection()
    client = connection.introduce()
    mail = client.mailFrom("a@example.com")
    connection.reply(b"hello there\r\n")
    failure = failureOf(mail)
    assert (failure.state, failure.result) == ("mailfrom", "lost")
    assert "protocol error" in failure.description and "hello there" in failure.description
    assert connection.transport.disconnecting and not client.usable


def test_overlongLine() -> None:
    connection = Connection()
    client = connection.introduce()
    mail = client.mailFrom("a@example.com")
    connection.reply(b"250 " + b"x" * 20000)
    assert "longer than" in failureOf(mail).description


def test_unexpectedReply() -> None:
    connection = Connection()
    client = connection.introduce()
    connection.reply(b"250 surprise\r\n")
    assert not client.usable and connection.transport.disconnecting


# -- pipelining and lock-step ----------------------------------------------


def test_pipelinedEnvelopeInOneWrite() -> None:
    connection = Connection()
    client = connection.introduce()
    mail = client.mailFrom("", ["SIZE=100"])
    rcpt = client.rcptTo("b@example.net")
    assert connection.sent() == b"MAIL FROM:<> SIZE=100\r\nRCPT TO:<b@example.net>\r\n"
    connection.reply(b"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n")
    assert resultOf(mail).code == 250
    reply = resultOf(rcpt)
    assert (reply.code, reply.status, reply.text) == (550, "5.1.1", "no such user")
    # no RSET or anything else on its own
    assert connection.sent() == b""


def test_lockStepWithoutPipelining() -> None:
    connection = Connection()
    client = connection.introduce(EHLO_PLAIN)
    mail = client.mailFrom("a@example.com")
    rcpt = client.rcptTo("b@example.net")
    assert connection.sent() == b"MAIL FROM:<a@example.com>\r\n"
    connection.reply(b"250 ok\r\n")
    assert resultOf(mail).code == 250
    assert connection.sent() == b"RCPT TO:<b@example.net>\r\n"
    connection.reply(b"451 4.3.0 later\r\n")
    assert resultOf(rcpt).code == 451
    assert client.usable


def test_fullTransactionAndNextWithoutRset() -> None:
    connection = Connection()
    client = connection.introduce()
    for n in (1, 2):
        mail, rcpt = client.mailFrom("a@example.com"), client.rcptTo("b@example.net")
        connection.reply(b"250 ok\r\n250 ok\r\n")
        resultOf(mail), resultOf(rcpt)
        data = client.data()
        assert connection.sent() == b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        connection.reply(b"354 go ahead\r\n")
        assert resultOf(data).code == 354
        done = client.sendBody(b"Subject: x\n\n.hi\n")
        assert connection.sent() == b"Subject: x\r\n\r\n..hi\r\n.\r\n"
        assert not done.called
        connection.reply(b"250 2.0.0 queued as X\r\n")
        assert resultOf(done).status == "2.0.0"
        assert client.messages == n and client.usable
    assert client.bodyBytesSent == 2 * len(b"Subject: x\r\n\r\n..hi\r\n.\r\n")


def test_sendBodyWithout354() -> None:
    connection = Connection()
    client = connection.introduce()
    with pytest.raises(RuntimeError):
        client.sendBody(b"x")
    data = client.data()
    connection.reply(b"503 need RCPT\r\n")
    assert resultOf(data).code == 503
    with pytest.raises(RuntimeError):
        client.sendBody(b"x")


def test_354WithoutBodyIsUnusable() -> None:
    connection = Connection()
    client = connection.introduce()
    client.data()
    connection.reply(b"354 go\r\n")
    assert not client.usable


def test_lineBreakInAddressIsInvalid() -> None:
    connection = Connection()
    client = connection.introduce()
    failure = failureOf(client.rcptTo("a@example.com>\r\nDATA"))
    assert (failure.state, failure.result, failure.permanent) == ("rcptto", "invalid", True)
    assert connection.sent() == b""


# -- time-outs and losses --------------------------------------------------


@pytest.mark.parametrize(
    "step, timeout", [("mailfrom", 13), ("rcptto", 14), ("data", 15), ("message", 16), ("rset", 17)]
)
def test_timeoutPerStep(step: str, timeout: float) -> None:
    connection = Connection()
    client = connection.introduce()
    mail = client.mailFrom("a@example.com")
    rcpt = client.rcptTo("b@example.net")
    pending = {"mailfrom": mail, "rcptto": rcpt}
    if step != "mailfrom":
        connection.reply(b"250 ok\r\n")
    if step not in ("mailfrom", "rcptto"):
        connection.reply(b"250 ok\r\n")
        pending["data"] = client.data()
        if step in ("message", "rset"):
            connection.reply(b"354 go\r\n")
            pending["message"] = client.sendBody(b"hello\r\n")
            if step == "rset":
                connection.reply(b"250 ok\r\n")
                pending["rset"] = client.rset()
    deferred = pending.pop(step)
    for other in pending.values():
        other.addErrback(lambda _: None)
    connection.clock.advance(timeout - 0.5)
    assert not deferred.called
    connection.clock.advance(0.5)
    failure = failureOf(deferred)
    assert (failure.state, failure.result) == (step, "timeout")
    assert f"{timeout} seconds" in failure.description
    assert connection.transport.disconnecting and not client.usable
    assert not connection.clock.getDelayedCalls()


def test_timeoutFailsQueuedCommandsToo() -> None:
    connection = Connection()
    client = connection.introduce(EHLO_PLAIN)
    mail = client.mailFrom("a@example.com")
    rcpt = client.rcptTo("b@example.net")
    assert connection.sent() == b"MAIL FROM:<a@example.com>\r\n"
    connection.clock.advance(13)
    assert failureOf(mail).result == "timeout"
    failure = failureOf(rcpt)
    # lost with the connection, not late itself
    assert (failure.state, failure.result) == ("rcptto", "lost")
    assert "abandoned: no reply to MAIL FROM" in failure.description
    # nothing can be sent any more
    assert failureOf(client.rset()).result == "lost"
    # quit() after an abort sends nothing and fires when the connection is gone
    closed = client.quit()
    assert connection.sent() == b"" and not closed.called
    connection.lose()
    assert resultOf(closed) is None


def test_connectionLostMidCommand() -> None:
    connection = Connection()
    client = connection.introduce()
    mail = client.mailFrom("a@example.com")
    rcpt = client.rcptTo("b@example.net")
    connection.reply(b"250 ok\r\n250-partial")
    closed = client.whenClosed()
    connection.lose()
    assert resultOf(mail).code == 250
    failure = failureOf(rcpt)
    assert (failure.state, failure.result) == ("rcptto", "lost")
    assert "RCPT TO" in failure.description and "peer reset" in failure.description
    assert resultOf(closed) is None
    assert failureOf(client.mailFrom("x@example.com")).result == "lost"
    assert not client.usable and not connection.clock.getDelayedCalls()


@pytest.mark.parametrize(
    "reason, ended",
    [
        (ConnectionDone(), "198.51.100.5 closed the connection"),
        (ConnectionLost(), "the connection to 198.51.100.5 was reset or broken off"),
        (ConnectionLost("peer reset"), "the connection to 198.51.100.5 was reset or broken off (peer reset)"),
    ],
)
def test_aLostConnectionSaysItOnce(reason: Exception, ended: str) -> None:
    """
    The result C{lost} says that the connection went: the description says
    how, without "lost" again.  Results and log lines show the two side by
    side ("rcptto/lost ..."), which read "lost connection to ... lost while
    waiting for the reply to RCPT TO: Connection to the other side was lost
    in a non-clean fashion: Connection lost." before.
    """
    connection = Connection()
    connection.client.connectionLost(Failure(reason))
    failure = failureOf(connection.client.ready)
    assert (failure.state, failure.result, failure.description) == ("intro", "lost", f"{ended} before the greeting")

    connection = Connection()
    client = connection.introduce()
    client.mailFrom("a@example.com")
    rcpt = client.rcptTo("b@example.net")
    connection.reply(b"250 ok\r\n")
    client.connectionLost(Failure(reason))
    failure = failureOf(rcpt)
    assert (failure.state, failure.result) == ("rcptto", "lost")
    assert failure.description == f"{ended} before the reply to RCPT TO"


def test_lostWhileTheBodyWasBeingSent() -> None:
    """
    A connection that ends after the 354 and before the reply to the body
    says that the body was being sent, as far as the client can tell (it
    goes out in one write, and how much the server read is not known), and
    that the message may have arrived.
    """
    connection = Connection()
    client = connection.introduce()
    client.mailFrom("a@example.com"), client.rcptTo("b@example.net")
    data = client.data()
    connection.reply(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
    assert resultOf(data).code == 354
    done = client.sendBody(b"Subject: x\n\nhi\n")
    client.connectionLost(Failure(ConnectionDone()))
    failure = failureOf(done)
    assert (failure.state, failure.result, failure.permanent) == ("message", "lost", False)
    assert failure.description == (
        "198.51.100.5 closed the connection while the message body (21 bytes) was being sent "
        "or before the reply to it; the server may or may not have the message"
    )


def test_421MarksUnusable() -> None:
    connection = Connection()
    client = connection.introduce()
    mail = client.mailFrom("a@example.com")
    connection.reply(b"421 4.3.2 shutting down\r\n")
    reply = resultOf(mail)
    assert reply.code == 421 and reply.transient
    assert not client.usable


def test_unsolicited421WhileIdle() -> None:
    connection = Connection()
    client = connection.introduce()
    connection.reply(b"421 4.4.2 idle too long\r\n")
    assert not client.usable and not connection.transport.disconnecting


def test_quit() -> None:
    connection = Connection()
    client = connection.introduce()
    closed = client.quit()
    assert connection.sent() == b"QUIT\r\n"
    assert not client.usable
    assert client.quit() is not closed  # a second call waits for the same close
    connection.reply(b"221 bye\r\n")
    assert connection.transport.disconnecting
    assert not closed.called
    client.connectionLost(Failure(ConnectionLost()))
    assert resultOf(closed) is None
    assert not connection.clock.getDelayedCalls()


def test_quitTimeoutNeverErrbacks() -> None:
    connection = Connection()
    client = connection.introduce()
    closed = client.quit()
    connection.clock.advance(18)
    assert connection.transport.disconnecting
    client.connectionLost(Failure(ConnectionLost()))
    assert resultOf(closed) is None


def test_quitWhenPeerDoesNotLetGo() -> None:
    connection = Connection()
    client = connection.introduce()
    closed = client.quit()
    connection.reply(b"221 bye\r\n")
    # loseConnection did not finish: the abort follows after the quit time-out
    connection.transport.disconnecting = False
    connection.clock.advance(18)
    assert connection.transport.disconnecting
    client.connectionLost(Failure(ConnectionLost()))
    assert resultOf(closed) is None
    assert not connection.clock.getDelayedCalls()
