"""
What operators steer while mqtwist runs: pauses and cancels.

A pause holds back the messages that match it (a destination, a recipient
domain, a source address, a tag, or several of these at once): they wait
in the held queue, and go back to the outbox when a pause ends, resumed
or run out (L{Controls.onPauseEnded}).  A cancel ends the messages that
match it (a recipient domain or a tag) with a final C{process}/C{cancelled}
result, for as long as it lasts: the messages taken from the outbox then,
and those that come back from a delay queue.

Both live in this process's memory: a restart forgets them (and releases
what was held).  In a cluster each one made here is told to the other
processes (L{Controls.announce}), which make it too (L{Controls.fromPeer}).  The admin API
(L{mqtwist.admin.api}) makes and lists them; the delivery engine asks
L{Controls.pauseFor} before each attempt, the outbox processor
L{Controls.cancelFor} before each delivery.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall

from mqtwist.errors import InvalidMessage
from mqtwist.timeformat import formatTime
from mqtwist.validation import checkHeaderValue, checkHostName, checkIP, excerpt

#: what a pause can match on, and what a cancel can
PAUSE_KEYS = ("destination", "domain", "mta", "tag")
CANCEL_KEYS = ("domain", "tag")

#: what an operator may write in C{reason} and C{by}
MAX_TEXT = 200

#: the longest pause or cancel with an end, in seconds (366 days)
MAX_SECONDS = 366 * 24 * 3600


class ControlError(ValueError):
    """
    A pause or cancel that cannot be made; the text says which field is
    wrong and what is accepted.
    """


class NotTold(ControlError):
    """
    An action for other processes of the cluster that could not be told to
    them (the broker is away); nothing was done.
    """


@dataclass(frozen=True)
class Selector:
    """
    Which messages a pause or cancel matches: all the fields it gives, at
    once (a domain and a tag: that campaign's mail to that domain).
    """

    destination: str | None = None
    domain: str | None = None
    mta: str | None = None
    tag: str | None = None

    @classmethod
    def fromJSON(cls, obj: Mapping[str, Any], keys: Iterable[str]) -> Selector:
        """
        Read the selector fields of a request.

        @param keys: the fields this kind of control takes.
        @raise ControlError: for a field of the wrong type or form, or none
            given at all.
        """
        keys = tuple(keys)
        values: dict[str, str] = {}
        for key in keys:
            value = obj.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise ControlError(f"'{key}' must be a non-empty string, not {excerpt(value)}")
            try:
                if key == "domain":
                    value = checkHostName(key, value.lower().rstrip("."))
                elif key == "mta":
                    value = checkIP(key, value)
                else:
                    checkHeaderValue(key, value)
            except InvalidMessage as e:
                raise ControlError(e.description) from None
            values[key] = value
        if not values:
            raise ControlError(f"give at least one of {', '.join(keys)}")
        return cls(**values)

    def matches(self, *, destination: str, domain: str, mtas: Iterable[str], tags: Iterable[str]) -> bool:
        """
        Whether a message with these facts is selected.

        @param mtas: the addresses the message may be sent from (none: the
            system's choice, which no C{mta} selects).
        """
        return (
            (self.destination is None or self.destination == destination)
            and (self.domain is None or self.domain == domain)
            and (self.mta is None or self.mta in mtas)
            and (self.tag is None or self.tag in tags)
        )

    def toJSON(self) -> dict[str, str]:
        return {key: value for key, value in vars(self).items() if value is not None}

    def __str__(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.toJSON().items())


@dataclass(frozen=True)
class Control:
    """
    One pause or cancel: what it selects, until when (C{inf}: until it is
    lifted), why and by whom.
    """

    selector: Selector
    until: float
    reason: str
    by: str
    since: float

    def toJSON(self) -> dict[str, Any]:
        shown: dict[str, Any] = self.selector.toJSON()
        shown.update(
            until=None if math.isinf(self.until) else formatTime(self.until),
            since=formatTime(self.since),
            reason=self.reason,
            by=self.by,
        )
        return shown


def readDuration(obj: Mapping[str, Any]) -> float:
    """
    The C{seconds} of a request: a positive number, or absent or C{null}
    for "until lifted" (C{inf}).

    @raise ControlError: for anything else.
    """
    seconds = obj.get("seconds")
    if seconds is None:
        return math.inf
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_SECONDS:
        raise ControlError(
            f"'seconds' must be a positive number of at most {MAX_SECONDS} (a year; or left out: until "
            f"lifted), not {excerpt(seconds)}"
        )
    return float(seconds)


def readText(obj: Mapping[str, Any], key: str, default: str) -> str:
    """
    A free-text field (C{reason}, C{by}) of a request: a string without
    control characters, at most L{MAX_TEXT} characters.

    @raise ControlError: for anything else.
    """
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ControlError(f"'{key}' must be a string of at most {MAX_TEXT} characters, not {excerpt(value)}")
    try:
        checkHeaderValue(key, value)
    except InvalidMessage as e:
        raise ControlError(e.description) from None
    return value


class Controls:
    """
    The pauses and cancels in force in this process.

    @param reactor: its C{seconds()} is the clock controls expire by, and
        it times the end of each pause.
    @ivar onPauseEnded: called (with no argument) whenever a pause ends,
        resumed or run out: the messages it held may go again.
    @ivar announce: called with each pause, resume, cancel or lifted
        cancel made here (not those L{fromPeer} makes), as the JSON object
        that L{fromPeer} takes: for the other processes of a cluster.  It
        says whether they were told.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.onPauseEnded: Callable[[], None] | None = None
        self.announce: Callable[[dict[str, Any]], bool] | None = None
        self._pauses: dict[Selector, Control] = {}
        self._cancels: dict[Selector, Control] = {}
        self._pauseTimers: dict[Selector, IDelayedCall] = {}

    # -- making and lifting ----------------------------------------------------

    def pause(self, selector: Selector, seconds: float, reason: str, by: str, *, told: bool = False) -> Control:
        """
        Pause what C{selector} matches for C{seconds} (C{inf}: until
        resumed), replacing a pause of the same selector.

        @param told: another process made it (it is not announced again).
        @return: the pause.
        """
        pause = self._add(self._pauses, selector, seconds, reason, by)
        self._cancelTimer(selector)
        if math.isfinite(seconds):
            self._pauseTimers[selector] = self.reactor.callLater(seconds, self._pauseRanOut, selector)
        self._announce(told, "pause", selector, seconds, reason, by)
        return pause

    def resume(self, selector: Selector, *, told: bool = False) -> Control | None:
        """
        Lift the pause of exactly C{selector}.

        @param told: another process lifted it (it is not announced again).
        @return: the pause lifted, or C{None} when there was none.
        """
        self._expire(self._pauses)
        pause = self._pauses.pop(selector, None)
        if pause is not None:
            self._cancelTimer(selector)
            self._pauseEnded()
        # announced even when this process had no such pause: another may
        self._announce(told, "resume", selector)
        return pause

    def stop(self) -> None:
        """Cancel the timers of the pauses (the service stops)."""
        for selector in list(self._pauseTimers):
            self._cancelTimer(selector)

    def _pauseRanOut(self, selector: Selector) -> None:
        self._pauseTimers.pop(selector, None)
        self._expire(self._pauses)
        self._pauseEnded()

    def _pauseEnded(self) -> None:
        if self.onPauseEnded is not None:
            self.onPauseEnded()

    def _cancelTimer(self, selector: Selector) -> None:
        timer = self._pauseTimers.pop(selector, None)
        if timer is not None and timer.active():
            timer.cancel()

    def cancel(self, selector: Selector, seconds: float, reason: str, by: str, *, told: bool = False) -> Control:
        """
        Cancel what C{selector} matches for C{seconds} (C{inf}: until
        lifted), replacing a cancel of the same selector.

        @param told: another process made it (it is not announced again).
        @return: the cancel.
        """
        cancel = self._add(self._cancels, selector, seconds, reason, by)
        self._announce(told, "cancel", selector, seconds, reason, by)
        return cancel

    def uncancel(self, selector: Selector, *, told: bool = False) -> Control | None:
        """
        Lift the cancel of exactly C{selector}.

        @param told: another process lifted it (it is not announced again).
        @return: the cancel lifted, or C{None} when there was none.
        """
        self._expire(self._cancels)
        self._announce(told, "uncancel", selector)
        return self._cancels.pop(selector, None)

    def inForce(self) -> list[dict[str, Any]]:
        """
        The pauses and cancels in force, as L{announce} says them (with the
        seconds left), for a process that starts while they are.
        """
        now = self.reactor.seconds()
        said = []
        for kind, controls in (("pause", self.pauses()), ("cancel", self.cancels())):
            for control in controls:
                left = control.until - now
                said.append(
                    {
                        "action": kind,
                        "selector": control.selector.toJSON(),
                        "seconds": left if math.isfinite(left) else None,
                        "reason": control.reason,
                        "by": control.by,
                    }
                )
        return said

    def fromPeer(self, action: Mapping[str, Any]) -> Control | None:
        """
        Make here a pause, resume, cancel or lifted cancel that another
        process announced (L{announce}), checked as the admin API checks
        a request.

        @return: what L{pause}, L{resume}, L{cancel} or L{uncancel} returns.
        @raise ControlError: when C{action} is not one of them.
        """
        kind = action.get("action")
        fields = action.get("selector")
        if not isinstance(fields, Mapping):
            raise ControlError(f"'selector' is not an object: {excerpt(fields)}")
        if kind in ("pause", "resume"):
            selector = Selector.fromJSON(fields, PAUSE_KEYS)
        elif kind in ("cancel", "uncancel"):
            selector = Selector.fromJSON(fields, CANCEL_KEYS)
        else:
            raise ControlError(f"'action' is not pause, resume, cancel or uncancel: {excerpt(kind)}")
        if kind == "resume":
            return self.resume(selector, told=True)
        if kind == "uncancel":
            return self.uncancel(selector, told=True)
        seconds, by = readDuration(action), readText(action, "by", "another process")
        if kind == "pause":
            return self.pause(selector, seconds, readText(action, "reason", "paused by an operator"), by, told=True)
        return self.cancel(selector, seconds, readText(action, "reason", "cancelled by an operator"), by, told=True)

    def _announce(
        self, told: bool, action: str, selector: Selector, seconds: float = 0.0, reason: str = "", by: str = ""
    ) -> None:
        if told or self.announce is None:
            return
        said: dict[str, Any] = {"action": action, "selector": selector.toJSON()}
        if action in ("pause", "cancel"):
            said.update(seconds=seconds if math.isfinite(seconds) else None, reason=reason, by=by)
        self.announce(said)

    def pauses(self) -> list[Control]:
        """The pauses in force, oldest first."""
        self._expire(self._pauses)
        return list(self._pauses.values())

    def cancels(self) -> list[Control]:
        """The cancels in force, oldest first."""
        self._expire(self._cancels)
        return list(self._cancels.values())

    # -- asking ------------------------------------------------------------------

    @property
    def pausing(self) -> bool:
        """Whether a pause may be in force (an expired one may be listed still)."""
        return bool(self._pauses)

    @property
    def cancelling(self) -> bool:
        """Whether a cancel may be in force (an expired one may be listed still)."""
        return bool(self._cancels)

    def pauseFor(
        self, *, destination: str, domain: str, mtas: Iterable[str], tags: Iterable[str]
    ) -> Control | None:
        """
        The pause that holds back a message with these facts, the one that
        lasts longest when several do; C{None} when none does.
        """
        if not self._pauses:
            return None
        found = self._matching(self._pauses, destination=destination, domain=domain, mtas=mtas, tags=tags)
        return max(found, key=lambda control: control.until, default=None)

    def cancelFor(self, *, domain: str, tags: Iterable[str]) -> Control | None:
        """
        The cancel that ends a message with these facts, or C{None}.
        """
        if not self._cancels:
            return None
        found = self._matching(self._cancels, destination="", domain=domain, mtas=(), tags=tags)
        return found[0] if found else None

    # -- the tables ------------------------------------------------------------

    def _add(
        self, table: dict[Selector, Control], selector: Selector, seconds: float, reason: str, by: str
    ) -> Control:
        now = self.reactor.seconds()
        table.pop(selector, None)
        control = Control(selector, now + seconds, reason, by, now)
        table[selector] = control
        return control

    def _matching(self, table: dict[Selector, Control], **facts: Any) -> list[Control]:
        self._expire(table)
        tags = tuple(facts.pop("tags"))
        mtas = tuple(facts.pop("mtas"))
        return [
            control for control in table.values() if control.selector.matches(mtas=mtas, tags=tags, **facts)
        ]

    def _expire(self, table: dict[Selector, Control]) -> None:
        now = self.reactor.seconds()
        for selector in [s for s, control in table.items() if control.until <= now]:
            del table[selector]
