"""
A RabbitMQ cluster of three nodes on loopback, for the tests of quorum
queues and of a client that moves between nodes.

Fixtures
========

C{rabbitmqCluster} (session)
    A started L{Cluster}: three L{mqtwist.localnode.LocalRabbitMQ} nodes in
    one temporary directory, each with its own data directory, node name,
    AMQP and Erlang distribution ports, all with one Erlang cookie, the
    second and third joined to the first with C{rabbitmqctl join_cluster}.
    (The C{rabbitmqctl}s' own Erlang nodes take the first free port of
    RabbitMQ's range, 35672-35682, which L{LocalRabbitMQ} never picks for a
    node.)  Stopped, and its directory removed, at the end of the session.
    Started only when a test asks for it (it takes about a minute on a busy 2-CPU
    machine); the tests are skipped when C{rabbitmq-server} is not
    installed, and fail with the nodes' output when it cannot start.

C{cluster} (function)
    The same L{Cluster}, with every node it lost during the test started
    again after it (so a test that kills a node leaves the next one three).

A L{Cluster} has C{urls} (the L{BrokerURL} of each node), C{amqp} (the
C{--amqp} text naming all three), C{kill(i)} (C{kill -9} of node C{i}'s
Erlang VM; fires once it has ended), C{start(i)} (starts it again on its
data directory, ports and name: it rejoins the cluster; fires once it is
up) and C{rabbitmqctl(i, ...)}.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from mqtwist.amqp.url import BrokerURL
from mqtwist.localnode import COOKIE_FILE, LocalRabbitMQ, RabbitMQEnded, RabbitMQNotInstalled

NODES = 3


class Cluster:
    """
    Three RabbitMQ nodes joined in one cluster.
    """

    def __init__(self, baseDir: str, reactor: Any) -> None:
        self.baseDir = baseDir
        # one cookie for all: nodes of a cluster authenticate with it
        cookie = secrets.token_hex(20)
        self.nodes: list[LocalRabbitMQ] = []
        for i in range(NODES):
            dataDir = os.path.join(baseDir, f"node{i}")
            os.makedirs(dataDir)
            path = os.path.join(dataDir, COOKIE_FILE)
            with open(path, "w") as f:
                f.write(cookie)
            os.chmod(path, 0o400)
            self.nodes.append(
                LocalRabbitMQ(dataDir, nodeName=f"mqtwist-cluster{i}-{cookie[:6]}@localhost", reactor=reactor)
            )

    @property
    def urls(self) -> list[BrokerURL]:
        return [node.url for node in self.nodes]

    @property
    def amqp(self) -> str:
        """The C{--amqp} value for all three nodes, in their order."""
        return ",".join(f"amqp://guest:guest@{url.host}:{url.port}/" for url in self.urls)

    def url(self, i: int) -> str:
        """The C{--amqp} value for node C{i} alone."""
        url = self.urls[i]
        return f"amqp://guest:guest@{url.host}:{url.port}/"

    async def startAll(self) -> None:
        # the first alone: the others join it
        await self.nodes[0].start()
        await defer.gatherResults([node.start() for node in self.nodes[1:]], consumeErrors=True)
        for node in self.nodes[1:]:
            await node.rabbitmqctl("stop_app")
            await node.rabbitmqctl("join_cluster", self.nodes[0].nodeName)
            await node.rabbitmqctl("start_app")
        status = await self.nodes[0].rabbitmqctl("cluster_status", "--formatter", "json")
        for node in self.nodes:
            assert node.nodeName in status, f"{node.nodeName} is not in the cluster: {status}"

    def rabbitmqctl(self, i: int, *args: str) -> defer.Deferred[str]:
        return self.nodes[i].rabbitmqctl(*args)

    def running(self, i: int) -> bool:
        return self.nodes[i]._process is not None

    async def kill(self, i: int) -> None:
        """
        C{kill -9} the Erlang VM of node C{i}, as a crash or the OOM killer
        would, and wait until its server process has ended.
        """
        node = self.nodes[i]
        ended = node.whenEnded()
        with open(os.path.join(node.dataDir, "rabbitmq.pid")) as f:
            os.kill(int(f.read().strip()), signal.SIGKILL)
        try:
            await ended
        except RabbitMQEnded:
            pass  # what a kill is

    async def start(self, i: int) -> None:
        """Start node C{i} again: it rejoins the cluster from its data."""
        await self.nodes[i].start()

    async def restartLost(self) -> None:
        for i in range(NODES):
            if not self.running(i):
                await self.start(i)

    async def stopAll(self) -> None:
        await defer.gatherResults([node.stop() for node in self.nodes], consumeErrors=True)


@pytest.fixture(scope="session")
def rabbitmqCluster():
    from twisted.internet import reactor

    # not pytest's tmp_path: the nodes run as the rabbitmq user, who must
    # reach their directories
    baseDir = tempfile.mkdtemp(prefix="mqtwist-test-cluster-")
    os.chmod(baseDir, 0o755)
    cluster = Cluster(baseDir, reactor)
    try:
        try:
            pytest_twisted.blockon(defer.ensureDeferred(cluster.startAll()))
        except RabbitMQNotInstalled as e:
            pytest.skip(f"no RabbitMQ cluster: {e}")
        yield cluster
    finally:
        pytest_twisted.blockon(defer.ensureDeferred(cluster.stopAll()))
        shutil.rmtree(baseDir, ignore_errors=True)


@pytest.fixture
def cluster(rabbitmqCluster: Cluster):
    yield rabbitmqCluster
    pytest_twisted.blockon(defer.ensureDeferred(rabbitmqCluster.restartLost()))
