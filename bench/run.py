"""
mqtwist's benchmark: throughput, memory and CPU against Postfix, in one run.

    python3 bench/run.py [--count 50000] [--repeat 2] [--name NAME] ...
    python3 bench/run.py --compare before=/tmp/mqtwist-before --compare after=/work/main ...

See bench/README.rst for what it measures and how; results go to
bench/results/NAME-DATE.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import shlex
import shutil
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import profiles  # noqa: E402
import report  # noqa: E402
from broker import BenchBroker  # noqa: E402
from components import (  # noqa: E402
    POSTFIX_INSTALL,
    REPOSITORY,
    BenchError,
    DelayProxy,
    PostfixRelay,
    ProcessStats,
    Program,
    SmtpSink,
    machineCPUSeconds,
    requireProgram,
    twistdArgv,
    twistdEnvironment,
    workDirectory,
)
from loadgen import jobBodies  # noqa: E402
from twisted.internet import defer, task, threads  # noqa: E402
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver  # noqa: E402

from mqtwist.amqp.client import BrokerClient  # noqa: E402
from mqtwist.cli.publishing import publishBodies  # noqa: E402
from mqtwist.localnode import LocalRabbitMQ  # noqa: E402

log = Logger()

SCENARIOS = ("mqtwist-1", "mqtwist-n", "postfix", "delay", "waiting", "profile")
#: the scenarios that run once per variant (--compare) in every round
COMPARED = ("mqtwist-1", "mqtwist-n")


@dataclass
class Variant:
    """
    One mqtwist to measure: a source tree and the options added for it
    (after --mqtwist-args).  Without --compare there is one, named "".
    """

    name: str
    tree: str
    args: str = ""

    def labelled(self, label: str) -> str:
        return f"{label}, {self.name}" if self.name else label


def parseVariant(text: str, defaultTree: str) -> Variant:
    """
    Read C{NAME=[TREE][::ARGS]}: an empty TREE is C{defaultTree}; ARGS is
    everything after the first C{::}.

    @raise ValueError: the text says why it is not one.
    """
    name, equals, rest = text.partition("=")
    if not equals or not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
        raise ValueError(f"--compare {text!r}: expected NAME=[TREE][::ARGS], NAME of letters, digits and ._+-")
    tree, _, args = rest.partition("::")
    tree = os.path.abspath(tree or defaultTree)
    if not os.path.isfile(os.path.join(tree, "mqtwist", "__init__.py")):
        raise ValueError(f"--compare {text!r}: {tree} is not an mqtwist source tree (no mqtwist/__init__.py)")
    try:
        shlex.split(args)
    except ValueError as e:
        raise ValueError(f"--compare {text!r}: its arguments do not parse: {e}") from None
    return Variant(name, tree, args.strip())


@dataclass
class Run:
    """What one timed run measured."""

    scenario: str
    label: str
    processes: int
    messages: int
    size: int
    #: the --compare variant that ran ("" without --compare), and in which round
    variant: str | None = None
    round: int | None = None
    seconds: float = 0.0
    #: mqtwist processes: peak RSS (VmHWM) of each, bytes
    peakRSS: list[int] = field(default_factory=list)
    #: mqtwist processes: CPU seconds of all of them while timed
    cpuSeconds: float | None = None
    #: the whole machine's busy CPU seconds while timed (every program)
    machineCPUSeconds: float = 0.0
    connections: int | None = None
    pipelining: bool | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class Bench:
    """Everything one benchmark run starts, in one temporary directory."""

    def __init__(self, reactor: Any, options: argparse.Namespace) -> None:
        self.reactor = reactor
        self.options = options
        self.directory = workDirectory("mqtwist-bench-")
        self.node = LocalRabbitMQ(os.path.join(self.directory, "rabbitmq"), reactor=reactor)
        self.stoppable: list[Any] = []
        self.runs: list[Run] = []
        self.dkim: dict[str, Any] | None = None
        self.tornDown = False
        self.stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M")
        # a signal stops the reactor without unwinding main(): clean up then too
        reactor.addSystemEventTrigger("before", "shutdown", self.tearDown)

    # -- set-up and tear-down ----------------------------------------------

    async def setUp(self) -> None:
        requireProgram("smtp-sink", POSTFIX_INSTALL)
        url = await self.node.start()
        self.stoppable.append(self.node)
        self.url = url
        self.broker = BenchBroker(url, self.reactor)
        await self.broker.connect()
        self.publisher = BrokerClient(url, [], consumeFrom=None, prefetch=0,
                                      onDelivery=lambda d: None, reactor=self.reactor)
        self.publisher.startService()
        await self.publisher.whenConnected()
        self.sink = SmtpSink(self.reactor)
        await self.sink.start()
        self.stoppable.append(self.sink)
        if self.options.dkim:
            self.dkim = makeDKIM(self.directory)

    @defer.inlineCallbacks
    def tearDown(self):  # -> Deferred[None]
        """Stop everything that was started and remove the directory; twice is harmless."""
        if self.tornDown:
            return
        self.tornDown = True
        yield defer.ensureDeferred(self._tearDown())

    async def _tearDown(self) -> None:
        if getattr(self, "publisher", None) is not None:
            await self.publisher.stopService()
        if getattr(self, "broker", None) is not None:
            await self.broker.close()
        for thing in reversed(self.stoppable):
            try:
                await thing.stop()
            except Exception as e:
                log.error("could not stop {thing}: {error}", thing=thing, error=e)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- mqtwist ---------------------------------------------------------------

    async def publish(self, queue: str, count: int, prefix: str) -> float:
        started = self.reactor.seconds()
        await publishBodies(
            self.publisher, queue,
            templateBodies(self.options.job_template, count, prefix=prefix, dkim=self.dkim)
            if self.options.job_template
            else jobBodies(count, self.options.size, prefix=prefix, dkim=self.dkim),
        )
        return self.reactor.seconds() - started

    def queueNames(self, scenario: str) -> dict[str, str]:
        base = f"bench-{scenario}-{uuid.uuid4().hex[:6]}"
        return {kind: f"{base}.{kind}" for kind in ("outbox", "results", "success", "failure", "retry")}

    async def startMqtwist(self, queues: dict[str, str], smarthostPort: int, processes: int,
                           extra: Sequence[str], variant: Variant) -> list[tuple[Program, ProcessStats, float, float]]:
        """
        Start C{processes} twistd mqtwist processes of C{variant} and wait
        until each consumes.

        @return: (a coroutine returning) per process: the program, its
            stats, and when it started consuming and its CPU seconds then.
        """
        arguments = ["--amqp", f"amqp://{self.url.username}:{self.url.password}@{self.url.host}:{self.url.port}/",
                     "--smarthost", f"127.0.0.1:{smarthostPort}", "--plugins="]
        for kind, name in queues.items():
            arguments += [f"--{kind}", name]
        arguments += shlex.split(self.options.mqtwist_args) + shlex.split(variant.args) + list(extra)
        programs = []
        for n in range(processes):
            program = Program(f"twistd mqtwist #{n + 1}", self.reactor)
            # a directory of its own for each process of each run: what it
            # keeps there (its delivery journal) is neither shared nor
            # carried over to the next run
            workDir = os.path.join(self.directory, f"{queues['outbox']}-{n + 1}")
            os.makedirs(workDir)
            program.start(twistdArgv(arguments), env=twistdEnvironment(variant.tree), path=workDir)
            self.stoppable.append(program)
            programs.append(program)
        started = []
        marker = f"consuming from: {queues['outbox']}".encode()

        async def consuming(program: Program) -> tuple[Program, ProcessStats, float, float]:
            await program.waitFor(marker, 60)
            stats = ProcessStats(program.pid)
            return program, stats, self.reactor.seconds(), stats.cpuSeconds()

        for item in await defer.gatherResults([defer.ensureDeferred(consuming(p)) for p in programs],
                                              consumeErrors=True).addErrback(lambda f: f.value.subFailure):
            started.append(item)
        return started

    async def stopMqtwist(self, started: list[tuple[Program, ProcessStats, float, float]]) -> None:
        for program, *_ in started:
            await program.stop()
            self.stoppable.remove(program)

    async def deleteQueues(self, queues: dict[str, str]) -> None:
        for name in queues.values():
            await self.broker.delete(name)

    async def mqtwistRun(self, scenario: str, label: str, *, count: int, processes: int,
                         smarthostPort: int, extra: Sequence[str] = (), connections: int | None = None,
                         pipelining: bool | None = True, profileSeconds: float = 0.0,
                         variant: Variant | None = None, inRound: int | None = None) -> Run:
        variant = variant or self.options.variants[0]
        run = Run(scenario, label, processes, count, self.options.size, variant=variant.name, round=inRound,
                  connections=connections, pipelining=pipelining)
        queues = self.queueNames(scenario)
        for name in queues.values():
            await self.broker.declare(name)
        run.extra["publishSeconds"] = round(await self.publish(queues["outbox"], count, queues["outbox"]), 1)
        counter, channel = await self.broker.countArrivals(queues["success"])
        machineBefore = machineCPUSeconds()
        started = await self.startMqtwist(queues, smarthostPort, processes, extra, variant)
        startedAt = min(s[2] for s in started)
        profiling = None
        if profileSeconds:
            profiling = defer.ensureDeferred(self.profile(started[0][0], profileSeconds))
        try:
            await self.waitForResults(run, counter, queues, started)
            run.seconds = (counter.last or startedAt) - startedAt
            run.machineCPUSeconds = machineCPUSeconds() - machineBefore
            run.cpuSeconds = sum(stats.cpuSeconds() - cpu0 for _, stats, _, cpu0 in started)
            run.peakRSS = [stats.memory()["VmHWM"] for _, stats, _, _ in started]
            if profiling is not None:
                run.extra["profile"] = await profiling
        finally:
            await self.broker.stopCounting(channel)
            await self.stopMqtwist(started)
            await self.deleteQueues(queues)
        return run

    async def waitForResults(self, run: Run, counter: Any, queues: dict[str, str], started: list) -> None:
        """
        Wait until C{run.messages} success results have arrived; give up
        when failures arrive, a process dies, or nothing moves for
        C{--stall-timeout} seconds.
        """
        lastCount, lastMove = -1, self.reactor.seconds()
        while counter.count < run.messages:
            try:
                await counter.whenCount(run.messages).addTimeout(2, self.reactor)
            except defer.TimeoutError:
                pass
            failed = await self.broker.count(queues["failure"])
            if failed:
                sample = await self.sampleResult(queues["failure"])
                run.error = (f"{failed} messages failed (the first: {sample}); "
                             f"{counter.count} succeeded")
                raise BenchError(run.error)
            for program, *_ in started:
                if program.ended.called:
                    raise BenchError(f"{program.name} exited during the run; its output:\n{program.tail()}")
            if counter.count != lastCount:
                lastCount, lastMove = counter.count, self.reactor.seconds()
            elif self.reactor.seconds() - lastMove > self.options.stall_timeout:
                retried = await self.broker.count(queues["retry"])
                sample = await self.sampleResult(queues["retry"]) if retried else ""
                raise BenchError(
                    f"no results for {self.options.stall_timeout:g} s: {counter.count} of "
                    f"{run.messages} arrived; retry notices: {retried} {sample}; "
                    f"output of the first process:\n{started[0][0].tail()}")

    async def sampleResult(self, queue: str) -> str:
        reply = await self.broker.admin.basic_get(queue=queue, no_ack=True)
        if reply.method.name == "get-empty":
            return "(gone)"
        result = json.loads(reply.content.body)
        return json.dumps(result.get("results", [])[-1:])

    async def profile(self, program: Program, seconds: float) -> dict[str, Any]:
        """py-spy on C{program} for C{seconds}, after a short warm-up."""
        pyspy = requireProgram("py-spy", "install it with 'pip install py-spy'")
        await task.deferLater(self.reactor, 2, lambda: None)
        raw = os.path.join(self.directory, "profile.txt")
        spy = Program("py-spy", self.reactor)
        spy.start([pyspy, "record", "--pid", str(program.pid), "--duration", str(int(seconds)),
                   "--rate", "100", "--format", "raw", "--output", raw])
        self.stoppable.append(spy)
        try:
            await spy.ended.addTimeout(seconds + 60, self.reactor)
        finally:
            self.stoppable.remove(spy)
        if not os.path.exists(raw):
            raise BenchError(f"py-spy wrote no profile; its output:\n{spy.tail()}")
        # kept with the results: the raw stacks answer questions the summary does not
        os.makedirs(self.options.results_dir, exist_ok=True)
        kept = os.path.join(self.options.results_dir, f"{self.options.name}-{self.stamp}-profile.txt.gz")
        with open(raw, "rb") as source, gzip.open(kept, "wb") as target:
            shutil.copyfileobj(source, target)
        return dict(profiles.summarise(raw, seconds), raw=os.path.basename(kept))

    # -- Postfix -----------------------------------------------------------------

    async def postfixRun(self, relay: PostfixRelay, count: int) -> Run:
        run = Run("postfix", "Postfix relay (smtp-source -> postfix -> smtp-sink)", 0, count, self.options.size)
        source = requireProgram("smtp-source", POSTFIX_INSTALL)
        sentBefore = relay.logCount("status=sent")
        machineBefore = machineCPUSeconds()
        startedAt = self.reactor.seconds()
        injector = Program("smtp-source", self.reactor)
        injector.start([source, "-s", str(self.options.source_sessions), "-m", str(count),
                        "-l", str(self.options.size), "-d", "-N",
                        "-f", "sender@example.org", "-t", "rcpt@example.com",
                        f"127.0.0.1:{relay.port}"])
        self.stoppable.append(injector)
        try:
            await injector.ended.addTimeout(self.options.stall_timeout + count / 50, self.reactor)
        finally:
            self.stoppable.remove(injector)
        run.extra["injectSeconds"] = round(self.reactor.seconds() - startedAt, 1)
        deadline = self.reactor.seconds() + self.options.stall_timeout + count / 50
        while True:
            queued = await threads.deferToThread(relay.queuedFiles)
            if queued == 0:
                break
            if self.reactor.seconds() > deadline:
                raise BenchError(f"Postfix still has {queued} messages queued; see {relay.maillog}")
            await task.deferLater(self.reactor, 0.05, lambda: None)
        run.seconds = self.reactor.seconds() - startedAt
        run.machineCPUSeconds = machineCPUSeconds() - machineBefore
        sent = await threads.deferToThread(relay.logCount, "status=sent") - sentBefore
        run.extra["sent"] = sent
        if sent != count:
            run.error = f"Postfix logged {sent} deliveries (status=sent) for {count} messages"
        return run

    # -- the whole run ---------------------------------------------------------------

    async def execute(self) -> None:
        o = self.options
        scenarios = o.scenarios
        cores = os.cpu_count() or 1
        relay = None
        if "postfix" in scenarios:
            relay = PostfixRelay(self.reactor, os.path.join(self.directory, "postfix"), self.sink.port)
            self.stoppable.append(relay)
            await relay.start()
        throughput = [("mqtwist-1", "mqtwist, 1 process", 1)]
        if cores > 1:
            throughput.append(("mqtwist-n", f"mqtwist, {cores} processes", cores))
        for r in range(o.repeat):
            # the variants take turns, first in a different order each round
            # (A B, B A, A B ... ), so that neither always follows Postfix's run
            variants = o.variants[r % len(o.variants):] + o.variants[:r % len(o.variants)]
            for scenario, label, processes in throughput:
                if scenario not in scenarios:
                    continue
                for variant in variants:
                    await self.record(self.mqtwistRun(scenario, variant.labelled(label), count=o.count,
                                                      processes=processes, smarthostPort=self.sink.port,
                                                      variant=variant, inRound=r),
                                      variant=variant.name, inRound=r)
            if relay is not None:
                await self.record(self.postfixRun(relay, o.count), inRound=r)
        if "delay" in scenarios:
            await self.delayRuns()
        if "waiting" in scenarios:
            await self.record(self.waitingRun())
        if "profile" in scenarios:
            # enough messages to keep it busy while py-spy samples
            count = max(o.count, int((o.profile_seconds + 10) * 2000))
            await self.record(self.mqtwistRun("profile", "mqtwist, 1 process, under py-spy",
                                              count=count, processes=1, smarthostPort=self.sink.port,
                                              profileSeconds=o.profile_seconds))

    async def record(self, running: Any, variant: str | None = None, inRound: int | None = None) -> None:
        try:
            run = await running
        except BenchError as e:
            log.error("run failed: {error}", error=e)
            run = Run("failed", "failed run", 0, 0, self.options.size, variant=variant, round=inRound,
                      error=str(e))
        run.round = inRound
        self.runs.append(run)
        log.info("{label}: {messages} messages in {seconds:.1f} s = {rate:.0f}/s; peak RSS {rss}; "
                 "CPU {cpu}; {error}", label=run.label, messages=run.messages, seconds=run.seconds,
                 rate=run.rate, rss=[f"{m / 2**20:.0f} MB" for m in run.peakRSS],
                 cpu=run.cpuSeconds, error=run.error or "")

    async def delayRuns(self) -> None:
        o = self.options
        c = o.delay_connections
        delay = o.delay_ms / 1000
        lockstepSink = SmtpSink(self.reactor, pipelining=False)
        await lockstepSink.start()
        self.stoppable.append(lockstepSink)
        proxies = {}
        for pipelining, sink in ((True, self.sink), (False, lockstepSink)):
            proxy = DelayProxy(self.reactor, sink.port, delay)
            await proxy.start()
            self.stoppable.append(proxy)
            proxies[pipelining] = proxy
        for _ in range(o.delay_repeat):
            for pipelining in (True, False):
                label = (f"{o.delay_ms:g} ms replies, {c} connection{'s' if c > 1 else ''}, "
                         f"{'PIPELINING' if pipelining else 'lock-step (no PIPELINING)'}")
                await self.record(self.mqtwistRun(
                    "delay", label, count=o.delay_count, processes=1, smarthostPort=proxies[pipelining].port,
                    extra=["--max-connections-per-destination", str(c)], connections=c, pipelining=pipelining))

    async def waitingRun(self) -> Run:
        """Peak RSS of one process with --waiting messages in the outbox."""
        o = self.options
        run = Run("waiting", f"1 process, {o.waiting} messages waiting, RSS after {o.waiting_seconds:g} s",
                  1, o.waiting, o.size)
        queues = self.queueNames("waiting")
        for name in queues.values():
            await self.broker.declare(name)
        run.extra["publishSeconds"] = round(await self.publish(queues["outbox"], o.waiting, queues["outbox"]), 1)
        counter, channel = await self.broker.countArrivals(queues["success"])
        started = await self.startMqtwist(queues, self.sink.port, 1, [], self.options.variants[0])
        stats = started[0][1]
        samples = []
        try:
            for _ in range(int(o.waiting_seconds)):
                await task.deferLater(self.reactor, 1, lambda: None)
                if started[0][0].ended.called:
                    raise BenchError(f"mqtwist exited; its output:\n{started[0][0].tail()}")
                samples.append(stats.memory()["VmRSS"])
            run.peakRSS = [stats.memory()["VmHWM"]]
            run.extra["rssSamplesMB"] = [round(s / 2**20, 1) for s in samples]
            run.extra["delivered"] = counter.count
            run.extra["stillWaiting"] = await self.broker.count(queues["outbox"])
            run.seconds = o.waiting_seconds
            run.messages = counter.count
        finally:
            await self.broker.stopCounting(channel)
            await self.stopMqtwist(started)
            await self.deleteQueues(queues)
        return run


def makeDKIM(directory: str) -> dict[str, Any]:
    """
    A 2048-bit RSA key, made for this run, as the C{dkim} object of every
    job (the public half is saved next to it, for checking by hand).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    with open(os.path.join(directory, "dkim-public.der"), "wb") as f:
        f.write(public)
    return {"domain": "example.org", "selector": "bench", "key": pem}


