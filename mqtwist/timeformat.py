"""
The time format of the JSON messages: UTC C{YYYY-MM-DD HH:MM:SS}.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache

_FORMAT = "%Y-%m-%d %H:%M:%S"


def formatTime(seconds: float) -> str:
    """
    Format a POSIX timestamp as the messages' UTC time string.
    """
    return _formatSecond(math.floor(seconds))


# every message formats the same few seconds several times over
@lru_cache(maxsize=128)
def _formatSecond(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime(_FORMAT)


# the messages parked together carry the same few times, read at every
# park (strptime takes microseconds a call)
@lru_cache(maxsize=128)
def parseTime(text: str) -> float:
    """
    Parse the messages' UTC time string into a POSIX timestamp.

    @raise ValueError: when C{text} is not C{YYYY-MM-DD HH:MM:SS}.
    @raise TypeError: when C{text} is not a string.
    """
    parsed = datetime.strptime(text, _FORMAT)
    return parsed.replace(tzinfo=UTC).timestamp()
