"""
The ESMTP client protocol: one connection to one server, carrying any number
of mail transactions.

Unlike L{twisted.mail.smtp.SMTPClient} it has no opinion about what to send:
the caller issues commands (L{ESMTPClient.mailFrom}, L{ESMTPClient.rcptTo},
...) and gets each reply as a L{Deferred}, so one connection can wait for
the next message, pipeline the envelope (RFC 2920) and skip the RSET after a
successful transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtwist.errors import AttemptFailed
from mqtwist.loglevel import debugEvents
from mqtwist.smtp.body import encodeBody
from mqtwist.smtp.reply import MalformedReply, Reply, ReplyParser
from mqtwist.smtp.timeouts import SMTPTimeouts
from mqtwist.smtp.tls import ClientTLS
from mqtwist.validation import excerpt

#: SASL mechanisms in the order they are preferred on a TLS connection
#: (one round trip first); without TLS, CRAM-MD5 (which does not reveal the
#: password) comes first
_MECHANISMS_TLS = ("PLAIN", "LOGIN", "CRAM-MD5")
_MECHANISMS_CLEAR = ("CRAM-MD5", "PLAIN", "LOGIN")
#: characters of a command line without its CRLF (RFC 5321 section
#: 4.5.3.1.4: 512 with it)
_LONGEST_COMMAND = 510


class _Command:
    """
    A command waiting for its reply.

    @ivar state: the step it belongs to (a result entry's C{state}).
    @ivar verb: how log lines and descriptions name it (C{"RCPT TO"}).
    @ivar data: the bytes to send; C{None} for the greeting, which is a
        reply to the connection itself.
    """

    __slots__ = ("state", "verb", "data", "shown", "timeout", "deferred", "written")

    def __init__(self, state: str, verb: str, data: bytes | None, timeout: float, shown: str = "") -> None:
        self.state = state
        self.verb = verb
        self.data = data
        #: the command as logs show it
        self.shown = shown or verb
        self.timeout = timeout
        self.deferred: Deferred[Reply] = Deferred()
        self.written = data is None


@implementer(IHandshakeListener)
class ESMTPClient(Protocol):
    """
    An ESMTP client connection.

    Commands are queued and replies matched to them in order.  When the
    server announced PIPELINING, each command is written as soon as it is
    issued (the transport sends commands issued in the same reactor turn in
    one segment); otherwise a command is written when the reply to the
    previous one has arrived.  Either way the caller may issue C{mailFrom}
    and C{rcptTo} back to back.

    Every command waits for its reply at most the time that
    L{SMTPTimeouts} gives its step (the attribute named like the step;
    C{intro} uses C{greeting}, C{helo} uses C{ehlo}); the clock runs from
    the moment the command is the oldest one written and unanswered.

    @ivar ready: fires with this client once the greeting was 2xx and EHLO
        (or, after a 5xx to EHLO, HELO) succeeded; errbacks with an
        L{AttemptFailed} of state C{intro}, C{ehlo} or C{helo} and result
        C{error}, C{timeout} or C{lost}.  After a negative reply the client
        sends QUIT and closes the connection itself.
    @ivar greeting: the server's greeting, once received.
    @ivar mta: the host name the server gave in its greeting (first word).
    @ivar extensions: EHLO keywords, upper-cased, mapped to their parameters.
    @ivar esmtp: C{True} when EHLO succeeded (C{False} after HELO).
    @ivar localAddress: the local IP address of the connection.
    @ivar remoteAddress: the server's IP address.
    @ivar messages: how many message bodies this connection has carried.
    @ivar transactions: how many transactions (MAIL FROM commands) it has
        started.
    @ivar bytesSent: all bytes written on this connection.
    @ivar bodyBytesSent: bytes of message bodies (as encoded) written.
    @ivar pluginData: a place for data plugins to keep data per connection,
        by plugin name.
    @ivar tls: the L{ClientTLS} of the connection once STARTTLS succeeded
        (its C{facts()} describe cipher and certificate), else C{None}.

    @cvar maxLineLength: longest reply line accepted, in bytes; a longer one
        is a protocol error (the connection is closed).
    """

    log = Logger()
    maxLineLength = 16384

    def __init__(self, ehloName: str, timeouts: SMTPTimeouts, clock: IReactorTime) -> None:
        self.ehloName = ehloName
        self.timeouts = timeouts
        self.clock = clock
        self.greeting: Reply | None = None
        self.mta: str | None = None
        #: the name the server was reached by (an MX host or a smarthost),
        #: when the caller knows it
        self.serverName: str | None = None
        self.extensions: dict[str, str] = {}
        self.esmtp = False
        self.localAddress = ""
        self.remoteAddress = ""
        self.messages = 0
        self.transactions = 0
        self.bytesSent = 0
        self.bodyBytesSent = 0
        self.pluginData: dict[str, dict[str, Any]] = {}
        self.tls: ClientTLS | None = None
        # the TLS handshake in progress: its creator, Deferred and timer
        self._handshake: tuple[ClientTLS, Deferred[None], IDelayedCall] | None = None

        self._queue: deque[_Command] = deque()
        self._parser = ReplyParser()
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        self._connected = False
        self._introduced = False
        # set by a time-out or a protocol error: the connection is being aborted
        self._broken = False
        # set by a 421 reply or by quit(): the server is going away
        self._closing = False
        self._expectingBody = False
        self._quitting = False
        self._closed = False
        self._closeTimer: IDelayedCall | None = None
        self._closeWaiters: list[Deferred[None]] = []
        self._quietWaiters: list[Deferred[None]] = []
        self._greetingCommand = _Command("intro", "the greeting", None, timeouts.greeting)
        self.ready: Deferred[ESMTPClient] = self._greetingCommand.deferred.addCallback(
            self._greeted
        )
        self.ready.addErrback(self._introFailed)

    def __repr__(self) -> str:
        return f"<ESMTPClient {self.localAddress} -> {self.remoteAddress} ({self.mta})>"

    # -- connection --------------------------------------------------------

    @property
    def _tcp(self) -> ITCPTransport:
        # a TCP transport, or the TLS one that wraps it: both can abort
        assert self.transport is not None
        return cast(ITCPTransport, self.transport)

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            # a request/reply protocol stalls on delayed ACKs without it
            self._tcp.setTcpNoDelay(True)
        self.localAddress = getattr(self._tcp.getHost(), "host", "")
        self.remoteAddress = getattr(self._tcp.getPeer(), "host", "")
        self._connected = True
        self.log.debug(
            "SMTP connection {local} -> {remote} made", local=self.localAddress, remote=self.remoteAddress
        )
        self._queue.append(self._greetingCommand)
        self._startTimer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connected = False
        self._closed = True
        self._stopTimer()
        if self._closeTimer is not None and self._closeTimer.active():
            self._closeTimer.cancel()
        self.log.debug(
            "SMTP connection to {remote} closed: {reason}",
            remote=self.remoteAddress,
            reason=reason.getErrorMessage(),
        )
        ended = _howItEnded(self.remoteAddress, reason)
        self._failAll(lambda command: _lostWhileWaiting(command, ended))
        if self._handshake is not None:
            _, handshake, timer = self._handshake
            self._handshake = None
            timer.cancel()
            handshake.errback(
                AttemptFailed(
                    "starttls",
                    "error",
                    f"TLS handshake with {self.remoteAddress} failed: {ended}",
                )
            )
        waiters, self._closeWaiters = self._closeWaiters, []
        for waiter in waiters:
            waiter.callback(None)
        # after the close waiters: nothing is awaited on a closed connection
        self._fireQuiet()

    def whenClosed(self) -> Deferred[None]:
        """
        @return: a Deferred that fires with C{None} when the connection is
            closed (at once if it already is).
        """
        if self._closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closeWaiters.append(waiter)
        return waiter

    @property
    def awaitingReplies(self) -> bool:
        """
        C{True} while a command issued on this connection has no reply yet
        (with PIPELINING: the body of a message given back before its reply).
        """
        return bool(self._queue)

    def whenQuiet(self) -> Deferred[None]:
        """
        @return: a Deferred that fires with C{None} once no command waits for
            its reply (at once if none does), or the connection is closed.
        """
        if not self._queue or self._closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._quietWaiters.append(waiter)
        return waiter

    def _fireQuiet(self) -> None:
        waiters, self._quietWaiters = self._quietWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def pipelining(self) -> bool:
        """C{True} when the server announced PIPELINING (RFC 2920)."""
        return self.esmtp and "PIPELINING" in self.extensions

    @property
    def usable(self) -> bool:
        """
        C{True} when the connection can carry another transaction: it is
        open and introduced, no command timed out, no protocol error, no
        unsent body after a 354, no 421 and no QUIT.
        """
        return (
            self._connected
            and self._introduced
            and not self._broken
            and not self._closing
            and not self._expectingBody
        )

    # -- introduction ------------------------------------------------------

    def _greeted(self, reply: Reply) -> Deferred[ESMTPClient]:
        self.greeting = reply
        words = reply.lines[0].split(None, 1) if reply.lines else []
        self.mta = words[0] if words else None
        if reply.code // 100 != 2:
            raise reply.failure("intro")
        return self._issue("ehlo", "EHLO", f"EHLO {self.ehloName}", self.timeouts.ehlo).addCallback(
            self._ehloReplied
        )

    def _ehloReplied(self, reply: Reply) -> ESMTPClient | Deferred[ESMTPClient]:
        if reply.code // 100 == 2:
            self.esmtp = True
            for line in reply.lines[1:]:
                keyword, _, parameters = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = parameters.strip()
            return self._introductionDone()
        if reply.permanent:
            # RFC 5321 3.2: a server that does not know EHLO may still know HELO
            return self._issue("helo", "HELO", f"HELO {self.ehloName}", self.timeouts.ehlo).addCallback(
                self._heloReplied
            )
        raise reply.failure("ehlo")

    def _heloReplied(self, reply: Reply) -> ESMTPClient:
        if reply.code // 100 != 2:
            raise reply.failure("helo")
        return self._introductionDone()

    def _introductionDone(self) -> ESMTPClient:
        self._introduced = True
        self.log.debug(
            "SMTP connection to {remote} ({mta}) ready, extensions {extensions}",
            remote=self.remoteAddress,
            mta=self.mta,
            extensions=sorted(self.extensions),
        )
        return self

    def _introFailed(self, failure: Failure) -> Failure:
        if isinstance(failure.value, AttemptFailed) and failure.value.result == "error":
            # the server answered: say goodbye properly
            self.quit()
        elif self._connected and not self._broken:
            self._broken = True
            self._tcp.abortConnection()
        return failure

    # -- STARTTLS (RFC 3207) -------------------------------------------------

    def startTLS(self, creator: ClientTLS) -> Deferred[ESMTPClient]:
        """
        Send STARTTLS, make the TLS handshake with C{creator} and introduce
        ourselves again with EHLO (the server forgets the first one, and may
        announce other extensions over TLS).

        @return: a Deferred firing with this client when the new EHLO
            succeeded (C{tls} is then set).  It errbacks with
            L{AttemptFailed}: C{starttls}/C{error} with the server's reply
            when STARTTLS is refused (the connection is still usable in
            clear), C{starttls}/C{error} when the handshake fails (the
            connection is closed), C{starttls}/C{timeout} when the reply or
            the handshake takes longer than C{timeouts.starttls}, or the
            failure of EHLO.
        """
        return self._issue("starttls", "STARTTLS", "STARTTLS", self.timeouts.starttls).addCallback(
            self._startTLSReplied, creator
        )

    def _startTLSReplied(self, reply: Reply, creator: ClientTLS) -> Deferred[ESMTPClient]:
        if reply.code // 100 != 2:
            raise reply.failure("starttls")
        handshake: Deferred[None] = Deferred()
        timer = self.clock.callLater(self.timeouts.starttls, self._handshakeTimedOut)
        self._handshake = (creator, handshake, timer)
        cast(ITLSTransport, self.transport).startTLS(creator)
        return handshake.addCallback(self._ehloOverTLS)

    def handshakeCompleted(self) -> None:
        """
        Called by the TLS layer when the handshake is done.
        """
        if self._handshake is None:
            return
        creator, handshake, timer = self._handshake
        self._handshake = None
        timer.cancel()
        self.tls = creator
        handshake.callback(None)

    def _handshakeTimedOut(self) -> None:
        assert self._handshake is not None
        _, handshake, _ = self._handshake
        self._handshake = None
        self._broken = True
        self._tcp.abortConnection()
        handshake.errback(
            AttemptFailed(
                "starttls",
                "timeout",
                f"no TLS handshake with {self.remoteAddress} within {self.timeouts.starttls:g} seconds",
            )
        )

    def _ehloOverTLS(self, _: None) -> Deferred[ESMTPClient]:
        # RFC 3207 4.2: what the server said before TLS no longer counts
        self.extensions = {}
        self.esmtp = False
        self._introduced = False
        return self._issue("ehlo", "EHLO", f"EHLO {self.ehloName}", self.timeouts.ehlo).addCallback(
            self._ehloReplied
        )

    # -- AUTH (RFC 4954) ---------------------------------------------------

    def authenticate(self, username: str, password: str) -> Deferred[Reply]:
        """
        Log in with the first SASL mechanism the server announced of PLAIN,
        LOGIN and CRAM-MD5 (CRAM-MD5 first on a connection without TLS).
        The credentials never appear in logs or failure descriptions.

        @return: a Deferred firing with the server's 235 reply; it errbacks
            with L{AttemptFailed} C{auth}/C{error} when the server offers
            none of these mechanisms or refuses the credentials, and
            C{auth}/C{timeout} or C{auth}/C{lost}.
        """
        offered = self.extensions.get("AUTH", "").upper().split()
        preferred = _MECHANISMS_TLS if self.tls is not None else _MECHANISMS_CLEAR
        for mechanism in preferred:
            if mechanism in offered:
                return ensureDeferred(self._authenticate(mechanism, username, password))
        return fail(
            AttemptFailed(
                "auth",
                "error",
                f"{self.mta or self.remoteAddress} offers AUTH {' '.join(offered) or '(nothing)'}, "
                f"none of the mechanisms mqtwist speaks ({', '.join(_MECHANISMS_TLS)})",
            )
        )

    async def _authenticate(self, mechanism: str, username: str, password: str) -> Reply:
        user, secret = username.encode("utf-8"), password.encode("utf-8")
        if mechanism == "PLAIN":
            response = _b64(b"\0" + user + b"\0" + secret)
            reply = await self._authStep(f"AUTH PLAIN {response}", "AUTH PLAIN")
        elif mechanism == "LOGIN":
            reply = await self._authStep("AUTH LOGIN", "AUTH LOGIN", expected=334)
            reply = await self._authStep(_b64(user), "the AUTH LOGIN user name", expected=334)
            reply = await self._authStep(_b64(secret), "the AUTH LOGIN password")
        else:
            reply = await self._authStep("AUTH CRAM-MD5", "AUTH CRAM-MD5", expected=334)
            challenge = base64.b64decode(reply.lines[0].strip() if reply.lines else "")
            digest = hmac.new(secret, challenge, hashlib.md5).hexdigest()
            reply = await self._authStep(_b64(user + b" " + digest.encode("ascii")), "the CRAM-MD5 response")
        return reply

    async def _authStep(self, line: str, verb: str, expected: int = 235) -> Reply:
        command = _Command("auth", verb, line.encode("utf-8") + b"\r\n", self.timeouts.auth, f"{verb} <hidden>")
        reply: Reply = await self._enqueue(command)
        if reply.code != expected:
            if reply.code == 334:
                # a challenge where none belongs: end the exchange (RFC 4954 4)
                self._issue("auth", "AUTH", "*", self.timeouts.auth).addErrback(lambda _: None)
            raise reply.failure("auth")
        return reply

    # -- commands ----------------------------------------------------------

    def mailFrom(self, sender: str, params: Sequence[str] = ()) -> Deferred[Reply]:
        """
        Send C{MAIL FROM:<sender>} with the given ESMTP parameters
        (C{"SIZE=1234"}, ...); C{""} is the null sender C{<>}.

        @return: a Deferred firing with the reply, whatever its code;
            errbacks with L{AttemptFailed} C{mailfrom}/C{timeout} or
            C{mailfrom}/C{lost}, or C{mailfrom}/C{invalid} for an address
            or parameter that contains a line break.
        """
        self.transactions += 1
        return self._issueAddress("mailfrom", "MAIL FROM", sender, params, self.timeouts.mailfrom)

    def rcptTo(self, recipient: str, params: Sequence[str] = ()) -> Deferred[Reply]:
        """
        Send C{RCPT TO:<recipient>} with the given ESMTP parameters.

        @return: like L{mailFrom}, with state C{rcptto}.
        """
        return self._issueAddress("rcptto", "RCPT TO", recipient, params, self.timeouts.rcptto)

    def data(self) -> Deferred[Reply]:
        """
        Send C{DATA}.

        @return: a Deferred firing with the reply (354 means: send the body
            with L{sendBody}); errbacks with L{AttemptFailed} C{data}/C{timeout}
            or C{data}/C{lost}.
        """
        return self._issue("data", "DATA", "DATA", self.timeouts.data).addCallback(self._dataReplied)

    def _dataReplied(self, reply: Reply) -> Reply:
        self._expectingBody = reply.code == 354
        return reply

    def sendBody(self, body: bytes, *, crlf: bool = False) -> Deferred[Reply]:
        """
        Send a message body after a 354 reply to L{data}: its line endings
        are made CRLF, lines starting with a dot are dot-stuffed and the
        terminating dot line is added (L{encodeBody}; C{crlf} as there).

        @return: a Deferred firing with the server's final reply to the body,
            whatever its code; errbacks with L{AttemptFailed}
            C{message}/C{timeout} or C{message}/C{lost}.
        @raise RuntimeError: when the last reply was not a 354 to DATA.
        """
        if not self._expectingBody:
            raise RuntimeError("sendBody() needs a 354 reply to data() first")
        self._expectingBody = False
        encoded = encodeBody(body, crlf=crlf)
        self.messages += 1
        self.bodyBytesSent += len(encoded)
        command = _Command(
            "message", "the message body", encoded, self.timeouts.message, f"<body of {len(encoded)} bytes>"
        )
        return self._enqueue(command)

    def endEmptyData(self) -> Deferred[Reply]:
        """
        After a 354 reply to L{data} for a transaction whose envelope
        failed, send the terminating dot alone (RFC 2920 section 3.1) so the
        server ends the transaction without a message.

        @return: a Deferred firing with the server's reply, whatever its
            code (the transaction is over either way); errbacks with
            L{AttemptFailed} C{data}/C{timeout} or C{data}/C{lost}.
        @raise RuntimeError: when the last reply was not a 354 to DATA.
        """
        if not self._expectingBody:
            raise RuntimeError("endEmptyData() needs a 354 reply to data() first")
        self._expectingBody = False
        command = _Command("data", "the end of an empty DATA", b".\r\n", self.timeouts.message, "<end of data>")
        return self._enqueue(command)

    def rset(self) -> Deferred[Reply]:
        """
        Send C{RSET}, abandoning the current transaction.

        @return: a Deferred firing with the reply; errbacks with
            L{AttemptFailed} C{rset}/C{timeout} or C{rset}/C{lost}.
        """
        return self._issue("rset", "RSET", "RSET", self.timeouts.rset)

    def quit(self) -> Deferred[None]:
        """
        Send C{QUIT} (after the commands already issued), wait for its reply
        at most C{timeouts.quit} seconds and close the connection.

        @return: a Deferred that fires with C{None} when the connection is
            closed; it never errbacks.
        """
        closed = self.whenClosed()
        if not self._connected or self._quitting:
            return closed
        self._closing = self._quitting = True
        # after a time-out or a protocol error the server cannot be talked to
        if self._broken or self._expectingBody:
            self._tcp.abortConnection()
            return closed
        self._issue("quit", "QUIT", "QUIT", self.timeouts.quit).addBoth(self._quitReplied)
        return closed

    def _quitReplied(self, result: Reply | Failure) -> None:
        if self._connected:
            self._tcp.loseConnection()
            # a peer that does not read can keep loseConnection() from finishing
            self._closeTimer = self.clock.callLater(self.timeouts.quit, self._tcp.abortConnection)

    def _issueAddress(
        self, state: str, verb: str, address: str, params: Sequence[str], timeout: float
    ) -> Deferred[Reply]:
        line = " ".join([f"{verb}:<{address}>", *params])
        if "\r" in line or "\n" in line:
            return fail(
                AttemptFailed(
                    state,
                    "invalid",
                    f"the {verb} command {excerpt(line)} contains a line break; fix the "
                    f"address in the message",
                    permanent=True,
                )
            )
        # the debug log shows a line of a sender's making (its address, ORCPT,
        # ENVID) whole only as long as SMTP allows a command line to be
        shown = line if len(line) <= _LONGEST_COMMAND else excerpt(line, _LONGEST_COMMAND)
        return self._enqueue(_Command(state, verb, line.encode("utf-8") + b"\r\n", timeout, shown))

    def _issue(self, state: str, verb: str, line: str, timeout: float) -> Deferred[Reply]:
        command = _Command(state, verb, line.encode("utf-8") + b"\r\n", timeout, line)
        return self._enqueue(command)

    def _enqueue(self, command: _Command) -> Deferred[Reply]:
        if not self._connected or self._broken:
            return fail(
                AttemptFailed(
                    command.state,
                    "lost",
                    f"cannot send {command.verb}: the connection to {self.remoteAddress} "
                    f"is closed or being aborted",
                )
            )
        self._queue.append(command)
        self._writeQueued()
        return command.deferred

    def _writeQueued(self) -> None:
        """
        Write the commands that may be written now: all of them with
        PIPELINING, else the oldest one when nothing is waiting for a reply.
        """
        for command in self._queue:
            if command.written:
                if not self.pipelining:
                    break
                continue
            assert command.data is not None
            command.written = True
            self._tcp.write(command.data)
            self.bytesSent += len(command.data)
            if not self.pipelining:
                break
        self._startTimer()

    # -- replies -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if not self._connected or self._broken:
                return
            try:
                reply = self._parser.lineReceived(line[:-1] if line.endswith(b"\r") else line)
            except MalformedReply as error:
                self._protocolError(str(error))
                return
            if reply is not None:
                self._replyReceived(reply)
        if len(self._buffer) > self.maxLineLength:
            self._protocolError(f"reply line longer than {self.maxLineLength} bytes")

    def _replyReceived(self, reply: Reply) -> None:
        if reply.code == 421:
            # the server is closing the connection (RFC 5321 3.8)
            self._closing = True
        if not self._queue or not self._queue[0].written:
            self.log.info(
                "SMTP {remote} sent {code} {text} when no command was waiting",
                remote=self.remoteAddress,
                code=reply.code,
                text=reply.text,
            )
            if reply.code != 421:
                self._protocolError(f"unexpected reply {reply.code} {reply.text!r} when no command was sent")
            return
        command = self._queue.popleft()
        # one event per command and its reply: logging is on the hot path
        if debugEvents.wanted:
            self.log.debug(
                "SMTP {remote}: {command} -> {code} {text}",
                remote=self.remoteAddress,
                command=command.shown,
                code=reply.code,
                text=reply.text,
            )
        self._stopTimer()
        if self._connected:
            self._writeQueued()
        command.deferred.callback(reply)
        # after the reply's own callbacks, which may issue the next command
        if self._quietWaiters and not self._queue:
            self._fireQuiet()

    def _protocolError(self, description: str) -> None:
        self.log.info(
            "SMTP protocol error from {remote}: {description}",
            remote=self.remoteAddress,
            description=description,
        )
        self._broken = True
        self._tcp.abortConnection()
        self._failAll(
            lambda command: AttemptFailed(
                command.state,
                "lost",
                f"protocol error from {self.remoteAddress} while waiting for the reply "
                f"to {command.verb}: {description}",
            )
        )

    def _failAll(self, makeFailure: Any) -> None:
        commands, self._queue = self._queue, deque()
        for command in commands:
            command.deferred.errback(makeFailure(command))

    # -- time-outs ---------------------------------------------------------

    def _startTimer(self) -> None:
        if self._timer is None and self._queue and self._queue[0].written:
            self._timer = self.clock.callLater(self._queue[0].timeout, self._timedOut)

    def _stopTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        late = self._queue[0]
        # the failure below says it, and the delivery that waited logs it
        self.log.debug(
            "SMTP timeout: no reply to {verb} from {remote} within {timeout} seconds",
            verb=late.verb,
            remote=self.remoteAddress,
            timeout=late.timeout,
        )
        self._broken = True
        self._tcp.abortConnection()
        # the commands behind the late one are lost with the connection, not
        # late themselves: a pipelined MAIL FROM of the next message is then
        # "untouched" and that message goes on another connection at once
        self._failAll(
            lambda command: AttemptFailed(
                command.state,
                "timeout",
                f"no reply to {late.verb} from {self.remoteAddress} within {late.timeout:g} seconds",
            )
            if command is late
            else AttemptFailed(
                command.state,
                "lost",
                f"{command.verb} abandoned: no reply to {late.verb} from "
                f"{self.remoteAddress} within {late.timeout:g} seconds",
            )
        )


def _howItEnded(remote: str, reason: Failure) -> str:
    """
    How the connection to C{remote} ended, for a description: in words of
    its own, since the result (C{lost}) already says that it is gone and
    Twisted's texts say it twice more ("Connection to the other side was
    lost in a non-clean fashion: Connection lost.").
    """
    if reason.check(ConnectionDone):
        return f"{remote} closed the connection"
    if isinstance(reason.value, ConnectionLost):
        detail = " ".join(str(arg) for arg in reason.value.args)
        return f"the connection to {remote} was reset or broken off" + (f" ({detail})" if detail else "")
    return f"the connection to {remote} failed: {reason.getErrorMessage()}"


def _lostWhileWaiting(command: _Command, ended: str) -> AttemptFailed:
    """
    The failure of a C{command} still waiting for its reply when the
    connection C{ended} (L{_howItEnded}).
    """
    if command.state == "message":
        # the body goes out in one write, and how much of it the server has
        # read when the connection ends cannot be known here
        assert command.data is not None
        return AttemptFailed(
            "message",
            "lost",
            f"{ended} while the message body ({len(command.data)} bytes) was being sent "
            f"or before the reply to it; the server may or may not have the message",
        )
    waitingFor = command.verb if command.data is None else f"the reply to {command.verb}"
    return AttemptFailed(command.state, "lost", f"{ended} before {waitingFor}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
