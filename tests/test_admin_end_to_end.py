"""
The admin API and /metrics of a running service, with real traffic: a
real RabbitMQ outbox, the loopback DNS and SMTP sinks (L{fixtures_dns}).
A destination paused from the API has its messages held while another
one's flow, and gets them at once when resumed; a cancelled tag ends its messages with
process/cancelled; drain stops taking the outbox and undrain takes it up
again; the metrics count what the result queues received.
"""

from __future__ import annotations

import math
from typing import Any

import pytest_twisted
from fixtures_dns import mxConfig, mxDomain
from helpers_endtoend import brokerURL, publishAll, running
from helpers_http import HTTPClient
from helpers_mxdelivery import collectIds, job
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater

from mqtwist.admin.controls import Selector
from mqtwist.service import MailerService

TOKEN = "end-to-end-token"


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def outcomes(values: dict[Any, float], outcome: str) -> float:
    return sum(v for (name, labels), v in values.items() if name == "mqtwist_outcomes_total" and ("outcome", outcome) in labels)


async def heldCount(amqp: Any, service: MailerService, count: int, timeout: float = 30) -> None:
    """Wait until the held queue of C{service} has C{count} messages."""
    queue = service.config.heldQueueName
    deadline = reactor.seconds() + timeout
    while (found := await amqp.count(queue)) != count:
        assert reactor.seconds() < deadline, f"{queue} has {found} messages, not {count}"
        await deferLater(reactor, 0.05)


@pytest_twisted.ensureDeferred
async def test_pause_resume_cancel_drain_and_metrics(rabbitmq, amqp, dnsServer, mailHosts, queues) -> None:
    fast = await mailHosts.sink("127.0.0.2", hostname="mx.fast.test")
    held = await mailHosts.sink("127.0.0.3", hostname="mx.held.test")
    mxDomain(dnsServer, "fast.test", "127.0.0.2")
    mxDomain(dnsServer, "held.test", "127.0.0.3")
    config = mxConfig(
        brokerURL(rabbitmq), queues, dnsServer, mailHosts,
        admin="tcp:0", metrics="tcp:0",
    )
    service = MailerService(config, plugins=[], adminToken=TOKEN)
    async with running(service):
        admin = HTTPClient(service.httpServices["admin"].port.getHost().port, TOKEN)
        scrape = HTTPClient(service.httpServices["metrics"].port.getHost().port)

        code, pause, _ = await admin.call("POST", "/api/pauses", {"destination": "mx mx.held.test", "by": "test"})
        assert code == 200 and pause["until"] is None
        await publishAll(
            amqp, queues["outbox"],
            [job(f"h{n}@held.test", f"held-{n}") for n in range(5)]
            + [job(f"f{n}@fast.test", f"fast-{n}") for n in range(5)],
        )
        delivered = await collectIds(amqp, queues["success"], {f"fast-{n}" for n in range(5)})
        assert {r["id"] for r in delivered} == {f"fast-{n}" for n in range(5)}
        # the paused destination's messages wait in the held queue, not sent
        await heldCount(amqp, service, 5)
        _, destinations, _ = await admin.call("GET", "/api/destinations")
        byName = {d["destination"]: d for d in destinations["destinations"]}
        assert byName["mx mx.held.test"]["paused"]["admin"] is True
        # (fast.test is listed while the policy keeps its state)
        assert byName.get("mx mx.fast.test", {"paused": None})["paused"] is None
        assert held.messages == []

        code, _, _ = await admin.call("DELETE", "/api/pauses", {"destination": "mx mx.held.test"})
        assert code == 200
        # back to the outbox at once, not after a park
        resumed = await collectIds(amqp, queues["success"], {f"held-{n}" for n in range(5)})
        await heldCount(amqp, service, 0)
        assert {r["id"] for r in resumed} == {f"held-{n}" for n in range(5)}
        # each was parked with the operator's pause as the reason
        assert all("paused by test (destination=mx mx.held.test)" in r["results"][0]["description"] for r in resumed)
        assert len(held.messages) == 5

        code, _, _ = await admin.call("POST", "/api/cancels", {"tag": "unwanted", "reason": "wrong list"})
        assert code == 200
        await publishAll(
            amqp, queues["outbox"],
            [job(f"c{n}@fast.test", f"cancelled-{n}", tags=["unwanted"]) for n in range(3)]
            + [job("ok@fast.test", "kept", tags=["wanted"])],
        )
        failed = await collectIds(amqp, queues["failure"], {f"cancelled-{n}" for n in range(3)})
        for result in failed:
            (entry,) = result["results"]
            assert (entry["state"], entry["result"]) == ("process", "cancelled")
            assert entry["description"] == "cancelled by 127.0.0.1 (tag=unwanted): wrong list"
        await collectIds(amqp, queues["success"], {"kept"})
        assert not any(m.rcptTos[0].startswith("c") for m in fast.messages)

        code, status, _ = await admin.call("POST", "/api/drain")
        assert code == 200 and status["state"] == "drained"
        await publishAll(amqp, queues["outbox"], [job("later@fast.test", "after-drain")])
        assert await amqp.count(queues["outbox"]) == 1
        code, status, _ = await admin.call("POST", "/api/undrain")
        assert status["state"] == "consuming"
        await collectIds(amqp, queues["success"], {"after-drain"})

        code, text, _ = await scrape.call("GET", "/metrics", token=None)
        assert code == 200
        values = samples(text)
        _, status, _ = await admin.call("GET", "/api/status")
    assert outcomes(values, "delivered") == 5 + 5 + 1 + 1 == status["totals"]["delivered"]
    assert outcomes(values, "cancelled") == 3 == status["totals"]["cancelled"]
    assert outcomes(values, "held") == 5
    assert values[("mqtwist_held_total", (("destination", "mx mx.held.test"),))] == 5
    assert values[("mqtwist_consumed_total", ())] >= 10 + 4 + 1
    assert values[("mqtwist_attempts_total", (("destination", "mx mx.fast.test"),))] == 5 + 1 + 1
    assert values[("mqtwist_attempts_total", (("destination", "mx mx.held.test"),))] == 5
    assert values[("mqtwist_sent_bytes_total", ())] > 0
    assert values[("mqtwist_amqp_events_total", (("event", "confirm"),))] >= 12
    assert len(fast.messages) == 7 and len(held.messages) == 5


@pytest_twisted.ensureDeferred
async def test_what_a_pause_held_goes_again_after_a_restart(rabbitmq, amqp, dnsServer, mailHosts, queues) -> None:
    """
    Pauses live in the process: when it stops, what they held stays in the
    held queue, and the next start sends it back to the outbox.
    """
    held = await mailHosts.sink("127.0.0.3", hostname="mx.held.test")
    mxDomain(dnsServer, "held.test", "127.0.0.3")
    config = mxConfig(brokerURL(rabbitmq), queues, dnsServer, mailHosts)
    service = MailerService(config, plugins=[])
    async with running(service):
        service.controls.pause(Selector(domain="held.test"), math.inf, "for the test", "test")
        await publishAll(amqp, queues["outbox"], [job(f"h{n}@held.test", f"held-{n}") for n in range(3)])
        await heldCount(amqp, service, 3)
    assert held.messages == []
    async with running(MailerService(config, plugins=[])):
        delivered = await collectIds(amqp, queues["success"], {f"held-{n}" for n in range(3)})
    assert len(delivered) == 3 and len(held.messages) == 3
    assert await amqp.count(config.heldQueueName) == 0
