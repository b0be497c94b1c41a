"""
L{mqtwist.metrics}: the instruments, their bounded labels, the figures of
the present read at scrape time, and what the plugin chain and the pool
report to them.  The service's metrics under real traffic are tested in
tests/test_admin_end_to_end.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_chain import Step, appending
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock

from mqtwist import COMPLETE, PermanentFailure
from mqtwist.dataplugin.chain import PluginChain
from mqtwist.dataplugin.testing import makeConfig, makeConnection, makeMessage
from mqtwist.metrics import OTHER, Metrics, ServerFigures


def scraped(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What Prometheus reads: sample name and labels -> value."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counts_by_outcome() -> None:
    metrics = Metrics()
    metrics.consumed()
    metrics.consumed()
    metrics.concluded("delivered", "message", "accepted")
    metrics.concluded("failed", "rcptto", "failure")
    metrics.finalAfter("delivered", 0.3)
    values = scraped(metrics)
    assert values[("mqtwist_consumed_total", ())] == 2
    assert values[("mqtwist_outcomes_total", (("outcome", "delivered"), ("result", "accepted"), ("state", "message")))] == 1
    assert values[("mqtwist_delivery_latency_seconds_bucket", (("le", "0.5"), ("outcome", "delivered")))] == 1
    assert values[("mqtwist_delivery_latency_seconds_bucket", (("le", "0.25"), ("outcome", "delivered")))] == 0
    assert metrics.totals("mqtwist_outcomes_total", "outcome") == {"delivered": 1, "failed": 1}


def test_destinations_beyond_the_bound_are_other() -> None:
    metrics = Metrics(maxDestinations=2)
    for name in ["a.example", "b.example", "c.example", "d.example", "a.example"]:
        metrics.attempted(name)
    values = scraped(metrics)
    assert values[("mqtwist_attempts_total", (("destination", "a.example"),))] == 2
    assert values[("mqtwist_attempts_total", (("destination", "b.example"),))] == 1
    assert values[("mqtwist_attempts_total", (("destination", OTHER),))] == 2
    assert not any(labels == (("destination", "c.example"),) for _, labels in values)


@dataclass(frozen=True)
class Figures:
    destination: str
    inFlight: int
    waiting: int


class Present:
    def __init__(self) -> None:
        self.destinations = [Figures("example.com", 3, 1), Figures("example.org", 0, 0)]
        self.servers = [ServerFigures("mx.example.com:25", 2, 1)]
        self.bytes = 12_345

    def destinationFigures(self) -> list[Figures]:
        return self.destinations

    def serverFigures(self) -> list[ServerFigures]:
        return self.servers

    def bodyBytesSent(self) -> int:
        return self.bytes


def test_the_present_is_read_at_each_scrape() -> None:
    metrics = Metrics()
    present = Present()
    metrics.watch(present)
    metrics.outboxDepth(42)
    values = scraped(metrics)
    assert values[("mqtwist_in_flight", (("destination", "example.com"),))] == 3
    assert values[("mqtwist_waiting", (("destination", "example.com"),))] == 1
    assert values[("mqtwist_connections", (("server", "mx.example.com:25"),))] == 2
    assert values[("mqtwist_idle_connections", (("server", "mx.example.com:25"),))] == 1
    assert values[("mqtwist_sent_bytes_total", ())] == 12_345
    assert values[("mqtwist_outbox_depth", ())] == 42
    present.destinations = []
    present.bytes = 20_000
    values = scraped(metrics)
    assert ("mqtwist_in_flight", (("destination", "example.com"),)) not in values
    assert values[("mqtwist_sent_bytes_total", ())] == 20_000


def test_plugin_calls_by_outcome_and_time() -> None:
    reactor = MemoryReactorClock()
    metrics = Metrics()

    def slow(step: Step, message: object) -> Deferred[object]:
        done: Deferred[object] = Deferred()
        reactor.callLater(0.2, done.callback, COMPLETE)
        return done

    chain = PluginChain(
        [appending("first"), Step("slow", slow)], reactor=reactor, config=makeConfig(), metrics=metrics
    )
    chain.run(makeConnection(), makeMessage(mime=b"body"))
    reactor.advance(0.2)
    refusing = PluginChain(
        [Step("refuser", lambda step, message: fail(PermanentFailure("no")))],
        reactor=reactor,
        config=makeConfig(),
        metrics=metrics,
    )
    refusing.run(makeConnection(), makeMessage(mime=b"body")).addErrback(lambda _: None)
    values = scraped(metrics)
    assert values[("mqtwist_plugin_calls_total", (("outcome", "continue"), ("plugin", "first")))] == 1
    assert values[("mqtwist_plugin_calls_total", (("outcome", "complete"), ("plugin", "slow")))] == 1
    assert values[("mqtwist_plugin_calls_total", (("outcome", "permanent"), ("plugin", "refuser")))] == 1
    assert values[("mqtwist_plugin_seconds_bucket", (("le", "0.1"), ("plugin", "slow")))] == 0
    assert values[("mqtwist_plugin_seconds_bucket", (("le", "0.5"), ("plugin", "slow")))] == 1


def test_servers_have_a_label_budget_of_their_own() -> None:
    """
    Many pooled servers do not take the labels of destinations: each kind
    folds into 'other' beyond its own bound.
    """
    metrics = Metrics(maxDestinations=2)
    present = Present()
    present.destinations = []
    present.servers = [ServerFigures(f"mx{n}.example.net:25", 1, 0) for n in range(5)]
    metrics.watch(present)
    scraped(metrics)
    metrics.attempted("gmail.com")
    values = scraped(metrics)
    assert values[("mqtwist_attempts_total", (("destination", "gmail.com"),))] == 1
    assert values[("mqtwist_connections", (("server", OTHER),))] == 3
