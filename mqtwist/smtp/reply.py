"""
SMTP replies: the L{Reply} value and the parser that builds it from the
lines a server sends (RFC 5321 section 4.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mqtwist.errors import AttemptFailed

# RFC 3463: class.subject.detail, at the start of the reply text
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|$)")


@dataclass(frozen=True)
class Reply:
    """
    One complete (possibly multi-line) SMTP reply.

    @ivar code: the three-digit reply code.
    @ivar lines: the text of each line, without the code and the separator
        (and with the enhanced status code, when there is one, still in front).
    @ivar status: the enhanced status code (RFC 3463, e.g. C{"5.1.1"}) found at
        the start of the first line's text, or C{None}.
    """

    code: int
    lines: tuple[str, ...]
    status: str | None = None

    @classmethod
    def fromLines(cls, code: int, lines: tuple[str, ...]) -> Reply:
        """
        Make a reply, finding its enhanced status code in the first line.
        """
        match = _STATUS.match(lines[0]) if lines else None
        # a status whose class differs from the code's is not one (RFC 3463 2)
        status = match.group(0) if match and match.group(1) == str(code)[0] else None
        return cls(code, lines, status)

    @property
    def text(self) -> str:
        """
        The description for result entries and logs: the lines joined with a
        space, with the enhanced status code removed from the front of each
        line that repeats it (it is published separately as C{status}).
        """
        if self.status is None:
            return " ".join(self.lines).strip()
        prefix = self.status
        parts = []
        for line in self.lines:
            if line.startswith(prefix):
                line = line[len(prefix):].lstrip()
            parts.append(line)
        return " ".join(parts).strip()

    @property
    def positive(self) -> bool:
        """C{True} for 2xx and 3xx replies."""
        return self.code < 400

    @property
    def transient(self) -> bool:
        """C{True} for 4xx replies: the same command may work later."""
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        """C{True} for 5xx replies: repeating the command will not help."""
        return self.code >= 500

    def failure(self, state: str) -> AttemptFailed:
        """
        The L{AttemptFailed} that this (negative) reply makes of the step
        C{state}.
        """
        return AttemptFailed(
            state,
            "error",
            self.text or f"the server replied {self.code} without text",
            code=self.code,
            status=self.status,
            permanent=self.permanent,
        )

    def __str__(self) -> str:
        return f"{self.code} {' / '.join(self.lines)}"


class MalformedReply(Exception):
    """
    The server sent something that is not an SMTP reply; the message says
    what and shows the offending line.
    """


class ReplyParser:
    """
    Collects the lines of multi-line replies.

    Feed it one line at a time (without the line ending); it returns a
    L{Reply} when the line completed one and C{None} when more lines belong
    to the reply.

    @cvar maxLines: lines one reply may have; more is a L{MalformedReply}
        (a server that never ends its reply must not exhaust memory).
    """

    maxLines = 1000

    def __init__(self) -> None:
        self._code: int | None = None
        self._lines: list[str] = []

    def lineReceived(self, line: bytes) -> Reply | None:
        """
        Take one reply line.

        @raise MalformedReply: when the line does not start with a reply code
            and separator, when a continuation line changes the code, or when
            the reply has too many lines.
        """
        match = _REPLY_LINE.match(line)
        if match is None:
            raise MalformedReply(f"malformed reply line {_show(line)}: it must start with a code 200-599")
        code = int(match.group(1))
        if self._code is not None and code != self._code:
            raise MalformedReply(
                f"reply line {_show(line)} changes the code of a multi-line reply from {self._code}"
            )
        if len(self._lines) >= self.maxLines:
            raise MalformedReply(f"reply with more than {self.maxLines} lines")
        self._code = code
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if match.group(2) == b"-":
            return None
        reply = Reply.fromLines(code, tuple(self._lines))
        self._code = None
        self._lines = []
        return reply


def _show(line: bytes, limit: int = 80) -> str:
    shown = repr(line[:limit])
    return shown + "..." if len(line) > limit else shown
