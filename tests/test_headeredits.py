"""
Tests for L{mqtwist.content.headeredits}: each edit in each of its forms
(MailerQ 5.6's meaning, see docs/messages.rst), their order, keys that are
not edits, bodies kept byte for byte, LF-only messages, what the thread hop
counts, and injection attempts refused.

Every test applies the edits to real bytes and checks the whole header block
that results.
"""

from __future__ import annotations

import email
import email.policy
from typing import Any

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent

from mqtwist.content.headeredits import EDIT_KINDS, applyHeaderEdits, checkHeaderEdits, editedLength
from mqtwist.content.mime import buildMime
from mqtwist.errors import InvalidMessage

BODY = b"\r\nline one\r\nX-Not-A-Header: body\r\n\r\n.\r\nend \x00\xff\r\n"
HEAD = (
    b"Received: from a\r\n\tby b\r\n"
    b"From: a@example.com\r\n"
    b"To: b@example.org\r\n"
    b"X-Tag: one\r\n"
    b"Subject: hi\r\n"
    b"x-tag: two\r\n"
)
MESSAGE = HEAD + BODY


def edited(**edits: Any) -> bytes:
    """
    The header block of L{MESSAGE} with C{edits} applied (the body must be
    left as it was).
    """
    result = applyHeaderEdits(MESSAGE, edits)
    assert result.endswith(BODY)
    return result[: -len(BODY)]


# -- remove ---------------------------------------------------------------------


def test_removeList() -> None:
    """
    Every field of each name goes, whatever the case, continuation lines
    included.
    """
    assert edited(remove=["x-TAG", "Received"]) == (
        b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n"
    )


def test_removeString() -> None:
    """
    MailerQ: "remove" can be a string, one field name.
    """
    assert edited(remove="X-Tag") == (
        b"Received: from a\r\n\tby b\r\nFrom: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n"
    )
    assert edited(remove="received") == HEAD[len(b"Received: from a\r\n\tby b\r\n") :]


def test_removeAbsentIsNoOp() -> None:
    assert edited(remove=["X-Absent"]) == HEAD
    assert edited(remove="X-Absent") == HEAD
    assert edited(remove=[]) == HEAD


def test_removeMatchesWholeNamesOnly() -> None:
    """
    C{X-Tag} is not C{X-Tagged}, nor C{X-Ta}.
    """
    message = b"X-Tagged: 1\r\nX-Ta: 2\r\nX-Tag: 3\r\n\r\nbody\r\n"
    assert applyHeaderEdits(message, {"remove": "X-Tag"}) == b"X-Tagged: 1\r\nX-Ta: 2\r\n\r\nbody\r\n"


# -- replace --------------------------------------------------------------------


def test_replaceTakesThePlaceOfTheFirstAndRemovesTheOthers() -> None:
    assert edited(replace={"X-Tag": "new"}) == (
        b"Received: from a\r\n\tby b\r\nFrom: a@example.com\r\nTo: b@example.org\r\n"
        b"X-Tag: new\r\nSubject: hi\r\n"
    )


def test_replaceWithAListPutsEveryValueInThePlaceOfTheFirst() -> None:
    assert edited(replace={"x-tag": ["1", "2"]}) == (
        b"Received: from a\r\n\tby b\r\nFrom: a@example.com\r\nTo: b@example.org\r\n"
        b"x-tag: 1\r\nx-tag: 2\r\nSubject: hi\r\n"
    )


def test_replaceAFoldedField() -> None:
    assert edited(replace={"Received": "from c"}) == b"Received: from c\r\n" + HEAD[len(b"Received: from a\r\n\tby b\r\n") :]


def test_replaceAbsentAppends() -> None:
    """
    MailerQ: "If no existing header is found, it will simply be appended."
    """
    assert edited(replace={"X-Absent": "v"}) == HEAD + b"X-Absent: v\r\n"
    assert edited(replace={"X-Absent": ["v", "w"]}) == HEAD + b"X-Absent: v\r\nX-Absent: w\r\n"


def test_replaceAfterRemoveAppends() -> None:
    """
    C{remove} goes first: a name removed and replaced ends up once, at the
    end.
    """
    assert edited(remove=["X-Tag"], replace={"X-Tag": "v"}) == (
        b"Received: from a\r\n\tby b\r\nFrom: a@example.com\r\nTo: b@example.org\r\n"
        b"Subject: hi\r\nX-Tag: v\r\n"
    )


# -- update ---------------------------------------------------------------------


