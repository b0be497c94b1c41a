"""
Unit tests of L{mqtwist.delivery.deferrallog.DeferralLog}: deferrals gathered per
destination into one log event an interval, on a fake clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from mqtwist.delivery.deferrallog import DeferralLog
from mqtwist.timeformat import formatTime


class Recorded:
    """The events of L{DeferralLog} while in a C{with} block."""

    def __enter__(self) -> list[dict[str, Any]]:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        return self.events

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("mqtwist.delivery.deferrallog"):
            self.events.append(event)

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observe)


def test_gatheredPerDestinationOneEventAnInterval() -> None:
    """
    Deferrals within one interval make one event per destination, with
    every message id, the count, and the latest reason and park time; the
    next interval starts afresh.
    """
    clock = Clock()
    clock.advance(1_800_000_000)
    deferrals = DeferralLog(1.0, clock)
    with Recorded() as events:
        for n in range(5):
            deferrals.deferred(f"a-{n}", "mx mx.a.test", f"busy: {n} waiting", clock.seconds() + 30 + n)
        deferrals.deferred("b-0", "mx mx.b.test", "paused after the reply 421 go away", clock.seconds() + 60)
        clock.advance(0.5)
        assert events == []
        clock.advance(0.5)
        byDestination = {event["destination"]: event for event in events}
        assert len(events) == 2
        a = byDestination["mx mx.a.test"]
        assert a["messages"] == ["a-0", "a-1", "a-2", "a-3", "a-4"]
        assert a["count"] == 5
        assert a["reason"] == "busy: 4 waiting"
        assert a["until"] == formatTime(1_800_000_000 + 34)
        assert formatEvent(a) == (
            "destination mx mx.a.test busy: 4 waiting: 5 message(s) deferred "
            f"(a-0, a-1, a-2, ... a-4), parked until {formatTime(1_800_000_034)}"
        )
        b = byDestination["mx mx.b.test"]
        assert (b["messages"], b["count"]) == (["b-0"], 1)
        assert formatEvent(b).endswith(f"1 message(s) deferred (b-0), parked until {formatTime(1_800_000_060)}")
        clock.advance(10)
        assert len(events) == 2
        deferrals.deferred("a-5", "mx mx.a.test", "busy: again", clock.seconds() + 30)
        clock.advance(1)
        assert events[2]["messages"] == ["a-5"]
    assert clock.getDelayedCalls() == []


def test_intervalZeroLogsEachAtOnce() -> None:
    clock = Clock()
    deferrals = DeferralLog(0, clock)
    with Recorded() as events:
        deferrals.deferred("m-1", "mx x", "down", 100)
        deferrals.deferred("m-2", "mx x", "down", 100)
    assert [event["messages"] for event in events] == [["m-1"], ["m-2"]]
    assert clock.getDelayedCalls() == []


def test_closeLogsWhatIsGathered() -> None:
    """
    Stopping logs the deferrals not logged yet, and leaves no timer.
    """
    clock = Clock()
    deferrals = DeferralLog(5.0, clock)
    with Recorded() as events:
        deferrals.deferred("m-1", "mx x", "paused", 100)
        deferrals.close()
        assert [event["messages"] for event in events] == [["m-1"]]
        deferrals.close()
        assert len(events) == 1
    assert clock.getDelayedCalls() == []
