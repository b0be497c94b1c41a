"""
The cluster's bookkeeping with a fake clock: the live members, each one's
share of a limit, the control messages (L{ClusterControl}), and the delivery
policy's shares and what other members tell it (L{DeliveryPolicy.setMembers},
L{DeliveryPolicy.applyShared}).
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from test_throttle_policy import deferral, policy, route
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from mqtwist.admin.controls import Controls, Selector
from mqtwist.cluster.control import ClusterControl, SharedBackoff
from mqtwist.cluster.members import Members, rateShareOf, shareOf
from mqtwist.config import BackoffRule, ThrottleRule
from mqtwist.errors import AttemptFailed

MEMBERS = ("host:1", "host:2", "host:3", "host:4")


@given(st.integers(1, 500), st.integers(1, 40))
def test_shares_add_up_to_the_limit_or_to_one_each(limit: int, count: int) -> None:
    members = [f"m{n:03}" for n in range(count)]
    shares = [shareOf(limit, members, me) for me in members]
    assert sum(shares) == max(limit, count)
    assert max(shares) - min(shares) <= 1 and min(shares) >= 1


def test_five_connections_among_four_members_and_rates() -> None:
    assert [shareOf(5, MEMBERS, me) for me in MEMBERS] == [2, 1, 1, 1]
    assert shareOf(0, MEMBERS, "host:1") == 0
    assert rateShareOf(100, MEMBERS) == 25 and rateShareOf(0, MEMBERS) == 0


def test_members_expire_unless_forgiven() -> None:
    members = Members("host:1", timeout=5)
    assert members.heard("host:2", 0) and not members.heard("host:2", 1) and not members.heard("host:1", 1)
    members.heard("host:3", 3)
    assert members.expire(5.5) == [] and members.expire(6) == ["host:2"]
    assert members.live == ("host:1", "host:3")
    # this process heard nothing for a while (no connection): none is gone
    members.forgive(100)
    assert members.expire(104) == [] and members.live == ("host:1", "host:3")
    assert members.left("host:3") and not members.left("host:3")
    assert members.live == ("host:1",)


class Wire:
    """What a L{ClusterControl} sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def publishControl(self, body: bytes) -> bool:
        self.sent.append(json.loads(body))
        return True

    def kinds(self) -> list[str]:
        return [message["type"] for message in self.sent]


def control(me: str = "host:2") -> tuple[ClusterControl, Wire, Clock, list[tuple[str, ...]]]:
    clock = Clock()
    cluster = ClusterControl(me, clock, heartbeat=1, timeout=3, settle=2)
    wire = Wire()
    cluster.publisher = wire
    changes: list[tuple[str, ...]] = []
    cluster.onMembers = changes.append
    return cluster, wire, clock, changes


def said(member: str, kind: str, **fields) -> bytes:
    return json.dumps({"v": 1, "type": kind, "member": member, **fields}).encode()


def test_alone_it_settles_at_once_and_beats() -> None:
    cluster, wire, clock, changes = control()
    assert cluster.controlReady(consumers=0).called
    assert wire.kinds() == ["hello"] and changes == [("host:2",)]
    clock.pump([1, 1, 1])
    assert wire.kinds() == ["hello", "heartbeat", "heartbeat", "heartbeat"]


def test_it_waits_for_as_many_members_as_the_outbox_had_consumers() -> None:
    cluster, wire, clock, changes = control()
    settled = cluster.controlReady(consumers=2)
    cluster.controlReceived(said("host:2", "hello"))  # its own, back from the exchange
    cluster.controlReceived(said("host:1", "heartbeat"))
    assert changes == [] and not cluster.settled and not settled.called
    cluster.controlReceived(said("host:3", "heartbeat"))
    assert changes == [("host:1", "host:2", "host:3")] and settled.called


def test_it_settles_after_the_settle_time_whoever_answered() -> None:
    cluster, _, clock, changes = control()
    settled = cluster.controlReady(consumers=2)
    cluster.controlReceived(said("host:1", "heartbeat"))
    clock.advance(1.9)
    assert changes == [] and not settled.called
    clock.advance(0.1)
    assert changes == [("host:1", "host:2")] and settled.called
    # a connection after that one starts consuming at once
    assert cluster.controlReady(consumers=5).called


def test_a_hello_is_answered_at_once_and_a_stale_member_goes() -> None:
    cluster, wire, clock, changes = control()
    cluster.controlReady(consumers=0)
    cluster.controlReceived(said("host:3", "hello"))
    assert wire.kinds() == ["hello", "heartbeat"]
    assert changes[-1] == ("host:2", "host:3")
    # host:3 crashes: no goodbye, no heartbeat
    clock.pump([1, 1])
    assert changes[-1] == ("host:2", "host:3")
    clock.advance(1)
    assert changes[-1] == ("host:2",)