def test_updateTakesThePlaceOfTheFirstAndRemovesTheOthers() -> None:
    assert edited(update={"X-TAG": "new"}) == (
        b"Received: from a\r\n\tby b\r\nFrom: a@example.com\r\nTo: b@example.org\r\n"
        b"X-TAG: new\r\nSubject: hi\r\n"
    )
    assert edited(update={"subject": ["a", "b"]}) == (
        b"Received: from a\r\n\tby b\r\nFrom: a@example.com\r\nTo: b@example.org\r\n"
        b"X-Tag: one\r\nsubject: a\r\nsubject: b\r\nx-tag: two\r\n"
    )


def test_updateAbsentAddsNothing() -> None:
    """
    MailerQ: "non-existing headers will not be appended".
    """
    assert edited(update={"X-Absent": "v"}) == HEAD
    assert edited(update={"X-Absent": ["v", "w"]}) == HEAD
    assert edited(remove="Subject", update={"Subject": "s"}) == (
        b"Received: from a\r\n\tby b\r\nFrom: a@example.com\r\nTo: b@example.org\r\n"
        b"X-Tag: one\r\nx-tag: two\r\n"
    )


def test_replaceAndUpdateTogether() -> None:
    assert edited(
        update={"Subject": "s", "X-Missing": "never"}, replace={"To": "c@example.org", "X-New": "added"}
    ) == (
        b"Received: from a\r\n\tby b\r\nFrom: a@example.com\r\nTo: c@example.org\r\n"
        b"X-Tag: one\r\nSubject: s\r\nx-tag: two\r\nX-New: added\r\n"
    )


# -- prepend, append, add -------------------------------------------------------


def test_prependKeepsOrder() -> None:
    assert edited(prepend={"X-First": "1", "X-Second": ["2a", "2b"]}) == (
        b"X-First: 1\r\nX-Second: 2a\r\nX-Second: 2b\r\n" + HEAD
    )


def test_append() -> None:
    assert edited(append={"X-Last": "z", "X-List": ["1", "2"]}) == (
        HEAD + b"X-Last: z\r\nX-List: 1\r\nX-List: 2\r\n"
    )


def test_addIsAppend() -> None:
    """
    MailerQ: 'The "append" (or "add") option'.
    """
    assert edited(add={"X-Last": "z", "X-List": ["1", "2"]}) == (
        HEAD + b"X-Last: z\r\nX-List: 1\r\nX-List: 2\r\n"
    )


def test_appendThenAdd() -> None:
    """
    Both given: the fields of C{append} first, then those of C{add},
    whatever their order in the JSON; neither replaces the other.
    """
    assert edited(add={"X-A": "from add"}, append={"X-A": "from append"}) == (
        HEAD + b"X-A: from append\r\nX-A: from add\r\n"
    )


def test_addedFieldsKeepTheOthers() -> None:
    """
    prepend, append and add never remove a field of the same name.
    """
    assert edited(prepend={"X-Tag": "0"}, add={"x-tag": "3"}) == b"X-Tag: 0\r\n" + HEAD + b"x-tag: 3\r\n"


# -- all together, and keys that are not edits ----------------------------------


def test_order() -> None:
    """
    remove, replace, update, prepend, append, add, whatever the order in the
    JSON.
    """
    head = edited(
        add={"X-Added": "6"},
        append={"X-Tag": "5"},
        prepend={"X-Tag": "4"},
        update={"To": "3@example.org", "X-Gone": "never"},
        replace={"Subject": "2", "X-Replaced": "2b"},
        remove=["X-Tag", "Received"],
    )
    assert head == (
        b"X-Tag: 4\r\nFrom: a@example.com\r\nTo: 3@example.org\r\nSubject: 2\r\n"
        b"X-Replaced: 2b\r\nX-Tag: 5\r\nX-Added: 6\r\n"
    )


def test_allKindsKnown() -> None:
    assert EDIT_KINDS == ("remove", "replace", "update", "prepend", "append", "add")


