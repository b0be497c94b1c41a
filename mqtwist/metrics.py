"""
What mqtwist counts: the figures that C{--metrics} serves to Prometheus and
that the admin dashboard draws.

One L{Metrics} object per service holds every instrument, so that the code
that counts calls one method with a plain name (C{metrics.consumed()}) and
knows nothing of Prometheus.  Counting costs a dictionary look-up and a
locked addition; the figures that describe the present (connections, in
flight, outbox depth) are not counted at all but read when Prometheus
scrapes, from the providers given to L{Metrics.watch}.

Label values are bounded: no address or message id is ever a label, and
destinations beyond the first C{maxDestinations} seen are counted together
as C{other}.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request

#: the label value of the destinations beyond C{maxDestinations}
OTHER = "other"

#: upper bounds (seconds) of the delivery latency histogram: from a
#: fraction of a second (delivered at once) to the default 24 h expiry
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

#: upper bounds (seconds) of the plugin time histogram
PLUGIN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)


class DestinationFigures(Protocol):
    """
    What one destination of the delivery policy has now (see
    L{mqtwist.delivery.policy.DestinationState}).

    @ivar destination: its name: the recipient's domain, or the name of
        the C{[[throttles]]} rule it falls under.
    """

    @property
    def destination(self) -> str: ...

    @property
    def inFlight(self) -> int: ...

    @property
    def waiting(self) -> int: ...


@dataclass(frozen=True)
class ServerFigures:
    """
    The pooled SMTP connections to one server (C{host:port}) now.
    """

    server: str
    connections: int
    idle: int


class PresentSource(Protocol):
    """
    What reports the present: the delivery engine.
    """

    def destinationFigures(self) -> Iterable[DestinationFigures]:
        """The destinations with messages in flight or waiting."""

    def serverFigures(self) -> Iterable[ServerFigures]:
        """The servers with pooled connections."""

    def bodyBytesSent(self) -> int:
        """Message bytes written in DATA since the start."""


class Metrics:
    """
    The instruments of one service, in their own registry (so that two
    services in one process, or tests, do not share counts).

    @param maxDestinations: how many destinations get a label of their
        own; the others are counted as C{other}.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, maxDestinations: int = 50) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.maxDestinations = maxDestinations
        #: the label of each destination, and of each server, each bounded
        self._labels: dict[str, dict[str, str]] = {"destination": {}, "server": {}}
        self._outboxDepth: int | None = None
        self._sources: list[PresentSource] = []
        registry = self.registry
        self._consumed = Counter(
            "mqtwist_consumed", "outbox messages taken for handling (redeliveries included)", registry=registry
        )
        self._outcomes = Counter(
            "mqtwist_outcomes",
            "what handling an outbox message came to: delivered, failed, expired, cancelled, invalid, "
            "retried, deferred, held, waiting or dead-lettered; with the state and result of its entry",
            ["outcome", "state", "result"],
            registry=registry,
        )
        self._attempts = Counter(
            "mqtwist_attempts", "delivery attempts (SMTP transactions) by destination", ["destination"],
            registry=registry,
        )
        self._latency = Histogram(
            "mqtwist_delivery_latency_seconds",
            "from the first attempt (or the first handling, when that came earlier) to the final result",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._throttled = Counter(
            "mqtwist_throttle_waits",
            "messages that waited for a throttle (connections, rate) of their destination",
            ["destination"],
            registry=registry,
        )
        self._failedAttempts = Counter(
            "mqtwist_failed_attempts",
            "failed attempts by bounce category (bad-recipient, spam-block, ...)",
            ["category"],
            registry=registry,
        )
        self._parked = Counter(
            "mqtwist_parked",
            "messages deferred without an attempt (destination paused, down or too busy) and parked",
            ["destination"],
            registry=registry,
        )
        self._held = Counter(
            "mqtwist_held",
            "messages an operator's pause held back (to the held queue)",
            ["destination"],
            registry=registry,
        )
        self._pauses = Counter(
            "mqtwist_pauses",
            "pauses of a destination: by a reply (pause, down, reduce) or by an operator (admin)",
            ["destination", "action"],
            registry=registry,
        )
        self._pluginCalls = Counter(
            "mqtwist_plugin_calls",
            "data plugin calls by plugin and outcome (continue, complete, retry, error, timeout, cancelled)",
            ["plugin", "outcome"],
            registry=registry,
        )
        self._pluginSeconds = Histogram(
            "mqtwist_plugin_seconds", "time a data plugin took", ["plugin"], buckets=PLUGIN_BUCKETS,
            registry=registry,
        )
        self._amqp = Counter(
            "mqtwist_amqp_events",
            "publishes, confirms, nacks and returns of mqtwist's own publications, and reconnects",
            ["event"],
            registry=registry,
        )
        registry.register(_PresentFigures(self))
        #: the labelled children already made, by instrument and label values:
        #: prometheus_client's labels() checks and locks on each call
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    # -- the outbox ---------------------------------------------------------

    def _child(self, instrument: Counter | Histogram, *labels: str) -> Any:
        key = (instrument, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = instrument.labels(*labels)
        return child

    def consumed(self) -> None:
        """An outbox message was taken for handling."""
        self._consumed.inc()

    def concluded(self, outcome: str, state: str = "", result: str = "") -> None:
        """
        Handling an outbox message came to C{outcome} (C{delivered},
        C{failed}, ...), with its last entry's C{state} and C{result}.
        """
        self._child(self._outcomes, outcome, state, result).inc()

    def finalAfter(self, outcome: str, seconds: float) -> None:
        """
        A message got its final result (C{delivered}, C{failed},
        C{expired}, C{cancelled}) C{seconds} after it was first tried.
        """
        self._child(self._latency, outcome).observe(max(seconds, 0.0))

    # -- deliveries ---------------------------------------------------------

    def attempted(self, destination: str) -> None:
        """One attempt to C{destination} was made."""
        self._child(self._attempts, self._destination(destination)).inc()

    def throttled(self, destination: str) -> None:
        """A message waits for a throttle of C{destination}."""
        self._child(self._throttled, self._destination(destination)).inc()

    def attemptFailed(self, category: str) -> None:
        """An attempt failed, in C{category} (a bounded set: the category rules')."""
        self._child(self._failedAttempts, category).inc()

    def parked(self, destination: str) -> None:
        """A message for C{destination} was deferred without an attempt."""
        self._child(self._parked, self._destination(destination)).inc()

    def held(self, destination: str) -> None:
        """A message for C{destination} was held back by an operator's pause."""
        self._child(self._held, self._destination(destination)).inc()

    def paused(self, destination: str, action: str) -> None:
        """C{destination} was paused (C{action}: pause, down, reduce, admin)."""
        self._child(self._pauses, self._destination(destination), action).inc()

    def pluginRan(self, plugin: str, outcome: str, seconds: float) -> None:
        """The data plugin C{plugin} ended with C{outcome} after C{seconds}."""
        self._child(self._pluginCalls, plugin, outcome).inc()
        self._child(self._pluginSeconds, plugin).observe(seconds)

    # -- the broker ---------------------------------------------------------

    def amqp(self, event: str, count: int = 1) -> None:
        """
        C{count} AMQP events of mqtwist's own: C{publish}, C{confirm},
        C{nack}, C{return} or C{reconnect}.
        """
        if count:
            self._child(self._amqp, event).inc(count)

    def outboxDepth(self, messages: int) -> None:
        """The broker said the outbox holds C{messages} ready messages."""
        self._outboxDepth = messages

    @property
    def lastOutboxDepth(self) -> int | None:
        """The ready messages of the outbox as last told, or C{None}."""
        return self._outboxDepth

    # -- the present ----------------------------------------------------------

    def watch(self, source: PresentSource) -> None:
        """
        Read the figures of the present from C{source} at each scrape.
        """
        self._sources.append(source)

    def totals(self, name: str, by: str) -> dict[str, float]:
        """
        The values of the series C{name} (C{mqtwist_outcomes_total}) added
        up by their label C{by} (C{outcome}).
        """
        totals: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and by in sample.labels:
                    key = sample.labels[by]
                    totals[key] = totals.get(key, 0.0) + sample.value
        return totals

    def value(self, name: str, **labels: str) -> float:
        """
        The value of one series (C{mqtwist_consumed_total}), the series of
        every other label value added up; 0 when it has none yet.
        """
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def _destination(self, name: str, kind: str = "destination") -> str:
        """
        The label of C{name}: itself for the first C{maxDestinations} names
        of its C{kind} (C{destination} or C{server}), L{OTHER} after.
        """
        labels = self._labels[kind]
        label = labels.get(name)
        if label is None:
            if len(labels) >= self.maxDestinations:
                return OTHER
            label = labels[name] = name
        return label


class MetricsPage(Resource):
    """
    C{/metrics}: the registry in Prometheus' text format, made on the
    reactor thread, where the figures of the present are read safely
    (prometheus_client's own Twisted resource answers from a worker thread).
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader("content-type", CONTENT_TYPE_LATEST)
        return generate_latest(self.metrics.registry)


class _PresentFigures(Collector):
    """
    The figures of the present, read from L{Metrics}' sources at scrape
    time, with the same folding of destinations into C{other}.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        inFlight, waiting, connections, idle, sent, depth = families
        byDestination: dict[str, list[int]] = {}
        byServer: dict[str, list[int]] = {}
        bodyBytes = 0
        for source in self.metrics._sources:
            for d in source.destinationFigures():
                sums = byDestination.setdefault(self.metrics._destination(d.destination), [0, 0])
                sums[0] += d.inFlight
                sums[1] += d.waiting
            for s in source.serverFigures():
                sums = byServer.setdefault(self.metrics._destination(s.server, "server"), [0, 0])
                sums[0] += s.connections
                sums[1] += s.idle
            bodyBytes += source.bodyBytesSent()
        for label, (flying, waits) in sorted(byDestination.items()):
            inFlight.add_metric([label], flying)
            waiting.add_metric([label], waits)
        for label, (opened, idling) in sorted(byServer.items()):
            connections.add_metric([label], opened)
            idle.add_metric([label], idling)
        sent.add_metric([], bodyBytes)
        if self.metrics.lastOutboxDepth is not None:
            depth.add_metric([], self.metrics.lastOutboxDepth)
        yield from families

    def _families(
        self,
    ) -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily,
        GaugeMetricFamily,
    ]:
        return (
            GaugeMetricFamily("mqtwist_in_flight", "messages being delivered", labels=["destination"]),
            GaugeMetricFamily(
                "mqtwist_waiting", "messages waiting for a throttle of their destination", labels=["destination"]
            ),
            GaugeMetricFamily(
                "mqtwist_connections", "open SMTP connections (in use, idle or opening)", labels=["server"]
            ),
            GaugeMetricFamily("mqtwist_idle_connections", "idle SMTP connections", labels=["server"]),
            CounterMetricFamily("mqtwist_sent_bytes", "message bytes written in DATA"),
            GaugeMetricFamily("mqtwist_outbox_depth", "ready messages in the outbox, as last seen"),
        )
