"""
How many mails are sent twice after a crash: the broker or mqtwist is
killed with kill -9 in the middle of a run, then started again, and a
receiving server counts the deliveries of every job.

    python3 bench/duplicates.py [--modes broker,mqtwist] [--rounds 3] [--count 2000]
                                [--checkout DIR] [--mqtwist-args='...'] [--name NAME]

See bench/README.rst ("Duplicates after a crash"); results go to
bench/results/duplicates-NAME-DATE.md and .json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import report  # noqa: E402
from broker import BenchBroker  # noqa: E402
from components import REPOSITORY, BenchError, Program, twistdEnvironment, workDirectory  # noqa: E402
from loadgen import jobBodies  # noqa: E402
from twisted.internet import defer, endpoints, protocol, task  # noqa: E402
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver  # noqa: E402
from twisted.mail import smtp  # noqa: E402
from zope.interface import implementer  # noqa: E402

from mqtwist.amqp.client import BrokerClient  # noqa: E402
from mqtwist.cli.publishing import publishBodies  # noqa: E402
from mqtwist.localnode import LocalRabbitMQ, RabbitMQEnded  # noqa: E402

log = Logger()

MODES = ("broker", "mqtwist")
#: the queues that keep results: everything else of a round must be empty at its end
RESULT_KINDS = ("results", "success", "failure", "retry")


# -- the receiving server ------------------------------------------------------


class CountingSink:
    """
    An SMTP server (Twisted's, on 127.0.0.1) that accepts every message and
    counts the deliveries of each recipient: a job's recipient is
    C{rcptN@example.com} (L{loadgen.makeJob}), so a recipient
    stands for one job.  A delivery counts when the end of its data has
    arrived, just before the server answers 250, as a real server's queue
    would have it.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.counts: collections.Counter[str] = collections.Counter()
        self.total = 0
        self._waiting: list[tuple[int, defer.Deferred[None]]] = []
        self._port: Any = None

    async def start(self) -> int:
        """@return: (a coroutine returning) the port it listens on."""
        sink = self

        @implementer(smtp.IMessage)
        class Counted:
            def __init__(self, recipient: str) -> None:
                self.recipient = recipient

            def lineReceived(self, line: bytes) -> None:
                pass  # the content does not matter, only that it all arrived

            def eomReceived(self) -> defer.Deferred[None]:
                sink.delivered(self.recipient)
                return defer.succeed(None)

            def connectionLost(self) -> None:
                pass

        @implementer(smtp.IMessageDelivery)
        class Delivery:
            def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
                return None

            def validateFrom(self, helo: Any, origin: Any) -> Any:
                return origin

            def validateTo(self, user: smtp.User) -> Any:
                recipient = str(user.dest)
                return lambda: Counted(recipient)

        class Factory(protocol.ServerFactory):
            noisy = False

            def buildProtocol(self, addr: Any) -> smtp.ESMTP:
                server = smtp.ESMTP()
                server.host = b"sink.bench.invalid"
                server.noisy = False  # no log line per message
                server.delivery = Delivery()  # type: ignore[assignment]  # Twisted types it None
                server.factory = self
                return server

        self._port = await endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(Factory())
        return self._port.getHost().port

    def delivered(self, recipient: str) -> None:
        self.counts[recipient] += 1
        self.total += 1
        while self._waiting and self._waiting[0][0] <= self.total:
            waiting = self._waiting.pop(0)[1]
            if not waiting.called:  # else it timed out
                waiting.callback(None)

    def whenTotal(self, total: int) -> defer.Deferred[None]:
        """@return: a Deferred that fires once C{total} deliveries were counted since the last reset."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.total >= total:
            d.callback(None)
        else:
            self._waiting.append((total, d))
            self._waiting.sort(key=lambda w: w[0])
        return d

    def reset(self) -> None:
        self.counts.clear()
        self.total = 0

    async def stop(self) -> None:
        if self._port is not None:
            await self._port.stopListening()


# -- one round -------------------------------------------------------------------


@dataclass
class Round:
    """What one round measured."""

    mode: str
    number: int
    jobs: int
    #: deliveries counted by the server when the kill was sent
    deliveredAtKill: int = 0
    #: jobs by how many times they were delivered: "0", "1", "2", "3+"
    delivered: dict[str, int] = field(default_factory=dict)
    #: deliveries beyond the first of each job
    extraDeliveries: int = 0
    #: jobs with at least one final result, and results in all
    jobsWithResult: int = 0
    results: int = 0
    failures: int = 0
    #: seconds from the start of mqtwist until nothing was left in the outbox
    seconds: float = 0.0
    error: str | None = None

    @property
    def duplicated(self) -> int:
        return self.delivered.get("2", 0) + self.delivered.get("3+", 0)


class Bench:
    """The node, the receiving server and the mqtwist processes of one invocation."""

    def __init__(self, reactor: Any, options: argparse.Namespace) -> None:
        self.reactor = reactor
        self.options = options
        self.directory = workDirectory("mqtwist-duplicates-")
        self.node = LocalRabbitMQ(os.path.join(self.directory, "rabbitmq"), reactor=reactor)
        self.sink = CountingSink(reactor)
        self.broker: BenchBroker | None = None
        self.mqtwist: Program | None = None
        self.rounds: list[Round] = []
        self.tornDown = False
        self.stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M")
        # a signal stops the reactor without unwinding main(): clean up then too
        reactor.addSystemEventTrigger("before", "shutdown", self.tearDown)

    async def setUp(self) -> None:
        self.url = await self.node.start()
        self.sinkPort = await self.sink.start()
        await self.connectAdmin()

    async def connectAdmin(self) -> None:
        # a new connection after each restart of the node: the old one died with it
        self.broker = BenchBroker(self.url, self.reactor)
        await self.broker.connect()

    @defer.inlineCallbacks
    def tearDown(self):  # -> Deferred[None]
        """Stop everything that was started and remove the directory; twice is harmless."""
        if self.tornDown:
            return
        self.tornDown = True
        yield defer.ensureDeferred(self._tearDown())

    async def _tearDown(self) -> None:
        if self.mqtwist is not None:
            await self.mqtwist.stop()
        for stop in (self.sink.stop, self.node.stop):
            try:
                await stop()
            except Exception as e:
                log.error("could not stop {thing}: {error}", thing=stop, error=e)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- mqtwist ----------------------------------------------------------------

    def mqtwistArguments(self, queues: dict[str, str]) -> list[str]:
        arguments = [
            "--amqp", f"amqp://{self.url.username}:{self.url.password}@{self.url.host}:{self.url.port}/",
            "--smarthost", f"127.0.0.1:{self.sinkPort}",
            "--plugins=",
            # back soon after the node's restart, so that a round takes seconds, not half a minute
            "--reconnect-max-delay", "2",
        ]
        for kind, name in queues.items():
            arguments += [f"--{kind}", name]
        return arguments + shlex.split(self.options.mqtwist_args)

    async def startMqtwist(self, arguments: list[str], directory: str, name: str) -> Program:
        """Start C{twistd -n mqtwist} of the checkout in C{directory}; returns once it consumes."""
        argv = [self.options.python, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "mqtwist", *arguments]
        program = Program(name, self.reactor)
        program.start(argv, env=twistdEnvironment(self.options.checkout), path=directory)
        self.mqtwist = program
        await program.waitFor(f"consuming from: {arguments[arguments.index('--outbox') + 1]}".encode(), 60)
        return program

    async def stopMqtwist(self) -> None:
        if self.mqtwist is not None:
            program, self.mqtwist = self.mqtwist, None
            await program.stop()

    # -- the crashes ----------------------------------------------------------------

    async def killBroker(self) -> None:
        """kill -9 the node's Erlang VM, then start the node again on the same data and port."""
        with open(os.path.join(self.node.dataDir, "rabbitmq.pid")) as f:
            pid = int(f.read().strip())
        ended = self.node.whenEnded()
        os.kill(pid, signal.SIGKILL)
        try:
            await ended
        except RabbitMQEnded:
            pass  # what was asked for
        log.info("RabbitMQ killed (kill -9 {pid}); starting it again", pid=pid)
        await self.node.start()
        await self.connectAdmin()

    async def killMqtwist(self, arguments: list[str], directory: str) -> None:
        """kill -9 mqtwist, then start it again with the same arguments in the same directory."""
        assert self.mqtwist is not None
        killed, self.mqtwist = self.mqtwist, None
        assert killed.transport is not None
        pid = killed.pid  # gone from the transport once the process has ended
        killed.transport.signalProcess("KILL")
        await killed.ended
        log.info("mqtwist killed (kill -9 {pid}); starting it again", pid=pid)
        await self.startMqtwist(arguments, directory, "twistd mqtwist (after the kill)")

    # -- a round ----------------------------------------------------------------------

    async def round(self, mode: str, number: int) -> Round:
        o = self.options
        result = Round(mode, number, o.count)
        base = f"dup-{mode}-{number}-{uuid.uuid4().hex[:6]}"
        queues = {kind: f"{base}.{kind}" for kind in ("outbox", *RESULT_KINDS)}
        assert self.broker is not None
        for name in queues.values():
            await self.broker.declare(name)
        await self.publish(queues["outbox"], base)
        directory = os.path.join(self.directory, base)
        os.makedirs(directory)
        self.sink.reset()
        arguments = self.mqtwistArguments(queues)
        await self.startMqtwist(arguments, directory, "twistd mqtwist")
        started = self.reactor.seconds()
        try:
            await self.delivered(math.ceil(o.count * o.kill_at), started + o.timeout)
            result.deliveredAtKill = self.sink.total
            if mode == "broker":
                await self.killBroker()
            else:
                await self.killMqtwist(arguments, directory)
            await self.settled(base, queues, started + o.timeout)
            result.seconds = round(self.reactor.seconds() - started, 1)
        finally:
            await self.stopMqtwist()
        await self.count(result, base, queues)
        await self.deleteQueues(base)
        return result

    async def delivered(self, total: int, deadline: float) -> None:
        """Return as soon as the server has counted C{total} deliveries (in the same reactor turn)."""
        while self.sink.total < total:
            self.checkRunning()
            if self.reactor.seconds() > deadline:
                raise BenchError(f"only {self.sink.total} of {total} deliveries after "
                                 f"{self.options.timeout:g} s; mqtwist's output:\n{self.tail()}")
            try:
                await self.sink.whenTotal(total).addTimeout(0.5, self.reactor)
            except defer.TimeoutError:
                pass

    def checkRunning(self) -> None:
        if self.mqtwist is None or self.mqtwist.ended.called:
            raise BenchError(f"mqtwist exited during the round; its output:\n{self.tail()}")

    def tail(self) -> str:
        return self.mqtwist.tail() if self.mqtwist is not None else "(not running)"

    async def publish(self, queue: str, prefix: str) -> None:
        publisher = BrokerClient(self.url, [], consumeFrom=None, prefetch=0,
                                 onDelivery=lambda d: None, reactor=self.reactor)
        publisher.startService()
        try:
            await publisher.whenConnected()
            await publishBodies(publisher, queue, jobBodies(self.options.count, self.options.size, prefix=prefix))
        finally:
            # not left to reconnect while the node is down
            await publisher.stopService()

    async def queueCounts(self, base: str) -> dict[str, int]:
        """Messages (ready and unacknowledged) of every queue of the round, from rabbitmqctl."""
        output = await self.node.rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "messages")
        counts = {}
        for line in output.splitlines():
            name, _, messages = line.rpartition("\t")
            if name.startswith(base + "."):
                counts[name] = int(messages)
        return counts

    async def settled(self, base: str, queues: dict[str, str], deadline: float) -> None:
        """
        Wait until the outbox and its delay queues are empty, nothing
        unacknowledged included, twice in a row: every job then has its
        final result.
        """
        kept = {queues[kind] for kind in RESULT_KINDS}
        emptyBefore = False
        while True:
            self.checkRunning()
            try:
                counts = await self.queueCounts(base)
            except Exception as e:
                # the node may still be recovering its queues
                log.info("cannot count the queues yet: {error}", error=e)
                counts = None
            if counts is not None:
                left = {name: n for name, n in counts.items() if name not in kept and n}
                if not left and emptyBefore:
                    return
                emptyBefore = not left
            if self.reactor.seconds() > deadline:
                raise BenchError(f"the outbox was not empty after {self.options.timeout:g} s: {counts}; "
                                 f"{self.sink.total} deliveries; mqtwist's output:\n{self.tail()}")
            await task.deferLater(self.reactor, 1, lambda: None)

    async def count(self, result: Round, base: str, queues: dict[str, str]) -> None:
        """Fill in C{result} from the server's counts and the results queue."""
        histogram: collections.Counter[str] = collections.Counter()
        for n in range(result.jobs):
            times = self.sink.counts.get(f"rcpt{n}@example.com", 0)
            histogram[str(times) if times < 3 else "3+"] += 1
        result.delivered = {k: histogram.get(k, 0) for k in ("0", "1", "2", "3+")}
        result.extraDeliveries = self.sink.total - (result.jobs - histogram.get("0", 0))
        assert self.broker is not None and self.broker.admin is not None
        withResult: set[str] = set()
        while True:
            reply = await self.broker.admin.basic_get(queue=queues["results"], no_ack=True)
            if reply.method.name == "get-empty":
                break
            result.results += 1
            withResult.add(json.loads(reply.content.body)["id"])
        result.jobsWithResult = len(withResult)
        result.failures = await self.broker.count(queues["failure"])

    async def deleteQueues(self, base: str) -> None:
        assert self.broker is not None
        for name in await self.queueCounts(base):
            await self.broker.delete(name)

    async def execute(self) -> None:
        for number in range(1, self.options.rounds + 1):
            for mode in self.options.modes:
                try:
                    result = await self.round(mode, number)
                except BenchError as e:
                    log.error("round {number} ({mode}) failed: {error}", number=number, mode=mode, error=e)
                    result = Round(mode, number, self.options.count, error=str(e))
                self.rounds.append(result)
                log.info("round {number}, {mode} killed after {atKill} deliveries: jobs delivered "
                         "0/1/2/3+ times: {delivered}; {seconds} s {error}", number=number, mode=mode,
                         atKill=result.deliveredAtKill, delivered=result.delivered,
                         seconds=result.seconds, error=result.error or "")


