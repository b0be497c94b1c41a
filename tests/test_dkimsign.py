"""
Tests for L{mqtwist.content.dkimsign}: signatures checked by Perl's Mail::DKIM
(independent of dkimpy) against public keys served by a name server on
loopback, ARC chains by mailauth and by Mail::DKIM's ARC verifier; keys from
messages and from configuration; MailerQ's extra C{headers}, C{report}
(C{r=y}) and C{protocols}; bad keys, domains and options refused without
quoting the key, unknown keys kept.
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fixtures_dkim import KeyRecords
from helpers_dkim import RSA_KEY, needsMailauth, needsMailDKIM, pem, rsaKey, verify, verifyARC
from twisted.internet import reactor

from mqtwist.config import DKIMKeyRule
from mqtwist.content.dkimsign import DKIMKeys, parseDKIM, sign, signInThread, withoutKeys
from mqtwist.content.mime import buildMime
from mqtwist.errors import InvalidMessage

NOW = 1_700_000_000.0


_mailDKIMMissing = subprocess.run(
    ["perl", "-MMail::DKIM::ARC::Verifier", "-MNet::DNS::Resolver", "-e", "1"], capture_output=True
).returncode != 0


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
    domain; extra headers, signed besides the usual set (From and Subject
    are in it, X-Campaign is not, Feedback-ID is absent: its absence is
    signed); an expiry C{x=}.
    """
    records, port = nameServer
    records.publish("conf", "example.com", RSA_KEY)
    keyfile = tmp_path / "example.com.pem"
    keyfile.write_text(pem(RSA_KEY))
    keys = DKIMKeys({"example.com": {"selector": "conf", "keyfile": str(keyfile)}})
    specs = parseDKIM(
        {"domain": "Example.COM", "headers": ["From", "Subject", "X-Campaign", "Feedback-ID"],
         "expire": 86400},
        keys,
    )
    now = 4_000_000_000.0  # Mail::DKIM compares x= with the real clock
    plain = b"X-Campaign: c1\r\n" + message()
    signed = sign(plain, specs, now=now)
    unfolded = signatureField(signed)
    assert b" s=conf;" in unfolded and b" d=example.com;" in unfolded
    default = signatureField(sign(plain, parseDKIM({"domain": "example.com"}, keys), now=now))
    usual = re.search(rb" h=([^;]*):from;", default).group(1)
    assert {b"from", b"to", b"subject", b"date", b"message-id"} <= set(usual.split(b":"))
    assert b" h=" + usual + b":x-campaign:feedback-id:from;" in unfolded
    assert b" t=4000000000; x=4000086400;" in unfolded
    verdicts = await verify(port, signed)
    assert verdicts[0][:4] == ["pass", "example.com", "conf", "rsa-sha256"]
    # X-Campaign and Feedback-ID are signed: changing one, or adding the
    # other, breaks the signature
    changed = signed.replace(b"X-Campaign: c1", b"X-Campaign: c2")
    assert (await verify(port, changed))[0][0] == "fail"
    added = signed.replace(b"X-Campaign: c1", b"X-Campaign: c1\r\nFeedback-ID: 1:2:3")
    assert (await verify(port, added))[0][0] == "fail"


@needsMailDKIM
@pytest_twisted.ensureDeferred
async def test_reportAsksForReports(nameServer: tuple[KeyRecords, int]) -> None:
    """
    C{report: true} puts C{r=y} (RFC 6651) in the signature, which still
    verifies; without it (or with C{false}) there is no C{r=} tag.
    """
    records, port = nameServer
    records.publish("s", "example.com", RSA_KEY)
    base = {"domain": "example.com", "selector": "s", "key": pem(RSA_KEY)}
    signed = sign(message(), parseDKIM({**base, "report": True}, KEYS), now=NOW)
    assert _tags(signatureField(signed))["r"] == "y"
    assert (await verify(port, signed))[0][:4] == ["pass", "example.com", "s", "rsa-sha256"]
    for options in ({}, {"report": False}):
        plain = sign(message(), parseDKIM({**base, **options}, KEYS), now=NOW)
        assert "r" not in _tags(signatureField(plain))


def _tags(field: bytes) -> dict[str, str]:
    """
    The tags of an unfolded DKIM-Signature field, by name (RFC 6376 3.2).
    """
    value = field.split(b":", 1)[1].decode("ascii")
    pairs = [t.split("=", 1) for t in value.split(";") if t.strip()]
    return {name.strip(): "".join(v.split()) for name, v in pairs}


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
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY), "headers": "X-A"},
         "dkim.headers"),
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
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY), "report": "yes"},
         "dkim.report"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY), "report": 1},
         "dkim.report"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY), "protocols": "arc"},
         "dkim.protocols"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY), "protocols": []},
         "dkim.protocols"),
        ({"domain": "example.com", "selector": "s", "key": pem(RSA_KEY),
          "protocols": ["dkim", "bimi"]}, "dkim.protocols"),
        ({"domain": "example.com", "selector": "s", "key": pem(ED_KEY), "protocols": ["arc"]},
         "RSA keys only"),
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


