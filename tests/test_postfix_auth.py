"""
mqtwist's AUTH client against Postfix with Cyrus SASL (a private instance,
see L{fixtures_postfix}), through the delivery path that the service uses
(L{DeliveryEngine}: routing to the message's C{smarthost} object or to the
configured smarthost and its credentials, the connection pool, the
transaction), with a recording proxy in between.

Each of PLAIN, LOGIN and CRAM-MD5 is checked against a listener that
offers only that one: the message arrives byte for byte and Postfix names
the mechanism and user it authenticated.  A wrong password gives the
C{auth} failure with Postfix's 535 5.7.8; AUTH goes in clear only to the
hosts of C{authCleartextHosts}; after STARTTLS it goes to a listener that
offers AUTH only over TLS.  No password appears in any log event, result
entry or published result.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from fixtures_postfix import (
    BODIES,
    DOMAIN,
    SASL_MECHANISMS,
    SASL_PASSWORD,
    SASL_REALM,
    SASL_USERNAME,
    DeliveredMessage,
    PostfixReceiver,
    RecordedConnection,
    RecordingProxy,
    _improperPipelining,
    postfixUnavailable,
    saslUnavailable,
)
from helpers_smtpsession import TIMEOUTS, job
from twisted.internet import reactor
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from mqtwist.config import Config
from mqtwist.content.message import Message, ResultEntry
from mqtwist.delivery.engine import DeliveryEngine
from mqtwist.service import deliveryEngine

_UNAVAILABLE = postfixUnavailable() or saslUnavailable()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")

#: a password Postfix does not take, which must not leak either
WRONG_PASSWORD = "Not-the-r1ght-0ne"
#: a body with dot lines and no final newline, and what Postfix must deliver
SENT, ON_THE_WIRE = BODIES[2]
#: the user as Postfix names it: with the realm it looked the user up in
AUTHENTICATED = f"{SASL_USERNAME}@{SASL_REALM}"


@pytest.fixture
def logEvents() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted during the test (debug events included)."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def _engine(port: int, **options: Any) -> DeliveryEngine:
    """A delivery engine whose configured smarthost is 127.0.0.1:C{port}."""
    config = Config(ehloName="client.test", timeouts=TIMEOUTS, smarthost=f"127.0.0.1:{port}", **options)
    return deliveryEngine(config, [], reactor)


def _message(recipient: str, **extra: Any) -> Message:
    message = job(recipient, **extra)
    message.mime = SENT
    return message


async def _deliver(
    engine: DeliveryEngine, message: Message, proxy: RecordingProxy, postfix: PostfixReceiver, mark: int
) -> tuple[ResultEntry, RecordedConnection, dict[str, str]]:
    """
    One delivery attempt; then the engine's connections are closed (QUIT).

    @return: the attempt's entry (also recorded in C{message}), the one
        proxied connection and Postfix's command counts of its session.
    """
    try:
        entry = await engine.deliver(message)
    finally:
        await engine.close()
    message.record(entry)
    (connection,) = await proxy.waitForClosed()
    (session,) = await postfix.waitForSessions(1, since=mark)
    return entry, connection, session


def _authenticatedAs(postfix: PostfixReceiver, delivered: DeliveredMessage) -> tuple[str, str]:
    """
    The SASL mechanism and user name that Postfix logged for the session
    that brought C{delivered}.
    """
    pattern = re.compile(
        re.escape(delivered.queueId) + r": client=\S+, sasl_method=(\S+), sasl_username=(\S+)$"
    )
    found = [(match.group(1), match.group(2)) for line in postfix.logLines if (match := pattern.search(line))]
    assert len(found) == 1, f"Postfix logged no single client= line for {delivered.queueId}: {postfix.logLines}"
    return found[0]


def _assertNoPassword(events: list[dict[str, Any]], *shown: Any) -> None:
    """
    Neither password is in the log events (formatted or raw) nor in
    C{shown}; the hidden AUTH commands are in the events, so that the
    check looked at the right ones.
    """
    text = "".join(formatEvent(event) + repr(event) for event in events) + repr(shown)
    assert re.search(r"AUTH (PLAIN|LOGIN|CRAM-MD5) <hidden>", text), "no AUTH command in the log events"
    for password in (SASL_PASSWORD, WRONG_PASSWORD):
        encoded = [password] + [
            base64.b64encode(form.encode()).decode() for form in (password, f"\0{SASL_USERNAME}\0{password}")
        ]
        assert not [each for each in encoded if each in text], f"{password!r} was shown"


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def _exchange(mechanism: str, password: str, connection: RecordedConnection) -> list[bytes]:
    """
    The client's lines of a login with C{mechanism} and C{password} as
    RFC 4616 (PLAIN), the LOGIN convention and RFC 2195 (CRAM-MD5, keyed
    with the first challenge Postfix sent on C{connection}) define them.
    """
    if mechanism == "PLAIN":
        return [b"AUTH PLAIN " + _b64(f"\0{SASL_USERNAME}\0{password}")]
    if mechanism == "LOGIN":
        return [b"AUTH LOGIN", _b64(SASL_USERNAME), _b64(password)]
    challenge = re.search(rb"\r\n334 (\S+)\r\n", b"".join(connection.serverChunks))
    assert challenge, connection.serverChunks
    digest = hmac.new(password.encode(), base64.b64decode(challenge.group(1)), hashlib.md5).hexdigest()
    return [b"AUTH CRAM-MD5", _b64(f"{SASL_USERNAME} {digest}")]


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
@pytest_twisted.ensureDeferred
async def test_eachMechanism(postfixReceiver, startRecordingProxy, logEvents, mechanism) -> None:
    """
    The credentials of the message's C{smarthost} object, to a listener
    that offers only C{mechanism}, in clear (its host is in
    C{authCleartextHosts}): Postfix logs that mechanism and the user, marks
    the message as received with ESMTPA and delivers it byte for byte;
    on the wire, the exchange of that mechanism.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports[f"auth-{mechanism.lower()}"])
    mark = postfix.logMark()
    # the configured smarthost is not used: the message names its own
    engine = _engine(postfix.ports["pipelining"], authCleartextHosts=["127.0.0.1"])
    recipient = f"auth-{mechanism.lower()}@{DOMAIN}"
    smarthost = {"hostname": "127.0.0.1", "port": proxy.port, "username": SASL_USERNAME, "password": SASL_PASSWORD}
    message = _message(recipient, smarthost=smarthost)
    entry, connection, session = await _deliver(engine, message, proxy, postfix, mark)
    assert (entry.state, entry.result, entry.code, entry.status) == ("message", "accepted", 250, "2.0.0"), entry
    (delivered,) = await postfix.waitForDeliveries([recipient])
    assert delivered.content == ON_THE_WIRE.replace(b"\r\n", b"\n")
    assert b" with ESMTPA id " + delivered.queueId.encode() in delivered.received
    assert _authenticatedAs(postfix, delivered) == (mechanism, AUTHENTICATED)
    assert session == {
        "ehlo": "1", "auth": "1", "mail": "1", "rcpt": "1", "data": "1", "quit": "1", "commands": "6"
    }
    assert _improperPipelining(postfix, mark) == []
    commands, bodies = connection.transcript()
    assert bodies == [ON_THE_WIRE]
    login = _exchange(mechanism, SASL_PASSWORD, connection)
    assert commands[: 1 + len(login)] == [b"EHLO client.test", *login]
    assert commands[1 + len(login)].startswith(b"MAIL FROM:")
    _assertNoPassword(logEvents, entry, entry.toJSON(), message.resultJSON())


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
@pytest_twisted.ensureDeferred
async def test_wrongPassword(postfixReceiver, startRecordingProxy, logEvents, mechanism) -> None:
    """
    The configured smarthost's credentials with a password Postfix does
    not take: the attempt fails at C{auth} with Postfix's 535 5.7.8 and its
    text, after one AUTH exchange of C{mechanism}; no MAIL FROM, nothing
    delivered; neither password in a log event or the result.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports[f"auth-{mechanism.lower()}"])
    mark = postfix.logMark()
    engine = _engine(
        proxy.port,
        smarthostUsername=SASL_USERNAME,
        smarthostPassword=WRONG_PASSWORD,
        authCleartextHosts=["127.0.0.1"],
    )
    recipient = f"wrong-{mechanism.lower()}@{DOMAIN}"
    message = _message(recipient)
    entry, connection, session = await _deliver(engine, message, proxy, postfix, mark)
    assert (entry.state, entry.result, entry.code, entry.status) == ("auth", "error", 535, "5.7.8"), entry
    # a wrong password is fixed in the configuration: the message is retried
    assert not entry.final
    assert entry.description and "authentication failed" in entry.description
    assert session == {"ehlo": "1", "auth": "0/1", "quit": "1", "commands": "2/3"}
    failures = [line for line in postfix.logLines[mark:] if "authentication failed" in line]
    assert len(failures) == 1 and re.search(
        rf": SASL {mechanism} authentication failed: authentication failure, "
        rf"sasl_username={re.escape(AUTHENTICATED)}$",
        failures[0],
    ), failures
    commands, _ = connection.transcript()
    assert commands == [b"EHLO client.test", *_exchange(mechanism, WRONG_PASSWORD, connection), b"QUIT"]
    assert recipient not in postfix.deliveries
    _assertNoPassword(logEvents, entry, entry.toJSON(), message.resultJSON())


@pytest_twisted.ensureDeferred
async def test_loginOncePerConnection(postfixReceiver, startRecordingProxy, logEvents) -> None:
    """
    Two messages with the same smarthost login share one connection and
    one AUTH; a third with another password for the same user gets a
    connection of its own (credentials are part of the pool's key), where
    Postfix refuses it, and the first connection is not disturbed.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports["auth-plain"])
    mark = postfix.logMark()
    engine = _engine(proxy.port, authCleartextHosts=["127.0.0.1"])
    login = {"hostname": "127.0.0.1", "port": proxy.port, "username": SASL_USERNAME}
    recipients = [f"same-login-{number}@{DOMAIN}" for number in range(3)]
    messages = [
        _message(recipients[0], smarthost={**login, "password": SASL_PASSWORD}),
        _message(recipients[1], smarthost={**login, "password": SASL_PASSWORD}),
        _message(recipients[2], smarthost={**login, "password": WRONG_PASSWORD}),
    ]
    try:
        entries = [await engine.deliver(message) for message in messages]
    finally:
        await engine.close()
    connections = await proxy.waitForClosed()
    sessions = await postfix.waitForSessions(2, since=mark)
    assert [(entry.state, entry.code) for entry in entries] == [("message", 250), ("message", 250), ("auth", 535)]
    delivered = await postfix.waitForDeliveries(recipients[:2])
    assert [_authenticatedAs(postfix, message) for message in delivered] == [("PLAIN", AUTHENTICATED)] * 2
    assert recipients[2] not in postfix.deliveries
    assert [connection.transcript()[0][:2] for connection in connections] == [
        [b"EHLO client.test", b"AUTH PLAIN " + _b64(f"\0{SASL_USERNAME}\0{SASL_PASSWORD}")],
        [b"EHLO client.test", b"AUTH PLAIN " + _b64(f"\0{SASL_USERNAME}\0{WRONG_PASSWORD}")],
    ]
    # the refused login's session ends first: the good one idles until close
    assert sorted(sessions, key=lambda session: session["auth"]) == [
        {"ehlo": "1", "auth": "0/1", "quit": "1", "commands": "2/3"},
        {"ehlo": "1", "auth": "1", "mail": "2", "rcpt": "2", "data": "2", "quit": "1", "commands": "9"},
    ]
    for message, entry in zip(messages, entries):
        message.record(entry)
    _assertNoPassword(logEvents, entries, [message.resultJSON() for message in messages])