# -- the report --------------------------------------------------------------------


def checkoutDescription(checkout: str, python: str) -> dict[str, str]:
    """The checkout's commit (git describe) and the mqtwist package its processes import."""
    described = subprocess.run(["git", "-C", checkout, "describe", "--always", "--dirty"],
                               capture_output=True, text=True)
    imported = subprocess.run([python, "-c", "import mqtwist; print(mqtwist.__file__)"],
                              capture_output=True, text=True, env=twistdEnvironment(checkout))
    if imported.returncode != 0:
        raise BenchError(f"{python} cannot import mqtwist from {checkout}: {imported.stderr.strip()}")
    package = imported.stdout.strip()
    if not os.path.realpath(package).startswith(os.path.realpath(checkout) + os.sep):
        raise BenchError(f"with PYTHONPATH={checkout}, {python} imports mqtwist from {package}, "
                         f"not from the checkout: is {checkout} an mqtwist checkout?")
    return {
        "checkout": os.path.abspath(checkout),
        "commit": described.stdout.strip() if described.returncode == 0 else "unknown (not a git checkout)",
        "package": package,
    }


def markdown(data: dict[str, Any]) -> str:
    m, o = data["machine"], data["options"]
    lines = [
        f"# Duplicates after a crash: {o['name']}",
        "",
        f"- date: {data['started']}",
        f"- machine: {m['cpu']}, {m['nproc']} CPUs, {m['memoryGB']} GB, kernel {m['kernel']}; "
        f"Python {m['python']}, Twisted {m['twisted']}, RabbitMQ {m['rabbitmq']}, Erlang {m['erlang']}",
        f"- mqtwist: {data['checkout']['commit']} ({data['checkout']['checkout']}), "
        f"arguments `{' '.join(data['mqtwistArguments'])}`",
        f"- {o['count']:,} jobs of {o['size']:,} bytes per round, killed (kill -9) once "
        f"{o['kill_at']:.0%} were delivered, then started again",
    ]
    if o["note"]:
        lines.append(f"- note: {o['note']}")
    lines += ["", "| mode | rounds | jobs delivered twice or more (median, range) | extra deliveries |",
              "| --- | --- | --- | --- |"]
    for mode in o["modes"]:
        done = [r for r in data["rounds"] if r["mode"] == mode and not r["error"]]
        if not done:
            continue
        duplicated = [r["delivered"]["2"] + r["delivered"]["3+"] for r in done]
        extra = [r["extraDeliveries"] for r in done]
        lines.append(f"| {mode} | {len(done)} | {statistics.median(duplicated):g} "
                     f"({min(duplicated)}–{max(duplicated)}) | {statistics.median(extra):g} "
                     f"({min(extra)}–{max(extra)}) |")
    lines += ["", "| mode | round | delivered at the kill | jobs delivered 0 / 1 / 2 / 3+ times | "
              "extra deliveries | jobs with a result | results | failures | seconds | error |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in data["rounds"]:
        d = r["delivered"]
        counts = " / ".join(str(d.get(k, "-")) for k in ("0", "1", "2", "3+"))
        lines.append(f"| {r['mode']} | {r['number']} | {r['deliveredAtKill']} | {counts} | "
                     f"{r['extraDeliveries']} | {r['jobsWithResult']} | {r['results']} | {r['failures']} | "
                     f"{r['seconds']:g} | {(r['error'] or '').splitlines()[0] if r['error'] else ''} |")
    return "\n".join(lines) + "\n"


def parseArguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 bench/duplicates.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES),
                   help="what is killed, comma-separated: broker (the RabbitMQ node), mqtwist "
                   "(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each mode (default: %(default)s)")
    p.add_argument("--count", type=int, default=2000, help="jobs per round (default: %(default)s)")
    p.add_argument("--size", type=int, default=2000, help="size of each job's message in bytes (default: %(default)s)")
    p.add_argument("--kill-at", type=float, default=1 / 3,
                   help="the kill comes once this share of the jobs was delivered (default: 1/3)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds a round may take from the start of mqtwist (default: %(default)s)")
    p.add_argument("--checkout", default=REPOSITORY,
                   help="the mqtwist source tree to run (default: this checkout), e.g. one made with "
                   "'git worktree add --detach /tmp/mqtwist-before COMMIT'")
    p.add_argument("--python", default=sys.executable,
                   help="the Python that runs twistd mqtwist, with Twisted and txamqp installed "
                   "(default: this one); the checkout goes first on its PYTHONPATH")
    p.add_argument("--mqtwist-args", default="",
                   help="more options for twistd mqtwist, e.g. --mqtwist-args='--delivery-journal journal' (relative "
                   "paths are in the round's directory, which the restarted process shares)")
    p.add_argument("--name", default=None, help="name of the results files (default: the checkout's commit)")
    p.add_argument("--note", default="", help="a remark for the report")
    p.add_argument("--results-dir", default=os.path.join(REPOSITORY, "bench", "results"))
    o = p.parse_args(argv)
    o.modes = [m.strip() for m in o.modes.split(",") if m.strip()]
    if not o.modes or set(o.modes) - set(MODES):
        p.error(f"--modes takes {' and/or '.join(MODES)}, not {','.join(o.modes)!r}")
    if o.rounds < 1 or o.count < 3 or not 0 < o.kill_at < 1:
        p.error("--rounds must be at least 1, --count at least 3, and --kill-at between 0 and 1")
    return o


