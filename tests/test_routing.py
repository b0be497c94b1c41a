"""
MX routing against a real DNS server on loopback, and the fallback to the
next mail exchanger within one attempt against real SMTP servers.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from fixtures_dns import mxDomain
from helpers_deferred import outcome
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.logger import capturedLogs, formatEvent

from mqtwist.config import Config, SMTPTimeouts
from mqtwist.content.message import Message
from mqtwist.delivery.routing import Router
from mqtwist.errors import AttemptFailed
from mqtwist.service import deliveryEngine

PORT = 2525


def message(recipient: str, **extra) -> Message:
    return Message.fromJSON(json.dumps({"recipient": recipient, "mime": "Subject: x\r\n\r\nx\r\n", **extra}))


def router(dnsServer, **options) -> Router:
    return Router(smarthost=None, mxPort=PORT, nameservers=[dnsServer.nameserver], reactor=reactor, **options)


async def failure(deferred) -> AttemptFailed:
    with pytest.raises(AttemptFailed) as raised:
        await deferred
    return raised.value


@pytest_twisted.ensureDeferred
async def test_exchangers_by_preference_with_their_addresses(dnsServer):
    dnsServer.mx("example.test", (20, "backup.example.test"), (10, "mx.example.test"))
    dnsServer.address("mx.example.test", "127.0.0.2", "::1")
    dnsServer.address("backup.example.test", "127.0.0.3")
    route = await router(dnsServer).route(message("a@Example.test", ips=["127.0.0.1"]))
    assert route.destination.hosts == (("127.0.0.2", PORT), ("::1", PORT), ("127.0.0.3", PORT))
    assert route.destination.bindAddress == "127.0.0.1"
    assert route.exchangers == ("mx.example.test", "backup.example.test")
    assert route.hostNames == ("mx.example.test", "mx.example.test", "backup.example.test")


@pytest_twisted.ensureDeferred
async def test_equal_preference_in_random_order(dnsServer):
    dnsServer.mx("example.test", (10, "a.example.test"), (10, "b.example.test"), (5, "first.example.test"))
    for name, address in [("a", "127.0.0.2"), ("b", "127.0.0.3"), ("first", "127.0.0.4")]:
        dnsServer.address(f"{name}.example.test", address)
    orders = set()
    for _ in range(30):  # each router has its own cache
        route = await router(dnsServer).route(message("a@example.test"))
        orders.add(route.exchangers)
    assert orders == {
        ("first.example.test", "a.example.test", "b.example.test"),
        ("first.example.test", "b.example.test", "a.example.test"),
    }


@pytest_twisted.ensureDeferred
async def test_domains_of_the_same_exchangers_share_their_order(dnsServer):
    """
    The domains of one provider (the same exchangers at the same
    preferences) get the same random order, so they share one destination
    and its connections; the same hosts at other preferences keep theirs.
    """
    for n in range(8):
        dnsServer.mx(f"d{n}.test", (10, "a.provider.test"), (10, "b.provider.test"), (10, "c.provider.test"))
    dnsServer.mx("backup.test", (10, "c.provider.test"), (20, "a.provider.test"), (20, "b.provider.test"))
    for name, address in [("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")]:
        dnsServer.address(f"{name}.provider.test", address)
    shared = router(dnsServer)
    routes = [await shared.route(message(f"x@d{n}.test")) for n in range(8)]
    # 8 domains in one order by chance: 1 in 6**7 without the sharing
    assert len({route.destination for route in routes}) == 1
    assert len({route.exchangers for route in routes}) == 1
    backup = await shared.route(message("x@backup.test"))
    assert backup.exchangers[0] == "c.provider.test"
    assert set(backup.exchangers[1:]) == {"a.provider.test", "b.provider.test"}


@pytest_twisted.ensureDeferred
async def test_implicit_mx_is_the_domain_itself(dnsServer):
    dnsServer.address("bare.test", "127.0.0.5")
    route = await router(dnsServer).route(message("a@bare.test"))
    assert route.destination.hosts == (("127.0.0.5", PORT),)
    assert route.exchangers == ("bare.test",)


@pytest_twisted.ensureDeferred
async def test_addresses_per_attempt_are_bounded(dnsServer):
    dnsServer.mx("many.test", *[(n, f"mx{n}.many.test") for n in range(5)])
    for n in range(5):
        dnsServer.address(f"mx{n}.many.test", f"127.0.1.{n}")
    route = await router(dnsServer, addressesPerAttempt=3).route(message("a@many.test"))
    assert [host for host, _ in route.destination.hosts] == ["127.0.1.0", "127.0.1.1", "127.0.1.2"]


@pytest_twisted.ensureDeferred
async def test_null_mx_and_nxdomain_fail_for_good(dnsServer):
    dnsServer.mx("nomail.test", (0, "."))
    null = await failure(router(dnsServer).route(message("a@nomail.test")))
    assert (null.state, null.result, null.permanent) == ("dns", "error", True)
    assert "null MX" in null.description
    missing = await failure(router(dnsServer).route(message("a@missing.test")))
    assert (missing.state, missing.permanent) == ("dns", True)
    assert "NXDOMAIN" in missing.description
    dnsServer.mx("noaddress.test", (10, "ghost.noaddress.test"))
    ghost = await failure(router(dnsServer).route(message("a@noaddress.test")))
    assert ghost.permanent and "ghost.noaddress.test" in ghost.description


@pytest_twisted.ensureDeferred
async def test_servfail_and_timeout_are_soft(dnsServer):
    dnsServer.fail("broken.test", "servfail")
    dnsServer.fail("slow.test", "timeout")
    broken = await failure(router(dnsServer).route(message("a@broken.test")))
    assert (broken.state, broken.permanent) == ("dns", False)
    assert "SERVFAIL" in broken.description
    slow = await failure(router(dnsServer, dnsTimeout=0.3).route(message("a@slow.test")))
    assert (slow.state, slow.permanent) == ("dns", False)
    assert "time-out" in slow.description


@pytest_twisted.ensureDeferred
async def test_answers_cached_by_ttl_with_a_minimum(dnsServer):
    dnsServer.mx("cached.test", (10, "mx.cached.test"), ttl=1)
    dnsServer.address("mx.cached.test", "127.0.0.2", ttl=1)
    clock = FakeNow()
    shortCache = router(dnsServer, minCacheTime=0)
    longCache = router(dnsServer, minCacheTime=100)
    for each in (shortCache, longCache):
        await each.route(message("a@cached.test"))
        each.reactor = clock
    asked = len(dnsServer.queries)
    await longCache.route(message("b@cached.test"))
    clock.offset = 2  # past the TTL, within the minimum
    await longCache.route(message("c@cached.test"))
    assert len(dnsServer.queries) == asked
    await shortCache.route(message("d@cached.test"))
    assert ("cached.test", 15) in dnsServer.queries[asked:]  # MX asked again


async def test_expired_answers_are_forgotten(dnsServer):
    """
    The answers of domains no message asks for any more leave the cache
    once expired, when a new domain is looked up (at most one look a
    minute, or a C{minCacheTime}): a bulk sender's domains do not stay.
    """
    for n in range(5):
        dnsServer.mx(f"d{n}.test", (10, "mx.d.test"), ttl=1)
    dnsServer.mx("late.test", (10, "mx.d.test"), ttl=1)
    dnsServer.address("mx.d.test", "127.0.0.2", ttl=1)
    clock = FakeNow()
    cache = router(dnsServer, minCacheTime=30)
    for n in range(5):
        await cache.route(message(f"a@d{n}.test"))
        cache.reactor = clock  # the resolver keeps the real reactor
    assert len(cache._cache) == 5
    clock.offset = 61
    await cache.route(message("a@d0.test"))  # an expired answer is asked for again
    await cache.route(message("a@late.test"))
    assert sorted(cache._cache) == ["d0.test", "late.test"]


def test_the_system_resolver_leaves_no_timer_after_close(tmp_path, monkeypatch):
    """
    Without name servers of its own the router asks those of
    C{/etc/resolv.conf}, re-read on the reactor it was given while it runs,
    and not after L{Router.close}.
    """
    from twisted.internet.task import Clock

    import mqtwist.delivery.routing

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\n")
    monkeypatch.setattr(mqtwist.delivery.routing, "RESOLV_CONF", str(conf))
    clock = Clock()
    system = Router(smarthost=None, mxPort=PORT, nameservers=[], reactor=clock)
    assert [server for server in system.resolver.dynServers] == [("127.0.0.53", 53)]
    assert len(clock.getDelayedCalls()) == 1  # reading the file again
    assert not [call for call in reactor.getDelayedCalls() if "ParseConfig" in repr(call.func)]
    system.close()
    assert clock.getDelayedCalls() == []


class FakeNow:
    """The real reactor's time plus an offset (the resolver keeps the real reactor)."""

    offset = 0.0

    def seconds(self) -> float:
        return reactor.seconds() + self.offset


