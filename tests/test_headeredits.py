"""
Tests for L{mqtwist.content.headeredits}: each edit, their order, bodies kept byte
for byte, LF-only messages, and injection attempts refused.
"""

from __future__ import annotations

import email
import email.policy
from typing import Any

import pytest

from mqtwist.content.headeredits import applyHeaderEdits, checkHeaderEdits
from mqtwist.content.mime import buildMime
from mqtwist.errors import InvalidMessage

BODY = b"\r\nline one\r\nX-Not-A-Header: body\r\n\r\n.\r\nend \x00\xff\r\n"
MESSAGE = (
    b"Received: from a\r\n\tby b\r\n"
    b"From: a@example.com\r\n"
    b"To: b@example.org\r\n"
    b"X-Tag: one\r\n"
    b"Subject: hi\r\n"
    b"x-tag: two\r\n" + BODY
)


def edited(**edits: Any) -> bytes:
    result = applyHeaderEdits(MESSAGE, edits)
    assert result.endswith(BODY)
    return result[: -len(BODY)]


def test_remove() -> None:
    assert edited(remove=["x-TAG", "Received"]) == (
        b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n"
    )


def test_removeAbsentIsNoOp() -> None:
    assert edited(remove=["X-Absent"]) == MESSAGE[: -len(BODY)]


def test_prependKeepsOrder() -> None:
    head = edited(prepend={"X-First": "1", "X-Second": ["2a", "2b"]})
    assert head.startswith(b"X-First: 1\r\nX-Second: 2a\r\nX-Second: 2b\r\nReceived: from a\r\n")


def test_append() -> None:
    head = edited(append={"X-Last": "z"})
    assert head.endswith(b"x-tag: two\r\nX-Last: z\r\n")


def test_replaceTakesThePlaceOfTheFirst() -> None:
    head = edited(replace={"X-Tag": "new"})
    assert head == (
        b"Received: from a\r\n\tby b\r\nFrom: a@example.com\r\nTo: b@example.org\r\n"
        b"X-Tag: new\r\nSubject: hi\r\n"
    )


def test_replaceAbsentAddsNothing() -> None:
    assert edited(replace={"X-Absent": "v"}) == MESSAGE[: -len(BODY)]


def test_updateReplacesOrAdds() -> None:
    head = edited(update={"subject": "changed", "X-New": "added"})
    assert b"subject: changed\r\n" in head
    assert b"Subject: hi" not in head
    assert head.endswith(b"X-New: added\r\n")


def test_order() -> None:
    """
    remove, replace, update, prepend, append: a name removed and appended
    ends up once, at the end.
    """
    head = edited(append={"X-Tag": "last"}, remove=["X-Tag"], prepend={"X-Tag": "first"})
    assert head.startswith(b"X-Tag: first\r\n")
    assert head.endswith(b"X-Tag: last\r\n")
    assert head.count(b"X-Tag") == 2 and b"x-tag" not in head


def test_nonAsciiEncodedAndFolded() -> None:
    value = "Grüße" + " lang" * 30
    head = edited(append={"X-Greeting": value})
    for line in head.split(b"\r\n"):
        assert len(line) <= 78 and line.isascii()
    parsed = email.message_from_bytes(head + b"\r\n", policy=email.policy.default)
    assert parsed["X-Greeting"] == value


def test_addressHeaderWithNonAsciiName() -> None:
    head = edited(update={"Reply-To": "Jörg <j@example.com>"})
    parsed = email.message_from_bytes(head + b"\r\n", policy=email.policy.default)
    assert parsed["Reply-To"] == "Jörg <j@example.com>"
    assert head.isascii()


def test_lfOnlyMessageKeepsLf() -> None:
    message = b"From: a@example.com\nSubject: x\n\nbody\r\nwith mixed\n"
    result = applyHeaderEdits(message, {"prepend": {"X-A": "1"}, "remove": ["Subject"]})
    assert result == b"X-A: 1\nFrom: a@example.com\n\nbody\r\nwith mixed\n"


def test_headersOnlyMessage() -> None:
    result = applyHeaderEdits(b"From: a@example.com\r\n", {"append": {"X-A": "1"}})
    assert result == b"From: a@example.com\r\nX-A: 1\r\n\r\n"


def test_generatedMimeKeepsItsBody() -> None:
    mime = buildMime(
        {"from": "a@example.com", "text": "Grüße\n" * 100, "html": "<p>x</p>"},
        now=0.0,
        hostname="h.example",
    )
    result = applyHeaderEdits(mime, {"update": {"X-Id": "42"}, "remove": ["Message-ID"]})
    split = mime.index(b"\r\n\r\n")
    assert result.endswith(mime[split:])
    parsed = email.message_from_bytes(result, policy=email.policy.default)
    assert parsed["X-Id"] == "42" and parsed["Message-ID"] is None
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Grüße\n" * 100


@pytest.mark.parametrize(
    "edits, named",
    [
        ([], "'headers'"),
        ({"delete": ["X"]}, "'delete'"),
        ({"remove": "X-A"}, "headers.remove"),
        ({"remove": ["X A"]}, "headers.remove"),
        ({"remove": [5]}, "headers.remove"),
        ({"append": ["X-A"]}, "headers.append"),
        ({"append": {"X-A": "1\r\nBcc: victim@example.com"}}, "headers.append.X-A"),
        ({"prepend": {"X-A": "1\nX-B: 2"}}, "headers.prepend.X-A"),
        ({"update": {"X-A": "a\rb"}}, "headers.update.X-A"),
        ({"replace": {"X-A": "\x00"}}, "headers.replace.X-A"),
        ({"append": {"X-A:": "1"}}, "headers.append"),
        ({"append": {"X-A\r\nBcc": "1"}}, "headers.append"),
        ({"append": {"Ä": "1"}}, "headers.append"),
        ({"append": {"": "1"}}, "headers.append"),
        ({"append": {"X-A": 1}}, "headers.append.X-A"),
        ({"append": {"X-A": []}}, "headers.append.X-A"),
        ({"append": {"X-A": ["ok", "bad\n"]}}, "headers.append.X-A"),
    ],
)
def test_badEditsRefused(edits: Any, named: str) -> None:
    with pytest.raises(InvalidMessage) as error:
        checkHeaderEdits(edits)
    assert named in error.value.description
    assert error.value.result == "invalid"
    with pytest.raises(InvalidMessage):
        applyHeaderEdits(MESSAGE, edits)


def test_goodEditsAccepted() -> None:
    checkHeaderEdits(
        {"remove": ["X-A"], "prepend": {"X-B": ["1", "2"]}, "append": {}, "replace": {"X-C": "é"},
         "update": {"Subject": "s"}}
    )
