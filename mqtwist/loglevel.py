"""
A log level for a whole process: events below it are dropped before any
observer formats or writes them.

C{twistd} writes every event it is given, and formatting one (the message,
the time, the system) costs more than most of the work it describes: at
a thousand messages a second the per-command C{debug} events of the SMTP
client would be a quarter of the process's CPU time.
"""

from __future__ import annotations

import re

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
)
from zope.interface import implementer

#: the level names accepted, lowest first
LEVEL_NAMES = tuple(level.name for level in LogLevel.iterconstants())


class _DebugSwitch:
    """
    Whether C{debug} events are kept: hot code that would emit one for
    every SMTP command asks L{wanted} first, and skips building the event
    when a L{LogLevelService} would drop it anyway.
    """

    wanted = True


debugEvents = _DebugSwitch()


def parseLogLevel(name: str) -> LogLevel:
    """
    @return: the L{LogLevel} called C{name} (C{"debug"}, C{"info"},
        C{"warn"}, C{"error"}, C{"critical"}; any case).
    @raise ValueError: for another name, naming the accepted ones.
    """
    try:
        level: LogLevel = LogLevel.levelWithName(name.strip().lower())
        return level
    except Exception:
        raise ValueError(
            f"{name!r} is not a log level; use one of {', '.join(LEVEL_NAMES)}"
        ) from None


_NO: PredicateResult = PredicateResult.no
_MAYBE: PredicateResult = PredicateResult.maybe


@implementer(ILogFilterPredicate)
class _AtLeast:
    """
    A predicate for L{FilteringLogObserver}: events of C{level} or above
    pass, as do events without a level.
    """

    def __init__(self, level: LogLevel) -> None:
        # a set lookup per event: cheaper than comparing priorities
        self.dropped = frozenset(
            each for each in LogLevel.iterconstants() if each < level
        )

    def __call__(self, event: LogEvent) -> PredicateResult:
        # Twisted's constants are untyped: named here once
        return _NO if event.get("log_level") in self.dropped else _MAYBE


#: what Twisted writes, at level info, for every port and connection it
#: opens or closes (a DNS query is a UDP port of its own): nothing an
#: operator acts on, and a few lines per DNS query and SMTP connection
_TWISTED_CHATTER = re.compile(
    r"\S+ starting on \d+"
    r"|\((?:TCP|UDP) Port \d+ Closed\)"
    r"|(?:Starting|Stopping) (?:protocol|factory) <.*>"
)


@implementer(ILogFilterPredicate)
def _withoutTwistedChatter(event: LogEvent) -> PredicateResult:
    """
    A predicate for L{FilteringLogObserver} that drops Twisted's lines
    about ports and connections opening and closing, which it writes with
    C{log.msg} whatever the factory's C{noisy} says for some of them.
    """
    if event.get("log_namespace") == "log_legacy" and _TWISTED_CHATTER.fullmatch(
        event.get("log_text") or ""
    ):
        return _NO
    return _MAYBE


class LogLevelService(Service):
    """
    While running, puts a level filter in front of the observers that
    C{publisher} has when the service starts (for C{twistd}, its log file
    or standard output); stopping puts them back as they were.  Above
    level C{debug}, the filter also drops Twisted's own lines about ports
    and connections opening and closing ("... starting on 5353", "(UDP Port
    5353 Closed)", "Starting factory <...>").

    Observers added to C{publisher} while the service runs get every event.

    @param level: the lowest level that is kept.
    @param publisher: the publisher whose observers are filtered; the
        global one by default.
    @param untilExit: keep the filter after the service stops, for the
        rest of the process: the services stopped beside it (all at once)
        go on logging while they wind down, and under C{twistd} the
        process ends after them.
    """

    def __init__(
        self, level: LogLevel, publisher: LogPublisher = globalLogPublisher, *, untilExit: bool = False
    ) -> None:
        self.level = level
        self.publisher = publisher
        self.untilExit = untilExit
        self._filter: FilteringLogObserver | None = None
        self._filtered: list[ILogObserver] = []

    def startService(self) -> None:
        super().startService()
        if self._filter is not None:
            # kept from an earlier run (untilExit)
            return
        # Twisted has no public way to list a publisher's observers
        self._filtered = list(self.publisher._observers)
        predicates: list[ILogFilterPredicate] = [_AtLeast(self.level)]
        if self.level > LogLevel.debug:
            predicates.append(_withoutTwistedChatter)
        self._filter = FilteringLogObserver(LogPublisher(*self._filtered), predicates)
        for observer in self._filtered:
            self.publisher.removeObserver(observer)
        self.publisher.addObserver(self._filter)
        debugEvents.wanted = self.level <= LogLevel.debug

    def stopService(self) -> None:
        super().stopService()
        if self._filter is None or self.untilExit:
            return
        self.publisher.removeObserver(self._filter)
        debugEvents.wanted = True
        for observer in self._filtered:
            self.publisher.addObserver(observer)
        self._filter = None
        self._filtered = []
