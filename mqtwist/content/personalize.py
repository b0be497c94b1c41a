"""
A job's C{data} and C{inlinecss} applied to its message: the Subject, From
and To fields and every text/plain and text/html part are personalization
templates (L{mqtwist.content.template}), and the HTML parts' C{<style>}
rules become C{style} attributes (L{mqtwist.content.inlinecss}).

The message is rewritten in place, as bytes: only the fields and parts that
change are touched, the rest of the message (other fields, their folding,
attachments, boundaries) stays byte for byte.  A part is decoded from its
Content-Transfer-Encoding and charset, changed, and encoded again: in its
own encoding while that can carry the new text (quoted-printable and
base64 are encoded anew; 7bit stays 7bit while the text is ASCII and its
lines short enough, 8bit while its lines are), else as quoted-printable;
in its charset while that can write every character, else in UTF-8 (the
Content-Type then says so).  A header field that becomes non-ASCII is
encoded as RFC 2047 says (display names only, in From and To).

Its cost does not follow the message's size (a loop, a regular expression):
it is bounded (L{TemplateLimits}), and the callers run it in a thread
(L{mqtwist.outbox.processor}, L{mqtwist.delivery.transaction}).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.errors
import email.header
import email.message
import email.policy
import email.utils
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mqtwist.content.inlinecss import inlineCSS
from mqtwist.content.template import (
    DEFAULT_LIMITS,
    Budget,
    TemplateLimits,
    TemplateTooCostly,
    UnsafeValue,
    hasTemplate,
    render,
)
from mqtwist.errors import InvalidMessage
from mqtwist.validation import excerpt

if TYPE_CHECKING:
    from mqtwist.config import Config
    from mqtwist.content.message import Message

__all__ = ["MAX_DEPTH", "PERSONALIZED_FIELDS", "personalize", "rewritesContent", "rewrittenContent", "templateLimits"]

#: the header fields that are templates (MailerQ: the subject, the "from"
#: and the "to" address)
PERSONALIZED_FIELDS = ("subject", "from", "to")

#: multiparts within one another that are looked into (a message nested
#: deeper is rare, and would exhaust the recursion of a naive walk)
MAX_DEPTH = 50

#: the longest line RFC 5321 lets a message have, without its CRLF
_MAX_LINE = 998

_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
#: a line break that does not begin a continuation line, in a folded field
_BARE_LINE_BREAK = re.compile(rb"\r(?!\n[ \t])(?!\n\Z)|\n(?![ \t]|\Z)")
#: what the decoded text of RFC 2047 words must not hold (tabs are spaces)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LINE = re.compile(rb"[^\n]*\n|[^\n]+")
_TRANSFORMED_TYPES = ("text/plain", "text/html")


@dataclass(frozen=True)
class _Job:
    """
    What every part of one message is rewritten with.
    """

    variables: Mapping[str, Any] | None
    inlinecss: bool
    budget: Budget


def templateLimits(config: Config) -> TemplateLimits:
    """
    The bounds of the work personalization may make, from the settings.
    """
    return TemplateLimits(
        output=config.maxJobBytes,
        loops=config.templateLoops,
        depth=config.templateDepth,
        regexSeconds=config.templateRegexSeconds,
    )


def rewritesContent(message: Message) -> bool:
    """
    Whether C{message}'s content is rewritten before it is sent: it has
    C{data} or C{inlinecss}.
    """
    return message.data is not None or message.inlinecss


def rewrittenContent(mime: bytes, message: Message, limits: TemplateLimits) -> bytes:
    """
    C{mime} (the job's own, or the one loaded for its C{key}) with
    C{message}'s C{data} and C{inlinecss} applied; as it is when it has
    neither.  Thread-safe: it changes nothing of C{message}.

    @raise InvalidMessage: see L{personalize}.
    """
    if not rewritesContent(message):
        return mime
    return personalize(
        mime,
        message.data,
        inlinecss=message.inlinecss,
        recipient=message.recipient,
        envelope=message.envelope,
        limits=limits,
    )


def personalize(
    mime: bytes,
    data: Mapping[str, Any] | None,
    *,
    inlinecss: bool = False,
    recipient: str = "",
    envelope: str = "",
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> bytes:
    """
    C{mime} with C{data} substituted and, with C{inlinecss}, its CSS inlined.

    @param data: the job's C{data} object, or C{None} to leave variables
        as written (C{inlinecss} alone).  C{recipient} and C{envelope} are
        variables too, unless C{data} has its own.
    @param limits: the work the templates may make.
    @return: the new message.
    @raise InvalidMessage: a variable would put a line break or a control
        character in a header field, an RFC 2047 word of a personalized
        field holds one, or the templates would pass one of C{limits}.
    """
    variables = None if data is None else {"recipient": recipient, "envelope": envelope, **data}
    try:
        personalized = _entity(mime, _Job(variables, inlinecss, Budget(limits)), top=True)
        if len(personalized) > limits.output:
            raise TemplateTooCostly(
                "max-job-bytes", f"the personalized message would have more than {limits.output} bytes"
            )
        return personalized
    except TemplateTooCostly as failure:
        raise InvalidMessage(
            f"property 'data': {failure}; simplify the templates of the message (fewer or smaller "
            "loops, values and patterns), or raise that limit"
        ) from None
    except UnsafeValue as failure:
        raise InvalidMessage(
            f"property 'data': {failure}; remove line breaks and control characters "
            "from the values used in the Subject, From and To fields"
        ) from None
    except ValueError as failure:
        # css_inline's InlineError
        raise InvalidMessage(
            f"property 'inlinecss': the CSS of an HTML part cannot be read ({failure}); "
            "correct its <style> rules, or send the message without inlinecss"
        ) from None


def _entity(data: bytes, job: _Job, *, top: bool, inDigest: bool = False, depth: int = 0) -> bytes:
    """
    One MIME entity (the message, or one part of a multipart) rewritten.

    @param inDigest: whether it is a part of a multipart/digest, whose
        parts are messages unless they say otherwise (RFC 2046 5.1.5).
    @param depth: how many multiparts it is in; parts deeper than
        L{MAX_DEPTH} are sent as they are.
    """
    fields, blank, body = _split(data)
    contentType = _fieldValue(fields, b"content-type")
    if contentType is None and inDigest:
        return data
    info = email.message.Message()
    if contentType is not None:
        info["Content-Type"] = contentType
    kind = info.get_content_type()
    if top and job.variables is not None:
        eol = b"\n" if fields and not fields[0].endswith(b"\r\n") else b"\r\n"
        fields = [_personalizedField(field, job.variables, eol, job.budget) for field in fields]
    if kind.startswith("multipart/"):
        boundary = info.get_param("boundary")
        if isinstance(boundary, str) and boundary and depth < MAX_DEPTH:
            delimiter = boundary.encode("utf-8", "surrogateescape")
            body = _multipart(body, delimiter, job, kind == "multipart/digest", depth + 1)
    elif kind in _TRANSFORMED_TYPES and not _isAttachment(fields):
        before = fields
        fields, body = _textPart(fields, body, info, job, html=kind == "text/html")
        if top and fields is not before and _fieldValue(fields, b"mime-version") is None:
            # a charset or transfer encoding means something only in MIME
            fields = _withField(fields, b"mime-version", b"MIME-Version: 1.0")
    return b"".join(fields) + blank + body


def _split(data: bytes) -> tuple[list[bytes], bytes, bytes]:
    """
    An entity's header fields (each with its continuation lines and line
    ends), the empty line after them, and its body.
    """
    fields: list[bytes] = []
    position = 0
    for match in _LINE.finditer(data):
        line = match.group()
        if line in (b"\r\n", b"\n"):
            return fields, line, data[match.end() :]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        position = match.end()
    return fields, b"", data[position:]


def _fieldName(field: bytes) -> bytes:
    match = _FIELD_NAME.match(field)
    return match.group(1).lower() if match else b""


def _fieldValue(fields: list[bytes], name: bytes) -> str | None:
    for field in fields:
        if _fieldName(field) == name:
            value = field.split(b":", 1)[1]
            return re.sub(rb"\r?\n[ \t]", b" ", value).strip().decode("ascii", "replace")
    return None


def _isAttachment(fields: list[bytes]) -> bool:
    disposition = _fieldValue(fields, b"content-disposition")
    return disposition is not None and disposition.split(";")[0].strip().lower() == "attachment"


def _personalizedField(field: bytes, variables: Mapping[str, Any], eol: bytes, budget: Budget) -> bytes:
    """
    A header field with the variables and blocks of its value rendered:
    as it is unless it is one of L{PERSONALIZED_FIELDS}.

    @raise InvalidMessage: its RFC 2047 words hold a control character (a
        line break there would become one in the header once decoded).
    """
    name = _fieldName(field)
    if name.decode("ascii") not in PERSONALIZED_FIELDS or not (
        hasTemplate(field.decode("ascii", "replace")) or b"=?" in field
    ):
        return field
    head, raw = field.split(b":", 1)
    ending = b"\r\n" if raw.endswith(b"\r\n") else b"\n" if raw.endswith(b"\n") else b""
    value = raw[: len(raw) - len(ending)].decode("utf-8", "surrogateescape")
    words = _encodedWords(value)
    if words is not None:
        # a variable inside an RFC 2047 word: replaced in the decoded text,
        # which is then encoded anew
        if not hasTemplate(words):
            return field
        if _CONTROL.search(words):
            raise InvalidMessage(
                f"property 'mime': the {head.decode('ascii').strip()} field's RFC 2047 encoded words hold a "
                f"line break or a control character once decoded ({excerpt(words)}); encode only "
                "printable text in them"
            )
        value = words
    elif not hasTemplate(value):
        return field
    rendered = render(value, variables, header=True, budget=budget)
    encoded = rendered.encode("utf-8", "surrogateescape")
    if words is None and encoded.isascii() and all(len(line) <= _MAX_LINE for line in encoded.split(b"\n")):
        return head + b":" + encoded + ending
    # non-ASCII or too long: folded anew, RFC 2047 words for the non-ASCII text
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", rendered).strip()
    policy = email.policy.SMTP.clone(linesep=eol.decode("ascii"))
    if name != b"subject" and not all(address.isascii() for _, address in email.utils.getaddresses([unfolded])):
        # an internationalized address cannot be an encoded word: sent as
        # UTF-8, which needs SMTPUTF8 (the transaction checks the server's)
        policy = email.policy.SMTPUTF8.clone(linesep=eol.decode("ascii"))
    folded: str = policy.header_factory(head.decode("ascii").strip(), unfolded).fold(policy=policy)
    result = folded.encode("utf-8", "surrogateescape")
    if _BARE_LINE_BREAK.search(result):
        # never a line that begins a field of its own
        raise InvalidMessage(
            f"property 'data': the personalized {head.decode('ascii').strip()} field would hold a line "
            f"break ({excerpt(rendered)}); remove line breaks and control characters from its values"
        )
    return result


def _encodedWords(value: str) -> str | None:
    """
    The text of a field value that holds RFC 2047 encoded words, decoded;
    C{None} for a value without any (or with malformed ones, which are
    then taken as they are written).
    """
    if "=?" not in value:
        return None
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", value).strip()
    try:
        parts = email.header.decode_header(unfolded)
        if all(isinstance(text, str) for text, _ in parts):
            # decode_header found no encoded word
            return None
        return str(email.header.make_header(parts))
    except (email.errors.HeaderParseError, ValueError, LookupError):
        return None


def _multipart(body: bytes, boundary: bytes, job: _Job, digest: bool, depth: int) -> bytes:
    """
    A multipart body with each of its parts rewritten; the preamble, the
    delimiter lines and the epilogue stay as they are.
    """
    delimiter = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    pieces: list[bytes] = []
    position = 0
    inPart = False
    for match in delimiter.finditer(body):
        content = body[position : match.start()]
        pieces.append(_entity(content, job, top=False, inDigest=digest, depth=depth) if inPart else content)
        pieces.append(match.group())
        position = match.end()
        if match.group(1):
            # the close delimiter: what follows is the epilogue
            pieces.append(body[position:])
            return b"".join(pieces)
        inPart = True
    # no close delimiter: the last part runs to the end of the body
    rest = body[position:]
    pieces.append(_entity(rest, job, top=False, inDigest=digest, depth=depth) if inPart else rest)
    return b"".join(pieces)


def _textPart(
    fields: list[bytes], body: bytes, info: email.message.Message, job: _Job, *, html: bool
) -> tuple[list[bytes], bytes]:
    encoding = (_fieldValue(fields, b"content-transfer-encoding") or "7bit").lower()
    decoder = _DECODERS.get(encoding)
    charset = info.get_content_charset() or "us-ascii"
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        return fields, body
    if decoder is None:
        return fields, body
    try:
        raw = decoder(body)
    except binascii.Error:
        # broken base64: sent as it came, like a part that is no text
        return fields, body
    if codec == "ascii" and not raw.isascii():
        # 8-bit text that says it is ASCII: UTF-8, as a JSON mime string is
        codec = "utf-8"
    text = raw.decode(codec, "surrogateescape")
    changed = text
    newline = "\r\n" if "\r\n" in text else "\n"
    if job.variables is not None and hasTemplate(text):
        changed = render(text, job.variables, html=html, newline=newline, budget=job.budget)
    if html and job.inlinecss and "<style" in changed.lower():
        # without rules to inline, the part is not written anew; the HTML
        # parser's line breaks are LFs, the part's again after it
        changed = inlineCSS(changed)
        if newline == "\r\n":
            changed = changed.replace("\n", "\r\n")
    if changed == text:
        return fields, body
    return _encodedPart(fields, changed, encoding, codec, body)


def _encodedPart(
    fields: list[bytes], text: str, encoding: str, codec: str, original: bytes
) -> tuple[list[bytes], bytes]:
    """
    The fields and body of a text part that now holds C{text}: its charset
    and transfer encoding kept when they can carry it, else changed.
    """
    try:
        data = text.encode(codec, "surrogateescape")
    except UnicodeEncodeError:
        codec, data = "utf-8", text.encode("utf-8", "surrogateescape")
        fields = _withCharset(fields, "utf-8")
    eol = b"\r\n" if b"\r\n" in original or not original else b"\n"
    if encoding in ("7bit", "8bit"):
        fits = max(map(len, data.splitlines()), default=0) <= _MAX_LINE
        if fits and (encoding == "8bit" or data.isascii()):
            return fields, data
        encoding = "quoted-printable"
        fields = _withField(fields, b"content-transfer-encoding", b"Content-Transfer-Encoding: quoted-printable")
    if encoding == "base64":
        encoded = base64.encodebytes(data).replace(b"\n", eol)
        return fields, encoded if original.endswith(b"\n") else encoded.removesuffix(eol)
    if encoding == "quoted-printable":
        return fields, _quotedPrintable(data, eol)
    return fields, data


def _quotedPrintable(data: bytes, eol: bytes) -> bytes:
    # every line break of the text becomes eol; b2a_qp keeps CRLF only
    # when the text's first line break is one
    lines = re.split(rb"\r\n|\n", data)
    return eol.join(binascii.b2a_qp(line, istext=False, header=False).replace(b"=\n", b"=" + eol) for line in lines)


def _withField(fields: list[bytes], name: bytes, line: bytes) -> list[bytes]:
    """
    C{fields} with the field C{name} replaced by C{line} (added when missing).
    """
    eol = b"\n" if fields and not fields[0].endswith(b"\r\n") else b"\r\n"
    for index, field in enumerate(fields):
        if _fieldName(field) == name:
            return fields[:index] + [line + eol] + [f for f in fields[index + 1 :] if _fieldName(f) != name]
    return fields + [line + eol]


def _withCharset(fields: list[bytes], charset: str) -> list[bytes]:
    info = email.message.Message()
    info["Content-Type"] = _fieldValue(fields, b"content-type") or "text/plain"
    info.set_param("charset", charset)
    return _withField(fields, b"content-type", b"Content-Type: " + info["Content-Type"].encode("ascii"))


def _identity(body: bytes) -> bytes:
    return body


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "7bit": _identity,
    "8bit": _identity,
    "binary": _identity,
    "base64": binascii.a2b_base64,
    "quoted-printable": binascii.a2b_qp,
}
