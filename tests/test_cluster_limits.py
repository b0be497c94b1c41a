"""
Issue #18's test of limits, pauses and operator actions shared by four
C{twistd mqtwist} processes of one outbox (L{mqtwist.cluster}), against a
real RabbitMQ node and a receiving server that reports every connection:

  - with C{connections = 5} for the destination, the four hold 5
    connections at once between them (2+1+1+1), never more;
  - under load, a 421 that pauses the destination in one reaches the three
    others: once all four know, the server sees only the deliveries then in
    flight end, and connections opened for those alone; the rest of the
    jobs are deferred, in whichever process takes them;
  - a pause made through one process's admin API is in force in all of
    them, and a drain can name one member;
  - a member killed with C{kill -9} (no goodbye) is taken for gone by the
    others after C{--cluster-member-timeout}.
"""

from __future__ import annotations

import json
import signal
import sys

import pytest_twisted
from fixtures_smtp import unusedPort
from helpers_endtoend import job, makeConfig, running
from helpers_http import HTTPClient
from twistdprocess import brokerArguments, endTwistd, exitStatus, startTwistd
from twisted.internet import reactor
from twisted.internet.task import deferLater

from mqtwist.config import ThrottleRule
from mqtwist.service import MailerService

PROCESSES = 4
TOKEN = "cluster-test-token"


async def until(condition, what: str, timeout: float = 60.0):
    """Ask C{condition} (a coroutine function) every 0.1 s until it gives something true."""
    for _ in range(int(timeout * 10)):
        value = await condition()
        if value:
            return value
        await deferLater(reactor, 0.1)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def mostOpenAtOnce(events: list[dict]) -> int:
    """The most connections the server had open at once, from its events in order."""
    open_, most = 0, 0
    for event in events:
        if event["event"] == "connect":
            open_ += 1
            most = max(most, open_)
        elif event["event"] == "disconnect":
            open_ -= 1
    return most


@pytest_twisted.ensureDeferred
async def test_four_processes_share_limits_pauses_and_operator_actions(
    rabbitmq, amqp, queues, startSMTPServer, tmp_path, record_property
):
    server = await startSMTPServer(holdData=True)
    outbox = queues["outbox"]
    settings = tmp_path / "mqtwist.toml"
    settings.write_text('[[throttles]]\ndomain = "*"\nconnections = 5\n')
    ports = [unusedPort() for _ in range(PROCESSES)]
    processes = [
        startTwistd(
            *brokerArguments(rabbitmq),
            "--config", str(settings),
            "--smarthost", f"{server.host}:{server.port}",
            "--ehlo-name", "client.test",
            "--outbox", outbox, "--results", queues["results"], "--success", "", "--failure", "", "--retry", "",
            "--dead-letter-queue", f"{outbox}.dead",
            "--delivery-journal", str(tmp_path / f"journal-{i}"),
            "--stuck-after", "3600",
            "--admin", f"tcp:{port}",
            "--plugins=",
            env={"MQTWIST_ADMIN_TOKEN": TOKEN},
        )
        for i, port in enumerate(ports)
    ]
    apis = [HTTPClient(port, TOKEN) for port in ports]

    async def get(i: int, path: str):
        code, answer, _ = await apis[i].call("GET", path)
        assert code == 200, answer
        return answer

    try:
        # every one knows the four (the last to start settles with them)
        for twistd in processes:
            await twistd.waitForOutput(b"4 member(s)", timeout=120)
        members = [(await get(i, "/api/status"))["cluster"]["member"] for i in range(PROCESSES)]
        assert sorted((await get(0, "/api/status"))["cluster"]["members"]) == sorted(members)

        # 1. connections = 5 for all of them: 2+1+1+1 deliveries held at the server
        for n in range(40):
            await amqp.publish(outbox, job(n))
        await server.waitUntil(lambda s: len(s.held) >= 5, "5 bodies held", timeout=60)

        async def eachAtItsShare():
            figures = []
            for i in range(PROCESSES):
                (destination,) = (await get(i, "/api/destinations"))["destinations"]
                figures.append((destination["inFlight"], destination["limits"]["connections"]))
            return figures if all(inFlight == limit for inFlight, limit in figures) else None

        figures = await until(eachAtItsShare, "every process at its share of the connections")
        assert sorted(limit for _, limit in figures) == [1, 1, 1, 2]
        assert len(server.held) == 5 and mostOpenAtOnce(server.events) == 5
        server.release()
        await server.waitForMessages(40, timeout=120)
        assert mostOpenAtOnce(server.events) == 5
        assert {m.data for m in server.messages} == {f"Subject: {n}\r\n\r\nbody {n}\r\n".encode() for n in range(40)}

        # 2. under load, a 421 in one pauses the destination in all four
        # when each process's line saying it is paused came, and how many
        # events the server had reported by then
        known: dict[int, tuple[float, int]] = {}
        for i, twistd in enumerate(processes):
            twistd.waitForOutput(b"paused after the reply 421", timeout=120).addCallback(
                lambda _, i=i: known.setdefault(i, (reactor.seconds(), len(server.events)))
            )
        closed = server.waitUntil(
            lambda s: any(e["event"] == "closed421" for e in s.events), "the 421", timeout=120
        ).addCallback(lambda _: reactor.seconds())
        for n in range(200):
            await amqp.publish(outbox, job(421, recipient="close421@example.com") if n == 100 else job(1000 + n))
        closedAt = await closed
        await until(lambda: _succeed(len(known) == PROCESSES), "every process knows of the pause")
        reached, allKnew = max(known.values())
        reached -= closedAt

        async def settled():
            totals = [(await get(i, "/api/status"))["totals"] for i in range(PROCESSES)]
            done = sum(t.get("delivered", 0) + t.get("deferred", 0) for t in totals)
            return done >= 40 + 199 and sum(t.get("retried", 0) for t in totals) >= 1
        await until(settled, "the 200 jobs delivered or deferred")
        # once every process knew, only the deliveries then in flight ended
        # (10 at most: on each of the 5 connections, with PIPELINING, one
        # being sent and one awaiting the reply to its body), and a
        # connection was opened only for one of them (a delivery admitted
        # before the pause came, waiting for a connection); without the
        # pause told to all, the other three would have delivered most of
        # the 99 jobs after the 421
        after = server.events[allKnew:]
        newConnections = sum(e["event"] == "connect" for e in after)
        lateMessages = sum(e["event"] == "message" for e in after)
        assert newConnections <= lateMessages <= 10
        deferredByPause = 199 - (len(server.messages) - 40)
        assert deferredByPause > 0

        # 3. an operator's pause made through one is in force in all; a drain of one member
        code, _, _ = await apis[1].call("POST", "/api/pauses", {"domain": "paused.test", "seconds": 600, "by": "ops"})
        assert code == 200
        for i in range(PROCESSES):
            await until(lambda i=i: _pausesOf(get, i), f"process {i} has the operator's pause")
        code, status, _ = await apis[0].call("POST", "/api/drain", {"member": members[2]})
        assert code == 200 and status["state"] == "consuming"
        await until(lambda: _stateIs(get, 2, "drained"), "member 2 drained")
        assert [(await get(i, "/api/status"))["state"] for i in (0, 1, 3)] == ["consuming"] * 3
        code, _, _ = await apis[0].call("POST", "/api/undrain", {"member": members[2]})
        assert code == 200
        await until(lambda: _stateIs(get, 2, "consuming"), "member 2 consuming again")
        code, answer, _ = await apis[0].call("POST", "/api/drain", {"member": "nobody:1"})
        assert code == 400 and "no live member 'nobody:1'" in answer["error"]

        # 4. a member killed without a goodbye is gone for the others after the time-out
        processes[3].transport.signalProcess("KILL")
        for twistd in processes[:3]:
            # (the default time-out, 5 s: a shorter one could take a member
            # stalled by a busy machine for gone in the earlier steps)
            await twistd.waitForOutput(f"{members[3]} not heard from for 5 s".encode(), timeout=60)
        assert [len((await get(i, "/api/status"))["cluster"]["members"]) for i in range(3)] == [3, 3, 3]
        for twistd in processes[:3]:
            twistd.transport.signalProcess("TERM")
        statuses = [await exitStatus(twistd) for twistd in processes[:3]]
    finally:
        for twistd in processes:
            await endTwistd(twistd)
    assert statuses == [-signal.SIGTERM] * 3
    report = (
        f"4 processes, connections = 5: shares {sorted(limit for _, limit in figures)}, at most "
        f"{mostOpenAtOnce(server.events)} connections open at once; 200 jobs with a 421 for the 101st: "
        f"every process had logged the pause {reached * 1000:.0f} ms after the server said 421 (as the "
        f"test saw both), then {lateMessages} messages that were in flight ended ({newConnections} on new "
        f"connections), {deferredByPause} jobs deferred by the pause"
    )
    print(report, file=sys.stderr)
    record_property("cluster_limits", report)