def test_unknownKeysKept() -> None:
    """
    Keys a C{dkim} object may have that mean nothing to mqtwist do not
    refuse the job; they stay in the object that goes to results, without
    the private key.
    """
    value = {"domain": "example.com", "selector": "s", "key": pem(RSA_KEY),
             "algorithm": "rsa", "x-note": {"a": [1]}}
    specs = parseDKIM(value, KEYS)
    assert [(s.domain, s.selector, s.dkim, s.arc) for s in specs] == [
        ("example.com", "s", True, False)
    ]
    assert withoutKeys(value) == {"domain": "example.com", "selector": "s",
                                  "algorithm": "rsa", "x-note": {"a": [1]}}
    assert withoutKeys([value]) == [withoutKeys(value)]


def test_protocolsParsed(tmp_path: Path) -> None:
    """
    C{protocols} of the message, else of the configured key, else DKIM
    only; a key given in the message does not take the configured one's.
    """
    keyfile = tmp_path / "k.pem"
    keyfile.write_text(pem(RSA_KEY))
    keys = DKIMKeys({
        "example.com": {"selector": "c", "keyfile": str(keyfile), "protocols": ["arc"]},
        "example.net": {"selector": "c", "keyfile": str(keyfile)},
    })

    def protocols(value: dict[str, Any]) -> tuple[bool, bool]:
        (spec,) = parseDKIM(value, keys)
        return spec.dkim, spec.arc

    assert protocols({"domain": "example.com"}) == (False, True)
    assert protocols({"domain": "example.com", "protocols": ["DKIM", "arc"]}) == (True, True)
    assert protocols({"domain": "example.com", "protocols": ["dkim"]}) == (True, False)
    assert protocols({"domain": "example.com", "selector": "m", "key": pem(RSA_KEY)}) == (True, False)
    assert protocols({"domain": "example.net"}) == (True, False)
    # as the service passes a [[dkim-keys]] table's (DKIMKeyRule.protocols)
    rule = DKIMKeyRule.fromTable(
        {"domain": "example.org", "selector": "c", "keyfile": str(keyfile), "protocols": ["dkim", "arc"]},
        "[[dkim-keys]] number 1",
    )
    fromRule = DKIMKeys({rule.domain: {"selector": rule.selector, "keyfile": rule.keyfile,
                                       "protocols": rule.protocols}})
    (spec,) = parseDKIM({"domain": "example.org"}, fromRule)
    assert (spec.dkim, spec.arc) == (True, True)
    with pytest.raises(ValueError, match="protocols"):
        DKIMKeys({"example.org": {"selector": "c", "keyfile": str(keyfile), "protocols": ["x"]}})
    edfile = tmp_path / "ed.pem"
    edfile.write_text(pem(ED_KEY))
    with pytest.raises(ValueError, match="RSA keys only"):
        DKIMKeys({"example.org": {"selector": "c", "keyfile": str(edfile), "protocols": ["arc"]}})


def test_arcOnlyAndAlreadySealed() -> None:
    """
    A key with C{protocols: ["arc"]} adds no DKIM-Signature; a message that
    already carries ARC fields is not sealed again (mqtwist starts chains,
    it does not verify others').
    """
    specs = parseDKIM(
        {"domain": "example.com", "selector": "a", "key": pem(RSA_KEY), "protocols": ["arc"]}, KEYS
    )
    signed = sign(message(), specs, now=NOW, authservId="mx.example.com")
    head = signed[: signed.index(b"\r\n\r\n")]
    assert b"DKIM-Signature:" not in head
    assert head.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.com; s=a;")
    assert head.count(b"ARC-Message-Signature: i=1;") == 1
    assert head.count(b"ARC-Authentication-Results: i=1; mx.example.com;") == 1
    with pytest.raises(InvalidMessage, match="already has ARC fields"):
        sign(signed, specs, now=NOW, authservId="mx.example.com")


