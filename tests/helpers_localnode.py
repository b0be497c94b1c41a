"""
Helpers of the tests of the private RabbitMQ node (L{mqtwist.localnode}):
a marker that skips a test when C{rabbitmq-server} is not installed, a
reactor that only records the processes it is asked to start, and what the
tests read of a node (its threads' niceness, the lock and the files of its
data directory).
"""

import fcntl
import os
import socket
from dataclasses import dataclass
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from mqtwist.localnode import COOKIE_FILE, LOCK_FILE, RABBITMQCTL_DIST_PORTS

installed = pytest.mark.skipif(
    not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"),
    reason="rabbitmq-server is not installed",
)


def freeLoopbackPort() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RABBITMQCTL_DIST_PORTS:
            return port


def nicenessOfThreads(dataDir: str) -> list[int]:
    """The niceness of every thread of the node whose pid file is in C{dataDir}."""
    with open(os.path.join(dataDir, "rabbitmq.pid")) as f:
        pid = int(f.read())
    found = []
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/stat") as f:
            # the fields after the command name: nice is the 17th
            found.append(int(f.read().rpartition(")")[2].split()[16]))
    return found


@dataclass
class Spawned:
    """One process a L{RecordingReactor} was asked to start."""

    argv: list[str]
    env: dict[str, str]
    protocol: Any
    cookie: os.stat_result | None
    cookieBytes: bytes | None
    childFDs: dict[int, Any] | None

    def isRabbitmqctl(self) -> bool:
        return any(arg.endswith("/rabbitmqctl") for arg in self.argv)

    def end(self, code: int = 0, output: bytes = b"") -> None:
        """The process prints C{output} and exits with C{code}."""
        if output:
            self.protocol.childDataReceived(1, output)
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code)
        self.protocol.processEnded(Failure(reason))


class FakeProcess:
    """The transport of a process a L{RecordingReactor} did not start."""

    def __init__(self, spawned: list[Spawned]) -> None:
        self._spawned = spawned

    def signalProcess(self, name: str) -> None:
        # the server stops at once when told to
        for process in self._spawned:
            if process.protocol.transport is self:
                process.protocol.processEnded(Failure(ProcessTerminated(signal=15)))


class FakePort:
    """A listening port a L{RecordingReactor} hands out."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", self.number)

    def stopListening(self) -> defer.Deferred[None]:
        self.listening = False
        return defer.succeed(None)


class RecordingReactor(MemoryReactorClock):
    """
    Starts no process: records each one with the state of the data
    directory's Erlang cookie at that moment; C{listenTCP} hands out the
    given port numbers in turn.
    """

    def __init__(self, ports: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []
        self.ports = [FakePort(number) for number in ports]
        self._nextPort = iter(self.ports)

    def spawnProcess(self, processProtocol, executable, args=(), env=None, path=None, **kwargs):
        cookiePath = os.path.join(path, COOKIE_FILE)
        cookie = cookieBytes = None
        if os.path.exists(cookiePath):
            cookie = os.stat(cookiePath)
            with open(cookiePath, "rb") as f:
                cookieBytes = f.read()
        transport = FakeProcess(self.spawned)
        self.spawned.append(
            Spawned(list(args), dict(env or {}), processProtocol, cookie, cookieBytes, kwargs.get("childFDs"))
        )
        processProtocol.makeConnection(transport)
        return transport

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return next(self._nextPort)


def failStart(fake: RecordingReactor) -> None:
    """
    The recorded start of a node fails as when its AMQP port is taken: the
    server ends at once, and so does C{rabbitmqctl}'s first wait for it.
    """
    server, ctl = fake.spawned
    server.end(0, b"BOOT FAILED\n{listen_error, eaddrinuse}\n")
    ctl.end(69, b"Error: unable to perform an operation on node")
    fake.advance(0.5)


def lockHeld(dataDir: str) -> bool:
    """Whether a process holds the lock of the node's data directory."""
    fd = os.open(os.path.join(dataDir, LOCK_FILE), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def snapshot(dataDir: str) -> dict[str, tuple[bytes, int, int, int]]:
    """Every file under C{dataDir}: its bytes, mode, owner and modification time."""
    files = {}
    for directory, _, names in os.walk(dataDir):
        for name in names:
            path = os.path.join(directory, name)
            st = os.stat(path)
            with open(path, "rb") as f:
                files[path] = (f.read(), st.st_mode, st.st_uid, st.st_mtime_ns)
    return files


def secondInstanceAdvice(port: int) -> str:
    return (
        "Nothing in that directory was changed. To run a second mqtwist beside the first, give it "
        "a data directory and an AMQP port of its own (--broker-dir DIR --broker-port PORT), or give "
        f"--amqp amqp://guest:guest@127.0.0.1:{port}/ to share the running node; from the same working "
        "directory, also a delivery journal of its own (--delivery-journal FILE)"
    )
