"""
C{kill -9} of a running C{twistd mqtwist} loses nothing: after a restart
every message still gets its final result (at least once).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest_twisted
from twistdprocess import brokerArguments, startTwistd

MESSAGES = 600


async def collectUnique(amqp: Any, queue: str, count: int) -> tuple[set[str], int]:
    """
    Consume until C{count} different message ids were seen; returns them and
    how many results arrived in all (duplicates are allowed: at least once).
    """
    ids: set[str] = set()
    total = 0
    while len(ids) < count:
        received = await amqp.collect(queue, count - len(ids), timeout=60)
        total += len(received)
        ids.update(json.loads(r.body)["id"] for r in received)
    return ids, total


@pytest_twisted.ensureDeferred
async def test_kill_9_in_the_middle_then_restart(rabbitmq, amqp, smtpServer):
    base = f"crash-{uuid.uuid4().hex[:8]}"
    queues = {kind: f"{base}.{kind}" for kind in ("outbox", "results", "success", "failure", "retry")}
    arguments = [
        *brokerArguments(rabbitmq),
        "--smarthost", f"{smtpServer.host}:{smtpServer.port}",
        "--plugins=",
        "--prefetch", "50",
    ]
    for kind, name in queues.items():
        arguments += [f"--{kind}", name]
    await amqp.declare(queues["outbox"])
    for n in range(MESSAGES):
        body = {"id": f"m{n}", "recipient": f"r{n}@example.com", "mime": f"Subject: {n}\r\n\r\nx\r\n"}
        await amqp.publish(queues["outbox"], json.dumps(body).encode())

    first = startTwistd(*arguments)
    await smtpServer.waitForMessages(MESSAGES // 6, timeout=60)
    first.transport.signalProcess("KILL")
    await first.ended
    deliveredBeforeKill = len(smtpServer.messages)
    assert deliveredBeforeKill < MESSAGES, "killed too late: nothing was left to recover"

    second = startTwistd(*arguments)
    try:
        ids, total = await collectUnique(amqp, queues["success"], MESSAGES)
    finally:
        second.transport.signalProcess("TERM")
        await second.ended
    assert ids == {f"m{n}" for n in range(MESSAGES)}
    # at least once: a message delivered but not yet acknowledged at the kill
    # is delivered again, never lost; nothing failed
    assert total >= MESSAGES
    assert {m.rcptTos[0] for m in smtpServer.messages} == {f"r{n}@example.com" for n in range(MESSAGES)}
    assert await amqp.count(queues["failure"]) == 0
    assert await amqp.count(queues["outbox"]) == 0
    assert b"mqtwist stopped" in second.output
