"""
The time format of the JSON messages: UTC C{YYYY-MM-DD HH:MM:SS}.
"""

from __future__ import annotations

from datetime import datetime, timezone

_FORMAT = "%Y-%m-%d %H:%M:%S"


def formatTime(seconds: float) -> str:
    """
    Format a POSIX timestamp as the messages' UTC time string.
    """
    return datetime.fromtimestamp(seconds, timezone.utc).strftime(_FORMAT)


def parseTime(text: str) -> float:
    """
    Parse the messages' UTC time string into a POSIX timestamp.

    @raise ValueError: when C{text} is not C{YYYY-MM-DD HH:MM:SS}.
    """
    parsed = datetime.strptime(text, _FORMAT)
    return parsed.replace(tzinfo=timezone.utc).timestamp()