def templateBodies(path: str, count: int, *, prefix: str, dkim: dict[str, Any] | None) -> Any:
    """
    The JSON bodies of C{count} jobs made from the job in the file C{path}:
    each with an id, envelope and recipient of its own (a personalization
    template sees them as C{{$recipient}}), and C{dkim} when given.
    """
    with open(path, encoding="utf-8") as f:
        template = json.load(f)
    for number in range(count):
        job = dict(template, id=f"{prefix}-{number}", envelope="sender@example.org",
                   recipient=f"rcpt{number}@example.com")
        if dkim is not None:
            job["dkim"] = dkim
        yield json.dumps(job).encode("utf-8")


def parseArguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 bench/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=50_000, help="messages per throughput run (default: %(default)s)")
    p.add_argument("--size", type=int, default=5000, help="message size in bytes (default: %(default)s)")
    p.add_argument("--dkim", action="store_true",
                   help="every job asks to be DKIM-signed with a 2048-bit RSA key made for the run")
    p.add_argument("--job-template", metavar="FILE",
                   help="a JSON outbox job that every message copies, with an id, envelope and recipient "
                   "of its own (--size is ignored), e.g. the data + inlinecss job bench/inlinecss.py "
                   "--write-job writes")
    p.add_argument("--repeat", type=int, default=2, help="runs of each throughput configuration (default: %(default)s)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated, from: " + ", ".join(SCENARIOS) + " (default: all)")
    p.add_argument("--source-sessions", type=int, default=20,
                   help="parallel smtp-source sessions injecting into Postfix (default: %(default)s)")
    p.add_argument("--delay-ms", type=float, default=20,
                   help="reply delay of the round-trip test (default: %(default)s)")
    p.add_argument("--delay-count", type=int, default=600, help="messages per round-trip run (default: %(default)s)")
    p.add_argument("--delay-connections", type=int, default=2,
                   help="--max-connections-per-destination in the round-trip test (default: %(default)s)")
    p.add_argument("--delay-repeat", type=int, default=1,
                   help="runs of each round-trip configuration (default: %(default)s)")
    p.add_argument("--waiting", type=int, default=100_000,
                   help="messages in the outbox for the memory test (default: %(default)s)")
    p.add_argument("--waiting-seconds", type=float, default=30,
                   help="seconds of consuming before the memory test reads RSS (default: %(default)s)")
    p.add_argument("--profile-seconds", type=float, default=20, help="py-spy sampling time (default: %(default)s)")
    p.add_argument("--stall-timeout", type=float, default=60,
                   help="seconds without progress before a run is given up (default: %(default)s)")
    p.add_argument("--tree", default=REPOSITORY,
                   help="the mqtwist source tree the twistd processes run (default: this checkout); "
                   "e.g. an export of a commit: git archive COMMIT | tar -x -C DIR")
    p.add_argument("--mqtwist-args", default="",
                   help="more options for every twistd mqtwist process, e.g. '--destination-backlog 100'")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=[TREE][::ARGS]",
                   help="repeatable: measure this variant in the throughput scenarios (mqtwist-1, mqtwist-n), "
                   "taking turns with the others in every round; TREE is a source tree (default: --tree), "
                   "ARGS more twistd mqtwist options for it (after --mqtwist-args); the report gives each "
                   "variant's runs, median, CPU per message and ratio to the first variant. The other "
                   "scenarios run the first variant. E.g. --compare before=/tmp/mqtwist-31c10b7 "
                   "--compare after=. or --compare p200= --compare 'p500=::--prefetch 500'")
    p.add_argument("--note", default="", help="a remark for the report, e.g. what else ran on the machine")
    p.add_argument("--name", default=None, help="name of the results files (default: derived from the options)")
    p.add_argument("--results-dir", default=os.path.join(REPOSITORY, "bench", "results"))
    o = p.parse_args(argv)
    o.scenarios = [s.strip() for s in o.scenarios.split(",") if s.strip()]
    unknown = set(o.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    if o.count < 1 or o.repeat < 1 or o.delay_connections < 1:
        p.error("--count, --repeat and --delay-connections must be at least 1")
    try:
        o.variants = [parseVariant(text, o.tree) for text in o.compare] or [Variant("", os.path.abspath(o.tree))]
    except ValueError as e:
        p.error(str(e))
    names = [v.name for v in o.variants]
    if len(set(names)) != len(names):
        p.error(f"--compare: each variant needs a name of its own, not {', '.join(names)}")
    if o.name is None:
        o.name = (os.path.splitext(os.path.basename(o.job_template))[0] if o.job_template
                  else f"{o.size // 1000}k") + ("-dkim" if o.dkim else "")
        if o.compare:
            o.name += "-" + "-vs-".join(names)
    return o


async def main(reactor: Any, argv: list[str]) -> None:
    options = parseArguments(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    bench = Bench(reactor, options)
    started = datetime.datetime.now(datetime.UTC)
    try:
        await bench.setUp()
        machine = await report.machine(reactor, options.variants[0].tree)
        variants = [dict(asdict(v), commit=await report.describeTree(reactor, v.tree)) for v in options.variants]
        await bench.execute()
    finally:
        await bench.tearDown()
    os.makedirs(options.results_dir, exist_ok=True)
    stem = os.path.join(options.results_dir, f"{options.name}-{bench.stamp}")
    data = {
        "started": started.isoformat(timespec="seconds"),
        "options": {k: v for k, v in vars(options).items() if k not in ("results_dir", "variants")},
        "machine": machine,
        "variants": variants,
        "runs": [dict(asdict(run), rate=run.rate) for run in bench.runs],
    }
    if options.compare:
        data["comparison"] = report.comparison(data)
    with open(stem + ".json", "w") as f:
        json.dump(data, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(report.markdown(data))
    sys.stdout.write(f"results: {stem}.md and .json\n")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
