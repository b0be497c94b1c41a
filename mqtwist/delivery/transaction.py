"""
One SMTP mail transaction on an open connection: envelope, data plugins,
body, reply.

The data plugins run while the envelope's replies are on their way and
always finish before the first byte of the body is sent
(C{docs/plugins.rst}).  With PIPELINING (RFC 2920), DATA follows as soon as
the plugins are done, without waiting for the envelope's replies; a failed
envelope cancels the plugins still running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from mqtwist.content.dkimsign import signInThread
from mqtwist.content.headeredits import applyHeaderEdits
from mqtwist.content.message import Message
from mqtwist.content.personalize import rewritesContent, rewrittenContent, templateLimits
from mqtwist.content.template import TemplateLimits
from mqtwist.dataplugin.chain import ConnectionInfo, PluginChain, PluginMessage
from mqtwist.errors import AttemptFailed
from mqtwist.messagestore.loader import StoredMessages, noStore
from mqtwist.smtp.pool import ConnectionPool, Destination
from mqtwist.smtp.protocol import ESMTPClient
from mqtwist.smtp.reply import Reply


class TransactionFailed(AttemptFailed):
    """
    An L{AttemptFailed} that also says what state the SMTP session was left
    in.

    @ivar midTransaction: the session was left in the middle of a
        transaction, and needs RSET before it carries another message.
    @ivar untouched: the connection was lost before the server answered any
        command of this transaction (a connection the server had closed
        while it was idle): the message may be tried at once on another
        connection.
    @ivar facts: the connection's part of the result entry
        (L{connectionFacts}), when L{sendThroughPool} raised it.
    """

    def __init__(self, failure: AttemptFailed, *, midTransaction: bool, untouched: bool = False) -> None:
        super().__init__(
            failure.state,
            failure.result,
            failure.description,
            code=failure.code,
            status=failure.status,
            permanent=failure.permanent,
            plugin=failure.plugin,
        )
        self.midTransaction = midTransaction
        self.untouched = untouched
        self.facts: dict[str, Any] = {}


def connectionInfo(client: ESMTPClient) -> ConnectionInfo:
    """
    What data plugins may know about C{client}'s connection.
    """
    return ConnectionInfo(
        hostname=client.mta or "",
        address=client.remoteAddress,
        localAddress=client.localAddress,
        greeting=client.greeting.text if client.greeting else "",
        extensions=dict(client.extensions),
        tls=client.tls is not None,
        store=client.pluginData,
    )


def connectionFacts(client: ESMTPClient) -> dict[str, Any]:
    """
    The connection's part of a result entry: C{mta}, C{from}, C{to},
    C{messages}, C{sent}, C{dsn}, and C{cipher} and C{certificate} on a TLS
    connection (C{docs/messages.rst}); and C{host}, the name C{to} was
    reached by (the MX host), when it is not the address itself.
    """
    facts: dict[str, Any] = {
        "from": client.localAddress,
        "to": client.remoteAddress,
        "messages": client.messages,
        "sent": {"connection": client.bytesSent, "data": client.bodyBytesSent},
        "dsn": "DSN" in client.extensions,
    }
    if client.mta:
        facts["mta"] = client.mta
    if client.serverName and client.serverName != client.remoteAddress:
        facts["host"] = client.serverName
    if client.tls is not None:
        facts.update(client.tls.facts())
    return facts


def xtext(text: str) -> str:
    """
    C{text} encoded as RFC 3461 xtext: C{+}, C{=}, controls, space and
    non-ASCII (as UTF-8 bytes) become C{+XX}.
    """
    return "".join(
        chr(byte) if 33 <= byte <= 126 and byte not in (43, 61) else f"+{byte:02X}"
        for byte in text.encode("utf-8")
    )


def envelopeParameters(client: ESMTPClient, message: Message) -> tuple[list[str], list[str]]:
    """
    The ESMTP parameters of MAIL FROM and RCPT TO for C{message} on
    C{client}: SIZE, BODY=8BITMIME, SMTPUTF8 and the DSN parameters, as far
    as the server announced them.

    @raise AttemptFailed: permanently, when the message needs an extension
        the server lacks (8-bit body without 8BITMIME, non-ASCII address
        without SMTPUTF8) or is larger than its SIZE limit; unless the job
        has C{force}, which sends it as it is and lets the server decide.
    """
    extensions = client.extensions
    force = message.force
    server = client.mta or client.remoteAddress
    mailParams: list[str] = []
    rcptParams: list[str] = []
    size = len(message.mime)
    # a stored message is loaded while the envelope goes: its size and
    # 8-bit bytes are checked then (_checkFinalBody)
    stored = message.storeKey is not None
    if "SIZE" in extensions and not stored:
        limit = _sizeLimit(extensions["SIZE"])
        if limit and size > limit and not force:
            raise AttemptFailed(
                "mailfrom",
                "error",
                f"the message is {size} bytes, more than the {limit} bytes that {server} "
                f"accepts (SIZE); make it smaller",
                permanent=True,
            )
        mailParams.append(f"SIZE={size}")
    if stored:
        if "8BITMIME" in extensions:
            mailParams.append("BODY=8BITMIME")
    elif not message.mime.isascii():
        if "8BITMIME" in extensions:
            mailParams.append("BODY=8BITMIME")
        elif not force:
            raise AttemptFailed(
                "mailfrom",
                "error",
                f"the message has 8-bit bytes and {server} does not announce 8BITMIME; "
                f"encode its body as 7-bit (quoted-printable or base64), or give the job force",
                permanent=True,
            )
    if not (message.envelope.isascii() and message.recipient.isascii()):
        if "SMTPUTF8" in extensions:
            mailParams.append("SMTPUTF8")
        elif not force:
            which = "sender" if not message.envelope.isascii() else "recipient"
            raise AttemptFailed(
                "mailfrom" if which == "sender" else "rcptto",
                "error",
                f"the {which} address has non-ASCII characters and {server} does not "
                f"announce SMTPUTF8",
                permanent=True,
            )
    dsn = message.dsn
    if dsn is not None and "DSN" in extensions:
        if dsn.ret is not None:
            mailParams.append(f"RET={dsn.ret}")
        if dsn.envid is not None:
            mailParams.append(f"ENVID={xtext(dsn.envid)}")
        if dsn.notify is not None:
            rcptParams.append(f"NOTIFY={','.join(dsn.notify)}")
        if dsn.orcpt is not None:
            kind, _, address = dsn.orcpt.partition(";")
            rcptParams.append(f"ORCPT={kind};{xtext(address)}")
    return mailParams, rcptParams


def _sizeLimit(parameter: str) -> int:
    # RFC 1870: "SIZE" alone or "SIZE 0" means no fixed limit
    return int(parameter) if parameter.strip().isdigit() else 0


def _check(reply: Reply, state: str, expected: int = 2) -> Reply:
    if reply.code // 100 != expected:
        raise reply.failure(state)
    return reply


async def _checkEnvelope(mailReply: Deferred[Reply], rcptReply: Deferred[Reply]) -> None:
    """
    Wait for the replies to MAIL FROM and RCPT TO; the first failure is the
    one reported (a RCPT after a refused MAIL fails only because of it).
    """
    try:
        _check(await mailReply, "mailfrom")
    except AttemptFailed:
        rcptReply.addErrback(lambda _: None)
        raise
    _check(await rcptReply, "rcptto")


def _unlessEnvelopeFails(body: Deferred[bytes], envelope: Deferred[None]) -> Deferred[bytes]:
    """
    The body from the plugins, or the envelope's failure as soon as there is
    one (which cancels the plugins still running).  Cancelling it cancels
    the plugins too: a stopped delivery leaves no plugin run behind.
    """
    result: Deferred[bytes] = Deferred(lambda _: body.cancel())

    def bodyDone(outcome: bytes | Failure) -> None:
        if result.called:
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def envelopeDone(outcome: None | Failure) -> None | Failure:
        if isinstance(outcome, Failure) and not result.called:
            result.errback(outcome)
            body.cancel()
        # the envelope's outcome is still awaited by sendMessage
        return outcome

    body.addBoth(bodyDone)
    envelope.addBoth(envelopeDone)
    return result


async def sendMessage(
    client: ESMTPClient,
    message: Message,
    chain: PluginChain,
    *,
    bodySent: Callable[[], None] | None = None,
    store: StoredMessages | None = None,
) -> Reply:
    """
    Send C{message} on C{client}, running C{chain} to get the body.

    @param bodySent: called once the body is written, before its reply is
        in: from then on the transaction needs nothing more of the session.
    @param store: where the message of a C{key} job is loaded from, while
        the envelope is on its way (MailerQ loads it once the connection
        is ready); a failed load ends the attempt in state C{storage}.
    @return: the server's final reply to the body (2xx).
    @raise TransactionFailed: for a negative reply, a failed plugin chain, a
        message the server cannot take (SIZE, 8BITMIME, SMTPUTF8), a
        time-out or a lost connection; C{midTransaction} tells the caller
        whether RSET is due before the connection carries another message.
    """
    try:
        mailParams, rcptParams = envelopeParameters(client, message)
        # edited for every attempt, never saved: a retry would edit twice
        if message.storeKey is not None:
            if store is None:
                raise noStore(message)
            mime = b""
        elif message.editedMime is not None:
            mime = message.editedMime
        elif message.headerEdits:
            mime = applyHeaderEdits(message.mime, message.headerEdits)
        else:
            mime = message.mime
    except AttemptFailed as failure:
        raise TransactionFailed(failure, midTransaction=False) from None
    mailReply = client.mailFrom(message.envelope, mailParams)
    rcptReply = client.rcptTo(message.recipient, rcptParams)
    envelope = ensureDeferred(_checkEnvelope(mailReply, rcptReply))
    if message.storeKey is not None:
        assert store is not None
        body = _loadStored(store, message, chain).addCallback(
            lambda loaded: chain.run(
                connectionInfo(client), PluginMessage(message.json, message.envelope, message.recipient, loaded)
            )
        )
    else:
        body = chain.run(
            connectionInfo(client),
            PluginMessage(message.json, message.envelope, message.recipient, mime),
        )
    signing = bool(message.dkim) or message.dkimMatching is not None
    if signing:
        # signed as the plugins left it, off the reactor thread (the
        # service's reactor has threads; a test clock has no use for DKIM)
        reactor = cast(Any, chain.reactor)
        keys, matching = message.dkim, message.dkimMatching

        def sign(plain: bytes) -> Deferred[bytes]:
            return signInThread(reactor, plain, keys, now=reactor.seconds(), matching=matching)

        body = body.addCallback(sign)
    dataReply: Deferred[Reply] | None = None
    try:
        encodedBody = await _unlessEnvelopeFails(body, envelope)
        if not message.force:
            _checkFinalBody(client, encodedBody, mailParams, stored=message.storeKey is not None)
        if not client.pipelining:
            await envelope
        dataReply = client.data()
        # with PIPELINING the envelope's replies arrive before the one to DATA
        await envelope
        _check(await dataReply, "data", expected=3)
    except AttemptFailed as failure:
        midTransaction = await _abandon(client, body, envelope, dataReply)
        untouched = failure.state == "mailfrom" and failure.result == "lost"
        raise TransactionFailed(failure, midTransaction=midTransaction, untouched=untouched) from None
    except CancelledError:
        # the delivery was stopped: no one waits for the envelope's replies
        envelope.addErrback(lambda _: None)
        if dataReply is not None:
            dataReply.addErrback(lambda _: None)
        raise
    # a signed message comes back with CRLF line endings only
    finalReply = client.sendBody(encodedBody, crlf=signing)
    if bodySent is not None:
        bodySent()
    try:
        return _check(await finalReply, "message")
    except AttemptFailed as failure:
        # after the reply to the body the transaction is over, whatever it said
        raise TransactionFailed(failure, midTransaction=False) from None


def _loadStored(store: StoredMessages, message: Message, chain: PluginChain) -> Deferred[bytes]:
    """
    The message of a C{key} job from C{store}, personalized (C{data},
    C{inlinecss}) and with the job's header edits applied, in that order
    as for a C{mime} job, on a worker thread: its size is unknown until now.

    The loaded message, personalized, becomes C{message.mime}, as the
    processor makes it for a C{mime} job: what follows the attempt (a
    delivery status notification) quotes it.  The job itself keeps only its
    C{key}.
    """
    loaded = store.load(message)
    if not (message.headerEdits or rewritesContent(message)):
        return loaded.addCallback(_keep, message)
    reactor = cast(Any, chain.reactor)
    return loaded.addCallback(
        lambda mime: deferToThreadPool(
            reactor, reactor.getThreadPool(), _prepareStored, mime, message, templateLimits(chain._config)
        )
    ).addCallback(_keepPrepared, message)


def _keep(mime: bytes, message: Message) -> bytes:
    message.mime = mime
    return mime


def _keepPrepared(prepared: tuple[bytes, bytes], message: Message) -> bytes:
    message.mime = prepared[0]
    return prepared[1]


def _prepareStored(mime: bytes, message: Message, limits: TemplateLimits) -> tuple[bytes, bytes]:
    """
    Apply C{message}'s C{data}, C{inlinecss} and C{headers} to the message
    loaded for it.  Thread-safe: it changes nothing of C{message}.

    @param limits: the work its templates may make.
    @return: the message personalized, and then edited (what is sent).
    @raise InvalidMessage: for a C{data} value that would break a header
        field, or templates past C{limits} (L{rewrittenContent}).
    """
    mime = rewrittenContent(mime, message, limits)
    return mime, applyHeaderEdits(mime, message.headerEdits) if message.headerEdits else mime


def _checkFinalBody(client: ESMTPClient, body: bytes, mailParams: list[str], *, stored: bool = False) -> None:
    """
    Check the body the plugins left against what the server takes.

    @param stored: the message was loaded from the message store, so the
        envelope could not check it.

    @raise AttemptFailed: permanently, for a body over the SIZE limit or with
        8-bit bytes the server cannot take.
    """
    server = client.mta or client.remoteAddress
    origin = "as loaded from the message store and the data plugins left it" if stored else "after the data plugins"
    limit = _sizeLimit(client.extensions.get("SIZE", ""))
    if limit and len(body) > limit:
        raise AttemptFailed(
            "data",
            "error",
            f"the message is {len(body)} bytes {origin}, more than the {limit} "
            f"bytes that {server} accepts (SIZE); make it smaller",
            permanent=True,
        )
    if "BODY=8BITMIME" not in mailParams and "8BITMIME" not in client.extensions and not body.isascii():
        raise AttemptFailed(
            "data",
            "error",
            f"the message {origin} has 8-bit bytes and {server} does not announce 8BITMIME; "
            f"encode it as 7-bit (quoted-printable or base64)",
            permanent=True,
        )


async def _abandon(
    client: ESMTPClient, body: Deferred[bytes], envelope: Deferred[None], dataReply: Deferred[Reply] | None
) -> bool:
    """
    Stop caring about the rest of a transaction that failed: stop the data
    plugins and swallow results that no one waits for any more.  A DATA
    already sent (pipelined) that the server accepted despite the failed
    envelope is ended with the terminating dot alone (RFC 2920 3.1).

    @return: whether the session is still in the transaction (RSET due).
    """
    body.cancel()
    body.addErrback(lambda failure: failure.trap(CancelledError, AttemptFailed))
    envelope.addErrback(lambda _: None)
    if dataReply is None:
        return True
    try:
        reply = await dataReply
    except AttemptFailed:
        return True
    if reply.code != 354:
        return True
    try:
        await client.endEmptyData()
    except AttemptFailed:
        return True
    return False


@dataclass(frozen=True)
class Sent:
    """
    A message the server accepted.

    @ivar client: the connection it went on (by now perhaps carrying the
        next message).
    @ivar reply: the server's final reply to the body (2xx).
    @ivar facts: the connection's part of the result entry
        (L{connectionFacts}) as of this message's body.
    """

    client: ESMTPClient
    reply: Reply
    facts: dict[str, Any]


async def sendThroughPool(
    pool: ConnectionPool,
    destination: Destination,
    message: Message,
    chain: PluginChain,
    *,
    release: Callable[[ESMTPClient, bool], None] | None = None,
    store: StoredMessages | None = None,
) -> Sent:
    """
    Take a connection to C{destination} from C{pool}, send C{message} on it
    and give the connection back (with RSET when the transaction failed in
    its middle).

    On a connection with PIPELINING the connection goes back as soon as the
    body is written, before its reply: the next transaction's commands then
    follow the body in the same segment (RFC 2920 section 3.1 lets message
    content start a group of commands), which saves a round trip per
    message.  Replies stay matched to commands in order, so a failure is
    still this message's own.

    A pooled connection that the server had closed while it was idle fails
    the next transaction before any reply; the message is then sent again
    on another connection, since nothing of it reached the server (each
    such connection is dropped, and a fresh one is not retried, so this
    ends).

    @param release: gives back the connection that carried the message,
        with whether it is clean (no transaction left open); by default
        C{pool.release}.  A stale connection the message never reached goes
        straight back to C{pool}.
    @param store: see L{sendMessage}.
    @return: the L{Sent} message.
    @raise AttemptFailed: when no connection could be had.
    @raise TransactionFailed: when the transaction failed; its C{facts}
        describe the connection.
    """
    if release is None:
        release = lambda client, clean: pool.release(client, clean=clean)  # noqa: E731
    while True:
        client = await pool.acquire(destination)
        reused = client.transactions > 0
        # the connection's facts when it went back early, for this message's entry
        releasedWith: list[dict[str, Any]] = []
        try:
            reply = await sendMessage(
                client,
                message,
                chain,
                bodySent=partial(_releaseEarly, client, release, releasedWith),
                store=store,
            )
        except TransactionFailed as failure:
            if releasedWith:
                failure.facts = releasedWith[0]
                raise
            if failure.untouched and reused:
                # the message never reached this connection: only the
                # connection goes back, the caller's hold on the
                # destination carries over to the next one
                pool.release(client, clean=not failure.midTransaction)
                continue
            failure.facts = connectionFacts(client)
            release(client, not failure.midTransaction)
            raise
        except BaseException:
            # cancelled (the service is stopping) in the middle: the session
            # is in an unknown state and is not used again, unless it went
            # back already and carries another message now
            if not releasedWith:
                cast(ITCPTransport, client.transport).abortConnection()
                release(client, False)
            raise
        if releasedWith:
            return Sent(client, reply, releasedWith[0])
        # before the connection goes on to the next message
        facts = connectionFacts(client)
        release(client, True)
        return Sent(client, reply, facts)


def _releaseEarly(
    client: ESMTPClient, release: Callable[[ESMTPClient, bool], None], releasedWith: list[dict[str, Any]]
) -> None:
    # without PIPELINING the next MAIL FROM would wait for the reply anyway
    if client.pipelining:
        releasedWith.append(connectionFacts(client))
        release(client, True)