@pytest.mark.parametrize(
    "extra",
    [
        {"delete": ["X-Tag"]},
        {"Remove": "X-Tag", "APPEND": {"X-A": "1"}},
        {"set": {"Subject": "s"}, "x-note": None, "n": 5, "odd": [1, {"a": "\r\n"}]},
    ],
)
def test_keysThatAreNotEditsAreIgnored(extra: dict[str, Any]) -> None:
    """
    A key MailerQ does not document is kept (the job, and so its results,
    keep the C{headers} object as it was) and does nothing; names are
    matched exactly, as MailerQ's JSON is.
    """
    edits = {"append": {"X-Last": "z"}, **extra}
    kept = repr(edits)
    checkHeaderEdits(edits)
    assert applyHeaderEdits(MESSAGE, edits) == HEAD + b"X-Last: z\r\n" + BODY
    assert applyHeaderEdits(MESSAGE, extra) == MESSAGE
    assert repr(edits) == kept
    assert editedLength(edits) == 1


def test_keysThatAreNotEditsAreLoggedAtDebug() -> None:
    with capturedLogs() as events:
        checkHeaderEdits({"delete": ["X-Tag"], "remove": "X-Tag", "x\r\n": 1})
    (event,) = events
    assert event["log_level"] == LogLevel.debug
    assert formatEvent(event) == (
        "headers: ignoring 'delete', 'x\\r\\n', which are not edits "
        "(edits are remove, replace, update, prepend, append, add)"
    )
    with capturedLogs() as events:
        checkHeaderEdits({"remove": "X-Tag", "add": {"X-A": "1"}})
    assert events == []


# -- what the processor counts to decide on the thread hop ----------------------


def test_editedLength() -> None:
    """
    The characters of the values written: those of every edit that writes
    fields (add included), not the names removed, whatever their form, nor
    keys that are not edits.
    """
    assert editedLength({}) == 0
    assert editedLength({"remove": "X-A" * 1000}) == 0
    assert editedLength({"remove": ["X-A"] * 1000}) == 0
    assert editedLength({"unknown": {"X-A": "x" * 1000}, "other": "y" * 1000}) == 0
    assert editedLength(
        {"remove": "X", "replace": {"A": "12"}, "update": {"B": ["1", "234"]}, "prepend": {"C": "1"},
         "append": {"D": "12345"}, "add": {"E": ["1", "1"]}}
    ) == 2 + 4 + 1 + 5 + 2


# -- writing the fields ----------------------------------------------------------


def test_nonAsciiEncodedAndFolded() -> None:
    value = "Grüße" + " lang" * 30
    head = edited(add={"X-Greeting": value})
    for line in head.split(b"\r\n"):
        assert len(line) <= 78 and line.isascii()
    parsed = email.message_from_bytes(head + b"\r\n", policy=email.policy.default)
    assert parsed["X-Greeting"] == value


def test_addressHeaderWithNonAsciiName() -> None:
    head = edited(replace={"Reply-To": "Jörg <j@example.com>"})
    assert head == HEAD + b"Reply-To: =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\n"
    parsed = email.message_from_bytes(head + b"\r\n", policy=email.policy.default)
    assert parsed["Reply-To"] == "Jörg <j@example.com>"


def test_lfOnlyMessageKeepsLf() -> None:
    message = b"From: a@example.com\nSubject: x\n\nbody\r\nwith mixed\n"
    result = applyHeaderEdits(
        message, {"prepend": {"X-A": "1"}, "remove": "Subject", "replace": {"X-R": "r"}, "add": {"X-B": "2"}}
    )
    assert result == b"X-A: 1\nFrom: a@example.com\nX-R: r\nX-B: 2\n\nbody\r\nwith mixed\n"


def test_headersOnlyMessage() -> None:
    result = applyHeaderEdits(b"From: a@example.com\r\n", {"append": {"X-A": "1"}})
    assert result == b"From: a@example.com\r\nX-A: 1\r\n\r\n"
    result = applyHeaderEdits(b"From: a@example.com", {"replace": {"X-A": "1"}})
    assert result == b"From: a@example.com\r\nX-A: 1\r\n\r\n"


def test_messageWithoutHeaders() -> None:
    assert applyHeaderEdits(b"\r\nbody\r\n", {"replace": {"X-A": "1"}, "update": {"X-B": "2"}}) == (
        b"X-A: 1\r\n\r\nbody\r\n"
    )


def test_generatedMimeKeepsItsBody() -> None:
    mime = buildMime(
        {"from": "a@example.com", "text": "Grüße\n" * 100, "html": "<p>x</p>"},
        now=0.0,
        hostname="h.example",
    )
    result = applyHeaderEdits(mime, {"replace": {"X-Id": "42"}, "remove": "Message-ID"})
    split = mime.index(b"\r\n\r\n")
    assert result.endswith(mime[split:])
    parsed = email.message_from_bytes(result, policy=email.policy.default)
    assert parsed["X-Id"] == "42" and parsed["Message-ID"] is None
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Grüße\n" * 100


