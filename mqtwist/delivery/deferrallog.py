"""
The log of deferrals: one event per destination and interval, instead of
one per message.

While a destination is stuck, paused or down, every one of its messages
that the outbox hands out is deferred, thousands a second in a busy
process.  Writing a line for each would cost more than parking the message
and would bury everything else in the log, so the deferrals of each
destination are gathered and logged together: how many, which messages, the
latest reason and until when.  Each message's result entry still records
its own deferral.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from mqtwist.content.message import labelsShown
from mqtwist.timeformat import formatTime


@dataclass
class _Gathered:
    """The deferrals of one destination since the last event."""

    reason: str
    until: float
    messages: list[str] = field(default_factory=list)


class DeferralLog:
    """
    Gathers deferrals and logs them, per destination, every C{interval}
    seconds.

    @param interval: seconds between events for one destination; 0 logs
        each deferral at once, in an event of its own.
    """

    log = Logger()

    def __init__(self, interval: float, reactor: Any) -> None:
        self.interval = interval
        self.reactor = reactor
        self._gathered: dict[str, _Gathered] = {}
        self._timer: IDelayedCall | None = None

    def deferred(self, message: str, destination: str, reason: str, until: float) -> None:
        """
        Note that C{message} (its label) was deferred because C{destination}
        C{reason}, until C{until} (POSIX time).
        """
        gathered = self._gathered.get(destination)
        if gathered is None:
            gathered = self._gathered[destination] = _Gathered(reason, until)
        else:
            gathered.reason = reason
            gathered.until = max(gathered.until, until)
        gathered.messages.append(message)
        if self.interval <= 0:
            self.flush()
        elif self._timer is None:
            self._timer = self.reactor.callLater(self.interval, self.flush)

    def flush(self) -> None:
        """
        Log what was gathered now: one event per destination, with the
        fields C{destination}, C{reason}, C{until}, C{count} and
        C{messages} (the labels of the deferred messages, in order).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        gathered, self._gathered = self._gathered, {}
        for destination, each in gathered.items():
            messages = each.messages
            self.log.info(
                "destination {destination} {reason}: {count} message(s) deferred "
                "({shown}), parked until {until}",
                destination=destination,
                reason=each.reason,
                until=formatTime(each.until),
                count=len(messages),
                messages=messages,
                shown=labelsShown(messages),
            )

    def close(self) -> None:
        """Log what is still gathered, and stop the timer."""
        self.flush()
