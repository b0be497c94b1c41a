"""
Unit tests of L{mqtwist.delivery.transaction}: what goes on the wire and when, on a
string transport, with plugins whose Deferreds the test fires by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from helpers_smtpprotocol import EHLO_PIPELINING, EHLO_PLAIN, TIMEOUTS, Connection, failureOf, resultOf
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from zope.interface import implementer

from mqtwist.config import Config
from mqtwist.content.message import Message
from mqtwist.dataplugin.chain import PluginChain
from mqtwist.dataplugin.interfaces import IDataPlugin
from mqtwist.delivery.transaction import TransactionFailed, envelopeParameters, sendMessage, sendThroughPool, xtext
from mqtwist.errors import InvalidMessage


@implementer(IDataPlugin)
class HeldPlugin:
    """A data plugin that finishes when the test fires C{release}."""

    name = "held"

    def __init__(self) -> None:
        self.release: Deferred[None] = Deferred()
        self.calls = 0
        self.cancelled = False

    def smtpOutData(self, context: Any, connection: Any, message: Any) -> Deferred[None]:
        self.calls += 1
        self.release = Deferred(lambda _: setattr(self, "cancelled", True))
        return self.release


def makeChain(clock: Any, *plugins: Any) -> PluginChain:
    return PluginChain(list(plugins), reactor=clock, config=Config(ehloName="client.test", pluginRuns=1))


def message(**extra: Any) -> Message:
    obj = {"envelope": "a@example.org", "recipient": "b@example.com", "mime": "Subject: x\r\n\r\nhi\r\n"}
    obj.update(extra)
    return Message.fromObject(obj)


def test_dataFollowsPluginsBeforeEnvelopeReplies() -> None:
    """
    With PIPELINING, MAIL and RCPT go in one write, and DATA as soon as the
    plugin is done, before any reply to the envelope.
    """
    connection = Connection()
    client = connection.introduce()
    plugin = HeldPlugin()
    sent = ensureDeferred(sendMessage(client, message(), makeChain(connection.clock, plugin)))
    assert connection.sent() == b"MAIL FROM:<a@example.org> SIZE=18\r\nRCPT TO:<b@example.com>\r\n"
    plugin.release.callback(None)
    assert connection.sent() == b"DATA\r\n"
    connection.reply(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n")
    assert connection.sent() == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    connection.reply(b"250 2.0.0 queued\r\n")
    assert resultOf(sent).code == 250


def test_lockStepWaitsForEnvelope() -> None:
    """
    Without PIPELINING each command waits for the previous reply, and DATA
    for the envelope even when the plugins are done.
    """
    connection = Connection()
    client = connection.introduce(EHLO_PLAIN)
    sent = ensureDeferred(sendMessage(client, message(), makeChain(connection.clock)))
    assert connection.sent() == b"MAIL FROM:<a@example.org> SIZE=18\r\n"
    connection.reply(b"250 ok\r\n")
    assert connection.sent() == b"RCPT TO:<b@example.com>\r\n"
    connection.reply(b"550 5.1.1 no such user\r\n")
    failure = failureOf(sent)
    assert (failure.state, failure.result, failure.code, failure.permanent) == ("rcptto", "error", 550, True)
    assert connection.sent() == b""
    assert isinstance(failure, TransactionFailed) and failure.midTransaction


def test_envelopeFailureCancelsPlugins() -> None:
    connection = Connection()
    client = connection.introduce()
    plugin = HeldPlugin()
    sent = ensureDeferred(sendMessage(client, message(), makeChain(connection.clock, plugin)))
    connection.sent()
    connection.reply(b"451 4.7.1 try later\r\n503 5.5.1 no sender\r\n")
    failure = failureOf(sent)
    assert (failure.state, failure.code) == ("mailfrom", 451)
    assert plugin.cancelled
    assert connection.sent() == b""


def test_refusedRecipientWithDataAcceptedEndsWithDot() -> None:
    """
    RFC 2920 3.1: when RCPT was refused but DATA (pipelined) got 354, the
    client sends the terminating dot alone; the failure is the RCPT's and
    the transaction is over (no RSET due).
    """
    connection = Connection()
    client = connection.introduce()
    sent = ensureDeferred(sendMessage(client, message(), makeChain(connection.clock)))
    assert connection.sent().endswith(b"DATA\r\n")
    connection.reply(b"250 ok\r\n550 5.1.1 unknown\r\n354 go on\r\n")
    assert connection.sent() == b".\r\n"
    connection.reply(b"554 5.5.1 no valid recipients\r\n")
    failure = failureOf(sent)
    assert (failure.state, failure.code, failure.status) == ("rcptto", 550, "5.1.1")
    assert isinstance(failure, TransactionFailed) and not failure.midTransaction
    assert client.messages == 0 and client.usable


def test_refusedRecipientWithDataRefusedNeedsReset() -> None:
    connection = Connection()
    client = connection.introduce()
    sent = ensureDeferred(sendMessage(client, message(), makeChain(connection.clock)))
    connection.sent()
    connection.reply(b"250 ok\r\n550 5.1.1 unknown\r\n503 5.5.1 no recipients\r\n")
    failure = failureOf(sent)
    assert failure.state == "rcptto"
    assert isinstance(failure, TransactionFailed) and failure.midTransaction


def test_dataRefused() -> None:
    connection = Connection()
    client = connection.introduce()
    sent = ensureDeferred(sendMessage(client, message(), makeChain(connection.clock)))
    connection.sent()
    connection.reply(b"250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n")
    failure = failureOf(sent)
    assert (failure.state, failure.code, failure.permanent) == ("data", 451, False)


def test_extensionsAndDSNParameters() -> None:
    connection = Connection()
    client = connection.introduce(
        b"250-mx\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n250 DSN\r\n"
    )
    dsn = {"notify": ["success", "failure"], "ret": "hdrs", "orcpt": "b+x@example.com", "envid": "id 1=2"}
    mailParams, rcptParams = envelopeParameters(
        client, message(mime="Subject: caf\u00e9\r\n\r\n\u00e9\r\n", recipient="j\u00f6@example.com", dsn=dsn)
    )
    assert mailParams == ["SIZE=22", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=id+201+3D2"]
    assert rcptParams == ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b+2Bx@example.com"]
    assert xtext("\u00e9") == "+C3+A9"


def test_extensionsMissing() -> None:
    connection = Connection()
    client = connection.introduce(b"250-mx\r\n250 SIZE 10\r\n")
    cases = [
        (message(), "mailfrom", "more than the 10 bytes"),
        (message(mime="\u00e9"), "mailfrom", "8BITMIME"),
        (message(mime="x", recipient="j\u00f6@example.com"), "rcptto", "SMTPUTF8"),
        (message(mime="x", envelope="j\u00f6@example.com"), "mailfrom", "SMTPUTF8"),
    ]
    for each, state, words in cases:
        failure = failureOf(ensureDeferred(sendMessage(client, each, makeChain(connection.clock))))
        assert (failure.state, failure.result, failure.permanent) == (state, "error", True)
        assert words in failure.description
        assert isinstance(failure, TransactionFailed) and not failure.midTransaction
    # nothing was sent, and without DSN no DSN parameters
    assert connection.sent() == b""
    assert envelopeParameters(client, message(mime="x", dsn={"notify": "NEVER"})) == (["SIZE=1"], [])


def test_forceSendsWhatTheServerDoesNotAnnounce() -> None:
    """
    A job with C{force} (MailerQ's) is sent as it is where the extensions it
    would need are missing (here SIZE 10, no 8BITMIME, no SMTPUTF8): the
    server decides, and this one takes it.
    """
    connection = Connection()
    client = connection.introduce(b"250-mx\r\n250 SIZE 10\r\n")
    body = "Subject: caf\u00e9\r\n\r\n\u00e9t\u00e9\r\n"
    forced = message(mime=body, recipient="j\u00f6@example.com", force=True)
    size = len(body.encode())
    assert envelopeParameters(client, forced) == ([f"SIZE={size}"], [])
    sent = ensureDeferred(sendMessage(client, forced, makeChain(connection.clock)))
    assert connection.sent() == f"MAIL FROM:<a@example.org> SIZE={size}\r\n".encode()
    connection.reply(b"250 ok\r\n")
    assert connection.sent() == "RCPT TO:<j\u00f6@example.com>\r\n".encode()
    connection.reply(b"250 ok\r\n")
    assert connection.sent() == b"DATA\r\n"
    connection.reply(b"354 go on\r\n")
    assert connection.sent() == body.encode() + b".\r\n"
    connection.reply(b"250 2.0.0 queued\r\n")
    assert resultOf(sent).code == 250


def test_forceMustBeABoolean() -> None:
    with pytest.raises(InvalidMessage, match="property 'force' must be true or false"):
        message(force="yes")


class FakePool:
    """Hands out prepared connections in order; records the releases."""

    def __init__(self, *connections: Connection) -> None:
        self.connections = list(connections)
        self.released: list[tuple[Any, bool]] = []

    def acquire(self, destination: Any) -> Deferred[Any]:
        return succeed(self.connections.pop(0).client)

    def release(self, client: Any, *, clean: bool = True) -> None:
        self.released.append((client, clean))

    def stats(self, destination: Any) -> dict[str, int]:
        return {"idle": 0}


def test_staleConnectionRetriedOnAnother() -> None:
    """
    A reused connection that dies before the reply to MAIL is left, and the
    message goes on a fresh one; a fresh connection that dies is not retried.
    """
    stale, fresh = Connection(), Connection()
    staleClient = stale.introduce()
    staleClient.transactions = 3
    fresh.client.dataReceived(b"220 mx\r\n")
    fresh.reply(EHLO_PIPELINING)
    pool = FakePool(stale, fresh)
    sent = ensureDeferred(sendThroughPool(pool, None, message(), makeChain(stale.clock)))  # type: ignore[arg-type]
    stale.lose()
    assert fresh.sent().endswith(b"MAIL FROM:<a@example.org> SIZE=18\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    fresh.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    fresh.reply(b"250 queued\r\n")
    result = resultOf(sent)
    assert result.client is fresh.client and result.reply.code == 250
    assert [entry[0] for entry in pool.released] == [staleClient, fresh.client]

    again = Connection()
    again.introduce()
    sent = ensureDeferred(sendThroughPool(FakePool(again), None, message(), makeChain(again.clock)))  # type: ignore[arg-type]
    again.lose()
    failure = failureOf(sent)
    assert (failure.state, failure.result) == ("mailfrom", "lost")
    assert failure.facts["to"] == "198.51.100.5"


def test_authMechanisms() -> None:
    """
    PLAIN in one command; LOGIN and CRAM-MD5 (RFC 2195's example) in steps;
    the log-facing text of each command hides the credentials.
    """
    connection = Connection()
    client = connection.introduce(b"250-mx\r\n250 AUTH LOGIN PLAIN CRAM-MD5\r\n")
    # without TLS, CRAM-MD5 is preferred
    done = client.authenticate("tim", "tanstaaftanstaaf")
    assert connection.sent() == b"AUTH CRAM-MD5\r\n"
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    connection.reply(b"334 " + base64.b64encode(challenge) + b"\r\n")
    expected = b"tim " + hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest().encode()
    assert expected == b"tim b913a602c7eda7a495b4e6e7334d3890"
    assert connection.sent() == base64.b64encode(expected) + b"\r\n"
    connection.reply(b"235 2.7.0 ok\r\n")
    assert resultOf(done).code == 235

    connection = Connection()
    client = connection.introduce(b"250-mx\r\n250 AUTH LOGIN\r\n")
    done = client.authenticate("user", "secret")
    assert connection.sent() == b"AUTH LOGIN\r\n"
    connection.reply(b"334 VXNlcm5hbWU6\r\n")
    assert connection.sent() == b"dXNlcg==\r\n"
    connection.reply(b"334 UGFzc3dvcmQ6\r\n")
    assert connection.sent() == b"c2VjcmV0\r\n"
    connection.reply(b"535 5.7.8 bad credentials\r\n")
    failure = failureOf(done)
    assert (failure.state, failure.code, failure.permanent) == ("auth", 535, True)
    assert "secret" not in failure.description

    connection = Connection()
    client = connection.introduce(b"250-mx\r\n250 AUTH GSSAPI\r\n")
    failure = failureOf(client.authenticate("user", "secret"))
    assert failure.state == "auth" and "GSSAPI" in failure.description


def sendVia(pool: FakePool, connection: Connection, recipient: str) -> Deferred[Any]:
    """C{sendThroughPool} of a message to C{recipient}, on C{connection}'s clock."""
    return ensureDeferred(
        sendThroughPool(pool, None, message(recipient=recipient), makeChain(connection.clock))  # type: ignore[arg-type]
    )


def test_connectionGoesBackBeforeTheBodyReply() -> None:
    """
    With PIPELINING the connection is released as soon as the body is
    written, so the next message's envelope follows it; each reply still
    belongs to its own message: a refused body fails only its message.
    """
    connection = Connection()
    client = connection.introduce()
    pool = FakePool(connection, connection)
    first = sendVia(pool, connection, "one@example.com")
    connection.sent()
    connection.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert connection.sent() == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    assert pool.released == [(client, True)] and not first.called
    second = sendVia(pool, connection, "two@example.com")
    assert connection.sent() == b"MAIL FROM:<a@example.org> SIZE=18\r\nRCPT TO:<two@example.com>\r\nDATA\r\n"
    connection.reply(b"554 5.7.1 rejected by content filter\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    failure = failureOf(first)
    assert (failure.state, failure.code, failure.midTransaction) == ("message", 554, False)
    assert failure.facts["messages"] == 1
    assert connection.sent() == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    connection.reply(b"250 queued as B\r\n")
    sent = resultOf(second)
    assert (sent.reply.text, sent.facts["messages"]) == ("queued as B", 2)
    assert pool.released == [(client, True), (client, True)]


def secondBehindFirstBody() -> tuple[Connection, Connection, Deferred[Any], Deferred[Any]]:
    """
    Two messages on one pipelining connection, the second's envelope
    written behind the first's body; a fresh connection is next in the pool.

    @return: the connection, the fresh one, and the two sends.
    """
    connection, fresh = Connection(), Connection()
    connection.introduce()
    fresh.introduce()
    pool = FakePool(connection, connection, fresh)
    first = sendVia(pool, connection, "one@example.com")
    connection.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    second = sendVia(pool, connection, "two@example.com")
    return connection, fresh, first, second


def test_connectionLostAfterAnEarlyRelease() -> None:
    """
    The connection dies after a body and the next envelope were written:
    the message whose body got no reply is C{message}/C{lost} (it may or
    may not have arrived, so it is retried), the next one never reached the
    server and goes on a fresh connection at once.
    """
    connection, fresh, first, second = secondBehindFirstBody()
    freshClient = fresh.client
    assert connection.sent().endswith(b".\r\nMAIL FROM:<a@example.org> SIZE=18\r\nRCPT TO:<two@example.com>\r\nDATA\r\n")
    connection.lose()
    failure = failureOf(first)
    assert (failure.state, failure.result, failure.permanent) == ("message", "lost", False)
    assert not second.called
    assert fresh.sent() == b"MAIL FROM:<a@example.org> SIZE=18\r\nRCPT TO:<two@example.com>\r\nDATA\r\n"
    fresh.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    fresh.reply(b"250 queued\r\n")
    assert resultOf(second).client is freshClient


def test_aStaleConnectionDoesNotCostThePermit() -> None:
    """
    The delivery engine holds one permit of its destination per delivery:
    a stale pooled connection that the message goes past does not give it
    back early, so the destination's limit of connections still holds.
    """
    from twisted.internet.task import Clock

    from mqtwist.service import deliveryEngine

    clock = Clock()
    engine = deliveryEngine(
        Config(ehloName="x", smarthost="127.0.0.1:2525", maxConnectionsPerDestination=2), [], clock
    )
    stale, fresh = Connection(), Connection()
    stale.introduce().transactions = 3
    fresh.introduce()
    engine.pool = FakePool(stale, fresh)  # type: ignore[assignment]
    route = resultOf(ensureDeferred(engine.router.route(message())))
    delivered = engine.deliver(message())
    stale.lose()
    assert fresh.sent().startswith(b"MAIL FROM:")
    assert [engine.policy.admit(route).called for _ in range(2)] == [True, False]
    fresh.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    fresh.reply(b"250 queued\r\n")
    assert resultOf(delivered).result == "accepted"


def test_aBodyTimeoutDoesNotCostTheNextMessageAnAttempt() -> None:
    """
    No reply to a body within its time-out: that message is C{message} /
    C{timeout}; the next one, whose envelope followed the body, never got
    a reply either and goes on a fresh connection at once.
    """
    connection, fresh, first, second = secondBehindFirstBody()
    freshClient = fresh.client
    connection.clock.advance(TIMEOUTS.message + 1)
    failure = failureOf(first)
    assert (failure.state, failure.result) == ("message", "timeout")
    assert not second.called
    assert fresh.sent() == b"MAIL FROM:<a@example.org> SIZE=18\r\nRCPT TO:<two@example.com>\r\nDATA\r\n"
    fresh.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    fresh.reply(b"250 queued\r\n")
    assert resultOf(second).client is freshClient
