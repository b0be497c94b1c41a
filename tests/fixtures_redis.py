"""
Redis fixtures: real C{redis-server} processes (Debian's package) on free
ports of 127.0.0.1, each in a temporary directory, without persistence.

Fixtures
========

C{startRedis} (function)
    A function that starts a server and returns its L{RedisServer}
    (C{startRedis(password="secret")} asks for a password); every server
    still running after the test is stopped.  Tests are skipped when
    C{redis-server} is not installed.

C{redisServer} (function)
    One started L{RedisServer}.

A L{RedisServer} has C{url} (C{redis://127.0.0.1:PORT/0}, the password in
it when there is one), C{client()} (a synchronous redis-py client: quick
calls to a local server, for a test to set keys and look), C{calls(command)}
(how many times the server ran a command, from C{INFO commandstats}),
C{stop()} and C{start()} (again, on the same port).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest
import redis
from fixtures_smtp import unusedPort

#: seconds a server may take to say that it is ready
_START_TIMEOUT = 30.0


class RedisServer:
    """
    A C{redis-server} on 127.0.0.1 that this test session started.
    """

    def __init__(self, password: str | None = None) -> None:
        self.port = unusedPort()
        self.password = password
        self.directory = tempfile.mkdtemp(prefix="mqtwist-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """
        Start the server and wait until it accepts connections.
        """
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.directory,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "notice",
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = b""
        deadline = time.monotonic() + _START_TIMEOUT
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        while b"Ready to accept connections" not in output:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([descriptor], [], [], max(left, 0))
            chunk = os.read(descriptor, 65536) if readable else b""
            if not chunk:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{output.decode(errors='replace')}")
            output += chunk
        # its later log lines go nowhere, so that it never blocks on a full pipe
        self.process.stdout.close()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def calls(self, command: str) -> int:
        """
        How many times the server ran C{command} (lower case) since it
        started.
        """
        with self.client() as client:
            stats = client.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    def stop(self) -> None:
        """
        Stop the server (its data is lost: there is no persistence).
        """
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=_START_TIMEOUT)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def startRedis():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; ./dev test does it)")
    servers: list[RedisServer] = []

    def start(password: str | None = None) -> RedisServer:
        server = RedisServer(password)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.remove()


@pytest.fixture
def redisServer(startRedis) -> RedisServer:
    return startRedis()
