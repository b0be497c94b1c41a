"""
What running several mqtwist processes costs and gains, on one RabbitMQ node
and on a three-node cluster (issue #18).

    python3 bench/cluster.py [--count 5000] [--processes 1,2,4] [--setups ...]

For each setup (C{cluster-quorum}: three nodes on loopback, quorum queues,
every process given the three URLs, each starting from another node;
C{single-classic} and C{single-quorum}: one node) and each number of
processes, C{count} jobs are published to a fresh outbox, then that many
C{twistd mqtwist} processes deliver them to Postfix's C{smtp-sink}.  Timed
from the first process consuming to the last success result.  Measured:
messages a second, the mqtwist processes' CPU time a message and the whole
machine's (RabbitMQ's nodes included).  Results go to
C{bench/results/cluster-DATE.md} and C{.json}, with the machine (C{lscpu},
C{nproc}) and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
# the cluster the tests start (tests/fixtures_cluster.py), not a copy of it
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import report  # noqa: E402
from broker import BenchBroker  # noqa: E402
from components import (  # noqa: E402
    POSTFIX_INSTALL,
    REPOSITORY,
    ProcessStats,
    Program,
    SmtpSink,
    machineCPUSeconds,
    requireProgram,
    twistdArgv,
    twistdEnvironment,
    workDirectory,
)
from fixtures_cluster import Cluster  # noqa: E402
from loadgen import jobBodies  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from mqtwist.amqp.client import BrokerClient, typeArguments  # noqa: E402
from mqtwist.amqp.url import BrokerURL  # noqa: E402
from mqtwist.cli.publishing import publishBodies  # noqa: E402
from mqtwist.localnode import LocalRabbitMQ  # noqa: E402

SETUPS = ("cluster-quorum", "single-classic", "single-quorum")
KINDS = ("outbox", "results", "success", "failure", "retry")


def amqpText(url: BrokerURL) -> str:
    return f"amqp://{url.username}:{url.password}@{url.host}:{url.port}/"


class Broker:
    """The node or nodes of one setup, and the benchmark's connections to them."""

    def __init__(self, reactor: Any, directory: str, setup: str) -> None:
        self.reactor = reactor
        self.setup = setup
        self.queueType = setup.rpartition("-")[2]
        self.cluster: Cluster | None = None
        self.node: LocalRabbitMQ | None = None
        if setup.startswith("cluster"):
            path = os.path.join(directory, "cluster")
            os.makedirs(path)
            self.cluster = Cluster(path, reactor)
        else:
            self.node = LocalRabbitMQ(os.path.join(directory, setup), reactor=reactor)

    async def start(self) -> None:
        if self.cluster is not None:
            await self.cluster.startAll()
            self.urls = self.cluster.urls
        else:
            assert self.node is not None
            self.urls = [await self.node.start()]
        self.broker = BenchBroker(self.urls[0], self.reactor)
        await self.broker.connect()
        self.publisher = BrokerClient(self.urls, [], consumeFrom=None, prefetch=0,
                                      onDelivery=lambda d: None, reactor=self.reactor,
                                      declareArguments=typeArguments(self.queueType))
        self.publisher.startService()
        await self.publisher.whenConnected()

    def amqp(self, process: int) -> str:
        """The --amqp of process C{process}: every node, from another one for each process."""
        urls = self.urls[process % len(self.urls):] + self.urls[:process % len(self.urls)]
        return ",".join(amqpText(url) for url in urls)

    async def declare(self, queue: str) -> None:
        await self.broker.admin.queue_declare(queue=queue, durable=True, arguments=typeArguments(self.queueType))

    async def stop(self) -> None:
        await self.publisher.stopService()
        await self.broker.close()
        if self.cluster is not None:
            await self.cluster.stopAll()
        elif self.node is not None:
            await self.node.stop()


