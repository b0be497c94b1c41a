"""
How fast mail taken in over SMTP is queued (issue #19): Postfix's
C{smtp-source} submits messages over parallel sessions to mqtwist's
submission server and, in the same run, to a private Postfix that only
queues them.

    python3 bench/submission.py [--count 5000] [--size 5120] [--sessions 20] [--repeat 3]

mqtwist: one C{twistd mqtwist} process with C{--submission} on a loopback
port and C{--submission-queue} a queue that nothing consumes (its outbox
is another, empty, queue), so that the measure is taking mail in, not
delivering it.  Its C{250} to the final dot comes only once RabbitMQ has
confirmed the job: when C{smtp-source} has ended, every message it sent
is stored, and the run checks that the queue holds C{--count} jobs.

Postfix: the same C{smtp-source} command to a private instance
(L{components.PostfixRelay}) that puts every message in its hold queue
(C{smtpd_end_of_data_restrictions = static:HOLD}): accepted, written and
synced to its queue, never delivered.  The run checks that the hold queue
holds C{--count} messages.

Each round runs mqtwist, then Postfix (or the other way round, every other
round).  Reported: messages a second (from C{smtp-source}'s start to its
end, for mqtwist until the queue depth is C{--count}), mqtwist's CPU
seconds a message (C{/proc}, its one process), and the whole machine's
busy CPU a message (RabbitMQ or Postfix's many processes included).
Results go to C{bench/results/submission-DATE.md} and C{.json}
(C{submission-reuse-DATE} with C{--reuse}), with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import report  # noqa: E402
from broker import BenchBroker  # noqa: E402
from components import (  # noqa: E402
    POSTFIX_INSTALL,
    REPOSITORY,
    BenchError,
    PostfixRelay,
    ProcessStats,
    Program,
    freePort,
    machineCPUSeconds,
    requireProgram,
    twistdArgv,
    twistdEnvironment,
    waitForPort,
    workDirectory,
)
from twisted.internet import defer, task, threads  # noqa: E402

from mqtwist.amqp.url import BrokerURL  # noqa: E402
from mqtwist.localnode import LocalRabbitMQ  # noqa: E402

SENDER = "sender@example.org"
RECIPIENT = "rcpt@example.com"


def sourceArgv(options: argparse.Namespace, port: int) -> list[str]:
    """The C{smtp-source} command line of one run, the same for both servers."""
    argv = [requireProgram("smtp-source", POSTFIX_INSTALL), "-c", "-s", str(options.sessions),
            "-m", str(options.count), "-l", str(options.size), "-N", "-M", "client.bench.invalid",
            "-f", SENDER, "-t", RECIPIENT]
    if options.reuse:
        argv.append("-d")
    return [*argv, f"127.0.0.1:{port}"]


async def inject(reactor: Any, options: argparse.Namespace, port: int) -> tuple[float, Program]:
    """
    Run C{smtp-source} against C{port} to its end.

    @return: (a coroutine returning) when it started, and the program.
    @raise BenchError: it failed (a reply that was not positive) or took
        longer than C{--timeout}.
    """
    source = Program("smtp-source", reactor)
    startedAt = reactor.seconds()
    source.start(sourceArgv(options, port))
    try:
        await source.ended.addTimeout(options.timeout, reactor)
    except defer.TimeoutError:
        await source.stop("KILL")
        raise BenchError(
            f"smtp-source did not end within {options.timeout:g} s; its output:\n{source.tail()}"
        ) from None
    code = source.transport.status
    if code:
        raise BenchError(f"smtp-source ended with status {code}; its output:\n{source.tail()}")
    return startedAt, source


class Mqtwist:
    """One C{twistd mqtwist} taking mail in on a loopback port."""

    def __init__(self, reactor: Any, directory: str, url: BrokerURL, tree: str) -> None:
        self.reactor = reactor
        self.directory = directory
        self.url = url
        self.tree = tree
        self.base = f"bench-submission-{uuid.uuid4().hex[:6]}"
        self.inbox = f"{self.base}.inbox"
        self.port = freePort()
        self.program: Program | None = None
        self.queues = [self.inbox, *(f"{self.base}.{kind}" for kind in
                                     ("outbox", "results", "success", "failure", "retry", "dead",
                                      "outbox.held", "outbox.delay.1s"))]

    async def start(self) -> None:
        arguments = [
            "--amqp", f"amqp://{self.url.username}:{self.url.password}@{self.url.host}:{self.url.port}/",
            "--submission", f"tcp:{self.port}:interface=127.0.0.1",
            "--submission-queue", self.inbox,
            "--plugins=",
            "--smarthost", "127.0.0.1:9",
            "--delay-buckets", "1",
            "--dead-letter-queue", f"{self.base}.dead",
        ]
        for kind in ("outbox", "results", "success", "failure", "retry"):
            arguments += [f"--{kind}", f"{self.base}.{kind}"]
        workDir = os.path.join(self.directory, self.base)
        os.makedirs(workDir)
        self.program = Program("twistd mqtwist", self.reactor)
        self.program.start(twistdArgv(arguments), env=twistdEnvironment(self.tree), path=workDir)
        await self.program.waitFor(f"consuming from: {self.base}.outbox".encode(), 120)
        await waitForPort(self.reactor, self.port, 30, "mqtwist's submission server", self.program)
        self.stats = ProcessStats(self.program.pid)

    async def stop(self) -> None:
        if self.program is not None:
            await self.program.stop()


async def mqtwistRun(reactor: Any, options: argparse.Namespace, server: Mqtwist, broker: BenchBroker) -> dict[str, Any]:
    await broker.declare(server.inbox)
    await broker.admin.queue_purge(queue=server.inbox)
    cpuBefore = server.stats.cpuSeconds()
    machineBefore = machineCPUSeconds()
    startedAt, _ = await inject(reactor, options, server.port)
    injectSeconds = reactor.seconds() - startedAt
    # every 250 came after the confirms: the depth is the count at once, or
    # very nearly (the broker's count may trail its confirms)
    deadline = reactor.seconds() + 30
    while (depth := await broker.count(server.inbox)) < options.count:
        if reactor.seconds() > deadline:
            raise BenchError(f"{depth} jobs on {server.inbox} after smtp-source sent {options.count} messages")
        await task.deferLater(reactor, 0.01, lambda: None)
    seconds = reactor.seconds() - startedAt
    cpu = server.stats.cpuSeconds() - cpuBefore
    machine = machineCPUSeconds() - machineBefore
    if depth != options.count:
        raise BenchError(f"{depth} jobs on {server.inbox} for {options.count} messages sent")
    await broker.admin.queue_purge(queue=server.inbox)
    return {
        "server": "mqtwist",
        "messages": options.count,
        "seconds": round(seconds, 3),
        "injectSeconds": round(injectSeconds, 3),
        "rate": round(options.count / seconds, 1),
        "mqtwistCPUMicrosecondsPerMessage": round(cpu / options.count * 1e6),
        "machineCPUMicrosecondsPerMessage": round(machine / options.count * 1e6),
    }


def heldFiles(relay: PostfixRelay) -> int:
    count = 0
    for _, _, files in os.walk(os.path.join(relay.queueDir, "hold")):
        count += len(files)
    return count


async def postfixRun(reactor: Any, options: argparse.Namespace, relay: PostfixRelay) -> dict[str, Any]:
    before = await threads.deferToThread(heldFiles, relay)
    machineBefore = machineCPUSeconds()
    startedAt, _ = await inject(reactor, options, relay.port)
    seconds = reactor.seconds() - startedAt
    machine = machineCPUSeconds() - machineBefore
    held = await threads.deferToThread(heldFiles, relay) - before
    if held != options.count:
        raise BenchError(f"Postfix's hold queue has {held} new messages for {options.count} sent; see {relay.maillog}")
    return {
        "server": "postfix",
        "messages": options.count,
        "seconds": round(seconds, 3),
        "rate": round(options.count / seconds, 1),
        "machineCPUMicrosecondsPerMessage": round(machine / options.count * 1e6),
    }


def writeReport(runs: list[dict[str, Any]], options: argparse.Namespace, about: dict[str, Any]) -> str:
    now = datetime.datetime.now(datetime.UTC)
    os.makedirs(options.results_dir, exist_ok=True)
    kind = "submission-reuse" if options.reuse else "submission"
    name = os.path.join(options.results_dir, f"{kind}-{now:%Y%m%d-%H%M}")
    loadAfter = os.getloadavg()
    summary: dict[str, dict[str, float]] = {}
    for server in ("mqtwist", "postfix"):
        mine = [run for run in runs if run["server"] == server]
        summary[server] = {
            "rate": statistics.median(run["rate"] for run in mine),
            "machineCPUMicrosecondsPerMessage": statistics.median(
                run["machineCPUMicrosecondsPerMessage"] for run in mine
            ),
        }
    mq = [run for run in runs if run["server"] == "mqtwist"]
    summary["mqtwist"]["mqtwistCPUMicrosecondsPerMessage"] = statistics.median(
        run["mqtwistCPUMicrosecondsPerMessage"] for run in mq
    )
    ratio = summary["mqtwist"]["rate"] / summary["postfix"]["rate"]
    with open(name + ".json", "w") as f:
        json.dump({"date": now.isoformat(timespec="seconds"), "machine": about, "loadAverageAfter": loadAfter,
                   "options": {k: v for k, v in vars(options).items() if k != "results_dir"},
                   "command": " ".join(os.path.basename(a) if n == 0 else a
                                       for n, a in enumerate(sourceArgv(options, 0))),
                   "summary": summary, "ratio": ratio, "runs": runs}, f, indent=2)
    session = "one connection per message" if not options.reuse else "the next message on the same connection (-d)"
    lines = [
        f"# SMTP submission: mqtwist and Postfix queueing the same load ({now:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {about['nproc']} CPUs ({about['cpu']}), {about['memoryGB']} GB; Linux {about['kernel']}; "
        f"Python {about['python']}, Twisted {about['twisted']}; RabbitMQ {about['rabbitmq']}, "
        f"Postfix {about['postfix']}. mqtwist {about['mqtwistCommit']} (benchmark {about['benchCommit']}). "
        f"Load average at the start {' '.join(f'{x:.2f}' for x in about['loadAverageAtStart'])}, "
        f"at the end {' '.join(f'{x:.2f}' for x in loadAfter)}.",
        "",
        f"`smtp-source -c -s {options.sessions} -m {options.count} -l {options.size} -N"
        f"{' -d' if options.reuse else ''}` ({session}), {options.repeat} rounds. mqtwist: one process, "
        f"each message a job confirmed by RabbitMQ before the 250, on a queue nothing consumes; "
        f"Postfix: every message put in its hold queue. Both on loopback, on the same machine, in "
        f"the same run. The machine's CPU counts every program, RabbitMQ and Postfix's processes "
        f"included (and anything else running).",
        "",
    ]
    if options.note:
        lines += [f"Note: {options.note}", ""]
    lines += [
        f"**mqtwist {summary['mqtwist']['rate']:,.0f} msg/s, Postfix {summary['postfix']['rate']:,.0f} msg/s "
        f"(ratio {ratio:.2f}); mqtwist's process "
        f"{summary['mqtwist']['mqtwistCPUMicrosecondsPerMessage']:,.0f} µs of CPU a message** (medians).",
        "",
        "| round | server | seconds | msg/s | mqtwist CPU µs/msg | machine CPU µs/msg |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run['round'] + 1} | {run['server']} | {run['seconds']:.2f} | {run['rate']:,.0f} | "
            f"{run.get('mqtwistCPUMicrosecondsPerMessage', '-')} | {run['machineCPUMicrosecondsPerMessage']} |"
        )
    lines.append("")
    with open(name + ".md", "w") as f:
        f.write("\n".join(lines))
    return name + ".md"


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="messages a run (%(default)s)")
    parser.add_argument("--size", type=int, default=5120, help="bytes of each message's body (%(default)s)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions (%(default)s)")
    parser.add_argument("--reuse", action="store_true",
                        help="smtp-source -d: the next message on the same connection (default: one each)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of one mqtwist and one Postfix run (%(default)s)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one smtp-source run may take (%(default)s)")
    parser.add_argument("--tree", default=REPOSITORY,
                        help="the mqtwist source tree to run (default: this checkout), e.g. a 'git archive' export")
    parser.add_argument("--results-dir", default=os.path.join(HERE, "results"), help="where the report goes")
    parser.add_argument("--note", default="", help="a remark for the report")
    options = parser.parse_args(argv)
    requireProgram("smtp-source", POSTFIX_INSTALL)
    about = await report.machine(reactor, options.tree)
    directory = workDirectory("mqtwist-bench-submission-")
    node = LocalRabbitMQ(os.path.join(directory, "rabbitmq"), reactor=reactor)
    url = await node.start()
    broker = BenchBroker(url, reactor)
    relay = PostfixRelay(reactor, os.path.join(directory, "postfix"), 9,
                         settings=("smtpd_end_of_data_restrictions = check_client_access static:HOLD",))
    server = Mqtwist(reactor, directory, url, options.tree)
    runs = []
    try:
        await broker.connect()
        await relay.start()
        await server.start()
        for r in range(options.repeat):
            order = [("mqtwist", lambda: mqtwistRun(reactor, options, server, broker)),
                     ("postfix", lambda: postfixRun(reactor, options, relay))]
            for _, run in order if r % 2 == 0 else order[::-1]:
                result = await run()
                result["round"] = r
                print(json.dumps(result), flush=True)
                runs.append(result)
    finally:
        await server.stop()
        for queue in server.queues:
            await broker.delete(queue)
        await broker.close()
        await relay.stop()
        await node.stop()
    print(writeReport(runs, options, about))


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
