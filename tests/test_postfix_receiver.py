"""
The SMTP engine against Postfix as the receiving MTA (a private instance,
see L{fixtures_postfix}), with a recording proxy in between: bodies arrive
byte for byte, PIPELINING puts the envelope in one write and its absence
gives lock-step, connections carry several messages without RSET,
STARTTLS reports what Postfix negotiated, and Postfix's refusal of a
recipient is reported with its code and status.

Every count is checked on both sides that nobody here wrote: what Postfix
logged for each session (its "disconnect from" line counts the commands)
and what the proxy saw on the wire.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import pytest_twisted
from fixtures_postfix import (
    BODIES,
    DOMAIN,
    PostfixReceiver,
    RecordedConnection,
    RecordingProxy,
    _improperPipelining,
    postfixUnavailable,
)
from helpers_smtpsession import attempt, job, makePool
from twisted.internet.defer import ensureDeferred, gatherResults

from mqtwist.smtp.pool import ConnectionPool, Destination
from mqtwist.smtp.tls import TLSSettings

pytestmark = pytest.mark.skipif(postfixUnavailable() is not None, reason=postfixUnavailable() or "")


def _message(recipient: str, body: bytes) -> Any:
    message = job(recipient, mime="")
    message.mime = body
    return message


async def _finish(
    pool: ConnectionPool, proxy: RecordingProxy, postfix: PostfixReceiver, mark: int
) -> tuple[list[RecordedConnection], list[dict[str, str]]]:
    """
    Close the pool's connections (QUIT); return the proxy's connections
    and Postfix's sessions since C{mark}, once Postfix has logged the end
    of each.
    """
    await pool.closeAll()
    connections = await proxy.waitForClosed()
    sessions = await postfix.waitForSessions(len(connections), since=mark)
    return connections, sessions


def _envelopeChunks(connection: RecordedConnection) -> list[bytes]:
    return [chunk for chunk in connection.clientChunks if chunk.startswith(b"MAIL FROM:")]


@pytest_twisted.ensureDeferred
async def test_bodiesArriveExactly(postfixReceiver, startRecordingProxy) -> None:
    """
    Bare LF and CR, lines of dots, 8-bit bytes, 998-octet lines and a
    missing final newline: the wire carries the CRLF form, dot-stuffed;
    Postfix delivers exactly that (with its LF line ends) under the one
    C{Received:} header it adds; one connection, no RSET.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports["pipelining"])
    mark = postfix.logMark()
    pool = makePool()
    recipients = [f"body-{number}@{DOMAIN}" for number in range(len(BODIES))]
    try:
        entries = [
            await attempt(pool, Destination((("127.0.0.1", proxy.port),)), _message(recipient, sent))
            for recipient, (sent, _) in zip(recipients, BODIES)
        ]
        delivered = await postfix.waitForDeliveries(recipients)
    finally:
        connections, sessions = await _finish(pool, proxy, postfix, mark)
    expected = [wire for _, wire in BODIES]
    for entry, message in zip(entries, delivered):
        assert (entry["state"], entry["result"], entry["code"], entry["status"]) == (
            "message", "accepted", 250, "2.0.0"), entry
        assert f"queued as {message.queueId}" in entry["description"]
    (connection,) = connections
    commands, bodies = connection.transcript()
    assert bodies == expected
    # a lone dot and a leading dot went out stuffed
    assert b"\r\n..\r\n...\r\n..leading\r\n" in b"".join(connection.clientChunks)
    mails = [command for command in commands if command.startswith(b"MAIL FROM:")]
    assert [b"BODY=8BITMIME" in mail for mail in mails] == [False, False, False, True, False]
    assert [message.content for message in delivered] == [wire.replace(b"\r\n", b"\n") for wire in expected]
    for recipient, message in zip(recipients, delivered):
        assert re.fullmatch(
            rb"Received: from client\.test \(unknown \[127\.0\.0\.1\]\)\n\tby mx\.postfix\.test \(Postfix\) "
            rb"with ESMTP id " + message.queueId.encode() + rb"\n\tfor <" + re.escape(recipient.encode())
            + rb">; [^\n]+\n",
            message.received,
        ), message.received
    assert sessions == [
        {"ehlo": "1", "mail": "5", "rcpt": "5", "data": "5", "quit": "1", "commands": "17"}
    ]