@pytest.mark.parametrize(
    "cleartextHosts, allowed",
    [
        pytest.param([], False, id="none"),
        pytest.param(["localhost"], False, id="another-name"),
        pytest.param(["127.0.0.1"], True, id="its-address"),
        pytest.param(["*"], True, id="any"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_authInClearOnlyWhereAllowed(
    postfixReceiver, startRecordingProxy, logEvents, cleartextHosts, allowed
) -> None:
    """
    A listener with AUTH and without STARTTLS: the configured smarthost's
    credentials go to it only when C{authCleartextHosts} names its host
    (as written in the configuration) or is C{*}; otherwise the attempt
    fails at C{auth}, to be retried, and no AUTH command is sent.  In
    clear mqtwist prefers CRAM-MD5 of the three offered.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports["auth"])
    mark = postfix.logMark()
    engine = _engine(
        proxy.port,
        smarthostUsername=SASL_USERNAME,
        smarthostPassword=SASL_PASSWORD,
        authCleartextHosts=cleartextHosts,
    )
    recipient = f"cleartext-{'-'.join(cleartextHosts).replace('*', 'any') or 'none'}@{DOMAIN}"
    message = _message(recipient)
    entry, connection, session = await _deliver(engine, message, proxy, postfix, mark)
    commands, _ = connection.transcript()
    if allowed:
        assert (entry.state, entry.result) == ("message", "accepted"), entry
        (delivered,) = await postfix.waitForDeliveries([recipient])
        assert delivered.content == ON_THE_WIRE.replace(b"\r\n", b"\n")
        assert _authenticatedAs(postfix, delivered) == ("CRAM-MD5", AUTHENTICATED)
        assert commands[1] == b"AUTH CRAM-MD5"
        assert session["auth"] == "1"
        _assertNoPassword(logEvents, entry, entry.toJSON(), message.resultJSON())
    else:
        assert (entry.state, entry.result, entry.code, entry.final) == ("auth", "error", None, False), entry
        assert entry.description and "without TLS" in entry.description
        assert "auth-cleartext-hosts" in entry.description
        assert commands == [b"EHLO client.test", b"QUIT"]
        assert session == {"ehlo": "1", "quit": "1", "commands": "2"}
        assert recipient not in postfix.deliveries


@pytest.mark.parametrize("policy", ["opportunistic", "required", "verified"])
@pytest_twisted.ensureDeferred
async def test_authAfterStarttls(postfixReceiver, startRecordingProxy, logEvents, certificates, policy) -> None:
    """
    A listener that offers AUTH only after STARTTLS, with C{authCleartextHosts}
    empty: under each policy that starts TLS, mqtwist starts it, sees AUTH
    in the EHLO reply over TLS and logs in with PLAIN (its first choice
    over TLS); nothing but EHLO and STARTTLS in clear; Postfix marks the
    message as received with ESMTPSA.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports["auth-tls"])
    mark = postfix.logMark()
    engine = _engine(
        proxy.port,
        smarthostUsername=SASL_USERNAME,
        smarthostPassword=SASL_PASSWORD,
        tlsCaFile=certificates["ca"],
    )
    recipient = f"auth-tls-{policy}@{DOMAIN}"
    message = _message(recipient, security=policy)
    entry, connection, session = await _deliver(engine, message, proxy, postfix, mark)
    assert (entry.state, entry.result, entry.code) == ("message", "accepted", 250), entry
    assert entry.connection["cipher"]["version"].startswith("TLSv1.")
    # the CA file is configured and the certificate names 127.0.0.1: it
    # checks out under every policy, only "verified" would have refused it
    assert entry.connection["certificate"]["verified"] is True
    (delivered,) = await postfix.waitForDeliveries([recipient])
    assert delivered.content == ON_THE_WIRE.replace(b"\r\n", b"\n")
    assert b" with ESMTPSA id " + delivered.queueId.encode() in delivered.received
    assert _authenticatedAs(postfix, delivered) == ("PLAIN", AUTHENTICATED)
    commands, _ = connection.transcript()
    assert commands == [b"EHLO client.test", b"STARTTLS"]
    assert session == {
        "ehlo": "2", "starttls": "1", "auth": "1", "mail": "1", "rcpt": "1", "data": "1", "quit": "1",
        "commands": "8",
    }
    _assertNoPassword(logEvents, entry, entry.toJSON(), message.resultJSON())