def test_cut_off_from_the_broker_it_takes_no_one_for_gone() -> None:
    cluster, _, clock, changes = control()
    cluster.controlReady(consumers=0)
    cluster.controlReceived(said("host:3", "heartbeat"))
    cluster.controlLost()
    clock.advance(60)
    cluster.controlReady(consumers=1)
    assert changes[-1] == ("host:2", "host:3")
    clock.pump([1, 1])
    assert changes[-1] == ("host:2", "host:3")
    clock.advance(1)  # still silent, now that this one hears again
    assert changes[-1] == ("host:2",)


def test_goodbye_and_what_is_not_a_control_message() -> None:
    cluster, wire, clock, changes = control()
    cluster.controlReady(consumers=0)
    cluster.controlReceived(said("host:3", "heartbeat"))
    cluster.controlReceived(said("host:3", "bye"))
    assert changes[-1] == ("host:2",)
    count = len(changes)
    for body in (b"{", b"[]", json.dumps({"v": 2, "type": "hello", "member": "x"}).encode(), said("x", "backoff")):
        cluster.controlReceived(body)
    # x's malformed backoff made it a member, nothing else happened
    assert changes[count:] == [("host:2", "x")]
    cluster.stop()
    assert wire.kinds()[-1] == "bye"


def test_a_backoff_is_read_and_checked() -> None:
    backoffs: list[SharedBackoff] = []
    cluster, _, _, _ = control()
    cluster.onBackoff = backoffs.append
    cluster.controlReceived(
        said("host:1", "backoff", destination="mx mx.a.test", action="pause", seconds=60, reason="421", category=None)
    )
    cluster.controlReceived(said("host:1", "backoff", destination="mx mx.a.test", action="reduce", seconds=60, reason=""))
    cluster.controlReceived(said("host:1", "backoff", destination="d", action="retry", seconds=60, reason=""))
    assert backoffs == [SharedBackoff("host:1", "mx mx.a.test", "pause", 60.0, "421")]


def test_shares_of_a_destination_follow_the_members() -> None:
    p, clock = policy(throttles=[ThrottleRule(domain="*", connections=5, messagesPerMinute=6000)])
    p.holdUntilSettled()
    waiting = [p.admit(route("a.test", "mx.a.test")) for _ in range(4)]
    assert not any(w.called for w in waiting)  # nothing before the members are known
    p.setMembers(MEMBERS, "host:2")
    (state,) = p.destinationStates()
    assert state.limits.connections == 1 and state.limits.messagesPerMinute == 1500
    assert [w.called for w in waiting] == [True, False, False, False]
    # two of them go: host:2 is first of two, with 3 of the 5
    p.setMembers(("host:2", "host:3"), "host:2")
    assert [w.called for w in waiting] == [True, True, True, False]
    (state,) = p.destinationStates()
    assert state.limits.connections == 3 and state.limits.messagesPerMinute == 3000


def test_a_pause_here_is_told_and_one_told_is_applied_not_told_again() -> None:
    p, clock = policy()
    p.setMembers(MEMBERS, "host:2")
    told: list[SharedBackoff] = []
    p.onBackoff = told.append
    permit = p.admit(route("a.test", "mx.a.test")).result
    p.release(permit)
    p.failed(permit, AttemptFailed("mailfrom", "421", "421 4.7.0 try later", code=421, status="4.7.0"))
    assert [(b.member, b.destination, b.action, b.seconds) for b in told] == [("host:2", "mx mx.a.test", "pause", 60)]
    # another member paused a destination this one has not seen yet
    p.applyShared(SharedBackoff("host:3", "mx mx.b.test", "pause", 30, "paused after the reply 421 x", "throttled"))
    turnedAway = deferral(p.admit(route("b.test", "mx.b.test")))
    assert turnedAway.until == clock.seconds() + 30 and "(at host:3)" in turnedAway.reason
    assert len(told) == 1
    clock.advance(30)
    assert p.admit(route("b.test", "mx.b.test")).called


def test_a_reduction_is_shared_as_a_total() -> None:
    rule = BackoffRule("reduce", 600, code="^4", text="too many connections", connections=3)
    p, clock = policy(maxConnectionsPerDestination=10, backoff=[rule])
    p.setMembers(MEMBERS, "host:1")
    told: list[SharedBackoff] = []
    p.onBackoff = told.append
    permit = p.admit(route("a.test", "mx.a.test")).result
    p.release(permit)
    p.failed(permit, AttemptFailed("mailfrom", "421", "too many connections", code=421))
    assert [(b.action, b.connections) for b in told] == [("reduce", 3)]
    # host:1 takes 1 of the 3 among four members; another member's word reduces b
    p.applyShared(SharedBackoff("host:3", "mx mx.b.test", "reduce", 600, "too many connections", None, 3))
    permits = [p.admit(route("b.test", "mx.b.test")) for _ in range(2)]
    assert [d.called for d in permits] == [True, False]