async def oneRun(reactor: Any, broker: Broker, sinkPort: int, processes: int, count: int,
                 size: int, directory: str) -> dict[str, Any]:
    base = f"bench-{broker.setup}-{processes}p-{uuid.uuid4().hex[:6]}"
    queues = {kind: f"{base}.{kind}" for kind in KINDS}
    for name in queues.values():
        await broker.declare(name)
    publishStart = reactor.seconds()
    await publishBodies(broker.publisher, queues["outbox"], jobBodies(count, size, prefix=base))
    publishSeconds = reactor.seconds() - publishStart
    counter, channel = await broker.broker.countArrivals(queues["success"])
    arguments = ["--smarthost", f"127.0.0.1:{sinkPort}", "--plugins=", "--queue-type", broker.queueType,
                 "--delay-buckets", "1", "--dead-letter-queue", f"{base}.dead"]
    for kind, name in queues.items():
        arguments += [f"--{kind}", name]
    programs = []
    machineBefore = machineCPUSeconds()
    for n in range(processes):
        program = Program(f"twistd mqtwist #{n + 1}", reactor)
        workDir = os.path.join(directory, f"{base}-{n + 1}")
        os.makedirs(workDir)
        program.start(twistdArgv(["--amqp", broker.amqp(n), *arguments]),
                      env=twistdEnvironment(REPOSITORY), path=workDir)
        programs.append(program)
    try:
        marker = f"consuming from: {queues['outbox']}".encode()
        await defer.gatherResults([program.waitFor(marker, 120) for program in programs], consumeErrors=True)
        started = reactor.seconds()
        stats = [ProcessStats(program.pid) for program in programs]
        cpuBefore = [s.cpuSeconds() for s in stats]
        await counter.whenCount(count).addTimeout(1800, reactor)
        seconds = (counter.last or reactor.seconds()) - started
        cpu = sum(s.cpuSeconds() - before for s, before in zip(stats, cpuBefore))
        machine = machineCPUSeconds() - machineBefore
    finally:
        await broker.broker.stopCounting(channel)
        for program in programs:
            await program.stop()
        for name in [*queues.values(), f"{base}.dead", f"{base}.outbox.held", f"{base}.outbox.delay.1s"]:
            await broker.broker.delete(name)
    return {
        "setup": broker.setup,
        "processes": processes,
        "messages": count,
        "size": size,
        "seconds": round(seconds, 2),
        "rate": round(count / seconds, 1),
        "mqtwistCPUMicrosecondsPerMessage": round(cpu / count * 1e6),
        "machineCPUMicrosecondsPerMessage": round(machine / count * 1e6),
        "publishSeconds": round(publishSeconds, 1),
    }


def writeReport(runs: list[dict[str, Any]], options: argparse.Namespace, about: dict[str, Any]) -> str:
    now = datetime.datetime.now(datetime.UTC)
    name = os.path.join(HERE, "results", f"cluster-{now:%Y%m%d-%H%M}")
    loadAfter = os.getloadavg()
    with open(name + ".json", "w") as f:
        json.dump({"date": now.isoformat(timespec="seconds"), "machine": about, "loadAverageAfter": loadAfter,
                   "note": options.note, "runs": runs}, f, indent=2)
    lines = [
        f"# mqtwist on one RabbitMQ node and on a 3-node cluster ({now:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {about['nproc']} CPUs ({about['cpu']}), {about['memoryGB']} GB; Linux {about['kernel']}; "
        f"RabbitMQ {about['rabbitmq']}; mqtwist {about['mqtwistCommit']}; load average before "
        f"{' '.join(f'{x:.2f}' for x in about['loadAverageAtStart'])}, after "
        f"{' '.join(f'{x:.2f}' for x in loadAfter)}. {options.count} jobs of {options.size} bytes a run, "
        f"delivered to Postfix's smtp-sink on loopback. The three nodes of the cluster, the mqtwist "
        f"processes, smtp-sink and the benchmark all share these {about['nproc']} CPUs: with 4 "
        f"processes on a cluster, 7 busy programs compete for them, so what more processes gain "
        f"here says little of a bigger machine. The machine's CPU a message counts every program "
        f"that ran meanwhile, other work on the machine included (see the load average).",
        "",
    ]
    if options.note:
        lines += [f"Note: {options.note}", ""]
    lines += [
        "| setup | processes | msg/s | mqtwist CPU µs/msg | machine CPU µs/msg (RabbitMQ included) |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(f"| {run['setup']} | {run['processes']} | {run['rate']:.0f} | "
                     f"{run['mqtwistCPUMicrosecondsPerMessage']} | {run['machineCPUMicrosecondsPerMessage']} |")
    lines.append("")
    with open(name + ".md", "w") as f:
        f.write("\n".join(lines))
    return name + ".md"


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="jobs a run (5000)")
    parser.add_argument("--size", type=int, default=5000, help="bytes a message (5000)")
    parser.add_argument("--processes", default="1,2,4", help="numbers of mqtwist processes (1,2,4)")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"any of {', '.join(SETUPS)} (all)")
    parser.add_argument("--note", default="", help="a remark for the report")
    options = parser.parse_args(argv)
    requireProgram("smtp-sink", POSTFIX_INSTALL)
    about = await report.machine(reactor, REPOSITORY)
    directory = workDirectory("mqtwist-bench-cluster-")
    sink = SmtpSink(reactor)
    sinkPort = await sink.start()
    runs = []
    try:
        for setup in options.setups.split(","):
            broker = Broker(reactor, directory, setup)
            await broker.start()
            try:
                for processes in [int(n) for n in options.processes.split(",")]:
                    run = await oneRun(reactor, broker, sinkPort, processes, options.count, options.size, directory)
                    print(json.dumps(run), flush=True)
                    runs.append(run)
            finally:
                await broker.stop()
    finally:
        await sink.stop()
    print(writeReport(runs, options, about))


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
