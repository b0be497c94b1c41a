"""
The states of the submission server's protocol, driven through a
StringTransport and a fake clock: sequence, syntax, limits, time-outs,
DATA's line handling, the reply to the final dot that waits for the queue,
and AUTH against accounts that need no thread.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest
from helpers_submission import HOSTNAME, RecordingQueue, settings
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport

from mqtwist.metrics import Metrics
from mqtwist.submission.access import Access, Account, RateLimiter
from mqtwist.submission.envelope import Recipient
from mqtwist.submission.server import SubmissionProtocol, SubmissionServer

ALICE = Account("alice", "user", {"tags": ["alice"]})


class FakeAccess(Access):
    """Accounts whose passwords are checked at once (no thread)."""

    def __init__(self, trusted: list[str], password: str = "secret", **kwargs: Any) -> None:
        base = Access.fromSettings(trusted, None, **kwargs)
        super().__init__({"alice": object()}, base.networks, base.messagesPerMinute)  # type: ignore[dict-item]
        self.password = password
        self.checked: list[tuple[str, str]] = []

    def verify(self, name: str, password: str, reactor: Any) -> Deferred[Account | None]:
        self.checked.append((name, password))
        return succeed(ALICE if (name, password) == ("alice", self.password) else None)


class Session:
    """One connection to a server, through a StringTransport."""

    def __init__(
        self,
        trusted: tuple[str, ...] = ("127.0.0.1/32",),
        client: str = "127.0.0.1",
        server: SubmissionServer | None = None,
        **changes: Any,
    ) -> None:
        self.clock = MemoryReactorClock()
        if server is None:
            self.queue = RecordingQueue()
            self.access = FakeAccess(list(trusted))
            server = SubmissionServer(settings(**changes), self.access, self.queue, self.clock, Metrics())
        else:
            self.queue = server.queue  # type: ignore[assignment]
            self.clock = server.reactor
        self.server = server
        self.protocol: SubmissionProtocol = server.factory().buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", client, 40000))
        self.protocol.makeConnection(self.transport)
        self.greeting = self.read()

    def read(self) -> str:
        text = self.transport.value().decode("utf-8")
        self.transport.clear()
        return text

    def send(self, data: bytes | str) -> str:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.dataReceived(data)
        return self.read()

    def replies(self, data: bytes | str) -> list[str]:
        """The reply codes (with enhanced codes) to C{data}, one a reply."""
        lines = self.send(data).split("\r\n")
        return [" ".join(line.split(" ")[:2]) for line in lines if line and line[3:4] == " "]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def transaction(self, body: bytes = b"Subject: x\r\n\r\nbody\r\n", rcpt: str = "b@example.org") -> list[str]:
        return self.replies(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n" + body + b".\r\n"
        )


def ehlo(**changes: Any) -> Session:
    session = Session(**changes)
    session.send("EHLO client.example\r\n")
    return session


def test_greetingAndEHLO() -> None:
    session = Session()
    assert session.greeting == f"220 {HOSTNAME} ESMTP mqtwist\r\n"
    assert session.send("EHLO client.example\r\n") == (
        f"250-{HOSTNAME} greets client.example\r\n"
        "250-PIPELINING\r\n"
        f"250-SIZE {10 * 1024 * 1024}\r\n"
        "250-8BITMIME\r\n"
        "250-SMTPUTF8\r\n"
        "250-ENHANCEDSTATUSCODES\r\n"
        "250 DSN\r\n"
    )


def test_authOfferedOnlyWhereAllowed() -> None:
    """
    Without TLS, AUTH is offered (and taken) only to loopback clients when
    C{authCleartext} is C{loopback}; elsewhere AUTH gets 538.
    """
    assert "AUTH" not in Session().send("EHLO c\r\n")
    assert "250 AUTH PLAIN LOGIN\r\n" in Session(authCleartext="loopback").send("EHLO c\r\n")
    remote = Session(authCleartext="loopback", client="192.0.2.1")
    assert "AUTH" not in remote.send("EHLO c\r\n")
    assert remote.replies("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n") == ["538 5.7.11"]
    assert remote.access.checked == []


def test_helloSyntax() -> None:
    session = Session()
    assert session.replies("EHLO\r\n") == ["501 5.5.4"]
    assert session.replies("HELO two words\r\n") == ["501 5.5.4"]
    assert session.replies("EHLO bad(name)\r\n") == ["501 5.5.4"]
    assert session.send("HELO client.example\r\n") == f"250 {HOSTNAME}\r\n"


@pytest.mark.parametrize(
    "commands, expected",
    [
        ("MAIL FROM:<a@example.com>\r\n", ["503 5.5.1"]),
        ("EHLO c\r\nRCPT TO:<b@example.org>\r\n", ["250 DSN", "503 5.5.1"]),
        ("EHLO c\r\nDATA\r\n", ["250 DSN", "503 5.5.1"]),
        ("EHLO c\r\nMAIL FROM:<a@example.com>\r\nDATA\r\n", ["250 DSN", "250 2.1.0", "554 5.5.1"]),
        ("EHLO c\r\nMAIL FROM:<a@example.com>\r\nMAIL FROM:<a@example.com>\r\n", ["250 DSN", "250 2.1.0", "503 5.5.1"]),
        ("FOO\r\n", ["500 5.5.2"]),
        ("\r\n", ["500 5.5.2"]),
        ("BDAT 10 LAST\r\n", ["502 5.5.1"]),
        ("EXPN list\r\n", ["502 5.5.1"]),
        ("STARTTLS\r\n", ["502 5.5.1"]),
        ("RSET now\r\n", ["501 5.5.4"]),
        ("NOOP\r\n", ["250 2.0.0"]),
        ("VRFY someone\r\n", ["252 2.1.5"]),
        ("HELP\r\n", ["214 2.0.0"]),
        ("EHLO c\r\nAUTH PLAIN\r\n", ["250 DSN", "538 5.7.11"]),
        (b"NOOP \xff\r\n", ["500 5.5.2"]),
    ],
)
def test_commandsAndSequence(commands: str | bytes, expected: list[str]) -> None:
    session = Session()
    assert session.replies(commands) == expected
    assert not session.closed


def test_repliesNotReadStopTheReading() -> None:
    """
    While the transport's write buffer is full (it pauses the protocol, its
    producer), no more commands are taken from what was read, and the
    transport is not read; once the replies drain, the rest is answered.
    """
    session = ehlo()
    assert session.transport.producer is session.protocol
    session.protocol.pauseProducing()
    assert session.send("NOOP\r\n" * 3) == ""
    session.protocol.resumeProducing()
    assert session.read() == "250 2.0.0 Ok\r\n" * 3
    # a message is still read (it has no reply before its end)
    session.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    session.protocol.pauseProducing()
    assert session.send("Subject: x\r\n\r\n" + "line\r\n" * 1000) == ""
    assert len(session.protocol._buffer) < 10
    assert session.send(".\r\nNOOP\r\n").startswith("250 2.0.0 Ok: queued as ")
    assert len(session.queue.submissions) == 1
    session.protocol.resumeProducing()
    assert session.read() == "250 2.0.0 Ok\r\n"


def test_clientThatNeverReadsIsCutOff() -> None:
    session = ehlo()
    session.protocol.pauseProducing()
    for _ in range(1024 * 1024 // (64 * 1024)):
        session.send(b"NOOP\r\n" * (64 * 1024 // 6))
        assert not session.transport.disconnected
    session.send(b"NOOP\r\n" * 10000)
    assert session.transport.disconnected


def test_quit() -> None:
    session = ehlo()
    assert session.send("QUIT\r\nNOOP\r\n") == "221 2.0.0 Bye\r\n"
    assert session.closed


def test_closingAbortsWhenTheLastRepliesAreNotRead() -> None:
    """
    A close waits for the last replies to be written, but not longer than
    the command time-out: then the connection is aborted.  A close while
    the writes are blocked aborts at once.
    """
    session = ehlo(commandTimeout=10)
    aborted: list[bool] = []
    session.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    assert session.send("QUIT\r\n") == "221 2.0.0 Bye\r\n"
    session.clock.advance(9)
    assert aborted == []
    session.clock.advance(1)
    assert aborted == [True]

    blocked = ehlo(commandTimeout=10)
    blocked.transport.abortConnection = lambda: aborted.append(False)  # type: ignore[method-assign]
    blocked.protocol.pauseProducing()
    blocked.clock.advance(10)
    assert aborted == [True, False]


def test_webClientIsCutOff() -> None:
    session = Session()
    assert session.replies("GET / HTTP/1.1\r\nHost: example\r\n") == ["421 4.7.0"]
    assert session.closed


def test_badCommandsCap() -> None:
    session = ehlo(maxBadCommands=3)
    assert session.replies("FOO\r\nBAR\r\n") == ["500 5.5.2", "500 5.5.2"]
    assert not session.closed
    assert session.replies("BAZ\r\nNOOP\r\n") == ["500 5.5.2", "421 4.7.0"]
    assert session.closed


def test_commandLineLength() -> None:
    """
    512 bytes with CRLF is a command line; 513 is refused with 500, even
    when it comes in pieces with no line end for a while.
    """
    session = ehlo()
    fits = "NOOP " + "x" * (512 - 7) + "\r\n"
    assert len(fits) == 512
    assert session.replies(fits) == ["250 2.0.0"]
    assert session.replies("NOOP " + "x" * (512 - 6) + "\r\n") == ["500 5.5.2"]
    assert session.send("NOOP " + "y" * 4000) == ""
    assert session.send("y" * 4000) == ""
    assert session.replies("yyy\r\nNOOP\r\n") == ["500 5.5.2", "250 2.0.0"]


def test_bareLineFeedEndsACommand() -> None:
    session = Session()
    assert session.replies("EHLO c\nNOOP\n") == ["250 DSN", "250 2.0.0"]


def test_messageIsQueuedWithReceivedHeader() -> None:
    session = ehlo()
    body = b"Subject: x\r\n\r\n.leading dot\r\n..two\r\nend\r\n"
    stuffed = b"Subject: x\r\n\r\n..leading dot\r\n...two\r\nend\r\n"
    assert session.transaction(stuffed) == ["250 2.1.0", "250 2.1.5", "354 End", "250 2.0.0"]
    [submission] = session.queue.submissions
    received, _, rest = submission.mime.partition(b"Subject: ")
    assert b"Subject: " + rest == body
    lines = received.decode().split("\r\n")
    assert lines[0] == "Received: from client.example ([127.0.0.1])"
    assert lines[1].startswith(f"\tby {HOSTNAME} (mqtwist) with ESMTP id ")
    assert lines[2] == "\tfor <b@example.org>;"
    assert lines[3].startswith("\t") and lines[3].endswith("+0000")
    assert submission.recipients == (Recipient("b@example.org"),)
    assert submission.sender == "a@example.com"
    assert submission.defaults == {}


def test_emptyMessageAndDotAtOnce() -> None:
    session = ehlo()
    assert session.transaction(b"") == ["250 2.1.0", "250 2.1.5", "354 End", "250 2.0.0"]
    [submission] = session.queue.submissions
    assert submission.mime.endswith(b"+0000\r\n")


def test_messageByteByByteIsTheSame() -> None:
    """
    Fed one byte at a time, the message and its end are found as in one
    piece, dot-stuffing and the CRLF.CRLF spanning reads included.
    """
    body = b"Subject: x\r\n\r\n..dot\r\n.\r\nnot the end above? yes it was\r\n"
    session = ehlo()
    session.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    replies = "".join(session.send(bytes([byte])) for byte in body)
    assert replies.startswith("250 2.0.0 Ok: queued as ")
    [submission] = session.queue.submissions
    assert submission.mime.endswith(b"\r\n\r\n.dot\r\n")
    # what followed the dot was read as commands
    assert "500 5.5.2" in replies


def test_heloGivesSMTPInReceived() -> None:
    session = Session()
    session.send("HELO old.example\r\n")
    session.transaction()
    assert b" with SMTP id " in session.queue.submissions[0].mime


def test_finalReplyWaitsForTheQueue() -> None:
    """
    The reply to the dot comes when the queue's Deferred fires, and the
    commands pipelined after the dot are answered after it, in order.
    """
    session = ehlo()
    session.queue.mode = "hold"
    replies = session.replies(
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        "Subject: x\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n"
    )
    assert replies == ["250 2.1.0", "250 2.1.5", "354 End"]
    assert session.transport.producerState == "paused"
    [waiting] = session.queue.held
    waiting.callback(None)
    queued, noop, bye, end = session.read().split("\r\n")
    assert queued.startswith("250 2.0.0 Ok: queued as ")
    assert (noop, bye, end) == ("250 2.0.0 Ok", "221 2.0.0 Bye", "")
    assert session.closed


def test_queueFailureAnswers451() -> None:
    session = ehlo()
    session.queue.mode = "fail"
    replies = session.transaction()
    assert replies[-1] == "451 4.3.0"
    assert session.server.metrics.value("mqtwist_submission_refused_total", reason="queue") == 1
    assert session.server.metrics.value("mqtwist_submission_messages_total") == 0
    # the session goes on
    session.queue.mode = "succeed"
    assert session.transaction()[-1] == "250 2.0.0"


def test_pipelinedMessagesWithAQueueThatFailsAtOnce() -> None:
    """
    A queue that fails at once (the broker not connected) answers inside
    the loop that reads the pipelined commands: each message gets its 451
    and the session goes on, with no nesting per message (1,500 of them
    overflowed the stack and left the session busy for good).
    """
    session = ehlo()
    session.queue.mode = "fail"
    one = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n"
    replies = session.replies(one * 1500 + b"NOOP\r\n")
    assert replies.count("451 4.3.0") == 1500
    assert replies[-1] == "250 2.0.0"
    assert not session.closed
    assert session.replies("NOOP\r\n") == ["250 2.0.0"]


def test_memoryBudgetOfAllSessions() -> None:
    """
    The message bytes all sessions hold, from DATA until the queue
    answers, stay within C{maxMemory}: a message that would go over it is
    refused after its dot with 451 4.3.1, DATA with 452 4.3.1 while the
    budget is spent; what a session held is given back when the queue
    answers or the connection is lost.
    """
    first = ehlo(maxMemory=100)
    server = first.server
    second, third = Session(server=server), Session(server=server)
    for session in (second, third):
        session.send("EHLO c\r\n")
    first.queue.mode = "hold"
    envelope = "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    first.send(envelope + "xxxxxxxx\r\n" * 6)
    assert server.memoryHeld == 60
    assert second.replies(envelope + "yyyyyyyy\r\n" * 5 + ".\r\nNOOP\r\n") == [
        "250 2.1.0", "250 2.1.5", "354 End", "451 4.3.1", "250 2.0.0"
    ]
    assert server.memoryHeld == 60
    first.send("xxxxxxxx\r\n" * 4)
    assert server.memoryHeld == 100
    assert second.replies(envelope) == ["250 2.1.0", "250 2.1.5", "452 4.3.1"]
    assert first.send(".\r\n") == ""
    # the queue has the message: it is still held
    assert server.memoryHeld == 100
    first.queue.held[0].callback(None)
    assert first.read().startswith("250 2.0.0 Ok: queued as ")
    assert server.memoryHeld == 0
    third.send(envelope + "zzzzzzzz\r\n" * 3)
    assert server.memoryHeld == 30
    third.protocol.connectionLost(None)
    assert server.memoryHeld == 0
    second.queue.mode = "succeed"
    assert second.transaction()[-1] == "250 2.0.0"
    assert server.memoryHeld == 0
    assert server.metrics.value("mqtwist_submission_refused_total", reason="memory") == 2


def test_queueRefusingTheContentAnswers550() -> None:
    """
    A queue that cannot make jobs of a message (a C{ValueError}: a value
    the delivery side would refuse) gets a permanent refusal, not a 451
    that the client would try again for ever.
    """
    session = ehlo()
    reasons = [ValueError("ORCPT bad"), ValueError("ORCPT\r\nbad")]
    session.server.queue = lambda submission: fail(reasons.pop(0))
    assert session.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n\xe9\r\n.\r\n").endswith(
        "550 5.6.0 Message cannot be queued: ORCPT bad\r\n"
    )
    assert session.transaction()[-1] == "550 5.6.0"
    assert session.read() == ""
    assert session.server.metrics.value("mqtwist_submission_refused_total", reason="content") == 2


def test_queueTimeoutAnswers451() -> None:
    session = ehlo(queueTimeout=30)
    session.queue.mode = "hold"
    session.transaction()
    session.clock.advance(29)
    assert session.read() == ""
    session.clock.advance(1)
    assert session.read().startswith("451 4.3.0 ")
    assert session.queue.held[0].called


def test_sizeLimit() -> None:
    session = ehlo(maxSize=100)
    assert "250-SIZE 100\r\n" in session.send("EHLO c\r\n")
    assert session.replies("MAIL FROM:<a@example.com> SIZE=101\r\n") == ["552 5.3.4"]
    assert session.replies("MAIL FROM:<a@example.com> SIZE=100\r\n") == ["250 2.1.0"]
    session.send("RSET\r\n")
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" + b"y" * 70 + b"\r\n"
    assert session.transaction(big) == ["250 2.1.0", "250 2.1.5", "354 End", "552 5.3.4"]
    assert session.queue.submissions == []
    assert session.transaction()[-1] == "250 2.0.0"


def test_sizeLimitDoesNotBufferTheRest() -> None:
    """
    A message far over the limit, without line ends, is read to its dot
    while the buffer stays small.
    """
    session = ehlo(maxSize=1000)
    session.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    for _ in range(100):
        session.send(b"z" * 10000)
        assert len(session.protocol._buffer) <= 1004
        assert session.protocol._data == []
    assert session.replies(b"\r\n.\r\n")[0] in ("500 5.5.2", "552 5.3.4")
    assert session.queue.submissions == []


def test_textLineLength() -> None:
    session = ehlo()
    fits = b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n"
    assert session.transaction(fits)[-1] == "250 2.0.0"
    long = b"Subject: x\r\n\r\n" + b"a" * 999 + b"\r\n"
    assert session.transaction(long)[-1] == "500 5.5.2"
    assert len(session.queue.submissions) == 1


@pytest.mark.parametrize("body", [b"Subject: x\n\nbare LF\r\n", b"Subject: x\r\n\r\nbare\rCR\r\n", b"a\r\n\n.\n\r\n"])
def test_bareNewlinesRefused(body: bytes) -> None:
    session = ehlo()
    assert session.transaction(body)[-1] == "550 5.6.0"
    assert session.queue.submissions == []


def test_smugglingDoesNotEndTheMessage() -> None:
    """
    LF.LF or LF.CRLF inside a message ends nothing: the commands behind
    it are message text, and the message is refused for its bare LF.
    """
    session = ehlo()
    smuggled = b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\n"
    assert session.transaction(smuggled) == ["250 2.1.0", "250 2.1.5", "354 End", "550 5.6.0"]
    assert session.queue.submissions == []


def test_recipientLimitAndDuplicates() -> None:
    session = ehlo(maxRecipients=2)
    replies = session.replies(
        "MAIL FROM:<a@example.com>\r\n"
        "RCPT TO:<one@example.org>\r\nRCPT TO:<one@EXAMPLE.org>\r\n"
        "RCPT TO:<two@example.org>\r\nRCPT TO:<three@example.org>\r\nDATA\r\nSubject: x\r\n\r\n.\r\n"
    )
    assert replies == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3", "354 End", "250 2.0.0"]
    assert [r.address for r in session.queue.submissions[0].recipients] == ["one@example.org", "two@example.org"]


@pytest.mark.parametrize(
    "command, expected",
    [
        ("MAIL FROM:<a\x01b@example.com>", "501 5.1.7"),
        ("MAIL FROM:<a@exa\rmple.com>", "501 5.1.7"),
        ("MAIL FROM:a@example.com", "501 5.1.7"),
        ("MAIL FROM:<a@example.com", "501 5.1.7"),
        ("MAIL TO:<a@example.com>", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> SIZE=big", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> SIZE=\u00b2", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> SIZE=\u0661\u0662", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> BODY=BINARYMIME", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> RET=ALL", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> ENVID=a b", "555 5.5.4"),
        ("MAIL FROM:<a@example.com> ENVID=" + "x" * 101, "501 5.5.4"),
        ("MAIL FROM:<a@example.com> ENVID=a+0D+0Ab", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> ENVID=a+20b", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> ENVID=caf+C3+A9", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> ENVID=a+FFb", "501 5.5.4"),
        ("MAIL FROM:<a@example.com> FOO=bar", "555 5.5.4"),
        ("MAIL FROM:<a@example.com> RET=FULL RET=HDRS", "501 5.5.4"),
        ("MAIL FROM:<\"quoted\"@example.com>", "553 5.1.7"),
        ("MAIL FROM:<josé@example.com>", "553 5.6.7"),
        ("MAIL FROM:<a@example.com>x", "501 5.5.4"),
    ],
)
def test_mailSyntax(command: str, expected: str) -> None:
    session = ehlo()
    assert session.replies(command + "\r\n") == [expected]


@pytest.mark.parametrize(
    "command, expected",
    [
        ("RCPT TO:<b\x00@example.org>", "501 5.1.3"),
        ("RCPT TO:<b@exam\tple.org>", "501 5.1.3"),
        ("RCPT TO:<>", "501 5.1.3"),
        ("RCPT TO:<postmaster>", "553 5.1.3"),
        ('RCPT TO:<"user@other"@example.org>', "553 5.1.3"),
        ("RCPT TO:<user@other@example.org>", "553 5.1.3"),
        ("RCPT TO:<b@example.org> NOTIFY=NEVER,FAILURE", "501 5.5.4"),
        ("RCPT TO:<b@example.org> NOTIFY=SOMETIMES", "501 5.5.4"),
        ("RCPT TO:<b@example.org> ORCPT=b@example.org", "501 5.5.4"),
        ("RCPT TO:<b@example.org> ORCPT=rfc822;a+2", "501 5.5.4"),
        ("RCPT TO:<b@example.org> ORCPT=rfc822;b+0D+0AX-Evil:+20y@example.org", "501 5.5.4"),
        ("RCPT TO:<b@example.org> ORCPT=rfc822;b+00@example.org", "501 5.5.4"),
        ("RCPT TO:<b@example.org> ORCPT=rfc822;j+C3+B6rg@example.org", "501 5.5.4"),
        ("RCPT TO:<b@example.org> FOO", "555 5.5.4"),
        ("RCPT TO:<bé@example.org>", "553 5.6.7"),
    ],
)
def test_rcptSyntax(command: str, expected: str) -> None:
    session = ehlo()
    session.send("MAIL FROM:<a@example.com>\r\n")
    assert session.replies(command + "\r\n") == [expected]


def test_oldAddressFormsOfATrustedClient() -> None:
    """
    A source route is stripped (the mail goes to its last hop's mailbox);
    a percent hack and a bang path are local parts like any other.
    """
    session = ehlo()
    replies = session.replies(
        "MAIL FROM:<@hop.example:a@example.com>\r\n"
        "RCPT TO:<@one.example,@two.example:final@example.org>\r\n"
        "RCPT TO:<user%other.example@example.org>\r\n"
        "RCPT TO:<host!user@example.org>\r\n"
        "DATA\r\n\r\n.\r\n"
    )
    assert replies == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "354 End", "250 2.0.0"]
    [submission] = session.queue.submissions
    assert submission.sender == "a@example.com"
    assert [r.address for r in submission.recipients] == [
        "final@example.org",
        "user%other.example@example.org",
        "host!user@example.org",
    ]


def test_dsnParameters() -> None:
    session = ehlo()
    replies = session.replies(
        "MAIL FROM:<a@example.com> RET=hdrs ENVID=QQ+2BQ BODY=8BITMIME SIZE=10\r\n"
        "RCPT TO:<b@example.org> NOTIFY=success,failure ORCPT=rfc822;b+40example.org\r\n"
        "RCPT TO:<c@example.org> NOTIFY=NEVER\r\n"
        "DATA\r\n\r\n.\r\n"
    )
    assert replies == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354 End", "250 2.0.0"]
    [submission] = session.queue.submissions
    assert (submission.ret, submission.envid) == ("HDRS", "QQ+Q")
    assert submission.recipients == (
        Recipient("b@example.org", ("SUCCESS", "FAILURE"), "rfc822;b+40example.org"),
        Recipient("c@example.org", ("NEVER",)),
    )


def test_smtputf8() -> None:
    session = ehlo()
    replies = session.replies(
        "MAIL FROM:<josé@exämple.com> SMTPUTF8\r\nRCPT TO:<zoë@example.org>\r\nDATA\r\n"
        "Subject: ü\r\n\r\n.\r\n"
    )
    assert replies == ["250 2.1.0", "250 2.1.5", "354 End", "250 2.0.0"]
    [submission] = session.queue.submissions
    assert submission.smtputf8 and submission.sender == "josé@exämple.com"
    assert " with UTF8SMTP id " in submission.mime.decode("utf-8")
    assert "\tfor <zoë@example.org>;" in submission.mime.decode("utf-8")


def test_commandTimeout() -> None:
    session = ehlo(commandTimeout=10, dataTimeout=20)
    session.clock.advance(9)
    session.send("NOOP\r\n")
    session.clock.advance(9)
    assert not session.closed
    session.clock.advance(1)
    assert session.read() == f"421 4.4.2 {HOSTNAME} Error: timeout exceeded\r\n"
    assert session.closed


def test_dataTimeout() -> None:
    session = ehlo(commandTimeout=10, dataTimeout=20)
    session.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\npart")
    session.clock.advance(19)
    assert not session.closed
    session.clock.advance(1)
    assert session.read().startswith("421 4.4.2 ")
    assert session.closed
    assert session.queue.submissions == []


def test_noTimeoutWhileTheQueueWorks() -> None:
    session = ehlo(commandTimeout=10, queueTimeout=100)
    session.queue.mode = "hold"
    session.transaction()
    session.clock.advance(50)
    assert not session.closed
    session.queue.held[0].callback(None)
    assert session.read().startswith("250 2.0.0")
    session.clock.advance(10)
    assert session.closed


def test_connectionLimits() -> None:
    first = Session(maxConnections=3, maxConnectionsPerClient=2)
    server = first.server
    second = Session(server=server)
    third = Session(server=server)
    assert third.greeting.startswith("421 4.7.0 ") and third.closed
    other = Session(server=server, client="127.0.0.9")
    assert other.greeting.startswith("220 ")
    fourth = Session(server=server, client="127.0.0.10")
    assert fourth.greeting.startswith("421 4.7.0 ") and "Too many connections;" in fourth.greeting
    second.protocol.connectionLost(None)
    assert Session(server=server).greeting.startswith("220 ")
    assert server.metrics.value("mqtwist_submission_sessions_total", result="refused") == 2
    assert server.openConnections() == 3


def test_anIPv6ClientIsItsNetwork() -> None:
    """
    The addresses of one IPv6 /64 are one client for the per-client
    limit (a host may use any of them); with a prefix of 128, each is one.
    """
    first = Session(client="2001:db8:1:2::1", maxConnectionsPerClient=1)
    assert first.greeting.startswith("220 ")
    sameNetwork = Session(server=first.server, client="2001:db8:1:2:ffff::9")
    assert sameNetwork.greeting == f"421 4.7.0 {HOSTNAME} Too many connections from 2001:db8:1:2::/64; try again later\r\n"
    assert Session(server=first.server, client="2001:db8:1:3::1").greeting.startswith("220 ")
    each = Session(client="2001:db8:1:2::1", maxConnectionsPerClient=1, ipv6ClientPrefix=128)
    assert Session(server=each.server, client="2001:db8:1:2::2").greeting.startswith("220 ")
    first.protocol.connectionLost(None)
    assert Session(server=first.server, client="2001:db8:1:2::7").greeting.startswith("220 ")


def test_relayRefusedForUntrustedClient() -> None:
    session = Session(client="192.0.2.7")
    session.send("EHLO c\r\n")
    replies = session.replies("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    assert replies == ["250 2.1.0", "530 5.7.0", "554 5.5.1"]
    assert session.server.metrics.value("mqtwist_submission_refused_total", reason="relay") == 1


def test_authPlainAndLogin() -> None:
    session = ehlo(authCleartext="loopback", trusted=())
    assert session.replies("AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong").decode() + "\r\n") == ["535 5.7.8"]
    assert session.send("AUTH LOGIN\r\n") == "334 VXNlcm5hbWU6\r\n"
    assert session.send(base64.b64encode(b"alice") + b"\r\n") == "334 UGFzc3dvcmQ6\r\n"
    assert session.replies(base64.b64encode(b"secret") + b"\r\n") == ["235 2.7.0"]
    assert session.replies("AUTH PLAIN\r\n") == ["503 5.5.1"]
    assert session.transaction()[-1] == "250 2.0.0"
    [submission] = session.queue.submissions
    assert submission.user == "alice" and submission.defaults == {"tags": ["alice"]}
    assert b" with ESMTPA id " in submission.mime
    metrics = session.server.metrics
    assert metrics.value("mqtwist_submission_auth_total", mechanism="PLAIN", result="failure") == 1
    assert metrics.value("mqtwist_submission_auth_total", mechanism="LOGIN", result="success") == 1


def test_authPlainPromptedAndCancelled() -> None:
    session = ehlo(authCleartext="loopback", trusted=())
    assert session.send("AUTH PLAIN\r\n") == "334 \r\n"
    assert session.replies("*\r\n") == ["501 5.0.0"]
    assert session.send("AUTH PLAIN\r\n") == "334 \r\n"
    assert session.replies("not base64!\r\n") == ["501 5.5.2"]
    assert session.replies("AUTH CRAM-MD5\r\n") == ["504 5.5.4"]
    assert session.send("AUTH PLAIN\r\n") == "334 \r\n"
    assert session.replies(base64.b64encode(b"bob\0alice\0secret") + b"\r\n") == ["535 5.7.8"]
    assert session.replies("AUTH PLAIN " + base64.b64encode(b"alice\0alice\0secret").decode() + "\r\n") == [
        "235 2.7.0"
    ]


def test_authResponseTooLongEndsTheExchange() -> None:
    session = ehlo(authCleartext="loopback", trusted=())
    assert session.send("AUTH PLAIN\r\n") == "334 \r\n"
    assert session.replies("A" * 13000 + "\r\n") == ["500 5.5.6"]
    assert session.replies("NOOP\r\n") == ["250 2.0.0"]
    assert session.access.checked == []


class HeldAccess(FakeAccess):
    """Accounts whose password checks answer when the test says."""

    def __init__(self) -> None:
        super().__init__([])
        self.held: list[Deferred[Account | None]] = []

    def verify(self, name: str, password: str, reactor: Any) -> Deferred[Account | None]:
        self.checked.append((name, password))
        self.held.append(Deferred())
        return self.held[-1]


def test_passwordChecksRunAFewAtATime() -> None:
    """
    The password checks of all sessions run C{authThreads} at a time (the
    thread pool is shared with DKIM signing); a session has one at most,
    and what it sends meanwhile waits for its answer.
    """
    access = HeldAccess()
    server = SubmissionServer(
        settings(authCleartext="loopback", authThreads=2), access, RecordingQueue(), MemoryReactorClock(), Metrics()
    )
    plain = "AUTH PLAIN " + base64.b64encode(b"\0alice\0secret").decode() + "\r\n"
    sessions = [Session(server=server) for _ in range(3)]
    for session in sessions:
        session.send("EHLO c\r\n")
    assert sessions[0].send(plain + plain + "NOOP\r\n") == ""
    assert sessions[1].send(plain) == "" and sessions[2].send(plain) == ""
    assert len(access.checked) == 2
    access.held[0].callback(ALICE)
    assert sessions[0].replies("") == ["235 2.7.0", "503 5.5.1", "250 2.0.0"]
    assert len(access.checked) == 3
    access.held[1].callback(None)
    access.held[2].callback(ALICE)
    assert sessions[1].replies("") == ["535 5.7.8"]
    assert sessions[2].replies("") == ["235 2.7.0"]
    assert len(access.checked) == 3


def test_tlsRequiredBeforeMail() -> None:
    session = ehlo(requireTls=True)
    assert session.replies("MAIL FROM:<a@example.com>\r\n") == ["530 5.7.0"]
    assert session.server.metrics.value("mqtwist_submission_refused_total", reason="tls-required") == 1


def test_authFailuresCap() -> None:
    session = ehlo(authCleartext="loopback", trusted=(), maxAuthFailures=2)
    wrong = "AUTH PLAIN " + base64.b64encode(b"\0alice\0nope").decode() + "\r\n"
    assert session.replies(wrong) == ["535 5.7.8"]
    assert session.replies(wrong) == ["535 5.7.8", "421 4.7.0"]
    assert session.closed


def test_rateLimit() -> None:
    session = ehlo(trusted=("127.0.0.1/32",))
    session.server.access.networks[0] = (
        session.server.access.networks[0][0],
        Account("127.0.0.1/32", "network", {}, 2),
    )
    session.protocol.network = session.server.access.networks[0][1]
    assert session.transaction()[-1] == "250 2.0.0"
    assert session.transaction()[-1] == "250 2.0.0"
    assert session.replies("MAIL FROM:<a@example.com>\r\n") == ["450 4.7.1"]
    session.clock.advance(30)
    assert session.transaction()[-1] == "250 2.0.0"
    assert session.replies("MAIL FROM:<a@example.com>\r\n") == ["450 4.7.1"]


def test_rateLimiterBuckets() -> None:
    clock = MemoryReactorClock()
    limiter = RateLimiter(clock)
    account = Account("alice", "user", {}, 60)
    for _ in range(60):
        assert limiter.allows(account)
        limiter.taken(account)
    assert not limiter.allows(account)
    clock.advance(1)
    assert limiter.allows(account)
    assert limiter.allows(Account("free", "user", {}, 0))


def test_shutdownClosesIdleSessionsAndWaitsForTheQueue() -> None:
    idle = ehlo()
    server = idle.server
    busy = Session(server=server)
    busy.send("EHLO c\r\n")
    busy.queue.mode = "hold"
    busy.transaction()
    closed = server.closeAll()
    assert idle.read() == f"421 4.3.2 {HOSTNAME} Service shutting down\r\n" and idle.closed
    assert not busy.closed
    idle.protocol.connectionLost(None)
    assert not closed.called
    busy.queue.held[0].callback(None)
    queued, goodbye, end = busy.read().split("\r\n")
    assert queued.startswith("250 2.0.0 Ok: queued as ")
    assert (goodbye, end) == (f"421 4.3.2 {HOSTNAME} Service shutting down", "")
    assert busy.closed
    busy.protocol.connectionLost(None)
    assert closed.called
    assert Session(server=server).greeting.startswith("421 4.3.2 ")


def test_anAccountSendsOnlyAsItsSenders() -> None:
    """
    An account with C{senders} may use only those envelope senders (and
    the null sender of a bounce); another gets 553 5.7.1 at MAIL.
    """
    access = FakeAccess(["127.0.0.1/32"])
    network, account = access.networks[0]
    access.networks[0] = (network, replace(account, senders=("*@example.com", "billing@example.org")))
    server = SubmissionServer(settings(), access, RecordingQueue(), MemoryReactorClock(), Metrics())
    session = Session(server=server)
    session.send("EHLO client.example\r\n")
    assert session.replies(
        "MAIL FROM:<boss@example.net>\r\nMAIL FROM:<Ann@Example.COM>\r\nRSET\r\n"
        "MAIL FROM:<billing@example.org>\r\nRSET\r\nMAIL FROM:<>\r\nRSET\r\n"
    ) == ["553 5.7.1", "250 2.1.0", "250 2.0.0", "250 2.1.0", "250 2.0.0", "250 2.1.0", "250 2.0.0"]
    assert session.server.metrics.value("mqtwist_submission_refused_total", stage="mail", reason="sender") == 1
