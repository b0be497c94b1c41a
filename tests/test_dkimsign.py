"""
Tests for L{mqtwist.content.dkimsign}: signatures checked by Perl's Mail::DKIM
(independent of dkimpy) against public keys served by a name server on
loopback; keys from messages and from configuration; bad keys, domains and
options refused without quoting the key.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fixtures_dkim import KeyRecords
from helpers_dkim import NODE_PATH, RSA_KEY, needsMailDKIM, pem, rsaKey, verify
from twisted.internet import reactor

from mqtwist.content.dkimsign import DKIMKeys, parseDKIM, sign, signInThread, withoutKeys
from mqtwist.content.mime import buildMime
from mqtwist.errors import InvalidMessage

NOW = 1_700_000_000.0

_mailauthMissing = (
    shutil.which("node") is None
    or subprocess.run(
        ["node", "-e", "require('mailauth/lib/dkim/verify')"],
        capture_output=True,
        env={**os.environ, "NODE_PATH": NODE_PATH},
    ).returncode
    != 0
)
needsMailauth = pytest.mark.skipif(
    _mailauthMissing,
    reason="needs node and mailauth: npm install --prefix .state/node mailauth",
)


RSA_KEY_2 = rsaKey()
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def signatureField(signed: bytes) -> bytes:
    """
    The first DKIM-Signature field of C{signed}, unfolded, with the white
    space that folding put before a C{:} of C{h=} taken out.
    """
    field = signed[: re.search(rb"\r\n(?![ \t])", signed).start()]
    return re.sub(rb"\r\n[ \t]", b" ", field).replace(b" :", b":")


def message(**extra: Any) -> bytes:
    obj = {
        "from": {"name": "Jörg", "address": "news@example.com"},
        "to": "reader@example.org",
        "subject": "Grüße",
        "text": "Hello\n" * 50,
        "html": "<p>Hello</p>\n",
        **extra,
    }
    return buildMime(obj, now=NOW, hostname="mx.example.com")


KEYS = DKIMKeys()


@needsMailDKIM
@pytest.mark.parametrize(
    "canonicalization", ["relaxed/simple", "simple/simple", "relaxed/relaxed", "simple/relaxed"]
)
@pytest_twisted.ensureDeferred
async def test_rsaVerifiedByMailDKIM(
    nameServer: tuple[KeyRecords, int], canonicalization: str
) -> None:
    records, port = nameServer
    records.publish("s2048", "example.com", RSA_KEY)
    specs = parseDKIM(
        {"domain": "example.com", "selector": "s2048", "key": pem(RSA_KEY),
         "canonicalization": canonicalization},
        KEYS,
    )
    signed = sign(message(), specs, now=NOW)
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=" + canonicalization.encode())
    verdicts = await verify(port, signed)
    assert verdicts == [
        ["pass", "example.com", "s2048", "rsa-sha256", "pass"],
        ["overall", "pass"],
    ]


@needsMailDKIM
@pytest_twisted.ensureDeferred
async def test_severalSignatures(nameServer: tuple[KeyRecords, int]) -> None:
    """
    Two RSA signatures by two domains, and an Ed25519 one: Mail::DKIM passes
    the RSA ones.  Debian 12's Mail::DKIM (1.20230212) has no Ed25519, so it
    cannot judge the third; it must not make the others fail.
    """
    records, port = nameServer
    records.publish("a", "example.com", RSA_KEY)
    records.publish("b", "esp.example.net", RSA_KEY_2)
    records.publish("ed", "example.com", ED_KEY)
    specs = parseDKIM(
        [
            {"domain": "example.com", "selector": "a", "key": pem(RSA_KEY)},
            {"domain": "esp.example.net", "selector": "b", "key": pem(RSA_KEY_2)},
            {"domain": "example.com", "selector": "ed", "key": pem(ED_KEY)},
        ],
        KEYS,
    )
    signed = sign(message(), specs, now=NOW)
    assert signed.count(b"DKIM-Signature:") == 3
    verdicts = await verify(port, signed)
    assert verdicts[0] == ["pass", "example.com", "a", "rsa-sha256", "pass"]
    assert verdicts[1] == ["pass", "esp.example.net", "b", "rsa-sha256", "pass"]
    assert verdicts[2][1:4] == ["example.com", "ed", "ed25519-sha256"]
    assert verdicts[-1] == ["overall", "pass"]


@needsMailDKIM
@pytest_twisted.ensureDeferred
async def test_changedBodyFails(nameServer: tuple[KeyRecords, int]) -> None:
    records, port = nameServer
    records.publish("s", "example.com", RSA_KEY)
    specs = parseDKIM({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY)}, KEYS)
    signed = sign(message(), specs, now=NOW)
    tampered = signed.replace(b"Hello\r\nHello", b"Hullo\r\nHello", 1)
    assert tampered != signed
    verdicts = await verify(port, tampered)
    assert verdicts[0][0] == "fail"
    assert "body_has_been_altered" in verdicts[0][4]


@needsMailDKIM
@pytest_twisted.ensureDeferred
async def test_fromOverSigned(nameServer: tuple[KeyRecords, int]) -> None:
    """
    From is signed once more than the message has it: a second From added
    on the way breaks the signature.  Other fields may be added.
    """
    records, port = nameServer
    records.publish("s", "example.com", RSA_KEY)
    specs = parseDKIM({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY)}, KEYS)
    signed = sign(message(), specs, now=NOW)
    header = signatureField(signed)
    assert b" h=from:to:subject:" in header and header.count(b"from") == 2
    assert b":from;" in header
    end = signed.index(b"\r\n\r\n")
    withTrace = b"Received: from x by y\r\n" + signed
    assert (await verify(port, withTrace))[-1] == ["overall", "pass"]
    extraFrom = signed[:end] + b"\r\nFrom: evil@example.net" + signed[end:]
    verdicts = await verify(port, extraFrom)
    assert verdicts[0][0] == "fail"


@needsMailDKIM
@pytest_twisted.ensureDeferred
async def test_headersAndExpireAndConfiguredKey(
    nameServer: tuple[KeyRecords, int], tmp_path: Path
) -> None:
    """
    A key from configuration (a key file), the message naming only the
    domain; chosen headers; an expiry C{x=}.
    """
    records, port = nameServer
    records.publish("conf", "example.com", RSA_KEY)
    keyfile = tmp_path / "example.com.pem"
    keyfile.write_text(pem(RSA_KEY))
    keys = DKIMKeys({"example.com": {"selector": "conf", "keyfile": str(keyfile)}})
    specs = parseDKIM(
        {"domain": "Example.COM", "headers": ["From", "Subject", "From"], "expire": 86400},
        keys,
    )
    now = 4_000_000_000.0  # Mail::DKIM compares x= with the real clock
    signed = sign(message(), specs, now=now)
    unfolded = signatureField(signed)
    assert b" s=conf;" in unfolded and b" d=example.com;" in unfolded
    assert b" h=from:subject:from;" in unfolded
    assert b" t=4000000000; x=4000086400;" in unfolded
    verdicts = await verify(port, signed)
    assert verdicts[0][:4] == ["pass", "example.com", "conf", "rsa-sha256"]


@needsMailDKIM
@pytest_twisted.ensureDeferred
async def test_expiredSignatureNotPassed(nameServer: tuple[KeyRecords, int]) -> None:
    records, port = nameServer
    records.publish("s", "example.com", RSA_KEY)
    specs = parseDKIM(
        {"domain": "example.com", "selector": "s", "key": pem(RSA_KEY),
         "expire": "2001-01-01 00:00:00"},
        KEYS,
    )
    signed = sign(message(), specs, now=NOW)
    verdicts = await verify(port, signed)
    assert verdicts[0][0] != "pass"
    assert "expired" in verdicts[0][4]


@needsMailDKIM
@pytest_twisted.ensureDeferred
async def test_stringMimeWithLfAndSignInThread(nameServer: tuple[KeyRecords, int]) -> None:
    """
    A message given as a string with LF line ends is signed as it goes on
    the wire (CRLF), in the reactor's thread pool.
    """
    records, port = nameServer
    records.publish("s", "example.com", RSA_KEY)
    specs = parseDKIM({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY)}, KEYS)
    mime = b"From: a@example.com\nTo: b@example.org\nSubject: x\n\nbody\n\n\n"
    signed = await signInThread(reactor, mime, specs, now=NOW)
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert (await verify(port, signed))[0][0] == "pass"


@needsMailauth
@pytest_twisted.ensureDeferred
async def test_ed25519VerifiedByMailauth(nameServer: tuple[KeyRecords, int]) -> None:
    """
    An Ed25519 and an RSA signature, checked by mailauth; a changed body
    fails both.
    """
    records, port = nameServer
    records.publish("ed", "example.com", ED_KEY)
    records.publish("rsa", "example.com", RSA_KEY)
    specs = parseDKIM(
        [
            {"domain": "example.com", "selector": "ed", "key": pem(ED_KEY)},
            {"domain": "example.com", "selector": "rsa", "key": pem(RSA_KEY),
             "canonicalization": "simple/simple"},
        ],
        KEYS,
    )
    signed = sign(message(), specs, now=NOW)
    assert await verify(port, signed, "node") == [
        ["pass", "example.com", "ed", "ed25519-sha256"],
        ["pass", "example.com", "rsa", "rsa-sha256"],
        ["overall", "2"],
    ]
    tampered = signed.replace(b"Hello\r\nHello", b"Hullo\r\nHello", 1)
    verdicts = await verify(port, tampered, "node")
    # mailauth calls a body hash mismatch "neutral" (RFC 6376 6.1.3 lets a
    # verifier treat it so); what matters is that nothing passes
    assert [v[0] for v in verdicts] == ["neutral", "neutral", "overall"]
    assert verdicts[-1] == ["overall", "0"]


def test_ed25519Signature() -> None:
    """
    Without an independent Ed25519 verifier in Debian 12, check what can be
    checked: the tags, and that the signature is Ed25519 over 32 bytes
    (a SHA-256) made with the key (a signature of anything else fails).
    """
    specs = parseDKIM({"domain": "example.com", "selector": "ed", "key": pem(ED_KEY)}, KEYS)
    assert specs[0].algorithm == "ed25519-sha256"
    signed = sign(message(), specs, now=NOW)
    header = signatureField(signed)
    assert header.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/simple;")
    signature = base64.b64decode(header.split(b" b=")[1].replace(b" ", b""))
    assert len(signature) == 64


def test_keyCacheParsesOnce() -> None:
    keys = DKIMKeys(cacheSize=2)
    first = parseDKIM({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY)}, keys)
    again = parseDKIM({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY)}, keys)
    assert first[0].key is again[0].key
    parseDKIM({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY_2)}, keys)
    parseDKIM({"domain": "example.com", "selector": "s", "key": pem(ED_KEY)}, keys)
    assert len(keys.cache) == 2
    third = parseDKIM({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY)}, keys)
    assert third[0].key is not first[0].key  # dropped, parsed again


# cryptography refuses to make keys this small, OpenSSL's command still does
SMALL_RSA = subprocess.run(
    ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512"],
    capture_output=True,
    check=True,
).stdout.decode("ascii")
EC_KEY = pem(ec.generate_private_key(ec.SECP256R1()))
ENCRYPTED = RSA_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"secret"),
).decode()


@pytest.mark.parametrize(
    "value, named",
    [
        ("example.com", "property 'dkim'"),
        ([], "property 'dkim'"),
        ({"selector": "s", "key": pem(RSA_KEY)}, "dkim.domain"),
        ({"domain": "exa mple.com", "selector": "s", "key": pem(RSA_KEY)}, "dkim.domain"),
        ({"domain": "example.com\r\nX: y", "selector": "s", "key": pem(RSA_KEY)}, "dkim.domain"),
        ({"domain": "localhost", "selector": "s", "key": pem(RSA_KEY)}, "dkim.domain"),
        ({"domain": "example.com", "key": pem(RSA_KEY)}, "no selector"),
        ({"domain": "example.com", "selector": "s;x=1", "key": pem(RSA_KEY)}, "dkim.selector"),
        ({"domain": "example.com", "selector": "s"}, "no key for domain 'example.com'"),
        ({"domain": "example.com", "selector": "s", "key": "garbage"}, "dkim.key"),
        ({"domain": "example.com", "selector": "s", "key": 5}, "dkim.key"),
        ({"domain": "example.com", "selector": "s", "key": SMALL_RSA}, "dkim.key"),
        ({"domain": "example.com", "selector": "s", "key": EC_KEY}, "dkim.key"),
        ({"domain": "example.com", "selector": "s", "key": ENCRYPTED}, "dkim.key"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY), "headers": ["To"]},
         "From"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY),
          "headers": ["From", "Received"]}, "Received"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY),
          "headers": ["From", "X\r\nY"]}, "dkim.headers"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY),
          "canonicalization": "loose"}, "dkim.canonicalization"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY), "expire": -5},
         "dkim.expire"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY), "expire": "tomorrow"},
         "dkim.expire"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY), "algorithm": "rsa"},
         "'algorithm'"),
        ([{"domain": "example.com", "selector": "s", "key": pem(RSA_KEY)}, {"domain": "x"}],
         "dkim[1].domain"),
    ],
)
def test_badDKIMRefused(value: Any, named: str) -> None:
    with pytest.raises(InvalidMessage) as raised:
        parseDKIM(value, KEYS)
    description = raised.value.description
    assert named in description
    assert raised.value.result == "invalid"
    # no key material, whatever the key
    assert "MII" not in description and "garbage" not in description


def test_badConfiguredKey(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as raised:
        DKIMKeys({"example.com": {"selector": "s", "key": "-----BEGIN PRIVATE KEY-----\nMIIE"}})
    assert "example.com" in str(raised.value) and "MIIE" not in str(raised.value)
    with pytest.raises(ValueError, match="cannot read keyfile"):
        DKIMKeys({"example.com": {"selector": "s", "keyfile": str(tmp_path / "absent.pem")}})
    with pytest.raises(ValueError, match="either key"):
        DKIMKeys({"example.com": {"selector": "s"}})


def test_messageWithoutFromRefused() -> None:
    specs = parseDKIM({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY)}, KEYS)
    with pytest.raises(InvalidMessage, match="no From"):
        sign(b"To: a@example.com\r\n\r\nbody\r\n", specs, now=NOW)
    with pytest.raises(InvalidMessage, match="neither a field"):
        sign(b"From: a@example.com\r\nnot a header\r\n\r\nbody\r\n", specs, now=NOW)


def test_withoutKeys() -> None:
    value = [{"domain": "a.example", "selector": "s", "key": "PEM"}, {"domain": "b.example"}]
    assert withoutKeys(value) == [{"domain": "a.example", "selector": "s"}, {"domain": "b.example"}]
    assert withoutKeys({"domain": "a.example", "key": "PEM"}) == {"domain": "a.example"}
    assert value[0]["key"] == "PEM"  # the message itself is not changed
    assert withoutKeys("nonsense") == "nonsense"