@pytest.mark.parametrize("listener", ["pipelining", "lockstep"])
@pytest_twisted.ensureDeferred
async def test_pipeliningAndReuse(postfixReceiver, startRecordingProxy, listener) -> None:
    """
    Three messages on one connection, no RSET between them.  With
    PIPELINING each envelope (MAIL, RCPT and DATA) goes out in one write;
    without it every command is a write of its own and Postfix sees no
    command before its reply to the one before.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports[listener])
    mark = postfix.logMark()
    pool = makePool()
    recipients = [f"{listener}-{number}@{DOMAIN}" for number in range(3)]
    try:
        entries = [
            await attempt(pool, Destination((("127.0.0.1", proxy.port),)), job(recipient))
            for recipient in recipients
        ]
        delivered = await postfix.waitForDeliveries(recipients)
        opened, reused = pool.connectionsOpened, pool.connectionsReused
    finally:
        connections, sessions = await _finish(pool, proxy, postfix, mark)
    assert [entry["state"] for entry in entries] == ["message"] * 3
    assert [entry["messages"] for entry in entries] == [1, 2, 3]
    assert [message.content for message in delivered] == [b"Subject: t\n\nbody\n"] * 3
    assert (opened, reused) == (1, 2)
    (connection,) = connections
    commands, bodies = connection.transcript()
    assert bodies == [b"Subject: t\r\n\r\nbody\r\n"] * 3
    envelopes = [
        b"MAIL FROM:<sender@example.org> SIZE=%d\r\nRCPT TO:<%s>\r\nDATA\r\n" % (len(bodies[0]), recipient.encode())
        for recipient in recipients
    ]
    if listener == "pipelining":
        assert _envelopeChunks(connection) == envelopes
    else:
        assert _envelopeChunks(connection) == [envelope.split(b"\r\n")[0] + b"\r\n" for envelope in envelopes]
        commandChunks = [chunk for chunk in connection.clientChunks if not chunk.startswith(b"Subject:")]
        assert commandChunks == [command + b"\r\n" for command in commands]
    assert commands[-1] == b"QUIT" and b"RSET" not in commands
    assert _improperPipelining(postfix, mark) == []
    assert sessions == [
        {"ehlo": "1", "mail": "3", "rcpt": "3", "data": "3", "quit": "1", "commands": "11"}
    ]


@pytest_twisted.ensureDeferred
async def test_nextEnvelopeFollowsTheBody(postfixReceiver, startRecordingProxy) -> None:
    """
    Messages queued for a busy connection with PIPELINING: the next
    message's MAIL, RCPT and DATA go out in the same write as the previous
    body and its final dot (RFC 2920 3.1), so each message costs one round
    trip; Postfix finds nothing improper, delivers every body exactly, and
    each result counts its own message on the connection.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports["pipelining"])
    mark = postfix.logMark()
    pool = makePool(maxConnectionsPerDestination=1)
    recipients = [f"follow-{number}@{DOMAIN}" for number in range(4)]
    destination = Destination((("127.0.0.1", proxy.port),))
    try:
        entries = await gatherResults(
            [ensureDeferred(attempt(pool, destination, job(recipient))) for recipient in recipients]
        )
        delivered = await postfix.waitForDeliveries(recipients)
    finally:
        connections, sessions = await _finish(pool, proxy, postfix, mark)
    assert [entry["state"] for entry in entries] == ["message"] * 4
    assert [entry["messages"] for entry in entries] == [1, 2, 3, 4]
    assert sorted(message.content for message in delivered) == [b"Subject: t\n\nbody\n"] * 4
    (connection,) = connections
    commands, bodies = connection.transcript()
    assert bodies == [b"Subject: t\r\n\r\nbody\r\n"] * 4
    envelope = b"MAIL FROM:<sender@example.org> SIZE=%d\r\nRCPT TO:<%s>\r\nDATA\r\n"
    sent = [envelope % (len(bodies[0]), recipient.encode()) for recipient in recipients]
    assert connection.clientChunks[0] == b"EHLO client.test\r\n"
    afterEhlo = connection.clientChunks[1:]
    assert afterEhlo == [
        sent[0],
        bodies[0] + b".\r\n" + sent[1],
        bodies[1] + b".\r\n" + sent[2],
        bodies[2] + b".\r\n" + sent[3],
        bodies[3] + b".\r\n",
        b"QUIT\r\n",
    ]
    assert b"RSET" not in commands
    assert _improperPipelining(postfix, mark) == []
    assert sessions == [
        {"ehlo": "1", "mail": "4", "rcpt": "4", "data": "4", "quit": "1", "commands": "14"}
    ]


