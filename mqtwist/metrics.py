"""
What mqtwist counts: the figures that C{--metrics} serves to Prometheus and
that the admin dashboard draws.

One L{Metrics} object per service holds every instrument, so that the code
that counts calls one method with a plain name (C{metrics.consumed()}) and
knows nothing of Prometheus.  Counting costs a dictionary look-up and an
addition, on the reactor thread (L{MetricsPage} reads there too, so no
lock is needed); the figures that describe the present (connections, in
flight, outbox depth) are not counted at all but read when Prometheus
scrapes, from the providers given to L{Metrics.watch}.

Label values are bounded: no address or message id is ever a label, and
destinations beyond the first C{maxDestinations} seen are counted together
as C{other}.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
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
        self._consumed = _Counts("mqtwist_consumed", "outbox messages taken for handling (redeliveries included)", ())
        self._outcomes = _Counts(
            "mqtwist_outcomes",
            "what handling an outbox message came to: delivered, failed, expired, cancelled, invalid, "
            "retried, deferred, held, waiting, dead-lettered or error; with the state and result of its "
            "entry",
            ("outcome", "state", "result"),
        )
        self._attempts = _Counts(
            "mqtwist_attempts", "delivery attempts (SMTP transactions) by destination", ("destination",)
        )
        self._latency = _Histogram(
            "mqtwist_delivery_latency_seconds",
            "from the first attempt (or the first handling, when that came earlier) to the final result",
            ("outcome",),
            LATENCY_BUCKETS,
        )
        self._throttled = _Counts(
            "mqtwist_throttle_waits",
            "messages that waited for a throttle (connections, rate) of their destination",
            ("destination",),
        )
        self._failedAttempts = _Counts(
            "mqtwist_failed_attempts", "failed attempts by bounce category (bad-recipient, spam-block, ...)",
            ("category",),
        )
        self._parked = _Counts(
            "mqtwist_parked",
            "messages deferred without an attempt (destination paused, down or too busy) and parked",
            ("destination",),
        )
        self._held = _Counts(
            "mqtwist_held", "messages an operator's pause held back (to the held queue)", ("destination",)
        )
        self._pauses = _Counts(
            "mqtwist_pauses",
            "pauses of a destination caused by replies (pause, down, reduce)",
            ("destination", "action"),
        )
        self._pluginCalls = _Counts(
            "mqtwist_plugin_calls",
            "data plugin calls by plugin and outcome (continue, complete, error, permanent, timeout, "
            "cancelled)",
            ("plugin", "outcome"),
        )
        self._pluginSeconds = _Histogram(
            "mqtwist_plugin_seconds", "time a data plugin took", ("plugin",), PLUGIN_BUCKETS
        )
        self._amqp = _Counts(
            "mqtwist_amqp_events",
            "publishes, confirms, nacks and returns of mqtwist's own publications, and reconnects",
            ("event",),
        )
        self._submissionSessions = _Counts(
            "mqtwist_submission_sessions",
            "SMTP submission connections: accepted, or refused at connect (limits, shutting down)",
            ("result",),
        )
        self._submissionMessages = _Counts(
            "mqtwist_submission_messages", "messages taken in over SMTP and confirmed onto the queue", ()
        )
        self._submissionRecipients = _Counts(
            "mqtwist_submission_recipients", "recipients of the messages taken in over SMTP (a job each)", ()
        )
        self._submissionRefused = _Counts(
            "mqtwist_submission_refused",
            "SMTP submission commands and messages refused, by stage (connect, command, mail, rcpt, data, "
            "auth) and reason (relay, size, rate, queue, timeout, syntax, ...)",
            ("stage", "reason"),
        )
        self._submissionAuth = _Counts(
            "mqtwist_submission_auth", "SMTP AUTH attempts by mechanism and result (success, failure)",
            ("mechanism", "result"),
        )
        self._submissionBytes = _Counts(
            "mqtwist_submission_received_bytes", "message bytes received in DATA over SMTP", ()
        )
        #: what tells the submission connections open now
        self._submissionOpen: Callable[[], int] | None = None
        self._cluster = _Counts(
            "mqtwist_cluster_messages",
            "messages on the control exchange of the processes of the outbox, by direction (sent, "
            "received) and type (hello, heartbeat, bye, backoff, admin, usage)",
            ("direction", "type"),
        )
        #: what tells the live members of the cluster now
        self._clusterMembers: Callable[[], int] | None = None
        registry.register(_Collected(self))

    # -- the outbox ---------------------------------------------------------

    def consumed(self) -> None:
        """An outbox message was taken for handling."""
        self._consumed.add(())

    def concluded(self, outcome: str, state: str = "", result: str = "") -> None:
        """
        Handling an outbox message came to C{outcome} (C{delivered},
        C{failed}, ...), with its last entry's C{state} and C{result}.
        """
        self._outcomes.add((outcome, state, result))

    def finalAfter(self, outcome: str, seconds: float) -> None:
        """
        A message got its final result (C{delivered}, C{failed},
        C{expired}, C{cancelled}) C{seconds} after it was first tried.
        """
        self._latency.observe((outcome,), max(seconds, 0.0))

    # -- deliveries ---------------------------------------------------------

    def attempted(self, destination: str) -> None:
        """One attempt to C{destination} was made."""
        self._attempts.add((self._destination(destination),))

    def throttled(self, destination: str) -> None:
        """A message waits for a throttle of C{destination}."""
        self._throttled.add((self._destination(destination),))

    def attemptFailed(self, category: str) -> None:
        """An attempt failed, in C{category} (a bounded set: the category rules')."""
        self._failedAttempts.add((category,))

    def parked(self, destination: str) -> None:
        """A message for C{destination} was deferred without an attempt."""
        self._parked.add((self._destination(destination),))

    def held(self, destination: str) -> None:
        """A message for C{destination} was held back by an operator's pause."""
        self._held.add((self._destination(destination),))

    def paused(self, destination: str, action: str) -> None:
        """C{destination} was paused (C{action}: pause, down, reduce, admin)."""
        self._pauses.add((self._destination(destination), action))

    def pluginRan(self, plugin: str, outcome: str, seconds: float) -> None:
        """The data plugin C{plugin} ended with C{outcome} after C{seconds}."""
        self._pluginCalls.add((plugin, outcome))
        self._pluginSeconds.observe((plugin,), seconds)

    # -- the broker ---------------------------------------------------------

    def amqp(self, event: str, count: int = 1) -> None:
        """
        C{count} AMQP events of mqtwist's own: C{publish}, C{confirm},
        C{nack}, C{return} or C{reconnect}.
        """
        if count:
            self._amqp.add((event,), count)

    def outboxDepth(self, messages: int) -> None:
        """The broker said the outbox holds C{messages} ready messages."""
        self._outboxDepth = messages

    @property
    def lastOutboxDepth(self) -> int | None:
        """The ready messages of the outbox as last told, or C{None}."""
        return self._outboxDepth

    # -- SMTP submission -----------------------------------------------------

    def submissionSession(self, result: str) -> None:
        """A submission connection was C{accepted} or C{refused} at connect."""
        self._submissionSessions.add((result,))

    def submissionAccepted(self, recipients: int) -> None:
        """A submitted message of C{recipients} recipients was queued."""
        self._submissionMessages.add(())
        self._submissionRecipients.add((), recipients)

    def submissionRefused(self, stage: str, reason: str) -> None:
        """
        A submission command or message was refused at C{stage} for
        C{reason} (both from bounded sets of the server's).
        """
        self._submissionRefused.add((stage, reason))

    def submissionAuth(self, mechanism: str, result: str) -> None:
        """An AUTH with C{mechanism} (PLAIN, LOGIN) came to C{result}."""
        self._submissionAuth.add((mechanism, result))

    def submissionBytes(self, count: int) -> None:
        """C{count} message bytes were received in DATA."""
        self._submissionBytes.add((), count)

    def watchSubmission(self, openConnections: Callable[[], int]) -> None:
        """Read the submission connections open now from C{openConnections} at each scrape."""
        self._submissionOpen = openConnections

    # -- the cluster -----------------------------------------------------------

    def clusterMessage(self, direction: str, kind: str) -> None:
        """A control message of C{kind} was C{sent} or C{received} (from another member)."""
        self._cluster.add((direction, kind))

    def watchCluster(self, members: Callable[[], int]) -> None:
        """Read the live members of the cluster (this process included) from C{members} at each scrape."""
        self._clusterMembers = members

    # -- the present ----------------------------------------------------------

    def watch(self, source: PresentSource) -> None:
        """
        Read the figures of the present from C{source} at each scrape.
        """
        self._sources.append(source)

    def totals(self, name: str, by: str) -> dict[str, float]:
        """
        The values of the counter C{name} (C{mqtwist_outcomes_total}) added
        up by their label C{by} (C{outcome}).
        """
        counts = self._counter(name)
        at = counts.labels.index(by)
        totals: dict[str, float] = {}
        for labels, value in counts.values.items():
            totals[labels[at]] = totals.get(labels[at], 0.0) + value
        return totals

    def value(self, name: str, **labels: str) -> float:
        """
        The value of one series of the counter C{name}
        (C{mqtwist_consumed_total}), the series of every other label value
        added up; 0 when it has none yet.
        """
        counts = self._counter(name)
        wanted = [(counts.labels.index(label), value) for label, value in labels.items()]
        return float(
            sum(value for key, value in counts.values.items() if all(key[at] == want for at, want in wanted))
        )

    def counted(self) -> Iterator[_Counts | _Histogram]:
        """The counters and histograms, as they count."""
        for instrument in vars(self).values():
            if isinstance(instrument, (_Counts, _Histogram)):
                yield instrument

    def _counter(self, name: str) -> _Counts:
        for instrument in self.counted():
            if isinstance(instrument, _Counts) and f"{instrument.name}_total" == name:
                return instrument
        raise KeyError(f"no counter {name}")

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


class _Counts:
    """
    One counter family: its values by label values, as plain numbers.  The
    reactor thread is the only one that counts and the only one that reads
    (L{MetricsPage}), so no lock is needed, unlike prometheus_client's own
    counters, whose lock and checks cost more than the counting.
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class _Histogram:
    """One histogram family, counted as L{_Counts} are."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.buckets = buckets
        #: per label values: the count of each bucket (the last: above all), and the sum
        self.values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        counts[0][bisect_left(self.buckets, value)] += 1
        counts[1][0] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, (counts, total) in self.values.items():
            cumulative = list(accumulate(counts))
            bounds = [*(_bound(bound) for bound in self.buckets), "+Inf"]
            family.add_metric(labels, list(zip(bounds, cumulative)), total[0])
        return family


def _bound(bound: float) -> str:
    return repr(float(bound))


class _Collected(Collector):
    """The counted families of L{Metrics}, then the figures of the present."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.present = _PresentFigures(metrics)

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        for instrument in self.metrics.counted():
            yield instrument.family()
        yield from self.present.collect()
        if self.metrics._clusterMembers is not None:
            gauge = GaugeMetricFamily(
                "mqtwist_cluster_members", "live processes of the outbox, this one included, as it knows them"
            )
            gauge.add_metric([], self.metrics._clusterMembers())
            yield gauge
        if self.metrics._submissionOpen is not None:
            gauge = GaugeMetricFamily("mqtwist_submission_connections", "SMTP submission connections open now")
            gauge.add_metric([], self.metrics._submissionOpen())
            yield gauge


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
