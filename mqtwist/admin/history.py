"""
The counts of the last minutes, per interval: what the dashboard's chart
draws.  Sampled from L{Metrics} on a timer, so that counting a message
costs nothing more than it does for Prometheus.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from mqtwist.metrics import Metrics
from mqtwist.timeformat import formatTime

#: the outcomes the chart shows, each a line
CHARTED = ("delivered", "failed", "retried", "deferred", "cancelled", "invalid")


class History(Service):
    """
    Every C{interval} seconds, the number of each outcome since the last
    sample; the last C{samples} of them are kept.
    """

    def __init__(self, metrics: Metrics, reactor: Any, *, interval: float = 5.0, samples: int = 120) -> None:
        self.metrics = metrics
        self.reactor = reactor
        self.interval = interval
        self._samples: deque[dict[str, Any]] = deque(maxlen=samples)
        self._last = self._totals()
        self._loop = LoopingCall(self.sample)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._last = self._totals()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def sample(self) -> None:
        """Take one sample: the outcomes since the last."""
        totals = self._totals()
        entry: dict[str, Any] = {"time": formatTime(self.reactor.seconds())}
        entry.update((name, totals[name] - self._last[name]) for name in CHARTED)
        self._last = totals
        self._samples.append(entry)

    def toJSON(self) -> dict[str, Any]:
        """The samples, oldest first, and the interval they cover."""
        return {"interval": self.interval, "samples": list(self._samples)}

    def _totals(self) -> dict[str, float]:
        totals = self.metrics.totals("mqtwist_outcomes_total", "outcome")
        return {name: totals.get(name, 0.0) for name in CHARTED}