# -- refused --------------------------------------------------------------------


@pytest.mark.parametrize(
    "edits, named",
    [
        ([], "'headers'"),
        ("remove", "'headers'"),
        (None, "'headers'"),
        ({"remove": 5}, "headers.remove"),
        ({"remove": None}, "headers.remove"),
        ({"remove": {"X-A": "1"}}, "headers.remove"),
        ({"remove": ""}, "headers.remove"),
        ({"remove": "X A"}, "headers.remove"),
        ({"remove": "X-A\r\nBcc"}, "headers.remove"),
        ({"remove": ["X A"]}, "headers.remove"),
        ({"remove": [5]}, "headers.remove"),
        ({"append": ["X-A"]}, "headers.append"),
        ({"add": "X-A: 1"}, "headers.add"),
        ({"add": None}, "headers.add"),
        ({"replace": ["X-A"]}, "headers.replace"),
        ({"update": "X-A"}, "headers.update"),
        ({"prepend": 1}, "headers.prepend"),
        ({"append": {"X-A": "1\r\nBcc: victim@example.com"}}, "headers.append.X-A"),
        ({"add": {"X-A": "1\r\nBcc: victim@example.com"}}, "headers.add.X-A"),
        ({"add": {"X-A": ["1", "2\n"]}}, "headers.add.X-A"),
        ({"prepend": {"X-A": "1\nX-B: 2"}}, "headers.prepend.X-A"),
        ({"update": {"X-A": "a\rb"}}, "headers.update.X-A"),
        ({"replace": {"X-A": "\x00"}}, "headers.replace.X-A"),
        ({"replace": {"X-A": "a\r\n\r\nbody"}}, "headers.replace.X-A"),
        ({"append": {"X-A:": "1"}}, "headers.append"),
        ({"append": {"X-A\r\nBcc": "1"}}, "headers.append"),
        ({"add": {"X-A\nBcc": "1"}}, "headers.add"),
        ({"append": {"Ä": "1"}}, "headers.append"),
        ({"append": {"": "1"}}, "headers.append"),
        ({"append": {"X-A": 1}}, "headers.append.X-A"),
        ({"append": {"X-A": None}}, "headers.append.X-A"),
        ({"append": {"X-A": []}}, "headers.append.X-A"),
        ({"append": {"X-A": ["ok", "bad\n"]}}, "headers.append.X-A"),
        # a bad edit is refused even beside keys that are not edits
        ({"unknown": 1, "remove": [7]}, "headers.remove"),
    ],
)
def test_badEditsRefused(edits: Any, named: str) -> None:
    with pytest.raises(InvalidMessage) as error:
        checkHeaderEdits(edits)
    assert named in error.value.description
    assert error.value.result == "invalid"
    with pytest.raises(InvalidMessage):
        applyHeaderEdits(MESSAGE, edits)


def test_injectionNeverReachesTheBytes() -> None:
    """
    However the edit is given, CR and LF in a value or name end the job;
    nothing of it is written.
    """
    for kind in ("replace", "update", "prepend", "append", "add"):
        with pytest.raises(InvalidMessage) as error:
            applyHeaderEdits(MESSAGE, {kind: {"Subject": "x\r\nBcc: victim@example.com"}})
        assert error.value.description.startswith(f"headers.{kind}.Subject contains the control character '\\r'")


def test_goodEditsAccepted() -> None:
    checkHeaderEdits(
        {"remove": ["X-A"], "prepend": {"X-B": ["1", "2"]}, "append": {}, "replace": {"X-C": "é"},
         "update": {"Subject": "s"}, "add": {"X-D": "d"}}
    )
    checkHeaderEdits({"remove": "X-A"})
    checkHeaderEdits({})


def test_theExampleOfTheReference() -> None:
    """
    The example of docs/messages.rst, section C{headers}.
    """
    message = b"From: a@example.com\r\nTo: b@example.org\r\nX-Tag: 1\r\nX-Tag: 2\r\n\r\nbody\r\n"
    edits = {"remove": "To", "replace": {"x-tag": "3", "X-Id": "7"}, "update": {"Cc": "c@example.org"},
             "add": {"X-Last": "z"}}
    assert applyHeaderEdits(message, edits) == (
        b"From: a@example.com\r\nx-tag: 3\r\nX-Id: 7\r\nX-Last: z\r\n\r\nbody\r\n"
    )
