"""
The arguments of C{MAIL FROM} and C{RCPT TO} (RFC 5321 4.1.2, the ESMTP
parameters of RFC 1870, 3461, 6152 and 6531): the path in angle brackets,
then C{KEYWORD[=VALUE]} parameters.  Anything refused raises L{Refused}
with the reply to give.

What is accepted of the old address forms, and why (see
C{docs/submission.rst}):

  - a source route (C{<@relay1,@relay2:user@example.com>}) is stripped, as
    RFC 5321 (section 4.1.1.3 and appendix C) says a server should: the
    mail goes to C{user@example.com}, never through the hops;
  - a percent hack (C{user%other@example.com}) or a bang path
    (C{host!user@example.com}) is a local part like any other, handed to
    the domain after the last C{@}: mqtwist never reads a route out of a
    local part, so it cannot relay through one;
  - a quoted local part (C{"user@other"@example.com}) is refused (553),
    since the delivery engine takes only dot-atom local parts and would
    bounce it later;
  - an address without a domain (C{<postmaster>}) is refused: mqtwist
    delivers nothing locally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mqtwist.errors import InvalidMessage
from mqtwist.validation import checkAddress, checkHeaderValue


class Refused(Exception):
    """
    A command is refused with the reply C{code} C{enhanced} C{text}.

    @ivar reason: the bounded name the metrics count the refusal by.
    """

    def __init__(self, code: int, enhanced: str, text: str, reason: str = "syntax") -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.reason = reason


#: RFC 5321 4.5.3.1.3: a path of 256 octets at most, angle brackets included
MAX_PATH = 256
#: RFC 3461 4.4: ENVID of 100 characters at most
MAX_ENVID = 100
#: RFC 3461 4.2: ORCPT's xtext of 500 characters at most
MAX_ORCPT = 500

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
#: RFC 5321 esmtp-value, widened to UTF-8 by RFC 6531
_VALUE = re.compile(r"[^\x00-\x20=\x7f]+\Z")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*\Z")
_GRAPHIC = re.compile(r"[!-~]+\Z")
_ROUTE = re.compile(r"@[^,:@]+(?:,@[^,:@]+)*:")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


@dataclass
class MailArguments:
    """
    What C{MAIL FROM} said: the reverse path and its parameters.
    """

    sender: str
    size: int | None = None
    body: str | None = None
    ret: str | None = None
    envid: str | None = None
    smtputf8: bool = False
    auth: str | None = None


@dataclass
class RcptArguments:
    """
    What C{RCPT TO} said: the forward path and its DSN parameters.
    """

    recipient: str
    notify: tuple[str, ...] = ()
    orcpt: str | None = None


def xtextDecode(text: str) -> str:
    """
    Decode RFC 3461 xtext: each C{+XX} (two upper-case hexadecimal digits)
    is the byte XX, and the bytes are read as UTF-8, as
    L{mqtwist.delivery.transaction.xtext} encodes them.

    @raise ValueError: when C{text} is not xtext (a C{+} without two
        upper-case hexadecimal digits, a character that must be encoded),
        or encodes bytes that are not UTF-8.
    """
    if not _XTEXT.match(text):
        raise ValueError(
            f"{text!r} is not xtext (RFC 3461 section 4): '+' must be followed by two upper-case "
            f"hexadecimal digits, and '=', spaces and controls encoded as +XX"
        )
    try:
        return re.sub(
            r"(?:\+[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group(0).replace("+", "")).decode("utf-8"), text
        )
    except UnicodeDecodeError:
        raise ValueError(f"the xtext {text!r} encodes bytes that are not UTF-8") from None


def _graphic(text: str) -> bool:
    """C{text} is printable US-ASCII without the space (0x21 to 0x7E), as RFC 3461 has ENVID and ORCPT."""
    return _GRAPHIC.match(text) is not None


def splitPath(argument: str, prefix: str, enhanced: str) -> tuple[str, str]:
    """
    Split C{FROM:<path> params} (or C{TO:...}) into the path without its
    angle brackets and the text of the parameters.

    @param prefix: C{"FROM:"} or C{"TO:"}.
    @param enhanced: the enhanced code of a bad address (C{5.1.7} for the
        sender, C{5.1.3} for a recipient).
    @raise Refused: 501 for a missing prefix, brackets, or a control
        character.
    """
    verb = "MAIL FROM" if prefix == "FROM:" else "RCPT TO"
    if argument[: len(prefix)].upper() != prefix:
        raise Refused(501, "5.5.4", f"Syntax: {verb}:<address>")
    rest = argument[len(prefix) :].lstrip(" ")
    if not rest.startswith("<"):
        raise Refused(501, enhanced, f"Syntax: {verb}:<address>, the address in angle brackets")
    # the closing bracket, outside a quoted string
    quoted = escaped = False
    for at in range(1, len(rest)):
        char = rest[at]
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            break
    else:
        raise Refused(501, enhanced, f"Syntax: {verb}:<address>, the closing '>' is missing")
    path, parameters = rest[1:at], rest[at + 1 :]
    try:
        checkHeaderValue("address", path)
    except InvalidMessage:
        raise Refused(501, enhanced, "Bad address syntax: control characters are not allowed in an address") from None
    if len(path) + 2 > MAX_PATH:
        raise Refused(501, enhanced, f"Bad address syntax: a path has {MAX_PATH} characters at most")
    if parameters and not parameters.startswith(" "):
        raise Refused(501, "5.5.4", f"Syntax: {verb}:<address> [parameters], a space after '>'")
    return path, parameters.strip(" ")


def parameters(text: str) -> list[tuple[str, str | None]]:
    """
    The C{KEYWORD[=VALUE]} parameters of C{text}, keywords in upper case.

    @raise Refused: 501 5.5.4 for a malformed one.
    """
    found = []
    for item in text.split(" "):
        if not item:
            continue
        keyword, equals, value = item.partition("=")
        if not _KEYWORD.match(keyword) or (equals and not _VALUE.match(value)):
            raise Refused(501, "5.5.4", f"Bad parameter syntax: {replyText(item)}")
        found.append((keyword.upper(), value if equals else None))
    return found


def _mailbox(path: str, enhanced: str, utf8: bool, what: str) -> str:
    """
    The mailbox of C{path}: its source route stripped, checked as the
    delivery engine checks an address.

    @raise Refused: 553 for what it refuses.
    """
    route = _ROUTE.match(path)
    if route:
        path = path[route.end() :]
    if not utf8 and not path.isascii():
        raise Refused(
            553, "5.6.7", f"Non-ASCII {what} address without SMTPUTF8: say SMTPUTF8 in MAIL FROM", "utf8"
        )
    local, at, domain = path.rpartition("@")
    if not at:
        raise Refused(553, enhanced, f"Bad {what} address syntax: give local@domain (no local delivery here)")
    if local.startswith('"'):
        raise Refused(553, enhanced, f"Bad {what} address syntax: quoted local parts are not accepted")
    try:
        checkAddress(what, path)
    except InvalidMessage:
        raise Refused(553, enhanced, f"Bad {what} address syntax: {replyText(path)}") from None
    return path


def mailArguments(argument: str, *, maxSize: int) -> MailArguments:
    """
    Parse the argument of C{MAIL} (C{FROM:<sender> params}).

    @param maxSize: the SIZE limit, for a C{SIZE=} beyond it.
    @raise Refused: with the reply to give.
    """
    path, text = splitPath(argument, "FROM:", "5.1.7")
    found = parameters(text)
    mail = MailArguments(sender="")
    seen: set[str] = set()
    for keyword, value in found:
        if keyword in seen:
            raise Refused(501, "5.5.4", f"{keyword} given twice")
        seen.add(keyword)
        if keyword == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                raise Refused(501, "5.5.4", "Bad SIZE parameter: give the size in bytes")
            mail.size = int(value)
            if mail.size > maxSize:
                raise Refused(552, "5.3.4", f"Message size exceeds fixed limit of {maxSize} bytes", "size")
        elif keyword == "BODY":
            body = (value or "").upper()
            if body not in ("7BIT", "8BITMIME"):
                raise Refused(501, "5.5.4", "Bad BODY parameter: 7BIT or 8BITMIME (BINARYMIME is not offered)")
            mail.body = body
        elif keyword == "SMTPUTF8":
            if value is not None:
                raise Refused(501, "5.5.4", "SMTPUTF8 takes no value")
            mail.smtputf8 = True
        elif keyword == "RET":
            ret = (value or "").upper()
            if ret not in ("FULL", "HDRS"):
                raise Refused(501, "5.5.4", "Bad RET parameter: FULL or HDRS")
            mail.ret = ret
        elif keyword == "ENVID":
            try:
                envid = xtextDecode(value or "")
            except ValueError:
                raise Refused(501, "5.5.4", "Bad ENVID parameter: give xtext (RFC 3461)") from None
            if not _graphic(envid):
                raise Refused(
                    501, "5.5.4", "Bad ENVID parameter: it must decode to printable US-ASCII, no spaces or controls"
                )
            if len(value or "") > MAX_ENVID:
                raise Refused(501, "5.5.4", f"Bad ENVID parameter: 1 to {MAX_ENVID} characters of xtext")
            mail.envid = envid
        elif keyword == "AUTH":
            # RFC 4954 5: the authorized identity of a relayed message; a
            # submission server may ignore it
            mail.auth = value
        else:
            raise Refused(555, "5.5.4", f"Unsupported MAIL FROM parameter {replyText(keyword)}")
    if path == "":
        return mail
    mail.sender = _mailbox(path, "5.1.7", mail.smtputf8, "sender")
    return mail


def rcptArguments(argument: str, *, smtputf8: bool) -> RcptArguments:
    """
    Parse the argument of C{RCPT} (C{TO:<recipient> params}).

    @param smtputf8: C{MAIL FROM} had C{SMTPUTF8}.
    @raise Refused: with the reply to give.
    """
    path, text = splitPath(argument, "TO:", "5.1.3")
    if path == "":
        raise Refused(501, "5.1.3", "Bad recipient address syntax: the null path <> is a sender only")
    rcpt = RcptArguments(recipient=_mailbox(path, "5.1.3", smtputf8, "recipient"))
    seen: set[str] = set()
    for keyword, value in parameters(text):
        if keyword in seen:
            raise Refused(501, "5.5.4", f"{keyword} given twice")
        seen.add(keyword)
        if keyword == "NOTIFY":
            values = tuple((value or "").upper().split(","))
            if values != ("NEVER",) and not (values and all(v in _NOTIFY for v in values)):
                raise Refused(501, "5.5.4", "Bad NOTIFY parameter: NEVER, or SUCCESS, FAILURE and DELAY")
            if len(set(values)) != len(values):
                raise Refused(501, "5.5.4", "Bad NOTIFY parameter: a value given twice")
            rcpt.notify = values
        elif keyword == "ORCPT":
            addrType, semicolon, xtext = (value or "").partition(";")
            try:
                decoded = xtextDecode(xtext)
            except ValueError:
                xtext = ""
            if not semicolon or not _ADDR_TYPE.match(addrType) or not xtext or len(value or "") > MAX_ORCPT:
                raise Refused(501, "5.5.4", "Bad ORCPT parameter: give addr-type;xtext, e.g. rfc822;user@example.com")
            if not _graphic(decoded):
                raise Refused(
                    501, "5.5.4", "Bad ORCPT parameter: the address must decode to printable US-ASCII, no spaces"
                )
            rcpt.orcpt = value
        else:
            raise Refused(555, "5.5.4", f"Unsupported RCPT TO parameter {replyText(keyword)}")
    return rcpt


def replyText(text: str, limit: int = 40) -> str:
    """
    C{text} in a reply line: printable ASCII (any other character a C{?}),
    cut at C{limit} characters.
    """
    shown = "".join(char if " " <= char <= "~" else "?" for char in text[:limit])
    return shown + ("..." if len(text) > limit else "")