def test_admin_actions_are_announced_once_and_taken_from_peers() -> None:
    clock = Clock()
    here, there = Controls(clock), Controls(clock)
    announced: list[dict] = []
    here.announce = announced.append
    there.announce = lambda action: (_ for _ in ()).throw(AssertionError("told again"))
    here.pause(Selector(domain="a.test"), 60, "bounces", "ops")
    here.cancel(Selector(tag="spam"), float("inf"), "stop it", "ops")
    for action in announced:
        there.fromPeer(action)
    assert [(c.selector, c.until, c.reason, c.by) for c in there.pauses()] == [(Selector(domain="a.test"), 60, "bounces", "ops")]
    assert [(c.selector, c.until) for c in there.cancels()] == [(Selector(tag="spam"), float("inf"))]
    here.resume(Selector(domain="a.test"))
    here.uncancel(Selector(tag="spam"))
    for action in announced[2:]:
        there.fromPeer(action)
    assert there.pauses() == [] and there.cancels() == []


def test_submission_usage_is_gathered_then_told_and_read_back() -> None:
    cluster, wire, clock, _ = control()
    cluster.controlReady(consumers=0)
    cluster.announceUsage("user", "ann", 1)
    cluster.announceUsage("user", "ann", 2)
    cluster.announceUsage("network", "127.0.0.1/32", 1)
    assert wire.kinds() == ["hello"]
    clock.advance(0.1)
    assert wire.sent[-1]["accounts"] == [["user", "ann", 3], ["network", "127.0.0.1/32", 1]]
    heard: list[tuple[str, str, int]] = []
    cluster.onUsage = lambda kind, name, count: heard.append((kind, name, count))
    cluster.controlReceived(said("host:1", "usage", accounts=[["user", "ann", 5]]))
    for bad in ([["user", "ann", 0]], [["user", 5, 1]], "ann", [["user", "ann", True]]):
        cluster.controlReceived(said("host:1", "usage", accounts=bad))
    assert heard == [("user", "ann", 5)]
    # what is counted when it stops is told before the goodbye
    cluster.announceUsage("user", "bob", 1)
    cluster.stop()
    assert wire.kinds()[-2:] == ["usage", "bye"] and wire.sent[-2]["accounts"] == [["user", "bob", 1]]


def test_connections_are_closed_only_when_fewer_than_when_the_delivery_began() -> None:
    # a.test's rule of 1 connection may share a pool destination with others:
    # only a drop since the permit closes a connection, not the count alone
    p, clock = policy(throttles=[ThrottleRule(domain="*", connections=5)])
    first = p.admit(route("a.test", "mx.a.test")).result
    assert p.fewerConnectionsSince(first) is None
    p.setMembers(MEMBERS, "host:2")
    assert p.fewerConnectionsSince(first) == 1
    later = p.admit(route("a.test", "mx.a.test"))
    p.release(first)
    assert p.fewerConnectionsSince(later.result) is None


def test_another_process_with_the_same_name_is_reported_once() -> None:
    cluster, wire, _, changes = control()
    cluster.controlReady(consumers=0)
    assert wire.sent[0]["instance"] == cluster.instance
    with capturedLogs() as events:
        cluster.controlReceived(said("host:2", "hello", instance=cluster.instance))  # its own
        cluster.controlReceived(said("host:2", "hello", instance="other"))
        cluster.controlReceived(said("host:2", "heartbeat", instance="other"))
    errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
    assert errors == [
        "cluster: another process is named host:2 too: neither counts the other, so each takes the share of "
        "one; give each process its own --cluster-member (or leave it empty: the host name and the process id)"
    ]
    assert changes == [("host:2",)]


def test_a_backoff_longer_than_a_year_is_ill_formed() -> None:
    backoffs: list[SharedBackoff] = []
    cluster, _, _, _ = control()
    cluster.onBackoff = backoffs.append
    for seconds in (1e300, 366 * 24 * 3600 + 1, float("nan")):
        cluster.controlReceived(said("host:1", "backoff", destination="d", action="pause", seconds=seconds, reason=""))
    assert backoffs == []


