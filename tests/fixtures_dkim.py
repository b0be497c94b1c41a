"""
DKIM public keys served by a real name server on loopback, where
independent verifiers (L{helpers_dkim.verify}) look them up.

Fixtures:

  - C{nameServer}: a name server on 127.0.0.1 (UDP and TCP, same port)
    answering TXT queries from a L{KeyRecords}: C{(records, port)}; publish
    a key with C{records.publish(selector, domain, key)}.  Stopped after
    the test.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fixtures_dns import listenUDPAndTCP
from twisted.internet.defer import fail, succeed
from twisted.names import dns, error, server
from twisted.names.common import ResolverBase


def keyRecord(key: Any) -> bytes:
    """
    The TXT record of C{key}'s public half (RFC 6376 3.6.1, RFC 8463).
    """
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


class KeyRecords(ResolverBase):
    """
    An authority that answers TXT queries for DKIM key records.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[bytes, bytes] = {}

    def publish(self, selector: str, domain: str, key: Any) -> None:
        self.records[f"{selector}._domainkey.{domain}".encode("ascii")] = keyRecord(key)

    def _lookup(self, name: Any, cls: int, type: int, timeout: Any) -> Any:
        name = name if isinstance(name, bytes) else name.encode("ascii")
        record = self.records.get(name.lower())
        if type != dns.TXT or record is None:
            return fail(error.DomainError(name))
        # a character-string holds at most 255 bytes
        strings = [record[i : i + 255] for i in range(0, len(record), 255)]
        answer = dns.RRHeader(name, dns.TXT, dns.IN, 60, dns.Record_TXT(*strings), auth=True)
        return succeed(([answer], [], []))


@pytest.fixture
def nameServer() -> Iterator[tuple[KeyRecords, int]]:
    """
    A name server on 127.0.0.1 (UDP and TCP, same port) that serves
    L{KeyRecords}.
    """
    records = KeyRecords()
    factory = server.DNSServerFactory(authorities=[records])
    udp, tcp = listenUDPAndTCP(factory)
    port = udp.getHost().port
    yield records, port
    pytest_twisted.blockon(udp.stopListening())
    pytest_twisted.blockon(tcp.stopListening())
