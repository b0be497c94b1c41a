"""
Tests of L{mqtwist.smtp.body.encodeBody}: examples, and a property test that
decodes the encoding the way a server does.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtwist.smtp.body import encodeBody, normaliseLineEnds


def serverDecode(wire: bytes) -> bytes:
    """
    Read DATA as an RFC 5321 server does: CRLF-separated lines up to the
    lone dot, each line with one leading dot removed.
    """
    assert wire.endswith(b".\r\n")
    lines = wire.split(b"\r\n")
    assert lines.pop() == b""
    assert lines.pop() == b"."
    for line in lines:
        # any other line made of a single dot would have ended the data early
        assert line != b"."
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


def referenceNormalise(body: bytes) -> bytes:
    """
    The body a server must receive: CRLF line ends (a bare CR or LF is a line
    end), and a final CRLF when there is content without one.
    """
    out = bytearray()
    i = 0
    while i < len(body):
        byte = body[i : i + 1]
        if byte == b"\r":
            out += b"\r\n"
            if body[i + 1 : i + 2] == b"\n":
                i += 1
        elif byte == b"\n":
            out += b"\r\n"
        else:
            out += byte
        i += 1
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return bytes(out)


@pytest.mark.parametrize(
    "body, wire",
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
        (b"a\r\rb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\n", b"..\r\n.\r\n"),
        (b"..x\n.\n.", b"...x\r\n..\r\n..\r\n.\r\n"),
        (b"x\r\n.\r\n", b"x\r\n..\r\n.\r\n"),
        (b"a.b\n. c\n", b"a.b\r\n.. c\r\n.\r\n"),
        (b"\n", b"\r\n.\r\n"),
        (b"\xff\x00\xe9\n", b"\xff\x00\xe9\r\n.\r\n"),
        (b"x" * 5000, b"x" * 5000 + b"\r\n.\r\n"),
    ],
)
def test_examples(body: bytes, wire: bytes) -> None:
    assert encodeBody(body) == wire
    assert serverDecode(wire) == referenceNormalise(body)


def test_normaliseKeepsCleanBodies() -> None:
    clean = b"a\r\nb\r\n"
    assert normaliseLineEnds(clean) is clean


lineEndHeavy = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b" ", b"\xe9", b"\x00"]), max_size=60
).map(b"".join)


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=300), lineEndHeavy))
def test_serverGetsTheNormalisedBody(body: bytes) -> None:
    wire = encodeBody(body)
    assert serverDecode(wire) == referenceNormalise(body)
    # no bare CR or LF reaches the wire
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=300), lineEndHeavy))
def test_crlfBodiesSkipTheCheck(body: bytes) -> None:
    """
    For a body that already has CRLF line endings only (what DKIM signing
    returns), C{crlf=True} encodes it exactly as the full check does.
    """
    clean = normaliseLineEnds(body)
    assert encodeBody(clean, crlf=True) == encodeBody(clean) == encodeBody(body)