async def main(reactor: Any, argv: list[str]) -> None:
    options = parseArguments(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    checkout = checkoutDescription(options.checkout, options.python)
    if options.name is None:
        options.name = checkout["commit"].split()[0]
    bench = Bench(reactor, options)
    started = datetime.datetime.now(datetime.UTC)
    try:
        await bench.setUp()
        machine = await report.machine(reactor, options.checkout)
        arguments = bench.mqtwistArguments({kind: f"ROUND.{kind}" for kind in ("outbox", *RESULT_KINDS)})
        await bench.execute()
    finally:
        await bench.tearDown()
    os.makedirs(options.results_dir, exist_ok=True)
    stem = os.path.join(options.results_dir, f"duplicates-{options.name}-{bench.stamp}")
    data = {
        "started": started.isoformat(timespec="seconds"),
        "options": {k: v for k, v in vars(options).items() if k != "results_dir"},
        "machine": machine,
        "checkout": checkout,
        # with the sink's port and the node's, which change from run to run
        "mqtwistArguments": arguments,
        "rounds": [dict(asdict(r), duplicated=r.duplicated) for r in bench.rounds],
    }
    with open(stem + ".json", "w") as f:
        json.dump(data, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(markdown(data))
    sys.stdout.write(f"results: {stem}.md and .json\n")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