async def _succeed(value):
    return value


async def _pausesOf(get, i: int) -> bool:
    return [(p["domain"], p["by"]) for p in await get(i, "/api/pauses")] == [("paused.test", "ops")]


async def _stateIs(get, i: int, state: str) -> bool:
    return (await get(i, "/api/status"))["state"] == state



@pytest_twisted.ensureDeferred
async def test_connections_beyond_a_smaller_share_are_closed_when_given_back(rabbitmq, amqp, queues, startSMTPServer):
    """
    A member joins while this process holds 5 connections to a destination
    limited to 5: its share falls to 2, and the 3 connections beyond it
    close as their deliveries end, instead of staying idle in the pool.
    """
    server = await startSMTPServer(holdData=True)
    config = makeConfig(
        rabbitmq, server, queues, throttles=[ThrottleRule(domain="*", connections=5)], stuckAfter=3600.0
    )
    service = MailerService(config, plugins=[])
    async with running(service):
        for n in range(30):
            await amqp.publish(queues["outbox"], job(n))
        await server.waitUntil(lambda s: len(s.held) >= 5, "5 bodies held")
        member = service.cluster.me
        # a member that sorts after this one joins: 3 + 2 of the 5, this one first
        service.cluster.controlReceived(json.dumps({"v": 1, "type": "hello", "member": member + "~"}).encode())
        (state,) = service.engine.policy.destinationStates()
        assert state.limits.connections == 3
        server.release()
        await server.waitForMessages(30, timeout=60)
        closedEarly = sum(1 for connection in server.connections.values() if connection.closed)
    assert closedEarly == 2
    assert mostOpenAtOnce(server.events) == 5
    # after the first two came back, never more than 3 open
    opened = [e for e in server.events if e["event"] in ("connect", "disconnect")]
    assert mostOpenAtOnce(opened[_afterDisconnects(opened, 2):]) <= 3


def _afterDisconnects(events: list[dict], count: int) -> int:
    """The index just after the C{count}th disconnect."""
    seen = 0
    for i, event in enumerate(events):
        seen += event["event"] == "disconnect"
        if seen == count:
            return i + 1
    raise AssertionError(f"fewer than {count} disconnects")
