"""
L{DeliveryPolicy} bookkeeping with a fake clock: grouping, limits, backlog,
pauses, reduced concurrency, down marking.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from mqtwist.config import BackoffRule, Config, ThrottleRule
from mqtwist.delivery.policy import Deferral, DeliveryPolicy, TokenBucket
from mqtwist.delivery.routing import Route
from mqtwist.errors import AttemptFailed
from mqtwist.smtp.pool import Destination


def route(domain: str, *exchangers: str, ip: str | None = None) -> Route:
    return Route(Destination((("127.0.0.2", 25),), ip), domain, exchangers, domain)


def policy(connections: int = 0, **settings) -> tuple[DeliveryPolicy, Clock]:
    clock = Clock()
    clock.advance(1000)
    return DeliveryPolicy(Config(ehloName="x", **settings), clock, lambda destination: connections), clock


def deferral(deferred) -> Deferral:
    failures = []
    deferred.addErrback(lambda f: failures.append(f.value))
    (value,) = failures
    assert isinstance(value, Deferral)
    return value


def test_domains_with_the_same_exchangers_share_a_destination():
    p, _ = policy(throttles=[ThrottleRule(domain="*.example.com"), ThrottleRule(mx="*.provider.net", ip="10.*")])
    assert p.destinationOf(route("a.test", "mx2.b.test", "mx1.b.test"))[0] == "mx mx1.b.test,mx2.b.test"
    assert p.destinationOf(route("b.test", "mx1.b.test", "mx2.b.test"))[0] == "mx mx1.b.test,mx2.b.test"
    assert p.destinationOf(route("shop.example.com", "mx.x"))[0] == "domain *.example.com"
    assert p.destinationOf(route("c.test", "in.provider.net", ip="10.0.0.1"))[0] == "mx *.provider.net from 10.0.0.1"
    # the ip of the rule does not match: MX rollup, per local address
    assert p.destinationOf(route("c.test", "in.provider.net", ip="192.0.2.1"))[0] == "mx in.provider.net from 192.0.2.1"


def test_token_bucket_allows_a_seconds_worth_then_paces():
    bucket = TokenBucket(120, 0.0)
    assert bucket.wait(0.0) == 0
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.wait(0.0) == pytest.approx(0.5)
    assert bucket.wait(0.5) == 0


def test_beyond_the_backlog_messages_are_deferred():
    p, clock = policy(maxConnectionsPerDestination=1, destinationBacklog=1, parkDelay=7)
    first = p.admit(route("a.test", "mx.a.test"))
    waiting = p.admit(route("a.test", "mx.a.test"))
    assert first.called and not waiting.called
    # busy for a second with nothing done: stuck, so only the backlog waits
    clock.advance(1)
    turnedAway = deferral(p.admit(route("a.test", "mx.a.test")))
    assert turnedAway.until == clock.seconds() + 7 and turnedAway.reason.startswith("busy")
    p.release(first.result)
    assert waiting.called


def test_a_destination_that_moves_may_have_more_waiting_until_it_gets_stuck():
    p, clock = policy(maxConnectionsPerDestination=1, destinationBacklog=1)
    permit = p.admit(route("a.test", "mx.a.test")).result
    waiting = [p.admit(route("a.test", "mx.a.test")) for _ in range(4)]
    assert not any(w.called for w in waiting)  # it just got busy: all wait
    clock.advance(0.5)
    p.release(permit)  # moving: the first waiter goes
    assert waiting[0].called
    clock.advance(1)  # nothing more ended for a second: stuck
    assert not waiting[1].called
    for turnedAway in waiting[2:]:
        assert deferral(turnedAway).reason.startswith("busy")


def test_stuck_after_is_configurable():
    p, clock = policy(maxConnectionsPerDestination=1, destinationBacklog=1, stuckAfter=0.25)
    p.admit(route("a.test", "mx.a.test"))
    waiting = [p.admit(route("a.test", "mx.a.test")) for _ in range(3)]
    clock.advance(0.2)
    assert not any(w.called for w in waiting)
    clock.advance(0.05)  # nothing ended for 0.25 s: stuck, only the backlog waits
    assert not waiting[0].called
    assert all(deferral(w).reason.startswith("busy") for w in waiting[1:])
    assert deferral(p.admit(route("a.test", "mx.a.test"))).reason.startswith("busy")


def slowWithWaiters(p: DeliveryPolicy, count: int = 3) -> tuple[Any, list[Any]]:
    """One delivery to slow.test under way (its Deferred) and C{count} more waiting."""
    first = p.admit(route("slow.test", "mx.slow.test"))
    return first, [p.admit(route("slow.test", "mx.slow.test")) for _ in range(count)]


def endFastDeliveries(p: DeliveryPolicy, count: int) -> None:
    for _ in range(count):
        p.release(p.admit(route("fast.test", "mx.fast.test")).result)


def test_a_destination_that_ends_nothing_while_others_do_is_stuck_at_once():
    p, clock = policy(maxConnectionsPerDestination=1, destinationBacklog=1, stuckAfterOthers=3)
    _, waiting = slowWithWaiters(p)
    endFastDeliveries(p, 2)
    assert not any(w.called for w in waiting)  # two others ended: not yet
    endFastDeliveries(p, 1)
    # no time passed, and no more message came for it: the third that
    # ended turned away those beyond the backlog
    reasons = [deferral(w).reason for w in waiting[1:]]
    assert reasons == [reasons[0]] * 2
    assert reasons[0].endswith("nothing ended while 3 deliveries to other destinations did")
    assert not waiting[0].called
    assert deferral(p.admit(route("slow.test", "mx.slow.test"))).reason == reasons[0]


def test_a_destination_that_ends_deliveries_is_not_stuck_however_many_others_end():
    p, clock = policy(maxConnectionsPerDestination=1, destinationBacklog=1, stuckAfterOthers=3)
    first, waiting = slowWithWaiters(p)
    endFastDeliveries(p, 2)
    p.release(first.result)  # slow, but it moves: the count starts again
    endFastDeliveries(p, 2)
    assert waiting[0].called and not any(w.called for w in waiting[1:])
    assert not p.admit(route("slow.test", "mx.slow.test")).called


def test_a_destination_held_back_by_its_rate_limit_keeps_only_its_backlog_while_others_move():
    p, clock = policy(
        destinationBacklog=1, stuckAfterOthers=3,
        throttles=[ThrottleRule(domain="slow.test", messagesPerMinute=60)],
    )
    p.release(p.admit(route("slow.test", "mx.slow.test")).result)
    # nothing in progress: the next token is a second away
    waiting = [p.admit(route("slow.test", "mx.slow.test")) for _ in range(3)]
    endFastDeliveries(p, 3)
    assert not waiting[0].called
    reasons = [deferral(w).reason for w in waiting[1:]]
    assert reasons[0] == (
        "held back by its rate limit of 60 a minute (any new connections): 1 waiting, "
        "nothing ended while 3 deliveries to other destinations did"
    )
    clock.advance(1)
    assert waiting[0].called


def test_a_message_turned_away_may_admit_or_release_at_once():
    # the errbacks of messages turned away when a delivery ends run inside
    # that release: they may admit to, or end a delivery of, another stuck
    # destination, which turns its excess away before the release gets to it
    p, clock = policy(maxConnectionsPerDestination=1, destinationBacklog=1, stuckAfterOthers=3)
    _, waitingA = slowWithWaiters(p)
    p.admit(route("b.test", "mx.b.test"))
    waitingB = [p.admit(route("b.test", "mx.b.test")) for _ in range(3)]
    other = p.admit(route("c.test", "mx.c.test")).result
    admitted = []
    waitingA[1].addErrback(lambda _: admitted.append(p.admit(route("b.test", "mx.b.test"))))
    waitingA[2].addErrback(lambda _: p.release(other))
    endFastDeliveries(p, 2)
    assert admitted == []
    endFastDeliveries(p, 1)
    assert deferral(admitted[0]).reason.startswith("busy")
    assert not waitingB[0].called
    assert all(deferral(w).reason.startswith("busy") for w in waitingB[1:])


def test_stuck_after_others_zero_leaves_only_the_clock():
    p, clock = policy(maxConnectionsPerDestination=1, destinationBacklog=1, stuckAfterOthers=0)
    _, waiting = slowWithWaiters(p)
    endFastDeliveries(p, 1000)
    assert not any(w.called for w in waiting)
    clock.advance(1)
    assert deferral(p.admit(route("slow.test", "mx.slow.test"))).reason.endswith("nothing ended for 1.0s")


def test_rate_limit_wakes_the_waiter_when_a_token_is_due():
    p, clock = policy(throttles=[ThrottleRule(domain="*", messagesPerMinute=60)])
    first = p.admit(route("a.test", "mx.a.test"))
    second = p.admit(route("a.test", "mx.a.test"))
    assert first.called and not second.called
    clock.advance(0.99)
    assert not second.called
    clock.advance(0.02)
    assert second.called


def test_a_pause_turns_away_the_waiting_and_the_new():
    p, clock = policy(maxConnectionsPerDestination=1, backoff=[BackoffRule("pause", 60, text="slow down")])
    permit = p.admit(route("a.test", "mx.a.test")).result
    waiting = p.admit(route("a.test", "mx.a.test"))
    backoff = p.failed(permit, AttemptFailed("mailfrom", "error", "please slow down", code=451))
    assert backoff.action == "pause" and backoff.until == clock.seconds() + 60
    assert deferral(waiting).until == clock.seconds() + 60
    assert "slow down" in deferral(p.admit(route("a.test", "mx.a.test"))).reason
    p.release(permit)
    clock.advance(61)
    assert p.admit(route("a.test", "mx.a.test")).called


def test_a_failure_after_the_permit_went_back_still_pauses():
    """
    With PIPELINING a permit goes back once the body is written, so the
    reply to the body can come after the destination was forgotten.
    """
    p, clock = policy(backoff=[BackoffRule("pause", 60, text="slow down")])
    permit = p.admit(route("a.test", "mx.a.test")).result
    p.release(permit)
    backoff = p.failed(permit, AttemptFailed("message", "error", "please slow down", code=451))
    assert backoff.action == "pause"
    assert "slow down" in deferral(p.admit(route("a.test", "mx.a.test"))).reason


def test_destinations_delivered_to_are_forgotten():
    """
    The table of destinations does not grow with every one ever seen: the
    outcome reported after the permit went back keeps a destination only
    when it changed something.
    """
    p, clock = policy()
    for n in range(50):
        permit = p.admit(route(f"d{n}.test", f"mx.d{n}.test")).result
        p.release(permit)
        if n % 2:
            p.succeeded(permit)
        else:
            p.failed(permit, AttemptFailed("rcptto", "error", "no such user", code=550))
    assert p._states == {}


def test_destinations_with_a_spent_rate_or_a_pause_are_forgotten_later():
    """
    A destination whose rate limit was just used, or that was paused, is
    kept while that matters, and forgotten once it no longer does, when a
    new destination comes (at most one look a minute).
    """
    p, clock = policy(messagesPerMinute=60, backoff=[BackoffRule("pause", 600, code="^421$")])
    for n in range(100):
        p.release(p.admit(route(f"d{n}.test", f"mx.d{n}.test")).result)
    paused = p.admit(route("paused.test", "mx.paused.test")).result
    p.release(paused)
    p.failed(paused, AttemptFailed("intro", "error", "try again later", code=421))
    refused = p.admit(route("refused.test", "mx.refused.test")).result
    p.release(refused)
    p.failed(refused, AttemptFailed("connect", "error", "connection refused"))
    assert len(p._states) == 102
    clock.advance(61)  # the rates are full again; the pause and the failure still count
    p.admit(route("new.test", "mx.new.test"))
    assert sorted(p._states) == ["mx mx.new.test", "mx mx.paused.test", "mx mx.refused.test"]
    clock.advance(3600)
    p.admit(route("newer.test", "mx.newer.test"))
    assert sorted(p._states) == ["mx mx.new.test", "mx mx.newer.test"]


def test_a_forgotten_destination_leaves_no_timer():
    """
    A destination forgotten after its waiting messages were cancelled (as
    a stop does) takes its stuck check with it: nothing is left to run
    after L{DeliveryPolicy.close}.
    """
    p, clock = policy(maxConnectionsPerDestination=1, destinationBacklog=1)
    permit = p.admit(route("a.test", "mx.a.test")).result
    waiting = [p.admit(route("a.test", "mx.a.test")) for _ in range(2)]
    assert clock.getDelayedCalls() != []  # one beyond the backlog: a stuck check
    for waiter in waiting:
        waiter.addErrback(lambda _: None)
        waiter.cancel()
    p.release(permit)
    assert p._states == {}
    p.close()
    assert clock.getDelayedCalls() == []


def test_after_a_pause_one_delivery_at_a_time_until_one_reaches_the_server():
    """
    The messages that waited for a pause come back together: one of them
    is tried first, and the others only once it reached the server, so a
    destination still refusing costs one attempt, not one each.
    """
    p, clock = policy(maxConnectionsPerDestination=5, destinationBacklog=10)
    first = p.admit(route("a.test", "mx.a.test")).result
    p.release(first)
    p.failed(first, AttemptFailed("intro", "error", "try again later", code=421))
    clock.advance(61)
    admitted = [p.admit(route("a.test", "mx.a.test")) for _ in range(4)]
    assert [d.called for d in admitted] == [True, False, False, False]
    # the probe fails to connect: still one at a time
    probe = admitted[0].result
    p.release(probe)
    p.failed(probe, AttemptFailed("connect", "error", "connection refused"))
    assert [d.called for d in admitted] == [True, True, False, False]
    second = admitted[1].result
    p.release(second)
    p.succeeded(second)
    assert all(d.called for d in admitted)
    assert p._states["mx mx.a.test"].active == 2


def test_deliveries_failing_together_log_one_pause():
    p, clock = policy(maxConnectionsPerDestination=3)
    permits = [p.admit(route("a.test", "mx.a.test")).result for _ in range(3)]
    with capturedLogs() as events:
        for permit in permits:
            p.release(permit)
            p.failed(permit, AttemptFailed("rcptto", "error", "try again later", code=421))
            clock.advance(0.1)
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert [formatEvent(e) for e in warnings] == [
        "destination mx mx.a.test paused until 1970-01-01 00:17:40: paused after the reply 421 try again later"
    ]


def test_deliveries_started_together_do_not_all_count_on_one_idle_connection():
    """
    With one pooled connection, the first delivery takes it and needs no
    token of connections-per-minute; the others open connections, and
    each needs a token.
    """
    p, clock = policy(connections=1, connectionsPerMinute=1)
    permits = [p.admit(route("a.test", "mx.a.test")) for _ in range(4)]
    # the pooled connection, and one new one: the minute's single token
    assert [d.called for d in permits] == [True, True, False, False]
    clock.advance(60)
    assert [d.called for d in permits] == [True, True, True, False]


def test_too_many_connections_cuts_concurrency_for_a_while():
    p, clock = policy()
    permits = [p.admit(route("a.test", "mx.a.test")).result for _ in range(3)]
    backoff = p.failed(permits[0], AttemptFailed("intro", "error", "too many connections from your IP", code=421))
    assert backoff.action == "reduce"
    for permit in permits:
        p.release(permit)
    assert p.admit(route("a.test", "mx.a.test")).called
    assert not p.admit(route("a.test", "mx.a.test")).called  # one at a time now


def test_failing_connections_mark_the_destination_down():
    p, clock = policy(downAfterFailures=3, downTime=120)
    for _ in range(3):
        permit = p.admit(route("a.test", "mx.a.test")).result
        backoff = p.failed(permit, AttemptFailed("connect", "timeout", "no TCP connection"))
        p.release(permit)
    assert backoff.action == "down"
    down = deferral(p.admit(route("a.test", "mx.a.test")))
    assert down.reason.startswith("down") and down.until == clock.seconds() + 120


def test_a_server_that_answers_resets_the_failure_count():
    p, _ = policy(downAfterFailures=2)
    for failure in [
        AttemptFailed("connect", "error", "refused"),
        AttemptFailed("rcptto", "error", "no such user", code=550, permanent=True),
        AttemptFailed("connect", "error", "refused"),
    ]:
        permit = p.admit(route("a.test", "mx.a.test")).result
        assert p.failed(permit, failure) is None
        p.release(permit)


def test_greylisting_retries_only_the_message():
    p, clock = policy(greylistDelay=90)
    permit = p.admit(route("a.test", "mx.a.test")).result
    backoff = p.failed(permit, AttemptFailed("rcptto", "error", "Greylisted, come back later", code=450))
    assert (backoff.action, backoff.until) == ("retry", clock.seconds() + 90)
    assert p.admit(route("a.test", "mx.a.test")).called


def test_deferrals_in_a_row_park_longer_and_longer():
    """
    The first deferral parks a message until its destination's pause ends;
    each one in a row after it parks it twice as long as the one before, up
    to --park-delay-max, so a destination that stays stuck is not paid for
    with a park per message every few seconds.
    """
    from twisted.internet.defer import ensureDeferred

    from mqtwist.content.message import Message
    from mqtwist.delivery.engine import ScheduledEntry
    from mqtwist.service import deliveryEngine

    clock = Clock()
    clock.advance(1000)
    config = Config(
        ehloName="x", smarthost="127.0.0.1:2525", parkDelay=30, parkDelayMax=100,
        backoff=[BackoffRule("pause", 5, code="^421$")],
    )
    engine = deliveryEngine(config, [], clock)
    first = Message.fromObject({"recipient": "a@example.com", "mime": "x"})
    route = ensureDeferred(engine.router.route(first)).result
    permit = engine.policy.admit(route).result
    engine.policy.failed(permit, AttemptFailed("intro", "error", "try later", code=421))
    engine.policy.release(permit)
    waits = []
    for inRow in [*range(6), 1100]:
        results = [{"time": "2026-11-24 07:00:00", "state": "process", "result": "deferred", "deferrals": inRow}]
        message = Message.fromObject({"recipient": "a@example.com", "mime": "x", "results": results if inRow else []})
        entry = engine.deliver(message).result
        assert isinstance(entry, ScheduledEntry) and entry.result == "deferred"
        waits.append(entry.retryAt - clock.seconds())
    # however many came before (a count from the message's JSON too)
    assert waits == [5, 10, 20, 40, 80, 100, 100]
