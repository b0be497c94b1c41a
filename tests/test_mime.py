"""
Tests for L{mqtwist.content.mime}: messages built from C{mime} objects, read back by
Perl's MIME::Parser (independent of Python's C{email}) and by C{email}, and
compared field by field; bad input refused with the property named.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from perlmodules import needsPerl

from mqtwist.content.mime import buildMime
from mqtwist.errors import InvalidMessage

HERE = Path(__file__).parent
NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
HOST = "mx.example.net"

needsMimeTools = needsPerl("MIME::Parser", "JSON::PP", package="libmime-tools-perl")

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 20


def build(**obj: Any) -> bytes:
    obj.setdefault("from", "sender@example.com")
    return buildMime(obj, now=NOW, hostname=HOST)


def perlParse(mime: bytes) -> dict[str, Any]:
    """
    What MIME::Parser makes of C{mime}.
    """
    done = subprocess.run(
        ["perl", str(HERE / "mimedump.pl")], input=mime, capture_output=True, check=True
    )
    return json.loads(done.stdout)


def lines(mime: bytes) -> list[bytes]:
    assert b"\n" not in mime.replace(b"\r\n", b""), "a bare LF"
    assert b"\r" not in mime.replace(b"\r\n", b""), "a bare CR"
    return mime.split(b"\r\n")


def test_textOnly() -> None:
    mime = build(to="rcpt@example.org", subject="Hello", text="Hello world\n")
    message = email.message_from_bytes(mime, policy=email.policy.default)
    assert message.get_content_type() == "text/plain"
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert message["From"] == "sender@example.com"
    assert message["To"] == "rcpt@example.org"
    assert message["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert message["Message-ID"].endswith(f"@{HOST}>")
    assert message["MIME-Version"] == "1.0"
    assert message.get_content().replace("\r\n", "\n") == "Hello world\n"
    assert mime.endswith(b"\r\n\r\nHello world\r\n")


def test_htmlOnly() -> None:
    message = email.message_from_bytes(build(html="<p>Hi</p>"), policy=email.policy.default)
    assert message.get_content_type() == "text/html"
    assert not message.is_multipart()
    assert message.get_content().strip() == "<p>Hi</p>"


def test_messageIdsDiffer() -> None:
    first = email.message_from_bytes(build(text="a"))["Message-ID"]
    second = email.message_from_bytes(build(text="a"))["Message-ID"]
    assert first != second


def test_dateAndMessageIdFromHeaders() -> None:
    mime = build(
        text="x",
        headers={"Date": "Mon, 01 Jan 2024 00:00:00 +0100", "Message-ID": "<given@example.com>"},
    )
    message = email.message_from_bytes(mime, policy=email.policy.default)
    assert message.get_all("Date") == ["Mon, 01 Jan 2024 00:00:00 +0100"]
    assert message.get_all("Message-ID") == ["<given@example.com>"]


@needsMimeTools
def test_everythingComparedWithMimeParser() -> None:
    """
    A message with every property, non-ASCII names and subject, text and
    HTML and two attachments, read by MIME::Parser field by field.
    """
    text = "Grüße aus Köln\n" + "lorem ipsum " * 40 + "\nEnde.\n"
    html = "<html><body><p>Grüße</p>" + "<b>x</b>" * 100 + "</body></html>\n"
    mime = build(
        **{
            "from": {"name": "Jörg Müller", "address": "joerg@example.com"},
            "replyTo": {"name": "Support, Team", "address": "help@example.com"},
            "to": ["a@example.org", {"name": "Zoë", "address": "zoe@example.org"}],
            "cc": "cc@example.org",
            "subject": "Grüße – ein Betreff, der länger ist als eine Zeile von "
            "achtundsiebzig Zeichen, damit er gefaltet wird",
            "headers": {"X-Campaign": "Frühling 2024", "List-Unsubscribe": "<mailto:u@example.com>"},
            "text": text,
            "html": html,
            "attachments": [
                {"name": "Bericht März.pdf", "type": "application/pdf",
                 "data": base64.b64encode(PDF).decode()},
                {"name": "notes.txt", "type": "text/plain",
                 "data": base64.b64encode(b"plain notes\n").decode()},
            ],
        }
    )
    for line in lines(mime):
        assert len(line) <= 78, line
        assert line.isascii()
    parsed = perlParse(mime)
    headers = parsed["headers"]
    assert headers["from"] == ["Jörg Müller <joerg@example.com>"]
    assert headers["reply-to"] == ['"Support, Team" <help@example.com>']
    assert headers["to"] == ["a@example.org, Zoë <zoe@example.org>"]
    assert headers["cc"] == ["cc@example.org"]
    assert headers["subject"] == [
        "Grüße – ein Betreff, der länger ist als eine Zeile von achtundsiebzig "
        "Zeichen, damit er gefaltet wird"
    ]
    assert headers["x-campaign"] == ["Frühling 2024"]
    assert headers["list-unsubscribe"] == ["<mailto:u@example.com>"]
    assert headers["date"] == ["Tue, 14 Nov 2023 22:13:20 +0000"]
    assert headers["mime-version"] == ["1.0"]
    assert parsed["structure"] == [
        "multipart/mixed",
        "  multipart/alternative",
        "    text/plain",
        "    text/html",
        "  application/pdf",
        "  text/plain",
    ]
    plain, htmlPart, pdf, notes = parsed["parts"]
    assert base64.b64decode(plain["body"]).decode(plain["charset"]) == text
    assert plain["encoding"] == "quoted-printable"
    assert base64.b64decode(htmlPart["body"]).decode(htmlPart["charset"]) == html
    assert base64.b64decode(pdf["body"]) == PDF
    assert pdf["filename"] == "Bericht März.pdf"
    assert pdf["encoding"] == "base64"
    assert base64.b64decode(notes["body"]) == b"plain notes\n"
    assert notes["filename"] == "notes.txt"

    # and Python's own parser agrees
    message = email.message_from_bytes(mime, policy=email.policy.default)
    assert message["Subject"] == headers["subject"][0]
    body = message.get_body(("plain",))
    assert body is not None and body.get_content().replace("\r\n", "\n") == text
    attachments = list(message.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["Bericht März.pdf", "notes.txt"]
    assert attachments[0].get_content() == PDF


@needsMimeTools
def test_attachmentsOnly() -> None:
    mime = build(attachments=[{"name": "a.bin", "type": "application/octet-stream",
                               "data": base64.b64encode(b"\x00\x01").decode()}])
    parsed = perlParse(mime)
    assert parsed["structure"] == ["multipart/mixed", "  application/octet-stream"]
    assert base64.b64decode(parsed["parts"][0]["body"]) == b"\x00\x01"


@needsMimeTools
@pytest.mark.parametrize(
    "text",
    [
        "x" * 5000 + "\n",  # one line far over 998
        ("ÄÖÜ " * 300 + "\n") * 3,  # long 8-bit lines
        "Привет, мир! " * 500,  # mostly non-Latin: base64 is shorter
        "tab\there\r\nCRLF and a lone \x01 control\n",
        "trailing spaces   \nend",
    ],
)
def test_anyTextFitsTheLineLimits(text: str) -> None:
    """
    Whatever the text, no line of the message is longer than 78 and all of
    it is 7-bit; the text comes back as it was (line ends aside).
    """
    mime = build(text=text)
    for line in lines(mime):
        assert len(line) <= 78
        assert line.isascii()
    parsed = perlParse(mime)
    (part,) = parsed["parts"]
    decoded = base64.b64decode(part["body"]).decode(part["charset"])
    assert decoded.replace("\r\n", "\n") == text.replace("\r\n", "\n")


def test_longUnstructuredWordEncoded() -> None:
    """
    A word too long for a line in a free-text field is split into encoded
    words, which decoders join again.
    """
    mime = build(text="x", headers={"X-Token": "a" * 2000})
    assert max(map(len, lines(mime))) <= 78
    message = email.message_from_bytes(mime, policy=email.policy.default)
    assert message["X-Token"] == "a" * 2000


def test_longStructuredWordRefused() -> None:
    with pytest.raises(InvalidMessage) as error:
        build(text="x", headers={"Message-ID": "<" + "a" * 1200 + "@example.com>"})
    assert "Message-ID" in error.value.description
    assert "998" in error.value.description


def test_idnDomainEncoded() -> None:
    mime = build(text="x", to="user@bücher.example")
    assert b"To: user@xn--bcher-kva.example\r\n" in mime


def test_headerListValues() -> None:
    mime = build(text="x", headers={"X-Tag": ["one", "two"]})
    assert b"X-Tag: one\r\nX-Tag: two\r\n" in mime


def base64Of(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "obj, named",
    [
        ({"text": 5}, "mime.text"),
        ({"html": ["x"]}, "mime.html"),
        ({}, "no content"),
        ({"text": "x", "subject": 1}, "mime.subject"),
        ({"text": "x", "subject": "hi\r\nBcc: victim@example.com"}, "mime.subject"),
        ({"text": "x", "subject": "a\x00b"}, "mime.subject"),
        ({"text": "x", "from": None}, "mime.from"),
        ({"text": "x", "from": "not an address"}, "mime.from"),
        ({"text": "x", "from": {"name": "A\nB", "address": "a@example.com"}}, "mime.from.name"),
        ({"text": "x", "to": []}, "mime.to"),
        ({"text": "x", "to": ["a@example.com", "b@example.com\r\nX: y"]}, "mime.to[1]"),
        ({"text": "x", "cc": 7}, "mime.cc"),
        ({"text": "x", "replyTo": ["a@example.com"]}, "mime.replyTo"),
        ({"text": "x", "headers": ["X-A"]}, "mime.headers"),
        ({"text": "x", "headers": {"X-A": "1\nX-B: 2"}}, "mime.headers.X-A"),
        ({"text": "x", "headers": {"X A": "1"}}, "mime.headers"),
        ({"text": "x", "headers": {"X:A": "1"}}, "mime.headers"),
        ({"text": "x", "headers": {"X-A\r\nB": "1"}}, "mime.headers"),
        ({"text": "x", "headers": {"X-A": 1}}, "mime.headers.X-A"),
        ({"text": "x", "headers": {"Content-Type": "text/html"}}, "Content-Type"),
        ({"text": "x", "subject": "s", "headers": {"Subject": "t"}}, "mime.subject"),
        ({"text": "x", "attachments": {}}, "mime.attachments"),
        ({"attachments": ["x"]}, "mime.attachments[0]"),
        ({"attachments": [{"name": "a", "type": "application/pdf", "data": "!!!"}]},
         "mime.attachments[0].data"),
        ({"attachments": [{"name": "a", "type": "application/pdf", "data": "YWJj="}]},
         "mime.attachments[0].data"),
        ({"attachments": [{"name": "a", "type": "application/pdf", "data": 5}]},
         "mime.attachments[0].data"),
        ({"attachments": [{"name": "a", "type": "pdf", "data": "YWJj"}]},
         "mime.attachments[0].type"),
        ({"attachments": [{"name": "a", "type": "nonsense/pdf", "data": "YWJj"}]},
         "mime.attachments[0].type"),
        ({"attachments": [{"name": "a", "type": "text/plain; charset=utf-8", "data": "YWJj"}]},
         "mime.attachments[0].type"),
        ({"attachments": [{"name": "a", "type": "multipart/mixed", "data": "YWJj"}]},
         "mime.attachments[0].type"),
        ({"attachments": [{"name": "a\r\nX: y", "type": "text/plain", "data": "YWJj"}]},
         "mime.attachments[0].name"),
        ({"attachments": [{"name": "", "type": "text/plain", "data": "YWJj"}]},
         "mime.attachments[0].name"),
    ],
)
def test_badInputRefused(obj: dict[str, Any], named: str) -> None:
    obj.setdefault("from", "sender@example.com")
    with pytest.raises(InvalidMessage) as error:
        buildMime(obj, now=NOW, hostname=HOST)
    assert error.value.state == "process"
    assert error.value.result == "invalid"
    assert named in error.value.description


def test_unknownKeysIgnored() -> None:
    """
    Keys that mqtwist does not use, in the object, an address or an
    attachment, are ignored, not refused (more in C{test_mime_mailerq}).
    """
    mime = build(
        **{
            "from": {"name": "A", "address": "a@example.com", "x": 1},
            "body": "y",
            "text": "x",
            "attachments": [{"name": "a", "type": "text/plain", "data": "YWJj", "size": 3}],
        }
    )
    message = email.message_from_bytes(mime, policy=email.policy.default)
    assert message["From"] == "A <a@example.com>"
    (attachment,) = message.iter_attachments()
    assert attachment.get_content() == "abc"
    assert str(attachment["Content-Disposition"]) == 'attachment; filename="a"'
    assert b"size" not in mime and b"body" not in mime.lower()


def test_base64WithLineBreaksAccepted() -> None:
    data = base64.encodebytes(PDF).decode()  # lines of 76 with LF
    mime = build(attachments=[{"name": "a.pdf", "type": "application/pdf", "data": data}])
    message = email.message_from_bytes(mime, policy=email.policy.default)
    (attachment,) = message.iter_attachments()
    assert attachment.get_content() == PDF


def test_nonAsciiLocalPartRefused() -> None:
    with pytest.raises(InvalidMessage) as error:
        build(text="x", to="jörg@example.com")
    assert "SMTPUTF8" in error.value.description
