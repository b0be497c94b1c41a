"""
The C{headers} property of an outbox message: edits of the header block
applied to the message before it is signed and sent, with the meaning
MailerQ 5.6 gives them ("Changing the MIME headers").

C{headers} is an object with any of these keys; they are applied in this
order, whatever their order in the JSON:

  1. C{remove}: a header name, or a list of them.  Every field of each name
     is deleted.
  2. C{replace}: an object name -> value (or list of values).  When the
     message has fields of that name, the new value(s) take the place of
     the first one and the others are deleted; a name the message does not
     have is added at the end of the header block.
  3. C{update}: like C{replace}, but a name the message does not have is
     left out (update never adds).
  4. C{prepend}: an object name -> value (or list of values), added at the
     top of the header block in the order given (the first one ends up
     first), before anything already there, as trace fields are.
  5. C{append}, then C{add} (MailerQ's other name for it): an object
     name -> value (or list of values), added at the end of the header block
     in the order given.

A key that is none of these is not an edit: it is ignored (with a C{debug}
log line when the job is parsed) and, like every part of the job, copied
into its results, as MailerQ does with what it does not know.

Header names are matched without regard to case.  Names must be RFC 5322
field names (printable ASCII but C{":"}); values must not hold CR, LF or
other control characters, so that no edit can inject a field or end the
header block.  Non-ASCII values are written as RFC 2047 encoded words, and
long values are folded to 78 columns.

The edits work on the bytes of the header block alone: the body, everything
after the blank line that ends the header block, is kept byte for byte, so
a 100 KB body costs nothing here and a body that a sender built by hand is
never re-encoded.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Mapping
from email.errors import HeaderParseError
from typing import Any

from twisted.logger import Logger

from mqtwist.errors import InvalidMessage
from mqtwist.validation import checkHeaderValue, excerpt, shownName

__all__ = [
    "EDIT_KINDS",
    "applyHeaderEdits",
    "checkHeaderEdits",
    "checkHeaderName",
    "foldHeader",
]

#: the keys of the C{headers} property, in the order they are applied
EDIT_KINDS = ("remove", "replace", "update", "prepend", "append", "add")
#: the edits whose value is an object header name -> value(s)
_VALUED_KINDS = EDIT_KINDS[1:]

_log = Logger()

# RFC 5322 section 2.2 / 3.6.8: ftext = %d33-57 / %d59-126
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_FIELD_START = re.compile(rb"[!-9;-~]+:")
# RFC 5322 section 2.1.1: no line longer than 998 characters without CRLF
_MAX_LINE = 998


def checkHeaderName(what: str, name: Any) -> str:
    """
    Check that C{name} is a header field name (RFC 5322 ftext).

    @param what: what the name is, for the description (C{"headers.append"}).
    @return: C{name} unchanged.
    @raise InvalidMessage: naming C{what} and the name.
    """
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
        raise InvalidMessage(
            f"{what}: {excerpt(name)} is not a header field name; use printable "
            f"ASCII without spaces or ':' (RFC 5322)"
        )
    return name


def _values(what: str, name: str, value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    field = f"{what}.{shownName(name)}"
    if not values or not all(isinstance(v, str) for v in values):
        raise InvalidMessage(f"{field} must be a string or a non-empty list of strings")
    for v in values:
        checkHeaderValue(field, v)
    return values


def _unknownKinds(edits: Any) -> list[str]:
    """
    Check the C{headers} property (see L{checkHeaderEdits}).

    @return: its keys that are not edits, which are ignored.
    """
    if not isinstance(edits, dict):
        raise InvalidMessage(
            "property 'headers' must be an object with any of "
            f"{', '.join(EDIT_KINDS)}"
        )
    unknown = []
    for kind, value in edits.items():
        what = f"headers.{kind}"
        if kind not in EDIT_KINDS:
            unknown.append(kind)
        elif kind == "remove":
            if isinstance(value, str):
                checkHeaderName(what, value)
            elif isinstance(value, list):
                for name in value:
                    checkHeaderName(what, name)
            else:
                raise InvalidMessage(f"{what} must be a header name or a list of them")
        elif not isinstance(value, dict):
            raise InvalidMessage(f"{what} must be an object header name -> value")
        else:
            for name, item in value.items():
                checkHeaderName(what, name)
                _values(what, name, item)
    return unknown


def checkHeaderEdits(edits: Any) -> None:
    """
    Check the C{headers} property of an outbox message, so that a bad one is
    refused when the message is parsed rather than when it is sent.  Keys
    that are not edits are ignored (logged at C{debug}).

    @raise InvalidMessage: naming the edit and the header at fault.
    """
    unknown = _unknownKinds(edits)
    if unknown:
        _log.debug(
            "headers: ignoring {keys}, which are not edits (edits are {kinds})",
            keys=", ".join(excerpt(kind) for kind in unknown),
            kinds=", ".join(EDIT_KINDS),
        )


def foldHeader(what: str, name: str, value: str, linesep: bytes = b"\r\n") -> bytes:
    """
    One header field, C{name: value}, as bytes ready for the header block:
    non-ASCII as RFC 2047 encoded words, folded at 78 columns, ended by
    C{linesep}.

    @param what: what the field is, for the description.
    @raise InvalidMessage: when the name or value is not acceptable, or the
        field cannot be written within the line length limit of RFC 5322.
    """
    checkHeaderName(what, name)
    field = f"{what}.{shownName(name)}"
    checkHeaderValue(field, value)
    policy = email.policy.SMTP.clone(linesep=linesep.decode("ascii"))
    try:
        # through the header registry, so that address fields get their
        # display names encoded and free text its encoded words
        folded: bytes = policy.header_factory(name, value).fold(policy=policy).encode("ascii")
    except (HeaderParseError, ValueError, UnicodeError) as e:
        raise InvalidMessage(f"{field}: the value cannot be written as a header: {e}") from None
    except (IndexError, AttributeError, TypeError):
        # the email package's parser of structured fields fails so on some
        # malformed values (To: "<", Reply-To: ".:?:"); uncaught, it would
        # end the delivery attempt as a bug instead of refusing the message
        raise InvalidMessage(
            f"{field}: {excerpt(value)} cannot be written as a {shownName(name)} "
            f"field; check its syntax (RFC 5322)"
        ) from None
    if any(len(line) > _MAX_LINE for line in folded.split(linesep)):
        raise InvalidMessage(
            f"{field} has a word too long for a header line of "
            f"{_MAX_LINE} characters (RFC 5322); shorten it"
        )
    return folded


def splitHeaderBlock(mime: bytes) -> tuple[list[bytes], bytes, bytes]:
    """
    Cut a message into its header fields and the rest.

    @return: the fields (each with its continuation lines and line ends),
        the line ending the header block uses (C{b"\\r\\n"} or C{b"\\n"}),
        and everything from the blank line on (the separator and the body,
        as they are; C{b""} when the message has no body).
    """
    crlf = mime.find(b"\r\n\r\n")
    # an LF-only blank line counts only before the first CRLF one; looking
    # no further keeps this from scanning a whole 100 KB body
    lf = mime.find(b"\n\n", 0, len(mime) if crlf == -1 else crlf + 2)
    if lf != -1 and (crlf == -1 or lf < crlf - 1):
        end, linesep = lf + 1, b"\n"
    elif crlf != -1:
        end, linesep = crlf + 2, b"\r\n"
    else:
        end = len(mime)
        linesep = b"\r\n" if b"\r\n" in mime or b"\n" not in mime else b"\n"
    if mime.startswith(linesep):
        # no header at all: the message starts with the blank line
        return [], linesep, mime
    head, rest = mime[:end], mime[end:]
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    if fields and not fields[-1].endswith(b"\n"):
        fields[-1] += linesep
    return fields, linesep, rest


def _fieldName(field: bytes) -> bytes:
    match = _FIELD_START.match(field)
    return match.group()[:-1].lower() if match else b""


def editedLength(edits: Mapping[str, Any]) -> int:
    """
    The characters of the values of C{edits} (checked ones, see
    L{checkHeaderEdits}): what applying them costs grows with it.  Names
    to remove and keys that are not edits cost nothing.
    """
    return sum(
        len(value) if isinstance(value, str) else sum(map(len, value))
        for kind in _VALUED_KINDS
        for value in edits.get(kind, {}).values()
    )


def applyHeaderEdits(mime: bytes, edits: Mapping[str, Any]) -> bytes:
    """
    Apply the C{headers} edits of an outbox message to C{mime} (see the
    module docstring for what each edit does).

    @param mime: the message, with CRLF or LF line endings; fields added are
        written with the line ending its header block uses.
    @return: the edited message; the body is the same bytes.
    @raise InvalidMessage: when C{edits} is malformed (see
        L{checkHeaderEdits}).
    """
    _unknownKinds(edits)
    fields, linesep, rest = splitHeaderBlock(mime)

    def rendered(kind: str, name: str, value: Any) -> list[bytes]:
        return [
            foldHeader(f"headers.{kind}", name, v, linesep)
            for v in _values(f"headers.{kind}", name, value)
        ]

    remove = edits.get("remove", ())
    if isinstance(remove, str):
        remove = [remove]
    removed = {name.lower().encode("ascii") for name in remove}
    if removed:
        fields = [f for f in fields if _fieldName(f) not in removed]

    for kind in ("replace", "update"):
        for name, value in edits.get(kind, {}).items():
            key = name.lower().encode("ascii")
            positions = [i for i, f in enumerate(fields) if _fieldName(f) == key]
            new = rendered(kind, name, value)
            if positions:
                first = positions[0]
                kept = [f for i, f in enumerate(fields) if i not in positions[1:]]
                fields = kept[:first] + new + kept[first + 1 :]
            elif kind == "replace":
                fields.extend(new)

    prepended = [
        f
        for name, value in edits.get("prepend", {}).items()
        for f in rendered("prepend", name, value)
    ]
    appended = [
        f
        for kind in ("append", "add")
        for name, value in edits.get(kind, {}).items()
        for f in rendered(kind, name, value)
    ]
    if not rest:
        rest = linesep
    return b"".join(prepended + fields + appended) + rest