@pytest_twisted.ensureDeferred
async def test_starttls(postfixReceiver, startRecordingProxy, certificates) -> None:
    """
    C{optional} takes Postfix's certificate without verifying it,
    C{verified} checks it against the CA file and the name; the result
    entries carry the cipher Postfix logged; EHLO again after STARTTLS;
    nothing but EHLO and STARTTLS in the clear.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports["tls"])
    mark = postfix.logMark()
    pool = makePool(tls=TLSSettings(caFile=certificates["ca"]))
    plain = makePool()
    recipients = [f"tls-{policy}@{DOMAIN}" for policy in ("optional", "verified")]
    try:
        optional = await attempt(
            plain, Destination((("127.0.0.1", proxy.port),), security="optional"), job(recipients[0])
        )
        verified = await attempt(
            pool,
            Destination((("127.0.0.1", proxy.port),), security="verified", tlsNames=("localhost",)),
            job(recipients[1]),
        )
        delivered = await postfix.waitForDeliveries(recipients)
    finally:
        await plain.closeAll()
        connections, sessions = await _finish(pool, proxy, postfix, mark)
    established = [
        re.search(r"TLS connection established from \S+: (\S+) with cipher (\S+) \((\d+)/\d+ bits\)", line)
        for line in postfix.logLines[mark:]
    ]
    negotiated = [
        {"version": found.group(1), "name": found.group(2), "bits": int(found.group(3))}
        for found in established
        if found
    ]
    assert [optional["cipher"], verified["cipher"]] == negotiated
    for entry, wasVerified in ((optional, False), (verified, True)):
        assert (entry["state"], entry["result"]) == ("message", "accepted"), entry
        assert entry["cipher"]["version"].startswith("TLSv1.") and entry["cipher"]["bits"] >= 128
        assert entry["certificate"]["subject"] == "CN=localhost"
        assert entry["certificate"]["issuer"] == "CN=mqtwist test CA"
        assert entry["certificate"]["verified"] is wasVerified
    assert [message.content for message in delivered] == [b"Subject: t\n\nbody\n"] * 2
    assert all(b" with ESMTPS id " in message.received for message in delivered)
    assert len(connections) == 2
    for connection in connections:
        commands, _ = connection.transcript()
        assert commands == [b"EHLO client.test", b"STARTTLS"]
    assert sessions == [
        {"ehlo": "2", "starttls": "1", "mail": "1", "rcpt": "1", "data": "1", "quit": "1", "commands": "7"}
    ] * 2


@pytest.mark.parametrize("listener", ["pipelining", "lockstep"])
@pytest_twisted.ensureDeferred
async def test_unknownRecipient(postfixReceiver, startRecordingProxy, listener) -> None:
    """
    Postfix refuses a recipient it does not know (550 5.1.1): the entry
    says C{rcptto}/C{error} with that code and status, for good; RSET ends
    the failed transaction and the next message goes on the same
    connection (the only one allowed) and arrives.
    """
    postfix = postfixReceiver
    proxy = startRecordingProxy(postfix.ports[listener])
    mark = postfix.logMark()
    pool = makePool(maxConnectionsPerDestination=1)
    unknown, good = f"unknown-{listener}@{DOMAIN}", f"after-refusal-{listener}@{DOMAIN}"
    try:
        refused = await attempt(pool, Destination((("127.0.0.1", proxy.port),)), job(unknown))
        accepted = await attempt(pool, Destination((("127.0.0.1", proxy.port),)), job(good))
        (message,) = await postfix.waitForDeliveries([good])
    finally:
        connections, sessions = await _finish(pool, proxy, postfix, mark)
    assert (refused["state"], refused["result"], refused["code"], refused["status"], refused["final"]) == (
        "rcptto", "error", 550, "5.1.1", True), refused
    assert "User unknown in local recipient table" in refused["description"]
    assert accepted["state"] == "message" and message.content == b"Subject: t\n\nbody\n"
    assert unknown not in postfix.deliveries
    (connection,) = connections
    commands, bodies = connection.transcript()
    assert bodies == [b"Subject: t\r\n\r\nbody\r\n"]
    mail = b"MAIL FROM:<sender@example.org> SIZE=20"
    if listener == "pipelining":
        # DATA went with the envelope, and Postfix refused it
        assert commands == [b"EHLO client.test", mail, b"RCPT TO:<%s>" % unknown.encode(), b"DATA", b"RSET",
                            mail, b"RCPT TO:<%s>" % good.encode(), b"DATA", b"QUIT"]
        assert sessions == [{"ehlo": "1", "mail": "2", "rcpt": "1/2", "data": "1/2", "rset": "1", "quit": "1",
                             "commands": "7/9"}]
    else:
        assert commands == [b"EHLO client.test", mail, b"RCPT TO:<%s>" % unknown.encode(), b"RSET",
                            mail, b"RCPT TO:<%s>" % good.encode(), b"DATA", b"QUIT"]
        assert sessions == [{"ehlo": "1", "mail": "2", "rcpt": "1/2", "data": "1", "rset": "1", "quit": "1",
                             "commands": "7/8"}]
    assert _improperPipelining(postfix, mark) == []
