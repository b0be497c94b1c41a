"""
The message body as it goes on the wire after DATA (RFC 5321 section 4.5.2).
"""

from __future__ import annotations

import re

_LINE_END = re.compile(rb"\r\n?|\n")


def normaliseLineEnds(body: bytes) -> bytes:
    """
    Turn every line ending of C{body} into CRLF: a bare LF and a bare CR are
    line endings too.  A CR directly followed by LF is one line ending.

    Already-normalised and LF-only bodies (nearly all of them) take a fast
    path of C{bytes} methods; only mixed bodies go through a regular
    expression.
    """
    cr = body.count(b"\r")
    if cr == 0:
        return body.replace(b"\n", b"\r\n")
    crlf = body.count(b"\r\n")
    if crlf == cr and crlf == body.count(b"\n"):
        return body
    return _LINE_END.sub(b"\r\n", body)


def encodeBody(body: bytes, *, crlf: bool = False) -> bytes:
    """
    The bytes to send after a 354 reply to DATA: C{body} with its line
    endings made CRLF (see L{normaliseLineEnds}), every line that starts with
    C{"."} given one more C{"."} (dot-stuffing), a CRLF added when the body
    does not end with a line ending, and the terminating C{".<CRLF>"}.

    An empty body is sent as the terminator alone (an empty message).  Lines
    are not wrapped: a line longer than a server accepts is the server's to
    refuse.

    Each step is a C-speed C{bytes} operation on the whole body, not a loop
    over lines, so this stays cheap for large messages.

    @param crlf: C{True} when every line ending of C{body} is known to be
        CRLF already (a message that L{mqtwist.content.dkimsign.sign} returned):
        the check, about a third of the cost for a large body, is skipped.
    """
    if not crlf:
        body = normaliseLineEnds(body)
    if b"\r\n." in body:
        body = body.replace(b"\r\n.", b"\r\n..")
    head = b"." if body.startswith(b".") else b""
    if not body or body.endswith(b"\r\n"):
        tail = b".\r\n"
    else:
        tail = b"\r\n.\r\n"
    return b"".join((head, body, tail))
