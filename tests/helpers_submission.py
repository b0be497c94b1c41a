"""
The submission server on a real loopback port with a queue that records
what it is given, for the tests of the server with real clients (Python's
smtplib in a thread, swaks in a subprocess).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThread

from mqtwist.metrics import Metrics
from mqtwist.submission.access import Access
from mqtwist.submission.envelope import Submission
from mqtwist.submission.listener import ServerTLS, SubmissionListener
from mqtwist.submission.server import ServerSettings, SubmissionServer

HOSTNAME = "mx.submission.test"


@dataclass
class RecordingQueue:
    """
    A L{mqtwist.submission.envelope.Queue} that keeps what it is given and
    answers as told: C{succeed} (default), C{fail}, or a Deferred the test
    fires itself (C{hold}).
    """

    submissions: list[Submission] = field(default_factory=list)
    mode: str = "succeed"
    held: list[Deferred[None]] = field(default_factory=list)

    def __call__(self, submission: Submission) -> Deferred[None]:
        self.submissions.append(submission)
        if self.mode == "fail":
            return fail(RuntimeError("the broker is away"))
        if self.mode == "hold":
            waiting: Deferred[None] = Deferred()
            self.held.append(waiting)
            return waiting
        return succeed(None)


@dataclass
class Running:
    """A submission server listening on loopback."""

    server: SubmissionServer
    listeners: list[SubmissionListener]
    queue: RecordingQueue
    metrics: Metrics

    @property
    def port(self) -> int:
        port = self.listeners[0].port
        assert port is not None
        return int(port.getHost().port)

    def portOf(self, index: int) -> int:
        port = self.listeners[index].port
        assert port is not None
        return int(port.getHost().port)


def settings(**changes: Any) -> ServerSettings:
    values: dict[str, Any] = {"hostname": HOSTNAME}
    values.update(changes)
    return ServerSettings(**values)


async def startServer(
    *,
    endpoints: tuple[str, ...] = ("tcp:0:interface=127.0.0.1",),
    access: Access | None = None,
    tls: ServerTLS | None = None,
    **changes: Any,
) -> Running:
    """
    Start a server listening on C{endpoints} (loopback, a free port each).
    Stop it with L{stopServer}.
    """
    metrics = Metrics()
    queue = RecordingQueue()
    if access is None:
        access = Access.fromSettings(["127.0.0.1/32"], None)
    server = SubmissionServer(settings(tls=tls, **changes), access, queue, reactor, metrics)
    listeners = []
    failures: list[Any] = []
    for text in endpoints:
        listener = SubmissionListener(text, server, reactor, failures.append, tls)
        listener.startService()
        listeners.append(listener)
    for listener in listeners:
        assert listener._listening is not None
        await listener._listening
    assert not failures, failures
    return Running(server, listeners, queue, metrics)


async def stopServer(running: Running) -> None:
    for listener in running.listeners:
        stopped = listener.stopService()
        if stopped is not None:
            await stopped
    await running.server.closeAll()


def inThread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Run a blocking client in a thread of the reactor's pool."""
    return deferToThread(function, *args, **kwargs)


def swaks(*arguments: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run swaks (blocking: call it through L{inThread})."""
    return subprocess.run(
        ["swaks", "--hide-informational", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def swaksMissing() -> str | None:
    return None if shutil.which("swaks") else "swaks is not installed (./dev test installs it)"

