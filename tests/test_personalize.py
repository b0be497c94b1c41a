"""
A job's C{data} and C{inlinecss} applied to its message
(L{mqtwist.content.personalize}): the Subject, From and To fields and the
text and HTML parts, whatever their transfer encoding and charset, checked
on the bytes and read back by Python's C{email} parser; what must not
change stays byte for byte.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import re
from typing import Any

import pytest

from mqtwist.content.message import Message
from mqtwist.content.personalize import MAX_DEPTH, personalize, rewritesContent, rewrittenContent
from mqtwist.content.template import DEFAULT_LIMITS, TemplateLimits
from mqtwist.errors import InvalidMessage

DATA = {"name": "John Doe", "age": 33, "city": "Zürich", "euro": "5 €", "tag": "<b>&</b>"}


def parsed(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def textOf(data: bytes, kind: str = "text/plain") -> str:
    message = parsed(data)
    for part in message.walk():
        if part.get_content_type() == kind:
            content: str = part.get_content()
            return content
    raise AssertionError(f"no {kind} part")


# MailerQ's personalization example (personalization.md), with CRLF line ends
MAILERQ_MIME = (
    b"From: {$ourname} <info@example.org>\r\n"
    b"To: {$name} <{$recipient}>\r\n"
    b"Subject: Hello {$name}!\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Hi {$name},\r\n"
    b"\r\n"
    b"Your age is {$age}, and your job is {$job}.\r\n"
    b"\r\n"
    b"Cheers,\r\n"
    b"\r\n"
    b"{$ourname}\r\n"
)
MAILERQ_DATA = {
    "ourname": "The MailerQ test team",
    "name": "John Doe",
    "age": 33,
    "job": "programmer",
    "children": ["Peter", "Angela", "Brandon"],
}
MAILERQ_RESULT = (
    b"From: The MailerQ test team <info@example.org>\r\n"
    b"To: John Doe <john@example.com>\r\n"
    b"Subject: Hello John Doe!\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Hi John Doe,\r\n"
    b"\r\n"
    b"Your age is 33, and your job is programmer.\r\n"
    b"\r\n"
    b"Cheers,\r\n"
    b"\r\n"
    b"The MailerQ test team\r\n"
)


def test_mailerQExample() -> None:
    assert personalize(MAILERQ_MIME, MAILERQ_DATA, recipient="john@example.com") == MAILERQ_RESULT


def test_dataWinsOverTheEnvelope() -> None:
    mime = b"Subject: {$recipient} {$envelope}\r\n\r\n{$recipient}\r\n"
    assert personalize(mime, {}, recipient="a@example.com", envelope="b@example.org") == (
        b"Subject: a@example.com b@example.org\r\n\r\na@example.com\r\n"
    )
    assert personalize(mime, {"recipient": "x"}, recipient="a@example.com") == b"Subject: x \r\n\r\nx\r\n"


def test_withoutTemplatesNothingChanges() -> None:
    mime = (
        b"Subject: plain\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Gr=FC=DFe=\r\n soft\r\n--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"PHA+eDwvcD4=\r\n--b--\r\n"
    )
    assert personalize(mime, DATA) == mime


# (Content-Transfer-Encoding, charset, the body as sent, the value of name,
#  the CTE and charset expected after, the text expected after)
ENCODINGS: list[tuple[str | None, str | None, bytes, str, str, str, str]] = [
    # 7bit that stays ASCII stays 7bit, untouched elsewhere
    (None, None, b"Hi {$name}!\r\n", "John", "7bit", "us-ascii", "Hi John!\r\n"),
    ("7bit", "us-ascii", b"Hi {$name}!\r\n", "John", "7bit", "us-ascii", "Hi John!\r\n"),
    # 7bit that becomes non-ASCII: quoted-printable, in UTF-8
    (None, None, b"Hi {$name}!\r\n", "J\u00f6rg", "quoted-printable", "utf-8", "Hi J\u00f6rg!\r\n"),
    ("7bit", "us-ascii", b"Hi {$name}!\r\n", "J\u00f6rg", "quoted-printable", "utf-8", "Hi J\u00f6rg!\r\n"),
    # 8bit stays 8bit, in its own charset when it can write the value
    ("8bit", "utf-8", "Grüße {$name}\r\n".encode(), "J\u00f6rg", "8bit", "utf-8", "Grüße J\u00f6rg\r\n"),
    ("8bit", "iso-8859-1", "Grüße {$name}\r\n".encode("latin-1"), "J\u00f6rg", "8bit", "iso-8859-1",
     "Grüße J\u00f6rg\r\n"),
    # ... else in UTF-8
    ("8bit", "iso-8859-1", "Grüße {$name}\r\n".encode("latin-1"), "5 \u20ac", "8bit", "utf-8",
     "Grüße 5 \u20ac\r\n"),
    # quoted-printable is decoded (soft line breaks, =XX) and encoded anew
    ("quoted-printable", "iso-8859-1", b"Gr=FC=DFe {$na=\r\nme}, =3D\r\n", "J\u00f6rg", "quoted-printable",
     "iso-8859-1", "Grüße J\u00f6rg, =\r\n"),
    ("quoted-printable", "iso-8859-1", b"Gr=FC=DFe {$name}\r\n", "5 \u20ac", "quoted-printable", "utf-8",
     "Grüße 5 \u20ac\r\n"),
    # base64 likewise
    ("base64", "utf-8", base64.encodebytes("Grüße {$name}\r\n".encode()).replace(b"\n", b"\r\n"), "5 \u20ac",
     "base64", "utf-8", "Grüße 5 \u20ac\r\n"),
    ("base64", "us-ascii", base64.encodebytes(b"Hi {$name}\r\n").replace(b"\n", b"\r\n"), "J\u00f6rg",
     "base64", "utf-8", "Hi J\u00f6rg\r\n"),
    # a line longer than RFC 5321 allows: quoted-printable
    ("7bit", None, b"{$name}\r\n", "x" * 1200, "quoted-printable", "us-ascii", "x" * 1200 + "\r\n"),
    ("8bit", "utf-8", b"{$name}\r\n", "\u00e9" * 1000, "quoted-printable", "utf-8", "\u00e9" * 1000 + "\r\n"),
    # binary is written as it is
    ("binary", "utf-8", b"{$name}\r\n", "J\u00f6rg", "binary", "utf-8", "J\u00f6rg\r\n"),
]


def leaf(cte: str | None, charset: str | None, body: bytes, kind: str = "text/plain") -> bytes:
    head = b"Subject: s\r\nMIME-Version: 1.0\r\n"
    if charset is not None:
        head += f"Content-Type: {kind}; charset={charset}\r\n".encode()
    elif kind != "text/plain":
        head += f"Content-Type: {kind}\r\n".encode()
    if cte is not None:
        head += f"Content-Transfer-Encoding: {cte}\r\n".encode()
    return head + b"\r\n" + body


@pytest.mark.parametrize(("cte", "charset", "body", "name", "cteAfter", "charsetAfter", "text"), ENCODINGS)
def test_encodings(
    cte: str | None, charset: str | None, body: bytes, name: str, cteAfter: str, charsetAfter: str, text: str
) -> None:
    result = personalize(leaf(cte, charset, body), {"name": name})
    message = parsed(result)
    assert message.get("Content-Transfer-Encoding", "7bit").lower() == cteAfter
    assert message.get_content_charset("us-ascii") == charsetAfter
    assert message.get_content() == text
    head, _, encoded = result.partition(b"\r\n\r\n")
    assert (head + b"\r\n").startswith(b"Subject: s\r\nMIME-Version: 1.0\r\n")
    assert all(len(line) <= 998 for line in encoded.split(b"\r\n"))
    if cteAfter in ("7bit", "quoted-printable", "base64"):
        assert result.isascii()
    if cteAfter == "base64":
        assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    if cteAfter == "quoted-printable":
        assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
        assert b"\n" not in encoded.replace(b"\r\n", b"")


def test_aMessageThatBecomesMIMESaysSo() -> None:
    result = personalize(b"Subject: s\r\n\r\nHi {$name}\r\n", {"name": "J\u00f6rg"})
    assert result == (
        b"Subject: s\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n\r\nHi J=C3=B6rg\r\n"
    )


def test_lineFeedsOnly() -> None:
    mime = b"Subject: Hi {$name}\nContent-Type: text/plain\n\nDear {$name},\n{$lines}\n"
    result = personalize(mime, {"name": "John", "lines": "a\r\nb"})
    assert result == b"Subject: Hi John\nContent-Type: text/plain\n\nDear John,\na\nb\n"


def test_valuesWithLineBreaksInABody() -> None:
    result = personalize(b"Subject: s\r\n\r\n{$lines}\r\n", {"lines": "a\nb\rc"})
    assert result == b"Subject: s\r\n\r\na\r\nb\r\nc\r\n"


def test_htmlPartsEscapeValues() -> None:
    mime = leaf("quoted-printable", "utf-8", b"<p class=3D\"x\">{$tag} {$name}</p>\r\n", "text/html")
    result = personalize(mime, DATA)
    assert textOf(result, "text/html") == '<p class="x">&lt;b&gt;&amp;&lt;/b&gt; John Doe</p>\r\n'
    assert textOf(personalize(leaf(None, None, b"{$tag}\r\n"), DATA)) == "<b>&</b>\r\n"


MULTIPART = (
    b"From: {$name} <news@example.com>\r\n"
    b"To: <{$recipient}>\r\n"
    b"Subject: News for {$name}\r\n"
    b"X-Other: {$name}\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"This is a multi-part message {$name}.\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Hello {$name} from {$city}\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    + base64.encodebytes(b"<html><body><p>Hello {$tag}</p></body></html>").replace(b"\n", b"\r\n")
    + b"--inner--\r\n"
    b"\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain; name=keep.txt\r\n"
    b"Content-Disposition: attachment; filename=keep.txt\r\n"
    b"\r\n"
    b"{$name} stays\r\n"
    b"--outer\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"eyRuYW1lfQ==\r\n"
    b"--outer--\r\n"
    b"epilogue {$name}\r\n"
)


def test_multipart() -> None:
    result = personalize(MULTIPART, DATA, recipient="john@example.com")
    message = parsed(result)
    assert message["From"] == "John Doe <news@example.com>"
    assert b"\r\nTo: <john@example.com>\r\n" in result
    assert message["Subject"] == "News for John Doe"
    assert message["X-Other"] == "{$name}"
    plain, html, attachment, binary = [p for p in message.walk() if not p.is_multipart()]
    # the line end before a boundary belongs to the boundary
    assert plain.get_content() == "Hello John Doe from Zürich"
    assert html.get_content() == "<html><body><p>Hello &lt;b&gt;&amp;&lt;/b&gt;</p></body></html>"
    assert attachment.get_content() == "{$name} stays"
    assert binary.get_content() == b"{$name}"
    # the structure and what is no template stay byte for byte
    assert b"This is a multi-part message {$name}.\r\n--outer\r\n" in result
    assert result.endswith(
        b"--outer\r\nContent-Type: text/plain; name=keep.txt\r\nContent-Disposition: attachment; "
        b"filename=keep.txt\r\n\r\n{$name} stays\r\n--outer\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\neyRuYW1lfQ==\r\n--outer--\r\nepilogue {$name}\r\n"
    )


# (the field as written, its value in data, the field as it must be sent)
HEADERS = [
    (b"Subject: Hello {$v}!", "John", b"Subject: Hello John!"),
    (b"Subject: Hello {$v}!", "J\u00f6rg", b"Subject: Hello =?utf-8?q?J=C3=B6rg!?="),
    (b"From: {$v} <info@example.org>", "J\u00f6rg M\u00fcller", b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <info@example.org>"),
    (b'To: "{$v}" <a@example.com>, Ann <b@example.com>', "Doe, J\u00f6rg",
     b"To: =?utf-8?q?Doe=2C_J=C3=B6rg?= <a@example.com>, Ann <b@example.com>"),
    (b"To: {$v} <j\xc3\xb6rg@example.com>", "J\u00f6rg", "To: Jörg <jörg@example.com>".encode()),
    # a folded field keeps its folding while it stays ASCII
    (b"Subject: Hello\r\n {$v}", "John", b"Subject: Hello\r\n John"),
    # variables inside RFC 2047 words, quoted-printable or base64
    (b"Subject: =?utf-8?q?Hello_{$v}?=", "John", b"Subject: Hello John"),
    (b"Subject: =?utf-8?b?R3LDvMOfZSB7JHZ9?=", "John", b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= John"),
    (b"From: =?utf-8?q?Caf=C3=A9?= {$v} <a@example.com>", "J\u00f6rg",
     b"From: =?utf-8?q?Caf=C3=A9_J=C3=B6rg?= <a@example.com>"),
    # an unknown charset in a word: the field is taken as written
    (b"Subject: =?x-bogus?q?Hi?= {$v}", "John", b"Subject: =?x-bogus?q?Hi?= John"),
]


@pytest.mark.parametrize(("field", "value", "expected"), HEADERS)
def test_headerFields(field: bytes, value: str, expected: bytes) -> None:
    result = personalize(field + b"\r\nX-Kept: {$v}\r\n\r\nbody\r\n", {"v": value})
    assert result == expected + b"\r\nX-Kept: {$v}\r\n\r\nbody\r\n"
    parsedField = parsed(result)[field.split(b":")[0].decode()]
    assert value in str(parsedField)


def test_longHeaderFieldsAreFolded() -> None:
    result = personalize(b"Subject: {$v}\r\n\r\nbody\r\n", {"v": "word " * 300})
    head = result.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert parsed(result)["Subject"] == ("word " * 300).strip()


@pytest.mark.parametrize("field", [b"Subject", b"From", b"To"])
@pytest.mark.parametrize("value", ["x\r\nBcc: victim@example.com", "x\nX-Injected: 1", "x\x00"])
def test_lineBreaksInHeaderFieldsAreRefused(field: bytes, value: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        personalize(field + b": {$user.name} <a@example.com>\r\n\r\nbody\r\n", {"user": {"name": value}})
    assert caught.value.state == "process" and caught.value.result == "invalid"
    assert "'user.name'" in caught.value.description
    assert "line break" in caught.value.description


def test_unknownCharsetIsLeftAlone() -> None:
    mime = leaf("8bit", "x-no-such-charset", b"{$name}\r\n")
    assert personalize(mime, DATA) == mime


def test_brokenBase64IsLeftAlone() -> None:
    mime = leaf("base64", "utf-8", b"e3=RuY\r\n")
    assert personalize(mime, DATA) == mime


STYLED = (
    b"<html><head><style>\r\np.x { color: red }\r\n@media (max-width: 600px) { p { color: blue } }</style>"
    b'<link rel="stylesheet" href="http://127.0.0.1:9/never.css"></head>'
    b'<body><p class="x">Hi {$name}</p></body></html>\r\n'
)


def test_inlineCSS() -> None:
    result = personalize(leaf("8bit", "utf-8", STYLED, "text/html"), DATA, inlinecss=True)
    html = textOf(result, "text/html")
    assert '<p class="x" style="color: red;">Hi John Doe</p>' in html
    # at-rules stay in a style element; the link is kept, not fetched
    assert "@media (max-width: 600px)" in html
    assert '<link rel="stylesheet" href="http://127.0.0.1:9/never.css">' in html
    # the part's line ends stay CRLF (the HTML parser makes them LF)
    assert b"\n" not in result.replace(b"\r\n", b"")


def test_inlineCSSWithoutData() -> None:
    result = personalize(leaf("base64", "utf-8", base64.encodebytes(STYLED), "text/html"), None, inlinecss=True)
    assert '<p class="x" style="color: red;">Hi {$name}</p>' in textOf(result, "text/html")


def test_inlineCSSLeavesTextPartsAlone() -> None:
    mime = leaf(None, None, b"<style>p { color: red }</style><p>x</p>\r\n")
    assert personalize(mime, None, inlinecss=True) == mime


def test_unreadableCSSIsRefused() -> None:
    mime = leaf("8bit", "utf-8", b'<style>p { color: red; } } }</style><p style="{{{">x</p>\r\n', "text/html")
    with pytest.raises(InvalidMessage) as caught:
        personalize(mime, None, inlinecss=True)
    assert "inlinecss" in caught.value.description


def test_digestPartsAreMessages() -> None:
    mime = (
        b'Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary="d"\r\n\r\n'
        b"--d\r\n\r\nSubject: {$name}\r\n\r\n{$name}\r\n--d--\r\n"
    )
    assert personalize(mime, DATA) == mime


@pytest.mark.parametrize("mime", [b"", b"Subject: {$name}", b"\r\n{$name}", b"Subject: {$name}\r\n"])
def test_oddMessages(mime: bytes) -> None:
    result: Any = personalize(mime, DATA)
    assert b"{$name}" not in result


def test_deepNestingStopsAtMaxDepth() -> None:
    def nested(depth: int) -> bytes:
        entity = b"Content-Type: text/plain\r\n\r\nHi {$name}\r\n"
        for level in range(1, depth + 1):
            boundary = b"b%d" % level
            entity = (
                b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--" + boundary + b"\r\n"
                + entity + b"\r\n--" + boundary + b"--\r\n"
            )
        return entity

    reached = b"Subject: s\r\n" + nested(MAX_DEPTH)
    assert b"Hi John Doe" in personalize(reached, DATA)
    deeper = b"Subject: s\r\n" + nested(MAX_DEPTH + 1)
    assert personalize(deeper, DATA) == deeper
    far = b"Subject: s\r\n" + nested(2000)
    assert personalize(far, DATA) == far


# -- RFC 2047 words, blocks without variables, limits, the shared helper ---------------


@pytest.mark.parametrize(
    "word",
    [
        b"=?utf-8?q?Hi_{$name}=0D=0ABcc:_victim@evil.example?=",
        b"=?utf-8?b?" + base64.b64encode(b"Hi {$name}\r\nBcc: victim@evil.example") + b"?=",
        b"=?utf-8?q?Hi_{$name}=0ABcc:_victim@evil.example?=",
        b"=?utf-8?q?Hi_{$name}=00?=",
    ],
)
def test_controlCharactersInEncodedWordsAreRefused(word: bytes) -> None:
    """
    A personalized field's encoded words are decoded to render them: a
    line break there would become a field of its own (a Bcc), so the job
    is refused, naming the field.
    """
    mime = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: " + word + b"\r\n\r\nbody\r\n"
    with pytest.raises(InvalidMessage) as caught:
        personalize(mime, {"name": "Bob"})
    assert caught.value.description.startswith(
        "property 'mime': the Subject field's RFC 2047 encoded words hold a line break or a control character"
    )


def test_encodedWordsWithoutControlCharacters() -> None:
    mime = b"Subject: =?utf-8?q?Hi_{$name}_=E2=82=AC?=\r\n\r\nbody\r\n"
    out = personalize(mime, {"name": "Bob"})
    assert out.startswith(b"Subject: Hi Bob =?utf-8?")
    assert parsed(out)["Subject"] == "Hi Bob \u20ac"


@pytest.mark.parametrize("value", ["Bob\u2028Bcc: x@evil.example", "Bob\x85Bcc: x@evil.example", "Zoë " * 40])
def test_foldedFieldsHaveNoBareLineBreaks(value: str) -> None:
    mime = b"Subject: Hi {$name}\r\nTo: b@example.net\r\n\r\nbody\r\n"
    head = personalize(mime, {"name": value}).split(b"\r\n\r\n")[0]
    # every line break is a CRLF, and only two lines begin a field
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", head) is None
    fields = [line for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
    assert [field.split(b":")[0] for field in fields] == [b"Subject", b"To"]


def test_blocksWithoutVariablesArePersonalized() -> None:
    """
    An {if} or {foreach} is a template even when no {$ is in the text.
    """
    mime = b"Subject: {if $vip}Gold member{else}Welcome{/if}\r\n\r\n{if $vip}Gold member{else}Welcome{/if}\r\n"
    assert personalize(mime, {"vip": False}) == b"Subject: Welcome\r\n\r\nWelcome\r\n"
    assert personalize(mime, {"vip": True}) == b"Subject: Gold member\r\n\r\nGold member\r\n"


@pytest.mark.parametrize(
    ("body", "data", "limits", "limit"),
    [
        ("{foreach $a as $x}{$x}{/foreach}", {"a": [1, 2, 3]}, TemplateLimits(loops=2), "--template-loops"),
        ("{if 1}" * 3 + "x" + "{/if}" * 3, {}, TemplateLimits(depth=2), "--template-depth"),
        ('{$s|regex_replace:"(a|aa)+b"}', {"s": "a" * 80}, TemplateLimits(regexSeconds=0.05), "--template-regex-seconds"),
        ("{$s|indent:1000}", {"s": "x"}, TemplateLimits(output=500), "--max-job-bytes"),
        # characters within the limit, bytes (UTF-8) past it
        ("{$s}", {"s": "€" * 200}, TemplateLimits(output=300), "--max-job-bytes"),
    ],
)
def test_costlyTemplatesAreInvalid(body: str, data: dict[str, Any], limits: TemplateLimits, limit: str) -> None:
    mime = ("Subject: hi\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()
    with pytest.raises(InvalidMessage) as caught:
        personalize(mime, data, limits=limits)
    assert caught.value.description.startswith("property 'data': ")
    assert f"(limit {limit})" in caught.value.description
    assert caught.value.description.endswith("simplify the templates of the message (fewer or smaller loops, "
                                             "values and patterns), or raise that limit")


def test_theLimitsAreForTheWholeMessage() -> None:
    """
    The fields and parts of a message share one budget.
    """
    mime = (
        b"Subject: {foreach $a as $x}{$x}{/foreach}\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\n\r\n{foreach $a as $x}{$x}{/foreach}\r\n--b\r\n\r\n{foreach $a as $x}{$x}{/foreach}\r\n--b--\r\n"
    )
    assert b"123" in personalize(mime, {"a": [1, 2, 3]}, limits=TemplateLimits(loops=9))
    with pytest.raises(InvalidMessage, match="template-loops"):
        personalize(mime, {"a": [1, 2, 3]}, limits=TemplateLimits(loops=8))


def test_rewrittenContent() -> None:
    """
    The one helper the processor (mime jobs) and the transaction (key jobs)
    use: a message without data nor inlinecss is not touched.
    """
    job = {"id": "1", "recipient": "rcpt@example.com", "envelope": "from@example.org", "mime": "x"}
    mime = b"Subject: {$recipient} {$envelope}\r\n\r\n{$name}\r\n"
    plain = Message.fromObject(job)
    assert not rewritesContent(plain)
    assert rewrittenContent(mime, plain, DEFAULT_LIMITS) is mime
    personalized = Message.fromObject(dict(job, data={"name": "Ann"}))
    assert rewritesContent(personalized)
    assert rewrittenContent(mime, personalized, DEFAULT_LIMITS) == (
        b"Subject: rcpt@example.com from@example.org\r\n\r\nAnn\r\n"
    )
    with pytest.raises(InvalidMessage, match="template-loops"):
        rewrittenContent(b"\r\n{foreach $a as $x}{/foreach}", Message.fromObject(dict(job, data={"a": [1, 2]})),
                         TemplateLimits(loops=1))