@pytest_twisted.ensureDeferred
async def test_cancelled_waits_leave_the_lookup_to_its_answer(dnsServer):
    """
    Both messages waiting for a domain's lookup are cancelled before its
    answer: each fails with CancelledError at once; the lookup goes on, a
    third message joins it, and its answer is cached (twisted.names queries
    cannot be cancelled, so stopping them is not on offer).
    """
    mxDomain(dnsServer, "late.test", "127.0.0.2")
    late = router(dnsServer)
    first = late.route(message("a@late.test"))
    second = late.route(message("b@late.test"))
    first.cancel()
    second.cancel()
    assert [await outcome(d) for d in (first, second)] == [CancelledError, CancelledError]
    assert late._pending["late.test"] == [] and dnsServer.queries == []
    route = await late.route(message("c@late.test"))
    assert route.destination.hosts == (("127.0.0.2", PORT),)
    assert [name for name, _ in dnsServer.queries] == ["late.test", "mx.late.test", "mx.late.test"]
    assert "late.test" in late._cache and late._pending == {}


@pytest_twisted.ensureDeferred
async def test_a_cancelled_waiter_leaves_the_lookup_to_the_others(dnsServer):
    """
    One of two messages waiting for a lookup is cancelled while its MX
    query is out: the other gets its route when the answer comes.
    """
    mxDomain(dnsServer, "late.test", "127.0.0.2")
    late = router(dnsServer)
    cancelled = late.route(message("a@late.test"))
    kept = late.route(message("b@late.test"))
    cancelled.cancel()
    assert await outcome(cancelled) is CancelledError
    assert late._pending["late.test"] == [kept]
    route = await kept
    assert route.destination.hosts == (("127.0.0.2", PORT),)


