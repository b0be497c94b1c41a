"""
The C{mime} property as an object: a message described in JSON, built into
RFC 5322 / MIME bytes with the standard library's C{email} package.

The object (C{docs/messages.rst}), in MailerQ's form (its "JSON
specification" and "Responsive email" pages) and mqtwist's earlier one:

  - C{from} (required), C{replyTo}: a string C{"local@domain"} or an object
    C{{"name": ..., "email": ...}} (MailerQ's form; C{"address"} is taken
    for C{"email"} too);
  - C{to}, C{cc}: one of those, or a list of them;
  - C{subject}: a string;
  - C{headers}: an object name -> value (or list of values) of further
    header fields;
  - C{text} or C{textVersion}: the plain text body;
  - C{html}, or C{content} as a string: the HTML body;
  - C{attachments}: a list of C{{"name", "type", "data"}}, C{data} the
    content in base64, C{type} a MIME type C{type/subtype} (guessed from
    C{name} when missing) and C{name} the file name (optional).

What needs a download when the message is built -- C{content} as an object
(the responsive-email blocks) and attachments by C{url} -- is refused,
naming the key: mqtwist fetches nothing from the network.  Keys the object
or its addresses and attachments may have that are not listed here (the
responsive-email's C{bcc}, C{background}, C{font}, ...) are ignored: they
change nothing in the message.

What is built: a text or an HTML body alone is a single part; both are a
C{multipart/alternative}; with attachments, a C{multipart/mixed} whose
first part is the text, the HTML or the alternative (attachments alone
are a C{multipart/mixed} of them).  Non-ASCII in names
and in the subject is written as RFC 2047 encoded words.  C{Date} and
C{Message-ID} are added unless C{headers} has them.

Every line stays within RFC 5322's limits whatever the input: text that is
ASCII with lines of at most 78 characters is sent as it is (C{7bit});
anything else is quoted-printable (or base64 when that is shorter), and
attachments are base64.  Quoted-printable and base64 are done by
C{binascii} at C speed, not by C{email}'s pure-Python encoders, because
the bodies are large (newsletters of 100 KB) and this runs per message.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import mimetypes
import re
import time
import uuid
from collections.abc import Mapping
from email.errors import HeaderParseError, MessageError
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from typing import Any

from mqtwist.content.headeredits import checkHeaderName
from mqtwist.errors import InvalidMessage
from mqtwist.validation import checkAddress, checkHeaderValue, excerpt, shownName

__all__ = ["buildMime"]

#: the keys of the C{mime} object that mqtwist reads; others are ignored
MIME_KEYS = (
    "from", "replyTo", "to", "cc", "subject", "headers", "text", "textVersion", "html", "content",
    "attachments",
)
# the types of attachments given without one, from their names: the
# standard library's own table only, not the host's /etc/mime.types, so
# that a job builds the same message on every host
_GUESSED_TYPES = mimetypes.MimeTypes()
# at most this many keys are named in a refusal of downloads
_NAMED_DOWNLOADS = 3

# RFC 5322 lines: 78 characters recommended (soft), 998 at most (hard).
_SOFT_LINE = 78
_HARD_LINE = 998
_POLICY = email.policy.SMTP.clone(max_line_length=_SOFT_LINE)

# Header fields the builder writes itself: C{headers} may not set them.
_STRUCTURAL = {"content-type", "content-transfer-encoding", "mime-version"}
_FROM_PROPERTIES = {
    "from": "from",
    "reply-to": "replyTo",
    "to": "to",
    "cc": "cc",
    "subject": "subject",
}

# RFC 2045 section 5.1: type "/" subtype, each a token
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_CONTENT_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})")
_KNOWN_TYPES = {
    "application", "audio", "font", "image", "message", "model", "multipart",
    "text", "video",
}
# Controls other than TAB, LF and CR make text unfit for 7bit (RFC 2045 2.7).
_NOT_7BIT = re.compile(r"[^\t\n\r\x20-\x7e]")
_WHITESPACE = re.compile(rb"\s+")
# how the email package's parser of structured fields (To, Message-ID, ...)
# fails on some malformed values (To: "<", Reply-To: ".:?:") instead of
# raising HeaderParseError
_PARSER_FAILURES = (IndexError, AttributeError, TypeError)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _rfc5322Date(now: float) -> str:
    # email.utils.format_datetime costs half a millisecond (timetuple of an
    # aware datetime); strftime's names follow the locale: neither will do
    t = time.gmtime(now)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def _string(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidMessage(f"property 'mime.{key}' must be a string, not {type(value).__name__}")
    return value


def _address(what: str, value: Any) -> Address:
    """
    An address given as C{"local@domain"} or C{{"name", "email"}} (or
    C{{"name", "address"}}); other keys of the object are ignored.
    """
    name: Any
    address: Any
    if isinstance(value, str):
        name, address = "", value
    elif isinstance(value, dict):
        name = value.get("name")
        email, given = value.get("email"), value.get("address")
        if email is not None and given is not None and email != given:
            raise InvalidMessage(
                f"property {what!r} has both 'email' {excerpt(email)} and 'address' "
                f"{excerpt(given)}; give one"
            )
        key = "email" if email is not None else "address"
        address = email if email is not None else given
        if address is None:
            raise InvalidMessage(
                f"property {what!r} has no 'email'; give {{\"name\": ..., \"email\": ...}}"
            )
        if name is None:
            name = ""
        if not isinstance(name, str):
            raise InvalidMessage(f"property '{what}.name' must be a string, not {type(name).__name__}")
        if not isinstance(address, str):
            raise InvalidMessage(
                f"property '{what}.{key}' must be a string, not {type(address).__name__}"
            )
        checkHeaderValue(f"{what}.name", name)
        what = f"{what}.{key}"
    else:
        raise InvalidMessage(
            f"property {what!r} must be an address string or "
            f"{{\"name\": ..., \"email\": ...}}, not {type(value).__name__}"
        )
    checkAddress(what, address)
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise InvalidMessage(
            f"property {what!r} {excerpt(address)} has a non-ASCII local part, which "
            f"needs SMTPUTF8; send such a message as a 'mime' string"
        )
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidMessage(f"property {what!r} has a domain {excerpt(domain)} that is not valid IDNA") from None
    try:
        return Address(display_name=name, username=local, domain=domain)
    except (ValueError, HeaderParseError) as e:
        raise InvalidMessage(f"property {what!r} is not a usable address: {e}") from None


def _addresses(what: str, value: Any) -> list[Address]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InvalidMessage(f"property {what!r} is an empty list; leave it out instead")
    return [_address(f"{what}[{i}]" if isinstance(value, list) else what, item)
            for i, item in enumerate(items)]


def _contentType(what: str, value: Any) -> tuple[str, str]:
    if not isinstance(value, str) or not _CONTENT_TYPE.fullmatch(value):
        raise InvalidMessage(
            f"property {what!r} is {excerpt(value)}; give a MIME type type/subtype "
            f"such as application/pdf"
        )
    maintype, subtype = value.lower().split("/")
    if maintype not in _KNOWN_TYPES and not maintype.startswith("x-"):
        raise InvalidMessage(
            f"property {what!r} has the unknown top-level type {excerpt(maintype)}; use "
            f"one of {', '.join(sorted(_KNOWN_TYPES))}"
        )
    if maintype in ("multipart", "message"):
        raise InvalidMessage(
            f"property {what!r} is {excerpt(value)}; attachments of type {maintype}/* "
            f"would change the structure of the message: send it as "
            f"application/octet-stream or build the MIME yourself"
        )
    return maintype, subtype


def _textPart(text: str, subtype: str) -> MIMEPart:
    """
    A C{text/*} part in UTF-8 whose lines fit RFC 5322 whatever C{text} is.
    """
    part = MIMEPart(_POLICY)
    data = text.encode("utf-8")
    lines = data.splitlines()
    if not _NOT_7BIT.search(text) and max(map(len, lines), default=0) <= _SOFT_LINE:
        cte, payload = "7bit", text
        charset = "us-ascii"
    else:
        charset = "utf-8"
        qp = binascii.b2a_qp(data, istext=True).decode("ascii")
        # text that is mostly non-Latin is shorter (and as readable) in base64
        if len(qp) > len(data) * 4 // 3 + len(data) // 57 + 2:
            cte, payload = "base64", base64.encodebytes(data).decode("ascii")
        else:
            cte, payload = "quoted-printable", qp
    part["Content-Type"] = f"text/{subtype}"
    part.set_param("charset", charset)
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(payload)
    return part


def _guessedType(name: str | None) -> tuple[str, str]:
    """
    The type of an attachment given without one: from its file name's
    extension, C{application/octet-stream} when that says nothing (or
    names a type that would change the structure of the message).
    """
    guessed = _GUESSED_TYPES.guess_type(name, strict=False)[0] if name else None
    if guessed is not None:
        maintype, _, subtype = guessed.partition("/")
        if maintype not in ("multipart", "message"):
            return maintype, subtype
    return "application", "octet-stream"


def _attachment(index: int, value: Any) -> MIMEPart:
    """
    An attachment given inline: C{{"name", "type", "data"}}, C{data} in
    base64 (required), C{type} and C{name} optional; other keys are ignored
    (C{url} was refused before, see L{_downloads}).
    """
    what = f"mime.attachments[{index}]"
    if not isinstance(value, dict):
        raise InvalidMessage(f"property {what!r} must be an object {{name, type, data}}")
    name, data = value.get("name"), value.get("data")
    if name is not None:
        if not isinstance(name, str) or not name:
            raise InvalidMessage(f"property '{what}.name' must be a non-empty string (the file name)")
        checkHeaderValue(f"{what}.name", name)
    if value.get("type") is None:
        maintype, subtype = _guessedType(name)
    else:
        maintype, subtype = _contentType(f"{what}.type", value.get("type"))
    if data is None:
        raise InvalidMessage(f"property '{what}.data' is missing; give the content as a base64 string")
    if not isinstance(data, str):
        raise InvalidMessage(f"property '{what}.data' must be the content as a base64 string")
    try:
        # line breaks are common in base64 from MIME tools; anything else
        # outside the alphabet is an error, not something to skip
        compact = _WHITESPACE.sub(b"", data.encode("ascii"))
        if len(compact) % 4:
            raise ValueError(f"{len(compact)} characters, not a multiple of 4")
        content = base64.b64decode(compact, validate=True)
    except (ValueError, binascii.Error) as e:
        raise InvalidMessage(f"property '{what}.data' is not valid base64: {e}") from None
    part = MIMEPart(_POLICY)
    part["Content-Type"] = f"{maintype}/{subtype}"
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(base64.encodebytes(content).decode("ascii"))
    if name is None:
        part.add_header("Content-Disposition", "attachment")
    else:
        part.add_header("Content-Disposition", "attachment", filename=name)
    return part


def _downloads(obj: Mapping[str, Any]) -> None:
    """
    Refuse what would need a download to build the message: C{content} as
    an object (MailerQ's responsive-email blocks, whose images are fetched)
    and attachments by C{url}.  mqtwist fetches nothing while it delivers.

    @raise InvalidMessage: naming every such key (the first few of them).
    """
    content = obj.get("content")
    if isinstance(content, dict) and "blocks" not in content:
        raise InvalidMessage(
            "property 'mime.content' is an object, a responsive-email layout, which "
            "mqtwist does not build; give the HTML as a string in 'content' or 'html'"
        )
    keys = ["mime.content.blocks"] if isinstance(content, dict) else []
    attachments = obj.get("attachments")
    if isinstance(attachments, list):
        keys += [
            f"mime.attachments[{i}].url"
            for i, attachment in enumerate(attachments)
            if isinstance(attachment, dict) and attachment.get("url") is not None
        ]
    if keys:
        named = [repr(key) for key in keys[:_NAMED_DOWNLOADS]]
        if len(keys) > _NAMED_DOWNLOADS:
            named.append(f"{len(keys) - _NAMED_DOWNLOADS} more")
        listed = " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)
        raise InvalidMessage(
            f"{'property' if len(keys) == 1 else 'properties'} {listed} "
            f"{'is' if len(keys) == 1 else 'are'} not supported: "
            f"mqtwist downloads nothing to build a message (responsive-email blocks, "
            f"attachments by URL); give the HTML as a string in 'content' or 'html' "
            f"and attachments inline, in base64 'data'"
        )


def _body(obj: Mapping[str, Any], key: str, alias: str) -> str | None:
    """
    A body given by C{key} or by its other name C{alias}.
    """
    value, other = _string(obj, key), _string(obj, alias)
    if value is not None and other is not None and value != other:
        raise InvalidMessage(
            f"properties 'mime.{key}' and 'mime.{alias}' both give the "
            f"{'text' if key == 'text' else 'HTML'} body; give one"
        )
    return value if value is not None else other


def _setHeader(message: EmailMessage, what: str, name: str, value: Any) -> None:
    try:
        message[name] = value
    except (ValueError, MessageError, HeaderParseError) as e:
        raise InvalidMessage(f"property {what!r} cannot be written as a header: {e}") from None
    except _PARSER_FAILURES:
        raise InvalidMessage(
            f"property {what!r} is {excerpt(value)}, which cannot be written as a "
            f"{shownName(name)} field; check its syntax (RFC 5322)"
        ) from None


def _unwritable(message: EmailMessage, extra: Mapping[str, Any]) -> InvalidMessage:
    """
    Why C{message} cannot be written: the field that the email package
    cannot fold, malformed or (in a field it writes without encoded words,
    such as C{Message-ID}) not ASCII.

    @param extra: the C{mime.headers} property, to name the field by.
    """
    given = {key.lower() for key in extra}
    for name, value in message.items():
        what = f"mime.headers.{shownName(name)}" if name.lower() in given else "mime"
        try:
            _POLICY.fold_binary(name, value)
        except UnicodeEncodeError:
            return InvalidMessage(
                f"property {what!r} makes the {shownName(name)} field {excerpt(str(value))}, "
                f"which cannot hold non-ASCII characters; write it in ASCII"
            )
        except _PARSER_FAILURES:
            return InvalidMessage(
                f"property {what!r} makes the {shownName(name)} field {excerpt(str(value))}, "
                f"which cannot be written; check its syntax (RFC 5322)"
            )
    return InvalidMessage("property 'mime' makes a header field that cannot be written")


def buildMime(obj: Mapping[str, Any], *, now: float, hostname: str) -> bytes:
    """
    Build the message described by a C{mime} object (see the module
    docstring).

    @param now: POSIX time for the C{Date} field, when the object has none.
    @param hostname: the domain of the C{Message-ID} made when the object has
        none (the sending host's name).
    @return: the message, CRLF line endings, every line within 998
        characters and every generated line within 78.
    @raise InvalidMessage: naming the property at fault: a wrong type, a
        bad address, a control character in a header, bad base64, a
        malformed content type, a message with no content, something that
        would need a download.  Keys the object does not use are ignored.
    """
    if not isinstance(obj, Mapping):
        raise InvalidMessage("property 'mime' must be a string or an object")
    _downloads(obj)
    text, html = _body(obj, "text", "textVersion"), _body(obj, "html", "content")
    attachments = obj.get("attachments")
    if attachments is None:
        attachments = []
    if not isinstance(attachments, list):
        raise InvalidMessage("property 'mime.attachments' must be a list of {name, type, data}")
    if text is None and html is None and not attachments:
        raise InvalidMessage(
            "property 'mime' has no content: give 'text' (or 'textVersion'), 'html' "
            "(or 'content') or 'attachments'"
        )

    message = EmailMessage(_POLICY)
    if "from" not in obj:
        raise InvalidMessage("property 'mime.from' is missing; every message needs a From")
    _setHeader(message, "mime.from", "From", _address("mime.from", obj["from"]))
    if obj.get("replyTo") is not None:
        _setHeader(message, "mime.replyTo", "Reply-To", _address("mime.replyTo", obj["replyTo"]))
    for key, name in (("to", "To"), ("cc", "Cc")):
        if obj.get(key) is not None:
            what = f"mime.{key}"
            _setHeader(message, what, name, _addresses(what, obj[key]))
    subject = _string(obj, "subject")
    if subject is not None:
        checkHeaderValue("mime.subject", subject)
        _setHeader(message, "mime.subject", "Subject", subject)

    extra = obj.get("headers") or {}
    if not isinstance(extra, dict):
        raise InvalidMessage("property 'mime.headers' must be an object header name -> value")
    for name, value in extra.items():
        checkHeaderName("mime.headers", name)
        lower = name.lower()
        if lower in _STRUCTURAL:
            raise InvalidMessage(
                f"property 'mime.headers' may not set {name}: mqtwist writes it "
                f"from text, html and attachments"
            )
        if lower in _FROM_PROPERTIES and _FROM_PROPERTIES[lower] in obj:
            raise InvalidMessage(
                f"property 'mime.headers' sets {name} and so does "
                f"'mime.{_FROM_PROPERTIES[lower]}'; give it once"
            )
        values = value if isinstance(value, list) else [value]
        what = f"mime.headers.{shownName(name)}"
        for item in values:
            if not isinstance(item, str):
                raise InvalidMessage(f"property '{what}' must be a string or a list of strings")
            checkHeaderValue(what, item)
            _setHeader(message, what, name, item)

    if "Date" not in message:
        message["Date"] = _rfc5322Date(now)
    if "Message-ID" not in message:
        checkHeaderValue("hostname", hostname)
        message["Message-ID"] = f"<{uuid.uuid4().hex}@{hostname}>"
    message["MIME-Version"] = "1.0"

    bodies = [_textPart(t, sub) for t, sub in ((text, "plain"), (html, "html")) if t is not None]
    parts = [_attachment(i, a) for i, a in enumerate(attachments)]
    if len(bodies) == 2:
        alternative = MIMEPart(_POLICY)
        alternative["Content-Type"] = "multipart/alternative"
        for body in bodies:
            alternative.attach(body)
        bodies = [alternative]
    if not parts:
        # a single part's content fields become the message's own
        for name, value in bodies[0].items():
            message[name] = value
        message.set_payload(bodies[0].get_payload())
    else:
        parts = bodies + parts
        message["Content-Type"] = "multipart/mixed"
        for part in parts:
            message.attach(part)  # type: ignore[arg-type]
    try:
        built = message.as_bytes(policy=_POLICY)
    except (UnicodeEncodeError, *_PARSER_FAILURES):
        raise _unwritable(message, extra) from None
    head = built[: built.find(b"\r\n\r\n")]
    field = b""
    for line in head.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t"):
            field = line.partition(b":")[0]
        if len(line) > _HARD_LINE:
            raise InvalidMessage(
                f"the {shownName(field.decode('ascii'))} header has a word longer than a "
                f"line may be ({_HARD_LINE} characters, RFC 5322); shorten it"
            )
    return built
