"""
Log events as JSON lines (C{--log-format json}), beside twistd's readable
text: one object per event, for log collectors that read fields rather
than sentences.

An object has C{time} (UTC, RFC 3339, milliseconds), C{level},
C{namespace}, C{text} (the event's format string rendered, as the text log
shows it), C{system} when Twisted names one, C{failure} (the traceback)
for an event logged with one, and C{fields}: the event's own named fields
whose values are JSON (strings, numbers, booleans, null, and lists and
objects of them up to L{_DEPTH} levels deep); the others (objects of
mqtwist or Twisted) are left out.
Nothing here formats an event that the level filter of
L{mqtwist.loglevel.LogLevelService} drops: the filter comes first.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

#: the values of C{--log-format}
FORMATS = ("text", "json")

#: the keys of legacy events (C{twisted.python.log.msg}) that repeat what
#: the object has already (C{text}, C{time}, C{system}, C{failure})
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "why", "failure"})

#: how deep lists and objects of a field are followed
_DEPTH = 8


def checkLogFormat(name: str) -> None:
    """
    @raise ValueError: when C{name} is not one of L{FORMATS}.
    """
    if name not in FORMATS:
        raise ValueError(f"{name!r} is not a log format; use one of {', '.join(FORMATS)}")


def _jsonValue(value: object, depth: int = 0) -> bool:
    """
    Whether C{value} is written as JSON as it is.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= _DEPTH:
        return False
    if isinstance(value, (list, tuple)):
        return all(_jsonValue(item, depth + 1) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _jsonValue(item, depth + 1) for key, item in value.items())
    return False


def _utc(seconds: float) -> str:
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


def eventAsJSON(event: LogEvent) -> str:
    """
    The JSON object of one log event, on one line (without the newline).
    """
    level = event.get("log_level")
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": _utc(time.time() if when is None else when),
        "level": getattr(level, "name", None),
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    system = event.get("log_system")
    if system is not None and system != "-":
        record["system"] = str(system)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["failure"] = failure.getTraceback()
    legacy = event.get("log_namespace") == "log_legacy"
    fields = {
        key: value
        for key, value in event.items()
        if not key.startswith("log_") and not (legacy and key in _LEGACY_KEYS) and _jsonValue(value)
    }
    if fields:
        record["fields"] = fields
    # ensure_ascii: a line break or control character in a value never
    # starts a line of its own
    return json.dumps(record, separators=(",", ":"))


def jsonFileLogObserver(outFile: IO[str]) -> ILogObserver:
    """
    An observer that writes each event to C{outFile} as a JSON line, and
    flushes it.
    """
    observer: ILogObserver = FileLogObserver(outFile, lambda event: eventAsJSON(event) + "\n")
    return observer


#: where L{twistdObserver} writes: twistd's C{--logfile} and C{--nodaemon},
#: as L{useUnderTwistd} was told them
_twistdDestination: tuple[str | None, bool] = (None, True)


def useUnderTwistd(logfile: str | None, nodaemon: bool) -> str:
    """
    Prepare L{twistdObserver} for twistd's C{--logfile} and C{--nodaemon}.

    @return: the name to give twistd as its C{--logger}: twistd resolves a
        name, not a callable, after the subcommand's options are read.
    @raise ValueError: for standard output without C{-n}, where a daemon
        has none, as twistd refuses it.
    """
    global _twistdDestination
    if logfile == "-" and not nodaemon:
        raise ValueError("a daemon cannot log to standard output; give -n (--nodaemon) or a --logfile")
    _twistdDestination = (logfile, nodaemon)
    return f"{__name__}.{twistdObserver.__name__}"


def twistdObserver() -> ILogObserver:
    """
    twistd's initial log observer (its C{--logger}) for C{--log-format
    json}: JSON lines where twistd would write its text, so that its own
    lines are JSON too.  The file is as twistd chooses it: standard output
    for C{--logfile -} or C{-n} without C{--logfile}, else the file of
    C{--logfile} (C{twistd.log} by default), rotated at 1 MB and on SIGUSR1
    as twistd rotates its own.
    """
    logfile, nodaemon = _twistdDestination
    if logfile == "-" or (nodaemon and not logfile):
        return jsonFileLogObserver(sys.stdout)
    logFile = LogFile.fromFullPath(logfile or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return jsonFileLogObserver(logFile)
