"""
The SMTP engine against real servers (aiosmtpd in its own process, see
L{fixtures_smtp}): STARTTLS under each TLS policy, AUTH, extensions,
pipelining with a refused recipient, IPv6, and random bodies byte-exact.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import pytest_twisted
from helpers_smtpsession import PASSWORD, attempt, job, makePool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import formatEvent, globalLogPublisher

from mqtwist.content.message import Message, ResultEntry
from mqtwist.errors import AttemptFailed
from mqtwist.smtp.connect import Credentials
from mqtwist.smtp.pool import Destination
from mqtwist.smtp.tls import TLSSettings


def server(smtp: Any, **options: Any) -> Destination:
    return Destination(((smtp.host, smtp.port),), **options)


# -- STARTTLS ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tlsPolicies(startSMTPServer, certificates) -> None:
    """
    optional and required use TLS without checking the certificate;
    verified checks it against the CA file and the MX host name; each
    policy has connections of its own; EHLO is sent again over TLS.
    """
    smtp = await startSMTPServer(tlsCert=certificates["cert"], tlsKey=certificates["key"])
    pool = makePool(tls=TLSSettings(caFile=certificates["ca"]))
    try:
        optional = await attempt(pool, server(smtp, security="optional"), job("a@example.com"))
        required = await attempt(pool, server(smtp, security="required"), job("b@example.com"))
        verified = await attempt(
            pool, server(smtp, security="verified", tlsNames=("localhost",)), job("c@example.com")
        )
        wrongName = await attempt(
            pool, server(smtp, security="verified", tlsNames=("mx.other.test",)), job("d@example.com")
        )
        systemCAs = makePool()
        try:
            untrusted = await attempt(
                systemCAs, server(smtp, security="verified", tlsNames=("localhost",)), job("e@example.com")
            )
        finally:
            await systemCAs.closeAll()
        messages = await smtp.waitForMessages(3)
    finally:
        await pool.closeAll()
    for entry in (optional, required, verified):
        assert (entry["state"], entry["result"]) == ("message", "accepted"), entry
        assert entry["cipher"]["version"].startswith("TLSv1.")
        assert entry["cipher"]["bits"] >= 128 and entry["cipher"]["name"]
        assert entry["certificate"]["subject"] == "CN=localhost"
        assert entry["certificate"]["issuer"] == "CN=mqtwist test CA"
        assert len(entry["certificate"]["notafter"]) == 19
        assert entry["certificate"]["verified"] is True
    for entry in (wrongName, untrusted):
        assert (entry["state"], entry["result"], entry["final"]) == ("starttls", "error", False), entry
    assert "not valid for mx.other.test" in wrongName["description"]
    assert "does not verify" in untrusted["description"]
    assert [m.rcptTos for m in messages] == [("a@example.com",), ("b@example.com",), ("c@example.com",)]
    assert all(event["tls"] for event in smtp.events if event["event"] == "message")
    # three policies, three connections; each said EHLO twice
    used = [c for c in smtp.connections.values() if c.messages]
    assert len(used) == 3 and all(c.commands[:2] == ["ehlo", "ehlo"] for c in used)


@pytest_twisted.ensureDeferred
async def test_tlsUnverifiedIsReported(startSMTPServer, certificates) -> None:
    """
    optional takes a certificate it cannot verify, and says so.
    """
    smtp = await startSMTPServer(tlsCert=certificates["cert"], tlsKey=certificates["key"])
    pool = makePool()
    try:
        entry = await attempt(pool, server(smtp, security="optional"), job())
    finally:
        await pool.closeAll()
    assert entry["state"] == "message" and entry["certificate"]["verified"] is False


@pytest_twisted.ensureDeferred
async def test_requiredWithoutStarttls(smtpServer) -> None:
    pool = makePool()
    try:
        required = await attempt(pool, server(smtpServer, security="required"), job())
        opportunistic = await attempt(pool, server(smtpServer, security="opportunistic"), job())
    finally:
        await pool.closeAll()
    assert (required["state"], required["result"], required["final"]) == ("starttls", "error", False)
    assert "does not offer STARTTLS" in required["description"] and "'required'" in required["description"]
    assert opportunistic["state"] == "message" and "cipher" not in opportunistic


@pytest_twisted.ensureDeferred
async def test_brokenHandshake(startSMTPServer, certificates) -> None:
    """
    opportunistic connects again without TLS; optional fails the attempt.
    """
    smtp = await startSMTPServer(tlsCert=certificates["cert"], tlsKey=certificates["key"], tlsBroken=True)
    pool = makePool()
    try:
        opportunistic = await attempt(pool, server(smtp, security="opportunistic"), job())
        optional = await attempt(pool, server(smtp, security="optional"), job())
    finally:
        await pool.closeAll()
    assert opportunistic["state"] == "message" and "cipher" not in opportunistic
    assert (optional["state"], optional["result"], optional["final"]) == ("starttls", "error", False)
    assert "TLS handshake" in optional["description"]


# -- AUTH --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_authOverTLSKeepsPasswordSecret(startSMTPServer, certificates) -> None:
    """
    AUTH after STARTTLS; the password appears in no log event and no
    result; credentials are part of the pool key.
    """
    smtp = await startSMTPServer(
        tlsCert=certificates["cert"], tlsKey=certificates["key"], auth=f"mailer:{PASSWORD}"
    )
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    pool = makePool()
    try:
        good = await attempt(
            pool, server(smtp, security="required", credentials=Credentials("mailer", PASSWORD)), job()
        )
        bad = await attempt(
            pool, server(smtp, security="required", credentials=Credentials("mailer", "wrong")), job()
        )
        message = Message.fromObject(
            {
                "recipient": "x@example.com",
                "mime": "x",
                "smarthost": {"hostname": "h", "username": "mailer", "password": PASSWORD},
            }
        )
        message.record(ResultEntry.fromFailure(AttemptFailed("auth", "error", "x"), 0))
        published = message.resultJSON()
    finally:
        await pool.closeAll()
        globalLogPublisher.removeObserver(events.append)
    assert good["state"] == "message", good
    assert (bad["state"], bad["result"], bad["code"], bad["final"]) == ("auth", "error", 535, False)
    assert "refused the login as mailer" in bad["description"]
    auths = [(e["login"], e["success"], e["mechanism"]) for e in smtp.events if e["event"] == "auth"]
    assert auths == [("mailer", True, "PLAIN"), ("mailer", False, "PLAIN")]
    assert len([c for c in smtp.connections.values()]) == 2
    text = json.dumps([good, bad]) + repr(Credentials("mailer", PASSWORD)) + published.decode()
    text += "".join(formatEvent(event) + repr(event) for event in events)
    assert events and "AUTH PLAIN <hidden>" in text
    assert PASSWORD not in text


@pytest_twisted.ensureDeferred
async def test_authNotInClear(startSMTPServer) -> None:
    smtp = await startSMTPServer(auth=f"mailer:{PASSWORD}", authCleartext=True)
    credentials = Credentials("mailer", PASSWORD)
    strict, lenient = makePool(), makePool(authCleartextHosts=[smtp.host])
    try:
        refused = await attempt(strict, server(smtp, security="opportunistic", credentials=credentials), job())
        allowed = await attempt(lenient, server(smtp, security="opportunistic", credentials=credentials), job())
    finally:
        await strict.closeAll()
        await lenient.closeAll()
    assert (refused["state"], refused["result"], refused["final"]) == ("auth", "error", False)
    assert "without TLS" in refused["description"]
    assert allowed["state"] == "message"
    assert [(e["mechanism"], e["success"]) for e in smtp.events if e["event"] == "auth"] == [("PLAIN", True)]


# -- extensions ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_extensions(startSMTPServer) -> None:
    smtp = await startSMTPServer(size=1000, smtputf8=True, dsn=True)
    plain = await startSMTPServer(no8bitmime=True)
    pool = makePool()
    dsn = {"notify": "SUCCESS,DELAY", "ret": "FULL", "orcpt": "orig+1@example.com", "envid": "campaign 7"}
    try:
        eightBit = await attempt(pool, server(smtp), job("a@example.com", mime="Subject: \u00e9\r\n\r\n\u00e9\r\n"))
        utf8 = await attempt(pool, server(smtp), job("j\u00f6rg@example.com"))
        withDSN = await attempt(pool, server(smtp), job("b@example.com", dsn=dsn))
        tooBig = await attempt(pool, server(smtp), job("c@example.com", mime="x" * 1001))
        noEightBit = await attempt(pool, server(plain), job("d@example.com", mime="\u00e9"))
        noDSN = await attempt(pool, server(plain), job("e@example.com", dsn=dsn))
        noUTF8 = await attempt(pool, server(plain), job("j\u00f6rg@example.com"))
        received = {m.rcptTos[0]: m for m in await smtp.waitForMessages(3)}
        (plainMessage,) = await plain.waitForMessages(1)
    finally:
        await pool.closeAll()
    assert all(entry["state"] == "message" for entry in (eightBit, utf8, withDSN, noDSN))
    assert "BODY=8BITMIME" in received["a@example.com"].mailOptions
    assert received["a@example.com"].data == "Subject: \u00e9\r\n\r\n\u00e9\r\n".encode()
    assert "SMTPUTF8" in received["j\u00f6rg@example.com"].mailOptions
    assert received["b@example.com"].mailOptions == ("SIZE=20", "RET=FULL", "ENVID=campaign+207")
    assert received["b@example.com"].rcptOptions == ("NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;orig+2B1@example.com")
    assert withDSN["dsn"] is True and noDSN["dsn"] is False
    assert plainMessage.rcptOptions == () and plainMessage.mailOptions == ()
    for entry, state, words in (
        (tooBig, "mailfrom", "more than the 1000 bytes"),
        (noEightBit, "mailfrom", "8BITMIME"),
        (noUTF8, "rcptto", "SMTPUTF8"),
    ):
        assert (entry["state"], entry["result"], entry["final"]) == (state, "error", True)
        assert words in entry["description"]
    # the refusals before MAIL left the connection clean: no RSET
    assert sum(c.rsets for c in smtp.connections.values()) == 0


@pytest_twisted.ensureDeferred
async def test_refusedRecipientButDataAccepted(smtpServer) -> None:
    """
    RFC 2920 3.1 against a real server: RCPT refused, pipelined DATA
    accepted; the client ends DATA with the dot alone, reports the RCPT
    failure and the next message goes on the same connection without RSET.
    """
    pool = makePool()
    try:
        refused = await attempt(pool, server(smtpServer), job("lenient@example.com"))
        after = await attempt(pool, server(smtpServer), job("next@example.com"))
    finally:
        await pool.closeAll()
    assert (refused["state"], refused["code"], refused["status"]) == ("rcptto", 550, "5.1.1")
    assert after["state"] == "message"
    (rejected,) = smtpServer.rejected
    assert rejected.data == b""
    assert len(smtpServer.connections) == 1 and smtpServer.connections[1].rsets == 0


# -- IPv6 ----------------------------------------------------------------------


def hasIPv6Loopback() -> bool:
    """Whether this host can bind ::1 (some containers have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not hasIPv6Loopback(), reason="this host has no IPv6 loopback (::1)")
