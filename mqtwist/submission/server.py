"""
The ESMTP submission server: takes mail in over SMTP and hands each
message, after the final dot, to a L{Queue}; the reply to the dot is 250
only once the queue's Deferred has fired (every job confirmed by the
broker), 451 when it fails.

Written on L{Protocol} rather than on C{twisted.mail.smtp.ESMTP}, which
has no SMTPUTF8, DSN, ENHANCEDSTATUSCODES, limits, nor a deferred reply to
the final dot that pipelined commands wait behind.  The bytes are read in
chunks: commands line by line, the message a chunk of whole lines at a
time (split, unstuffed and checked with C{bytes} methods, joined once).

Decisions (see C{docs/submission.rst}):

  - lines end in CRLF; a command line may end in a bare LF, but a message
    with a bare CR or LF is refused (550 5.6.0) after its dot, and only
    CRLF.CRLF ends a message (no SMTP smuggling);
  - a command line is 512 bytes at most, its CRLF included (AUTH
    responses 12,288), a message line 1,000 (RFC 5321 4.5.3.1): longer
    ones are refused with 500 5.5.2 (after the dot, for a message; an
    AUTH response with RFC 4954's 500 5.5.6);
  - a client that is neither authenticated nor in a trusted network has
    every RCPT refused with 530 5.7.0;
  - anything a client pipelines after STARTTLS is thrown away (RFC 3207 5,
    the plaintext command injection of CVE-2011-0411).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwist.metrics import Metrics
from mqtwist.submission.access import Access, Account, RateLimiter
from mqtwist.submission.envelope import Queue, Recipient, Submission
from mqtwist.submission.syntax import MAX_PATH, MailArguments, Refused, mailArguments, rcptArguments, replyText
from mqtwist.validation import shownName

#: RFC 5321 4.5.3.1.4: a command line, CRLF included
MAX_COMMAND_LINE = 512
#: RFC 5321 4.5.3.1.6: a text line, CRLF included
MAX_TEXT_LINE = 1000
#: RFC 4954 4: a line of the AUTH exchange
MAX_AUTH_LINE = 12288
#: bytes of commands a client may send ahead while it does not read the
#: replies (far more than any pipelining client has in flight: some ten
#: thousand commands); beyond, it is cut off
MAX_UNANSWERED_BYTES = 1024 * 1024

# the states of a session
_COMMAND, _DATA, _AUTH, _BUSY, _CLOSED = range(5)

#: what a message in DATA may be refused for, checked at the final dot
_SIZE, _LONG_LINE, _BARE_NEWLINE, _MEMORY = "size", "line-length", "bare-newline", "memory"


@dataclass(frozen=True)
class ServerSettings:
    """
    The submission server's settings (see the C{submission*} settings of
    L{mqtwist.config.Config}).

    @ivar hostname: the name the server greets with and writes in the
        C{Received} header.
    @ivar tls: the server side of STARTTLS (an object with C{getContext}),
        or C{None}: no STARTTLS.
    @ivar authCleartext: C{"never"}, or C{"loopback"}: AUTH without TLS
        from loopback clients.
    """

    hostname: str
    maxSize: int = 10 * 1024 * 1024
    #: message bytes all the sessions together may hold, from DATA until
    #: the queue answers
    maxMemory: int = 1024 * 1024 * 1024
    maxRecipients: int = 1000
    maxConnections: int = 1000
    maxConnectionsPerClient: int = 50
    #: the prefix length of the IPv6 networks counted as one client (a
    #: host is given a whole /64, and may use any address of it)
    ipv6ClientPrefix: int = 64
    commandTimeout: float = 300.0
    dataTimeout: float = 300.0
    queueTimeout: float = 120.0
    maxBadCommands: int = 20
    maxAuthFailures: int = 3
    #: password checks run at a time in the reactor's thread pool, which
    #: DKIM signing and message preparation share; the others wait
    authThreads: int = 2
    tls: Any = None
    authCleartext: str = "never"
    requireTls: bool = False


class SubmissionServer:
    """
    What every connection of every submission endpoint shares: the
    settings, the accounts, the queue, the counts of open connections and
    the rate limiter.

    @param queue: takes each message after its final dot.
    """

    def __init__(
        self,
        settings: ServerSettings,
        access: Access,
        queue: Queue,
        reactor: Any,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.access = access
        self.queue = queue
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        self.limiter = RateLimiter(reactor)
        #: the password checks of all the sessions, C{settings.authThreads}
        #: at a time (each session has one at most: it waits for it)
        self.authChecks = DeferredSemaphore(settings.authThreads)
        #: open connections, by client address
        self.byClient: dict[str, int] = {}
        self.connections: set[SubmissionProtocol] = set()
        self.stopping = False
        #: message bytes the sessions hold now (at most C{settings.maxMemory})
        self.memoryHeld = 0

    def factory(self, implicitTLS: bool = False) -> SubmissionFactory:
        """
        The factory of one endpoint's connections.

        @param implicitTLS: the endpoint's connections are TLS from the
            start (C{ssl:465}).
        """
        return SubmissionFactory(self, implicitTLS)

    def openConnections(self) -> int:
        """The sessions open now."""
        return len(self.connections)

    def closeAll(self) -> Deferred[None]:
        """
        Stop: a session waiting for the queue gets its answer first, the
        others are told 421 at once and closed.

        @return: a Deferred firing when every connection is closed.
        """
        self.stopping = True
        waits = [connection.closeForShutdown() for connection in list(self.connections)]
        done: Deferred[None] = DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)
        return done


class SubmissionFactory(ServerFactory):
    """
    Makes a L{SubmissionProtocol} for each connection of one endpoint.
    """

    noisy = False

    def __init__(self, server: SubmissionServer, implicitTLS: bool) -> None:
        self.server = server
        self.implicitTLS = implicitTLS

    def buildProtocol(self, addr: Any) -> SubmissionProtocol:
        protocol = SubmissionProtocol(self.server, implicitTLS=self.implicitTLS)
        protocol.factory = self
        return protocol


class SubmissionProtocol(Protocol):
    """
    One ESMTP session.
    """

    log = Logger()
    transport: Any

    def __init__(self, server: SubmissionServer, implicitTLS: bool = False) -> None:
        self.server = server
        self.settings = server.settings
        self.metrics = server.metrics
        self.reactor = server.reactor
        self.implicitTLS = implicitTLS
        self._buffer = b""
        self._state = _COMMAND
        self._discarding = False
        self._processing = False
        self._writeBlocked = False
        self._timer: Any = None
        self._abortTimer: Any = None
        self._counted = False
        self.clientAddress = ""
        #: what its connections are counted by (the address, or its IPv6 network)
        self.clientKey = ""
        self.clientPort = 0
        self.localAddress = ""
        self.localPort = 0
        self.tls = implicitTLS
        self.heloName: str | None = None
        self.esmtp = False
        self.user: str | None = None
        self.account: Account | None = None
        self.network: Account | None = None
        self.badCommands = 0
        self.authFailures = 0
        self.messages = 0
        self._waiting: Deferred[None] | None = None
        self._shutdown: Deferred[None] | None = None
        self._auth: Callable[[bytes], None] | None = None
        self._authMechanism = ""
        self._usingTLS: str | None = None
        self.sender: str | None = None
        self.mail = MailArguments("")
        self.recipients: list[Recipient] = []
        self._recipientKeys: set[str] = set()
        self._data: list[bytes] = []
        self._dataSize = 0
        #: the bytes of L{SubmissionServer.memoryHeld} that are this session's
        self._held = 0
        self._problem: str | None = None
        self._midLine = False

    # -- the connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.clientAddress = _canonical(getattr(peer, "host", "") or "")
        self.clientPort = int(getattr(peer, "port", 0) or 0)
        local = self.transport.getHost()
        self.localAddress = _canonical(getattr(local, "host", "") or "")
        self.localPort = int(getattr(local, "port", 0) or 0)
        if self.implicitTLS or ISSLTransport.providedBy(self.transport):
            self.tls = True
        server, settings = self.server, self.settings
        _noDelay(self.transport)
        if server.stopping:
            return self._refuseConnection("4.3.2", "Service shutting down", "shutdown")
        if len(server.connections) >= settings.maxConnections:
            return self._refuseConnection("4.7.0", "Too many connections; try again later", "connections")
        self.clientKey = _clientKey(self.clientAddress, settings.ipv6ClientPrefix)
        if server.byClient.get(self.clientKey, 0) >= settings.maxConnectionsPerClient:
            return self._refuseConnection(
                "4.7.0", f"Too many connections from {self.clientKey}; try again later", "client-connections"
            )
        self._counted = True
        # the transport pauses this producer while its write buffer is
        # full: a client that sends commands without reading the replies
        # gets no more answers until it does (see L{pauseProducing})
        self.transport.registerProducer(self, True)
        server.connections.add(self)
        server.byClient[self.clientKey] = server.byClient.get(self.clientKey, 0) + 1
        self.network = server.access.network(self.clientAddress)
        self.log.debug(
            "submission: connection from {client}:{port}{tls}{trusted}",
            client=self.clientAddress,
            port=self.clientPort,
            tls=" (TLS)" if self.tls else "",
            trusted=f", trusted network {self.network.name}" if self.network is not None else "",
        )
        self.metrics.submissionSession("accepted")
        self._write(f"220 {settings.hostname} ESMTP mqtwist\r\n")
        self._setTimeout(settings.commandTimeout)

    def _refuseConnection(self, enhanced: str, text: str, reason: str) -> None:
        self.metrics.submissionSession("refused")
        self.metrics.submissionRefused("connect", reason)
        self.log.info(
            "submission: connection from {client} refused: {reason}", client=self.clientAddress, reason=text
        )
        self._state = _CLOSED
        self._write(f"421 {enhanced} {self.settings.hostname} {text}\r\n")
        self.transport.loseConnection()
        self._abortLater()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._state = _CLOSED
        self._cancelTimeout()
        if self._waiting is None:
            # (a message the queue has is released when it answers)
            self._release()
        if self._abortTimer is not None and self._abortTimer.active():
            self._abortTimer.cancel()
        self._abortTimer = None
        if self._counted:
            self._counted = False
            self.log.debug(
                "submission: {client} disconnected after {messages} message(s){why}",
                client=self.clientAddress,
                messages=self.messages,
                why="" if reason is None else f" ({reason.getErrorMessage()})",
            )
            server = self.server
            server.connections.discard(self)
            left = server.byClient.get(self.clientKey, 1) - 1
            if left:
                server.byClient[self.clientKey] = left
            else:
                server.byClient.pop(self.clientKey, None)
        if self._shutdown is not None and self._waiting is None:
            shutdown, self._shutdown = self._shutdown, None
            shutdown.callback(None)

    def closeForShutdown(self) -> Deferred[None]:
        """
        Close for a stop: at once with 421 unless the session waits for the
        queue, which it answers first.

        @return: a Deferred firing when the connection is closed.
        """
        self._shutdown = Deferred()
        shutdown = self._shutdown
        if self._waiting is None and self._state != _CLOSED:
            self._close("4.3.2", "Service shutting down")
        elif self._state == _CLOSED and not self._counted:
            self._shutdown = None
            shutdown.callback(None)
        return shutdown

    def _close(self, enhanced: str, text: str) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._cancelTimeout()
        self._write(f"421 {enhanced} {self.settings.hostname} {text}\r\n")
        if self._writeBlocked:
            # the client does not read: the 421 would never be written, and
            # the connection would wait for it for ever
            self.log.info(
                "submission: {client} does not read its replies: connection aborted", client=self.clientAddress
            )
            self.transport.abortConnection()
            return
        self._loseConnection()

    def _loseConnection(self) -> None:
        """
        Close once the replies are written.  The producer goes first: with
        one registered, a TLS transport would wait for more writes.
        """
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._abortLater()

    def _abortLater(self) -> None:
        """
        Abort the connection if the last replies are not written within the
        command time-out: a client that stopped reading them would otherwise
        keep its connection (and its place under the connection limits) for
        ever, since closing waits for the writes.
        """
        if self._abortTimer is None:
            self._abortTimer = self.reactor.callLater(self.settings.commandTimeout, self._abort)

    def _abort(self) -> None:
        self._abortTimer = None
        self.log.info(
            "submission: {client} did not read its last replies within {seconds} s: connection aborted",
            client=self.clientAddress,
            seconds=self.settings.commandTimeout,
        )
        self.transport.abortConnection()

    # -- time-outs --------------------------------------------------------------

    def _setTimeout(self, seconds: float | None) -> None:
        if self._timer is not None and self._timer.active():
            if seconds is None:
                self._timer.cancel()
                self._timer = None
            else:
                self._timer.reset(seconds)
            return
        self._timer = self.reactor.callLater(seconds, self._timedOut) if seconds is not None else None

    def _cancelTimeout(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        stage = "data" if self._state == _DATA else "command"
        self.metrics.submissionRefused(stage, "timeout")
        self.log.info(
            "submission: {client} timed out waiting for {stage}", client=self.clientAddress, stage=stage
        )
        self._close("4.4.2", "Error: timeout exceeded")

    # -- reading ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._state == _CLOSED:
            return
        self._buffer += data
        if self._state == _BUSY:
            return
        if self._timer is not None:
            self._timer.reset(self.settings.dataTimeout if self._state == _DATA else self.settings.commandTimeout)
        self._processSafely()

    def _processSafely(self) -> None:
        if self._processing:
            # called back from inside L{_process} (a queue or password check
            # that answered at once): the loop running there reads the new
            # state and goes on, rather than a loop nested in it per message
            return
        self._processing = True
        try:
            self._process()
        except Exception:
            # never a traceback to the client, nor a session left hanging
            self.log.failure("submission: error in the session with {client}", client=self.clientAddress)
            self._close("4.3.0", "Local error in processing; try again later")
        finally:
            self._processing = False

    def _process(self) -> None:
        while True:
            state = self._state
            if self._writeBlocked and state != _DATA:
                if len(self._buffer) > MAX_UNANSWERED_BYTES:
                    self.log.info(
                        "submission: {client} sent {size} bytes of commands without reading the replies: closed",
                        client=self.clientAddress,
                        size=len(self._buffer),
                    )
                    self.metrics.submissionRefused("command", "not-reading")
                    self._state = _CLOSED
                    self._cancelTimeout()
                    self.transport.abortConnection()
                return
            if state == _DATA:
                if not self._readData():
                    return
            elif state == _COMMAND or state == _AUTH:
                buffer = self._buffer
                end = buffer.find(b"\n")
                limit = MAX_AUTH_LINE if state == _AUTH else MAX_COMMAND_LINE
                if end < 0:
                    if len(buffer) > limit:
                        # a line too long: dropped up to its end
                        self._discarding = True
                        self._buffer = b""
                    return
                line, self._buffer = buffer[:end], buffer[end + 1 :]
                if self._discarding or end + 1 > limit:
                    self._discarding = False
                    if state == _AUTH:
                        # the exchange ends with the refusal (RFC 4954 4)
                        self._state, self._auth = _COMMAND, None
                        self._badCommand(500, "5.5.6", "Authentication Exchange line is too long", "line-length")
                    else:
                        self._badCommand(500, "5.5.2", "Line too long", "line-length")
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                if state == _AUTH:
                    self._authLine(line)
                else:
                    self._command(line)
            else:
                return

    def _pause(self) -> None:
        self._state = _BUSY
        self._cancelTimeout()
        self.transport.pauseProducing()

    def _resume(self) -> None:
        if self._state == _CLOSED:
            return
        self._state = _COMMAND
        self._setTimeout(self.settings.commandTimeout)
        self.transport.resumeProducing()
        self._processSafely()

    # -- IPushProducer, for the transport's write buffer ------------------------

    def pauseProducing(self) -> None:
        """
        The replies are not being read: answer no more commands (a message
        in DATA is still read, as it is answered only at its end).  The
        transport goes on reading (under TLS it may need to read before it
        can write), up to L{MAX_UNANSWERED_BYTES} bytes of commands.
        """
        self._writeBlocked = True

    def resumeProducing(self) -> None:
        """The replies were read: go on."""
        self._writeBlocked = False
        if self._state not in (_BUSY, _CLOSED):
            self._processSafely()

    def stopProducing(self) -> None:
        """The connection is going; L{connectionLost} follows."""

    # -- replies ----------------------------------------------------------------

    def _write(self, text: str) -> None:
        self.transport.write(text.encode("utf-8"))

    def _reply(self, code: int, enhanced: str, text: str) -> None:
        self.transport.write(f"{code} {enhanced} {text}\r\n".encode())

    def _badCommand(self, code: int, enhanced: str, text: str, reason: str = "syntax", stage: str = "command") -> None:
        """Refuse a command, counting it towards the cap on errors."""
        self.metrics.submissionRefused(stage, reason)
        self.badCommands += 1
        if self.badCommands >= self.settings.maxBadCommands:
            self.log.info(
                "submission: {client} closed after {count} bad commands",
                client=self.clientAddress,
                count=self.badCommands,
            )
            self._reply(code, enhanced, text)
            self._close("4.7.0", "Too many errors")
            return
        self._reply(code, enhanced, text)

    def _refused(self, refused: Refused, stage: str) -> None:
        self._badCommand(refused.code, refused.enhanced, refused.text, refused.reason, stage)

    # -- commands ---------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._badCommand(500, "5.5.2", "Command is not UTF-8")
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        handler = self._COMMANDS.get(verb)
        if handler is None:
            if verb in ("GET", "POST", "HEAD", "PUT", "CONNECT") or verb.endswith(":"):
                # a web browser or proxy, or headers sent to the SMTP port
                self.metrics.submissionRefused("command", "not-smtp")
                return self._close("4.7.0", "Not an SMTP client: closing")
            if verb in ("BDAT", "EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"):
                return self._badCommand(502, "5.5.1", f"{verb} is not implemented", "not-implemented")
            return self._badCommand(500, "5.5.2", "Command unrecognized")
        handler(self, argument)

    def do_EHLO(self, argument: str) -> None:
        self._hello(argument, esmtp=True)

    def do_HELO(self, argument: str) -> None:
        self._hello(argument, esmtp=False)

    def _hello(self, argument: str, esmtp: bool) -> None:
        name = argument.strip()
        verb = "EHLO" if esmtp else "HELO"
        if not name or " " in name or not _printableASCII(name) or len(name) > 255 or any(c in name for c in "()\\"):
            return self._badCommand(501, "5.5.4", f"Syntax: {verb} hostname")
        self._resetTransaction()
        self.heloName, self.esmtp = name, esmtp
        hostname = self.settings.hostname
        if not esmtp:
            return self._write(f"250 {hostname}\r\n")
        lines = [
            f"{hostname} greets {name}",
            "PIPELINING",
            f"SIZE {self.settings.maxSize}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
        ]
        if self.settings.tls is not None and not self.tls:
            lines.append("STARTTLS")
        if self._authAllowed() and self.user is None:
            lines.append("AUTH PLAIN LOGIN")
        self._write("".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n")

    def _authAllowed(self) -> bool:
        if not self.server.access.users:
            return False
        if self.tls:
            return True
        return self.settings.authCleartext == "loopback" and _isLoopback(self.clientAddress)

    def do_MAIL(self, argument: str) -> None:
        if self.heloName is None:
            return self._badCommand(503, "5.5.1", "Send EHLO or HELO first", "sequence")
        if self.sender is not None:
            return self._badCommand(503, "5.5.1", "Nested MAIL command", "sequence")
        if self.settings.requireTls and not self.tls:
            return self._badCommand(530, "5.7.0", "Must issue a STARTTLS command first", "tls-required", "mail")
        try:
            mail = mailArguments(argument, maxSize=self.settings.maxSize)
        except Refused as refused:
            return self._refused(refused, "mail")
        account = self.account or self.network
        if account is not None and not account.mayUse(mail.sender):
            self.log.info(
                "submission: {account} from {client} may not send as <{sender}>",
                account=account.name,
                client=self.clientAddress,
                sender=shownName(mail.sender),
            )
            return self._badCommand(553, "5.7.1", "Sender address not allowed for this account", "sender", "mail")
        if account is not None and not self.server.limiter.allows(account):
            self.metrics.submissionRefused("mail", "rate")
            self.log.info(
                "submission: {account} from {client} is over its rate of {rate} messages a minute",
                account=account.name,
                client=self.clientAddress,
                rate=account.messagesPerMinute,
            )
            return self._reply(450, "4.7.1", "Rate limit exceeded; try again later")
        self.mail = mail
        self.sender = mail.sender
        self._reply(250, "2.1.0", "Ok")

    def do_RCPT(self, argument: str) -> None:
        if self.sender is None:
            return self._badCommand(503, "5.5.1", "Need MAIL command", "sequence")
        try:
            rcpt = rcptArguments(argument, smtputf8=self.mail.smtputf8)
        except Refused as refused:
            return self._refused(refused, "rcpt")
        if self.account is None and self.network is None:
            self.log.info(
                "submission: relaying to {recipient} refused for {client} (not authenticated, not trusted)",
                recipient=shownName(rcpt.recipient, MAX_PATH),
                client=self.clientAddress,
            )
            # counted as an error: a client trying addresses one after
            # another is cut off after --submission-max-bad-commands
            return self._badCommand(530, "5.7.0", "Authentication required", "relay", "rcpt")
        if len(self.recipients) >= self.settings.maxRecipients:
            self.metrics.submissionRefused("rcpt", "recipients")
            return self._reply(452, "4.5.3", "Too many recipients")
        key = _recipientKey(rcpt.recipient)
        if key not in self._recipientKeys:
            self._recipientKeys.add(key)
            self.recipients.append(Recipient(rcpt.recipient, rcpt.notify, rcpt.orcpt))
        self._reply(250, "2.1.5", "Ok")

    def do_DATA(self, argument: str) -> None:
        if argument.strip():
            return self._badCommand(501, "5.5.4", "Syntax: DATA")
        if self.sender is None:
            return self._badCommand(503, "5.5.1", "Need MAIL command", "sequence")
        if not self.recipients:
            return self._badCommand(554, "5.5.1", "No valid recipients", "sequence")
        if self.server.memoryHeld >= self.settings.maxMemory:
            self.metrics.submissionRefused("data", _MEMORY)
            return self._reply(
                452, "4.3.1", "Insufficient system storage: too many messages in progress; try again later"
            )
        self._state = _DATA
        self._midLine = False
        self._data = []
        self._dataSize = 0
        self._problem = None
        self._write("354 End data with <CR><LF>.<CR><LF>\r\n")
        self._setTimeout(self.settings.dataTimeout)

    def do_RSET(self, argument: str) -> None:
        if argument.strip():
            return self._badCommand(501, "5.5.4", "Syntax: RSET")
        self._resetTransaction()
        self._reply(250, "2.0.0", "Ok")

    def do_NOOP(self, argument: str) -> None:
        self._reply(250, "2.0.0", "Ok")

    def do_QUIT(self, argument: str) -> None:
        self._state = _CLOSED
        self._cancelTimeout()
        self._reply(221, "2.0.0", "Bye")
        self._loseConnection()

    def do_VRFY(self, argument: str) -> None:
        if not argument.strip():
            return self._badCommand(501, "5.5.4", "Syntax: VRFY address")
        self._reply(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery")

    def do_HELP(self, argument: str) -> None:
        self._reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY STARTTLS AUTH")

    def do_STARTTLS(self, argument: str) -> None:
        if self.settings.tls is None:
            return self._badCommand(502, "5.5.1", "STARTTLS is not offered here", "not-implemented")
        if self.tls:
            return self._badCommand(503, "5.5.1", "TLS already active", "sequence")
        if argument.strip():
            return self._badCommand(501, "5.5.4", "Syntax: STARTTLS")
        if self.sender is not None:
            return self._badCommand(503, "5.5.1", "MAIL transaction in progress", "sequence")
        self._reply(220, "2.0.0", "Ready to start TLS")
        # what the client sent after STARTTLS, in clear, is thrown away
        self._buffer = b""
        self.transport.startTLS(self.settings.tls)
        self.tls = True
        self.heloName, self.esmtp = None, False
        self.user = self.account = None
        self._resetTransaction()

    def do_AUTH(self, argument: str) -> None:
        if not self.esmtp:
            return self._badCommand(503, "5.5.1", "Send EHLO first", "sequence")
        if self.user is not None:
            return self._badCommand(503, "5.5.1", "Already authenticated", "sequence")
        if self.sender is not None:
            return self._badCommand(503, "5.5.1", "MAIL transaction in progress", "sequence")
        if not self._authAllowed():
            if not self.server.access.users:
                return self._badCommand(502, "5.5.1", "AUTH is not offered here", "not-implemented", "auth")
            return self._badCommand(
                538, "5.7.11", "Encryption required for requested authentication mechanism", "tls-required", "auth"
            )
        mechanism, _, initial = argument.strip().partition(" ")
        mechanism = mechanism.upper()
        initial = initial.strip()
        if mechanism == "PLAIN":
            self._authMechanism = "PLAIN"
            if initial:
                self._authPlain(initial.encode("ascii", "replace"))
            else:
                self._authPrompt(b"", self._authPlain)
        elif mechanism == "LOGIN":
            self._authMechanism = "LOGIN"
            if initial:
                self._authLoginUser(initial.encode("ascii", "replace"))
            else:
                self._authPrompt(b"Username:", self._authLoginUser)
        else:
            self._badCommand(504, "5.5.4", "Unrecognized authentication type", "auth-mechanism", "auth")

    _COMMANDS: dict[str, Callable[[SubmissionProtocol, str], None]] = {
        "EHLO": do_EHLO,
        "HELO": do_HELO,
        "MAIL": do_MAIL,
        "RCPT": do_RCPT,
        "DATA": do_DATA,
        "RSET": do_RSET,
        "NOOP": do_NOOP,
        "QUIT": do_QUIT,
        "VRFY": do_VRFY,
        "HELP": do_HELP,
        "STARTTLS": do_STARTTLS,
        "AUTH": do_AUTH,
    }

    def _resetTransaction(self) -> None:
        self.sender = None
        self.mail = MailArguments("")
        self.recipients = []
        self._recipientKeys = set()
        self._data = []
        self._dataSize = 0
        self._problem = None
        self._midLine = False

    # -- AUTH -------------------------------------------------------------------

    def _authPrompt(self, challenge: bytes, then: Callable[[bytes], None]) -> None:
        self._auth = then
        self._state = _AUTH
        self._write(f"334 {base64.b64encode(challenge).decode('ascii')}\r\n")

    def _authLine(self, line: bytes) -> None:
        self._state = _COMMAND
        then, self._auth = self._auth, None
        if line.strip() == b"*":
            return self._badCommand(501, "5.0.0", "Authentication aborted", "auth-aborted", "auth")
        assert then is not None
        then(line.strip())

    def _decode(self, response: bytes) -> bytes | None:
        if response == b"=":
            return b""
        try:
            return base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            self._badCommand(501, "5.5.2", "Cannot decode the response (base64)", "auth-syntax", "auth")
            return None

    def _authPlain(self, response: bytes) -> None:
        decoded = self._decode(response)
        if decoded is None:
            return
        parts = decoded.split(b"\0")
        if len(parts) != 3:
            return self._badCommand(
                501, "5.5.2", "Bad PLAIN response: authzid NUL authcid NUL password", "auth-syntax", "auth"
            )
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            return self._authFailed()
        self._verify(authcid, password)

    def _authLoginUser(self, response: bytes) -> None:
        decoded = self._decode(response)
        if decoded is None:
            return
        self._authPrompt(b"Password:", lambda answer: self._authLoginPassword(decoded, answer))

    def _authLoginPassword(self, user: bytes, response: bytes) -> None:
        decoded = self._decode(response)
        if decoded is None:
            return
        self._verify(user, decoded)

    def _verify(self, user: bytes, password: bytes) -> None:
        try:
            name, secret = user.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            return self._authFailed()
        if not name or not name.isprintable():
            return self._authFailed()
        self._pause()
        verifying: Deferred[Account | None] = self.server.authChecks.run(
            self.server.access.verify, name, secret, self.reactor
        )

        def verified(account: Account | None) -> None:
            if self._state == _CLOSED:
                return
            if account is None:
                self._state = _COMMAND
                self._authFailed(name)
            else:
                self.user, self.account = name, account
                self.metrics.submissionAuth(self._authMechanism, "success")
                self.log.info(
                    "submission: {client} authenticated as {user} ({mechanism})",
                    client=self.clientAddress,
                    user=shownName(name, MAX_PATH),
                    mechanism=self._authMechanism,
                )
                self._reply(235, "2.7.0", "Authentication successful")
            self._resume()

        def failed(failure: Failure) -> None:
            self.log.failure("submission: checking a password failed", failure)
            if self._state != _CLOSED:
                self._reply(454, "4.7.0", "Temporary authentication failure")
                self._resume()

        verifying.addCallbacks(verified, failed)

    def _authFailed(self, name: str | None = None) -> None:
        self.metrics.submissionAuth(self._authMechanism, "failure")
        self.authFailures += 1
        self.log.info(
            "submission: AUTH {mechanism} failed for {client}{user}",
            mechanism=self._authMechanism,
            client=self.clientAddress,
            user=f" (user {shownName(name, MAX_PATH)})" if name else "",
        )
        self._badCommand(535, "5.7.8", "Authentication credentials invalid", "auth", "auth")
        if self.authFailures >= self.settings.maxAuthFailures and self._state != _CLOSED:
            self._close("4.7.0", "Too many failed authentications")

    # -- DATA -------------------------------------------------------------------

    def _readData(self) -> bool:
        """
        Take the whole lines of the buffer into the message; at the final
        dot, end it.

        @return: whether to go on reading the buffer (the message ended).
        """
        buffer = self._buffer
        if not self._midLine and buffer[:3] == b".\r\n":
            end = 0
        else:
            found = buffer.find(b"\r\n.\r\n")
            end = found + 2 if found >= 0 else -1
        if end >= 0:
            self._dataChunk(buffer[:end])
            self._buffer = buffer[end + 3 :]
            self._endOfData()
            return True
        last = buffer.rfind(b"\r\n")
        if last >= 0:
            self._dataChunk(buffer[: last + 2])
            self._midLine = False
            rest = buffer[last + 2 :]
        else:
            rest = buffer
        if len(rest) > MAX_TEXT_LINE:
            # no line end in sight: counted, dropped, all but the last bytes
            # (a CRLF.CRLF may begin there)
            if self._problem is None:
                bare = b"\n" in rest or b"\r" in rest
                self._refuseData(_BARE_NEWLINE if bare else _LONG_LINE)
            self._dataSize += len(rest) - 4
            self.metrics.submissionBytes(len(rest) - 4)
            rest = rest[-4:]
            self._midLine = True
        self._buffer = rest
        return False

    def _dataChunk(self, chunk: bytes) -> None:
        """Add whole lines (ending in CRLF) of the message."""
        size = len(chunk)
        if not size:
            return
        self._dataSize += size
        self.metrics.submissionBytes(size)
        if self._problem is not None:
            return
        if self._dataSize > self.settings.maxSize:
            return self._refuseData(_SIZE)
        crlf = chunk.count(b"\r\n")
        if chunk.count(b"\n") != crlf or chunk.count(b"\r") != crlf:
            return self._refuseData(_BARE_NEWLINE)
        if size > MAX_TEXT_LINE - 2 and max(map(len, chunk.split(b"\r\n"))) > MAX_TEXT_LINE - 2:
            return self._refuseData(_LONG_LINE)
        if chunk[:1] == b"." and not self._midLine:
            chunk = chunk[1:]
        if b"\r\n." in chunk:
            chunk = chunk.replace(b"\r\n.", b"\r\n")
        server = self.server
        if server.memoryHeld + len(chunk) > self.settings.maxMemory:
            return self._refuseData(_MEMORY)
        server.memoryHeld += len(chunk)
        self._held += len(chunk)
        self._data.append(chunk)

    def _refuseData(self, problem: str) -> None:
        """The message will be refused at its dot for C{problem}: what it holds is let go."""
        self._problem, self._data = problem, []
        self._release()

    def _release(self) -> None:
        """Give back the bytes this session holds to the server's memory budget."""
        self.server.memoryHeld -= self._held
        self._held = 0

    def _endOfData(self) -> None:
        problem = self._problem
        if problem is not None:
            self._state = _COMMAND
            self._setTimeout(self.settings.commandTimeout)
            self._resetTransaction()
            self.metrics.submissionRefused("data", problem)
            if problem == _SIZE:
                return self._reply(552, "5.3.4", f"Message size exceeds fixed limit of {self.settings.maxSize} bytes")
            if problem == _MEMORY:
                self.log.warn(
                    "submission: message from {client} refused with 451: the sessions hold "
                    "--submission-max-memory ({limit} bytes) of messages now",
                    client=self.clientAddress,
                    limit=self.settings.maxMemory,
                )
                return self._reply(
                    451, "4.3.1", "Insufficient system storage: too many messages in progress; try again later"
                )
            if problem == _LONG_LINE:
                return self._reply(
                    500, "5.5.2", f"Message has a line longer than {MAX_TEXT_LINE - 2} characters (RFC 5321 4.5.3.1.6)"
                )
            return self._reply(
                550, "5.6.0", "Message has a bare CR or LF; lines must end in CRLF (RFC 5321 2.3.8)"
            )
        now = time.time()
        ident = secrets.token_hex(8).upper()
        submission = Submission(
            sender=self.sender or "",
            recipients=tuple(self.recipients),
            mime=self._received(ident, now) + b"".join(self._data),
            clientAddress=self.clientAddress,
            clientPort=self.clientPort,
            localAddress=self.localAddress,
            localPort=self.localPort,
            heloName=self.heloName or "",
            received=now,
            tls=self.tls,
            user=self.user,
            ret=self.mail.ret,
            envid=self.mail.envid,
            smtputf8=self.mail.smtputf8,
            defaults=(self.account or self.network or _NOBODY).defaults,
        )
        account = self.account or self.network
        self._resetTransaction()
        self._pause()
        queued: Deferred[None] = maybeDeferred(self.server.queue, submission)
        queued.addTimeout(self.settings.queueTimeout, self.reactor)
        self._waiting = queued
        queued.addCallbacks(
            self._queued,
            self._notQueued,
            callbackArgs=(submission, ident, account),
            errbackArgs=(submission, ident),
        )

    def _queued(self, _: object, submission: Submission, ident: str, account: Account | None) -> None:
        self._waiting = None
        self._release()
        self.messages += 1
        if account is not None:
            self.server.limiter.taken(account)
        self.metrics.submissionAccepted(len(submission.recipients))
        self.log.info(
            "submission {id}: from <{sender}> by {client}{user}, {count} recipient(s), {size} bytes: queued",
            id=ident,
            sender=shownName(submission.sender, MAX_PATH) if submission.sender else "",
            client=submission.clientAddress,
            user=f" user {shownName(submission.user, MAX_PATH)}" if submission.user else "",
            count=len(submission.recipients),
            size=len(submission.mime),
        )
        if self._state != _CLOSED:
            self._reply(250, "2.0.0", f"Ok: queued as {ident}")
        self._afterWait()

    def _notQueued(self, failure: Failure, submission: Submission, ident: str) -> None:
        """
        The queue failed: 451, so that the client keeps the message and
        tries again; but 550 for a message that can never become jobs (the
        queue's C{ValueError}: an address or DSN value that the delivery
        side would refuse).
        """
        self._waiting = None
        self._release()
        permanent = failure.check(ValueError) is not None
        self.metrics.submissionRefused("data", "content" if permanent else "queue")
        self.log.warn(
            "submission {id}: from <{sender}> by {client}: not queued, answered {code}: {error}",
            id=ident,
            sender=shownName(submission.sender, MAX_PATH) if submission.sender else "",
            client=submission.clientAddress,
            code=550 if permanent else 451,
            error=failure.getErrorMessage() or repr(failure.value),
        )
        if self._state != _CLOSED:
            if permanent:
                self._reply(550, "5.6.0", f"Message cannot be queued: {replyText(failure.getErrorMessage(), 200)}")
            else:
                self._reply(451, "4.3.0", "Message not queued: the queue is not available; try again later")
        self._afterWait()

    def _afterWait(self) -> None:
        if self._shutdown is not None:
            if self._state != _CLOSED:
                self._close("4.3.2", "Service shutting down")
            elif not self._counted:
                shutdown, self._shutdown = self._shutdown, None
                shutdown.callback(None)
            return
        self._resume()

    def _received(self, ident: str, now: float) -> bytes:
        """The C{Received} header of RFC 5321 4.4, with RFC 3848's protocol."""
        protocol = "ESMTP" if self.esmtp else "SMTP"
        if self.mail.smtputf8:
            protocol = "UTF8SMTP"
        if self.tls:
            protocol += "S"
        if self.user is not None:
            protocol += "A"
        address = self.clientAddress
        literal = f"IPv6:{address}" if ":" in address else address
        recipient = f"\r\n\tfor <{self.recipients[0].address}>" if len(self.recipients) == 1 else ""
        date = format_datetime(datetime.fromtimestamp(now, UTC))
        using = f"\t{self._tlsText()}\r\n" if self.tls else ""
        return (
            f"Received: from {self.heloName} ([{literal}])\r\n{using}"
            f"\tby {self.settings.hostname} (mqtwist) with {protocol} id {ident}{recipient};\r\n"
            f"\t{date}\r\n"
        ).encode()

    def _tlsText(self) -> str:
        """What the C{Received} header says of the session's TLS, as Postfix does."""
        if self._usingTLS is None:
            self._usingTLS = "(using TLS)"
            try:
                connection = self.transport.getHandle()
                self._usingTLS = (
                    f"(using {connection.get_protocol_version_name()} with cipher "
                    f"{connection.get_cipher_name()} ({connection.get_cipher_bits()}/"
                    f"{connection.get_cipher_bits()} bits))"
                )
            except Exception:
                # a transport that does not say: the header says less
                pass
        return self._usingTLS


_NOBODY = Account("", "none")


def _canonical(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _clientKey(address: str, ipv6Prefix: int) -> str:
    """
    What the connections of one client are counted by: its IPv4 address,
    or its IPv6 network of C{ipv6Prefix} bits.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/{ipv6Prefix}", strict=False))
    return address


def _isLoopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _printableASCII(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _recipientKey(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def _noDelay(transport: Any) -> None:
    # replies are small and each waits for the client: without TCP_NODELAY
    # a pipelined client stalls on delayed ACKs
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        try:
            setTcpNoDelay(True)
        except Exception:
            pass
