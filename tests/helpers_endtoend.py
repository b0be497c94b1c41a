"""
Helpers of the tests that run the whole service against the session's
RabbitMQ node (L{fixtures_rabbitmq}) and a test SMTP server
(L{fixtures_smtp}): its configuration, starting and stopping it, jobs to
publish and results read back.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Any

from twisted.logger import globalLogPublisher

from mqtwist.config import Config
from mqtwist.service import MailerService


def brokerURL(url: Any) -> str:
    return f"amqp://{url.username}:{url.password}@{url.host}:{url.port}/"


def makeConfig(rabbitmq: Any, server: Any, queues: dict[str, str], **settings: Any) -> Config:
    config = Config(
        amqp=brokerURL(rabbitmq),
        smarthost=f"{server.host}:{server.port}",
        ehloName="client.test",
        delayBuckets=[1],
        pluginRetryDelay=0.01,
        **queues,
    )
    for key, value in settings.items():
        setattr(config, key, value)
    return config


@asynccontextmanager
async def running(service: MailerService):
    service.startService()
    try:
        await service.whenConnected()
        yield service
    finally:
        await service.stopService()


def job(number: int, **extra: Any) -> bytes:
    obj = {
        "id": f"job-{number}",
        "envelope": "sender@example.org",
        "recipient": f"rcpt{number}@example.com",
        "mime": f"Subject: {number}\r\n\r\nbody {number}\r\n",
    }
    obj.update(extra)
    return json.dumps(obj).encode()


def normalised(body: str) -> bytes:
    """A body as it must arrive: every line end CRLF, a CRLF at the end."""
    data = body.encode().replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


async def publishAll(amqp: Any, queue: str, bodies: list[bytes]) -> None:
    await amqp.declare(queue)
    for body in bodies:
        await amqp.publish(queue, body)


def decoded(received: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in received]


async def stopLogging(service: MailerService) -> list[dict]:
    """
    Stop C{service}.

    @return: the log events emitted while it stopped.
    """
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await service.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events
