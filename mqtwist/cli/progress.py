"""
How far C{mqtwist send --count N} has got: a bar redrawn in place on a
terminal, a line at every tenth otherwise (a log file or a pipe would
collect every redraw).
"""

from __future__ import annotations

from typing import Protocol, TextIO


class Clock(Protocol):
    """A reactor, as far as L{Progress} uses it."""

    def seconds(self) -> float:
        """The current time, in seconds."""

#: characters of the bar
BAR_WIDTH = 30


class Progress:
    """
    Reports the number of messages confirmed out of C{total} to C{stream}.
    """

    def __init__(self, total: int, stream: TextIO, *, clock: Clock) -> None:
        """
        @param clock: the reactor, for the rate.
        """
        self.total = total
        self.stream = stream
        self._clock = clock
        self._started = clock.seconds()
        self._terminal = stream.isatty()
        self._lastTenth = 0

    def elapsed(self) -> float:
        """
        @return: seconds since the start.
        """
        return self._clock.seconds() - self._started

    def update(self, done: int) -> None:
        """
        C{done} messages of L{total} are confirmed.
        """
        rate = _rate(done, self.elapsed())
        if self._terminal:
            filled = BAR_WIDTH * done // self.total if self.total else BAR_WIDTH
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.total} {rate:.0f} messages/s"
            )
        else:
            tenth = 10 * done // self.total if self.total else 10
            if tenth <= self._lastTenth or done == self.total:
                return
            self._lastTenth = tenth
            self.stream.write(f"published {done}/{self.total} ({rate:.0f} messages/s)\n")
        self.stream.flush()

    def finish(self) -> None:
        """
        End the bar's line, if there is one.
        """
        if self._terminal:
            self.stream.write("\n")
            self.stream.flush()


def _rate(done: int, elapsed: float) -> float:
    return done / elapsed if elapsed > 0 else 0.0