def test_control_messages_and_members_are_metrics() -> None:
    from prometheus_client import generate_latest

    cluster, _, _, _ = control()
    cluster.controlReady(consumers=0)
    cluster.controlReceived(said("host:3", "hello"))
    cluster.controlReceived(said("host:3", "whatever"))
    value = cluster.metrics.value
    assert value("mqtwist_cluster_messages_total", direction="sent", type="hello") == 1
    assert value("mqtwist_cluster_messages_total", direction="sent", type="heartbeat") == 1  # the answer
    assert value("mqtwist_cluster_messages_total", direction="received", type="hello") == 1
    assert value("mqtwist_cluster_messages_total", direction="received", type="other") == 1
    assert b"\nmqtwist_cluster_members 2.0\n" in generate_latest(cluster.metrics.registry)


def test_a_member_that_says_hello_is_told_the_actions_in_force_by_one_member() -> None:
    cluster, wire, clock, _ = control("host:2")
    cluster.controlReady(consumers=0)
    pause = {"action": "pause", "selector": {"domain": "a.test"}, "seconds": 60.0, "reason": "r", "by": "ops"}
    cluster.inForce = lambda: [pause]
    cluster.controlReceived(said("host:3", "hello"))
    assert wire.sent[-1]["type"] == "state"
    assert (wire.sent[-1]["target"], wire.sent[-1]["actions"]) == ("host:3", [pause])
    # host:1 comes: host:2 is still the first of the others, and answers
    cluster.controlReceived(said("host:1", "hello"))
    assert (wire.sent[-1]["type"], wire.sent[-1]["target"]) == ("state", "host:1")
    # host:0 says hello: host:1 is the first of the others, not host:2
    count = len(wire.sent)
    cluster.controlReceived(said("host:0", "hello"))
    assert [m["type"] for m in wire.sent[count:]] == ["heartbeat"]


def test_the_state_told_to_this_member_reaches_its_controls() -> None:
    clock = Clock()
    there = Controls(clock)
    there.pause(Selector(domain="a.test"), 60, "bounces", "ops")
    there.cancel(Selector(tag="spam"), float("inf"), "stop", "ops")
    clock.advance(20)
    cluster, _, _, _ = control("host:3")
    here = Controls(clock)
    cluster.onAdmin = lambda member, action: here.fromPeer(action)
    cluster.controlReceived(said("host:1", "state", target="host:9", actions=there.inForce()))
    assert here.pauses() == []
    cluster.controlReceived(said("host:1", "state", target="host:3", actions=there.inForce()))
    assert [(c.selector, c.until - clock.seconds()) for c in here.pauses()] == [(Selector(domain="a.test"), 40)]
    assert [(c.selector, c.until) for c in here.cancels()] == [(Selector(tag="spam"), float("inf"))]
    with capturedLogs() as events:
        cluster.controlReceived(said("host:1", "state", target="host:3", actions="pause everything"))
    assert any("ignored the state told by host:1" in formatEvent(e) for e in events)


def test_messages_that_wait_for_the_members_are_not_found_stuck() -> None:
    # nothing has ever ended there, and nothing may start: waiting, not stuck
    p, clock = policy(destinationBacklog=1, stuckAfter=1)
    p.holdUntilSettled()
    waiting = [p.admit(route("a.test", "mx.a.test")) for _ in range(3)]
    clock.advance(5)
    assert not any(w.called for w in waiting)
    p.setMembers(("host:1",), "host:1")
    assert all(w.called for w in waiting)


def test_the_backoffs_in_force_are_told_to_a_member_that_says_hello() -> None:
    # here: a destination paused by a reply, and one told by another member
    p, clock = policy()
    p.setMembers(("host:2", "host:3"), "host:2")
    permit = p.admit(route("a.test", "mx.a.test")).result
    p.release(permit)
    p.failed(permit, AttemptFailed("mailfrom", "421", "421 4.7.0 try later", code=421, status="4.7.0"))
    p.applyShared(SharedBackoff("host:3", "mx mx.b.test", "down", 300, "down: 3 connections failed", "connection"))
    clock.advance(10)
    cluster, wire, _, _ = control("host:2")
    cluster.backoffsInForce = p.backoffsInForce
    cluster.controlReady(consumers=0)
    cluster.controlReceived(said("host:4", "hello"))
    state = wire.sent[-1]
    assert (state["type"], state["target"], state["actions"]) == ("state", "host:4", [])
    assert [(b["destination"], b["action"], b["seconds"]) for b in state["backoffs"]] == [
        ("mx mx.a.test", "pause", 50.0),
        ("mx mx.b.test", "down", 290.0),
    ]
    # the newcomer applies them, as if told by the member that answered
    newcomer, _, _, _ = control("host:4")
    heard: list[SharedBackoff] = []
    newcomer.onBackoff = heard.append
    newcomer.controlReceived(json.dumps(state).encode())
    assert [(b.member, b.destination, b.action, b.seconds) for b in heard] == [
        ("host:2", "mx mx.a.test", "pause", 50.0),
        ("host:2", "mx mx.b.test", "down", 290.0),
    ]