@needsMailauth
@pytest_twisted.ensureDeferred
async def test_arcVerifiedByMailauth(nameServer: tuple[KeyRecords, int]) -> None:
    """
    MailerQ's example: key x for DKIM and ARC, key y for ARC only.  One
    DKIM-Signature (x, with r=y and the extra header), and a chain of two
    ARC sets (i=1 by x with cv=none, i=2 by y with cv=pass): mailauth passes
    the DKIM signature and the whole chain, whose last
    ARC-Authentication-Results names the EHLO name.  An Authentication-Results
    field the sender put in the message in mqtwist's name is not copied
    into the ARC sets.  A changed body fails the chain.
    """
    records, port = nameServer
    records.publish("x", "example.com", RSA_KEY)
    records.publish("y", "example.com", RSA_KEY_2)
    specs = parseDKIM(
        [
            {"domain": "example.com", "selector": "x", "key": pem(RSA_KEY),
             "protocols": ["dkim", "arc"], "report": True, "headers": ["X-Campaign"]},
            {"domain": "example.com", "selector": "y", "key": pem(RSA_KEY_2),
             "protocols": ["arc"]},
        ],
        KEYS,
    )
    forged = b"Authentication-Results: mx.example.com; dkim=pass header.d=bank.example\r\n"
    plain = b"X-Campaign: c1\r\n" + forged + message()
    signed = await signInThread(reactor, plain, specs, now=NOW, authservId="mx.example.com")
    head = signed[: signed.index(b"\r\n\r\n")]
    assert head.count(b"DKIM-Signature:") == 1
    assert head.count(b"ARC-Seal:") == 2
    assert b"bank.example" not in head.replace(forged.rstrip(), b"")
    dkimField = signatureField(signed[signed.index(b"DKIM-Signature:"):])
    assert _tags(dkimField)["r"] == "y" and _tags(dkimField)["s"] == "x"
    assert (await verify(port, signed, "node"))[0] == ["pass", "example.com", "x", "rsa-sha256"]
    assert await verifyARC(port, signed) == [
        ["arc", "pass", "2"],
        ["comment", "i=2"],
        ["aar", "mx.example.com", "pass"],
        ["ams", "pass", "example.com", "y"],
    ]
    tampered = signed.replace(b"Hello\r\nHello", b"Hullo\r\nHello", 1)
    assert (await verifyARC(port, tampered))[0][:2] == ["arc", "fail"]
    if not _mailDKIMMissing:
        # and Mail::DKIM's ARC verifier agrees
        assert (await verifyARC(port, signed, "perl"))[0] == ["arc", "pass"]
        assert (await verifyARC(port, tampered, "perl"))[0] == ["arc", "fail"]
    # one ARC key: one set, cv=none, the EHLO name with arc=none
    (first,) = parseDKIM(
        {"domain": "example.com", "selector": "x", "key": pem(RSA_KEY), "protocols": ["arc"]}, KEYS
    )
    single = sign(message(), [first], now=NOW, authservId="mx.example.com")
    if not _mailDKIMMissing:
        assert (await verifyARC(port, single, "perl"))[0] == ["arc", "pass"]
    assert await verifyARC(port, single) == [
        ["arc", "pass", "1"],
        ["comment", "i=1"],
        ["aar", "mx.example.com", "none"],
        ["ams", "pass", "example.com", "x"],
    ]


def test_dkimKeyRuleProtocols() -> None:
    """
    A C{[[dkim-keys]]} table may say which protocols its key makes, as a
    message's C{dkim.protocols}; DKIM only when left out.
    """
    where = "[[dkim-keys]] number 1"
    table = {"domain": "example.org", "selector": "s", "keyfile": "/k.pem"}
    assert DKIMKeyRule.fromTable(table, where).protocols == ("dkim",)
    rule = DKIMKeyRule.fromTable({**table, "protocols": ["dkim", "arc"]}, where)
    assert rule.protocols == ("dkim", "arc")
    for bad in ("arc", [], ["dkim", "spf"], [1]):
        with pytest.raises(ValueError, match=r"number 1: 'protocols' is .*\"dkim\" and/or \"arc\""):
            DKIMKeyRule.fromTable({**table, "protocols": bad}, where)


def _dTags(signed: bytes) -> list[str]:
    head = re.sub(rb"\r\n[ \t]+", b" ", signed[: signed.index(b"\r\n\r\n")])
    return [
        re.search(rb"\bd=([^;]+);", line).group(1).decode()  # type: ignore[union-attr]
        for line in head.split(b"\r\n")
        if line.startswith(b"DKIM-Signature:")
    ]


def test_configured_keys_sign_what_they_match() -> None:
    """
    With matching keys (--dkim-sign matching), each configured key whose
    domain is the From domain or a parent of it signs, the most specific
    first; one the message's own dkim names already does not sign twice; a
    message from elsewhere comes back unsigned (its line ends CRLF).
    """
    key = pem(RSA_KEY)
    keys = DKIMKeys({
        "example.com": {"selector": "a", "key": key},
        "mail.example.com": {"selector": "b", "key": key},
        "example.org": {"selector": "c", "key": key},
    })
    mime = b"From: News <news@mail.example.com>\nSubject: hi\n\nbody\n"
    assert _dTags(sign(mime, [], now=0, matching=keys)) == ["mail.example.com", "example.com"]
    own = parseDKIM({"domain": "example.com", "selector": "x", "key": key}, keys)
    assert _dTags(sign(mime, own, now=0, matching=keys)) == ["example.com", "mail.example.com"]
    elsewhere = b"From: a@example.net\nSubject: hi\n\nbody\n"
    assert sign(elsewhere, [], now=0, matching=keys) == elsewhere.replace(b"\n", b"\r\n")
    # a look-alike is not a parent
    assert sign(b"From: a@badexample.com\n\nx\n", [], now=0, matching=keys) == b"From: a@badexample.com\r\n\r\nx\r\n"