@pytest_twisted.ensureDeferred
async def test_a_waiter_cancelled_while_the_answer_is_handed_out(dnsServer):
    """
    The first message's callback cancels the second's wait, the lookup
    being done: the second fails with CancelledError alone, the third gets
    its route.
    """
    mxDomain(dnsServer, "busy.test", "127.0.0.2")
    busy = router(dnsServer)
    first = busy.route(message("a@busy.test"))
    second = busy.route(message("b@busy.test"))
    third = busy.route(message("c@busy.test"))
    first.addCallback(lambda route: (second.cancel(), route)[1])
    results = [await outcome(d) for d in (first, second, third)]
    assert [getattr(r, "domain", r) for r in results] == ["busy.test", CancelledError, "busy.test"]
    assert busy._pending == {}


@pytest_twisted.ensureDeferred
async def test_next_exchanger_when_one_refuses_times_out_or_answers_421(dnsServer, mailHosts):
    # 127.0.0.2 refuses (nothing listens), 127.0.0.3 never greets,
    # 127.0.0.4 answers 421, 127.0.0.5 takes the message
    silent = mailHosts.scripted("127.0.0.3", lambda n: None)
    busy = mailHosts.scripted("127.0.0.4", lambda n: "421 4.3.2 busy, try another")
    sink = await mailHosts.sink("127.0.0.5", hostname="mx5.fallback.test")
    dnsServer.mx("fallback.test", *[(n * 10, f"mx{n}.fallback.test") for n in (2, 3, 4, 5)])
    for n in (2, 3, 4, 5):
        dnsServer.address(f"mx{n}.fallback.test", f"127.0.0.{n}")
    config = Config(
        nameservers=[dnsServer.nameserver],
        mxPort=mailHosts.port,
        ehloName="client.test",
        timeouts=SMTPTimeouts(greeting=0.5),
    )
    engine = deliveryEngine(config, [], reactor)
    try:
        with capturedLogs() as events:
            entry = await engine.deliver(message("someone@fallback.test", envelope="s@example.org"))
    finally:
        await engine.close()
    assert entry.accepted, entry
    assert entry.connection["to"] == "127.0.0.5" and entry.connection["mta"] == "mx5.fallback.test"
    assert entry.connection["host"] == "mx5.fallback.test"
    # the log names the exchangers it passed over, and the one that took it
    lines = [formatEvent(event) for event in events]
    passed = [line.split(" of ")[0] for line in lines if line.startswith("cannot use SMTP server")]
    assert passed == [f"cannot use SMTP server mx{n}.fallback.test (127.0.0.{n}:{mailHosts.port})" for n in (2, 3, 4)]
    assert any(line.startswith("delivered to someone@fallback.test to someone@fallback.test via "
                               "mx5.fallback.test (127.0.0.5): 250") for line in lines), lines
    assert [m.rcptTos for m in sink.messages] == [("someone@fallback.test",)]
    assert len(silent.connections) == 1 and len(busy.connections) == 1


@pytest_twisted.ensureDeferred
async def test_the_last_exchangers_failure_when_all_fail(dnsServer, mailHosts):
    mailHosts.scripted("127.0.0.3", lambda n: "421 4.3.2 not now")
    dnsServer.mx("allbad.test", (10, "mx2.allbad.test"), (20, "mx3.allbad.test"))
    dnsServer.address("mx2.allbad.test", "127.0.0.2")
    dnsServer.address("mx3.allbad.test", "127.0.0.3")
    config = Config(nameservers=[dnsServer.nameserver], mxPort=mailHosts.port, ehloName="client.test")
    engine = deliveryEngine(config, [], reactor)
    try:
        entry = await engine.deliver(message("someone@allbad.test"))
    finally:
        await engine.close()
    assert (entry.state, entry.result, entry.code, entry.final) == ("intro", "error", 421, False)
    # the 421 paused the destination, and the entry says so
    assert entry.connection["backoff"] == "pause"
    assert entry.connection["destination"] == "mx mx2.allbad.test,mx3.allbad.test"
