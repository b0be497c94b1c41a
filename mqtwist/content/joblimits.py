"""
The limits of what one outbox job may hold, and JSON out that always encodes.

A job is JSON from whoever can publish to the outbox.  Before mqtwist reads
any property of it, L{checkLimits} makes sure that it is not too big, too
deep or too wide and holds no lone surrogate (a C{"\\ud800"} escape, which
JSON's grammar lets through but UTF-8 cannot encode: it would break every
result built from the job).  One exception: a job's C{mime} string may
carry the bytes of a message that are not UTF-8 (an 8-bit ISO-8859-1 body
taken in over SMTP) as the escapes C{"\\udc80"} to C{"\\udcff"}, Python's
C{surrogateescape} form of the bytes 0x80 to 0xFF, which the message is
sent with; L{encodeJSON} keeps them so.  The walk is a loop over an explicit stack, so
no input can exhaust Python's recursion; only C{json.loads} itself recurses,
and its own guard turns a job nested too deep for it into a L{RecursionError}
that L{mqtwist.content.message.decodeJSON} reports like any other limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mqtwist.errors import InvalidMessage
from mqtwist.validation import excerpt

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
#: the lone surrogates that are not a byte of a message in C{mime}
_NOT_A_BYTE = re.compile("[\ud800-\udc7f\udd00-\udfff]")
#: what stands for a job's C{mime} while the rest is encoded
_MIME_PLACE = "\ue000mqtwist mime\ue000"


@dataclass(frozen=True)
class JobLimits:
    """
    How big an outbox job may be.  A job past any of them is refused as
    C{process}/C{invalid}, naming the limit and the setting that raises it.
    """

    #: bytes of the whole job as published (the C{mime} included)
    maxBytes: int = 64 * 1024 * 1024
    #: objects and lists inside one another (the job itself is depth 1)
    maxDepth: int = 32
    #: keys of one object, items of one list
    maxItems: int = 10_000
    #: characters of one key, and of one string outside the C{mime}
    #: property (whose content only C{maxBytes} bounds)
    maxString: int = 65_536


#: the settings that raise each limit, for the descriptions
_SETTING = {
    "maxBytes": "--max-job-bytes",
    "maxDepth": "--max-job-depth",
    "maxItems": "--max-job-items",
    "maxString": "--max-job-string",
}


def checkSize(size: int, limits: JobLimits) -> None:
    """
    Refuse a job of C{size} bytes when it is over C{limits.maxBytes}, before
    it is parsed.

    @raise InvalidMessage: saying the size and the limit.
    """
    if size > limits.maxBytes:
        raise InvalidMessage(
            f"the message is {size} bytes, more than the {limits.maxBytes} bytes an outbox "
            f"job may have ({_SETTING['maxBytes']}); send a smaller message"
        )


def tooDeep(limits: JobLimits) -> InvalidMessage:
    """
    The error of a job nested deeper than the JSON parser goes.
    """
    return InvalidMessage(
        f"the message nests objects and lists deeper than the {limits.maxDepth} levels an "
        f"outbox job may have ({_SETTING['maxDepth']}); flatten it"
    )


def checkLimits(job: dict[str, Any], limits: JobLimits) -> None:
    """
    Walk the parsed job C{job} without recursion and refuse it at the first
    value past C{limits} or holding a lone surrogate.

    @raise InvalidMessage: naming where in the job the value is (C{x[0][1]},
        C{mime.html}), the limit and the setting that raises it.
    """
    # (where, value, depth, inside mime)
    stack: list[tuple[str, Any, int, bool]] = [("", job, 1, False)]
    while stack:
        where, value, depth, inMime = stack.pop()
        if isinstance(value, str):
            if not inMime and len(value) > limits.maxString:
                raise InvalidMessage(
                    f"property {_place(where)} is {len(value)} characters long, more than the "
                    f"{limits.maxString} a string of an outbox job may have outside 'mime' "
                    f"({_SETTING['maxString']}): {excerpt(value)}"
                )
            # isascii() is a flag, not a scan: the megabytes of a mime cost nothing
            if not value.isascii():
                # the job's own mime may carry bytes that are not UTF-8
                refused = _NOT_A_BYTE if where == "mime" else _LONE_SURROGATE
                _checkSurrogates(f"property {_place(where)}", value, refused)
            continue
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
        else:
            continue
        name = _place(where) if where else "the message"
        if depth > limits.maxDepth:
            raise InvalidMessage(
                f"property {name} is nested {depth} levels deep, more than the "
                f"{limits.maxDepth} an outbox job may have ({_SETTING['maxDepth']}); flatten it"
            )
        if len(value) > limits.maxItems:
            raise InvalidMessage(
                f"{'' if not where else 'property '}{name} has {len(value)} "
                f"{'keys' if isinstance(value, dict) else 'items'}, more than the "
                f"{limits.maxItems} an object or list of an outbox job may have "
                f"({_SETTING['maxItems']})"
            )
        for key, item in items:
            if isinstance(value, dict):
                # keys are names, never content: limited inside mime too
                if len(key) > limits.maxString:
                    raise InvalidMessage(
                        f"a key of {name} is {len(key)} characters long, more than the "
                        f"{limits.maxString} allowed ({_SETTING['maxString']}): {excerpt(key)}"
                    )
                if not key.isascii():
                    _checkSurrogates(f"a key of {name}", key)
                key = f"{where}.{key}" if where else key
            stack.append((key, item, depth + 1, inMime or key == "mime"))


def _place(where: str) -> str:
    # a path of long keys must not make a long description
    return excerpt(where, 60)


def _checkSurrogates(named: str, text: str, refused: re.Pattern[str] = _LONE_SURROGATE) -> None:
    match = refused.search(text)
    if match is not None:
        raise InvalidMessage(
            f"{named} holds a lone surrogate (\\u{ord(match.group()):04x}) at "
            f"character {match.start()}, which is no Unicode character and cannot be written "
            f"as UTF-8: {excerpt(text)}; escape only characters, and both halves of a pair"
        )


def encodeJSON(value: Any) -> bytes:
    """
    C{value} as UTF-8 JSON, whatever strings it holds: the bytes of a
    message that are not UTF-8, in the C{mime} of a job, stay escaped
    (C{"\\udce9"}), so that the job is read back with them; any other
    lone surrogate (from a plugin, or a bug) becomes U+FFFD instead of
    failing the encoding, so a result can always be published.
    """
    text = json.dumps(value, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    mime = value.get("mime") if isinstance(value, dict) else None
    if isinstance(mime, str) and not mime.isascii():
        # the rest as it would be, the mime with its surrogates escaped
        text = json.dumps(dict(value, mime=_MIME_PLACE), ensure_ascii=False)
        place = json.dumps(_MIME_PLACE, ensure_ascii=False)
        if text.count(place) == 1:
            text = text.replace(place, _escapeSurrogates(json.dumps(mime, ensure_ascii=False)))
    return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def encodeMime(mime: str) -> bytes:
    """
    The JSON string of a job's C{mime} (for a job encoded in parts), as
    L{encodeJSON} encodes it in a job: UTF-8, with the bytes of a message
    that are not UTF-8 escaped.
    """
    text = json.dumps(mime, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _escapeSurrogates(text).encode("utf-8")


def _escapeSurrogates(text: str) -> str:
    return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