@pytest_twisted.ensureDeferred
async def test_ipv6(startSMTPServer) -> None:
    smtp = await startSMTPServer(host="::1")
    pool = makePool()
    try:
        entry = await attempt(pool, Destination((("::1", smtp.port),), bindAddress="::1"), job())
        wrongFamily = await attempt(pool, Destination((("::1", smtp.port),), bindAddress="127.0.0.1"), job())
    finally:
        await pool.closeAll()
    assert entry["state"] == "message" and entry["to"] == "::1" and entry["from"] == "::1"
    assert (wrongFamily["state"], wrongFamily["result"]) == ("bind", "error")


# -- bodies --------------------------------------------------------------------

_bodies = st.one_of(
    st.binary(max_size=2000),
    st.lists(
        st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b".\r\n", b"a", b" ", b"\xe9", b"x" * 300]),
        max_size=40,
    ).map(b"".join),
)


def _normalised(body: bytes) -> bytes:
    body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return body if not body or body.endswith(b"\r\n") else body + b"\r\n"


@pytest_twisted.ensureDeferred
async def test_randomBodiesArriveExactly(startSMTPServer) -> None:
    """
    Random bodies (bare CR and LF, dots at line starts, no final newline,
    long lines, 8-bit bytes) through one real server and one pooled
    connection arrive as their CRLF-normalised selves.
    """
    # lines far beyond RFC 5321's 1000 octets: the client must pass them on
    smtpServer = await startSMTPServer(lineLengthLimit=1 << 20)
    pool = makePool()
    sent: list[bytes] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_bodies)
    def collect(body: bytes) -> None:
        sent.append(body)

    collect()
    try:
        for number, body in enumerate(sent):
            message = job(f"r{number}@example.com", mime="")
            message.mime = body
            entry = await attempt(pool, server(smtpServer), message)
            assert (entry["state"], entry["result"]) == ("message", "accepted"), entry
        received = await smtpServer.waitForMessages(len(sent))
    finally:
        await pool.closeAll()
    assert [m.data for m in received] == [_normalised(body) for body in sent]
    assert len(smtpServer.connections) == 1
