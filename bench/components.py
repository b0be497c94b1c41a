"""
The programs a benchmark run starts and watches: Postfix's smtp-sink, the
delaying relay, a private Postfix relay instance, C{twistd mqtwist}
processes, and what /proc says about their memory and CPU time.

Every program runs on 127.0.0.1 only, on free ports, with its files under
the run's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from typing import Any

from twisted.internet import defer, error, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POSTFIX_INSTALL = (
    "install it with: echo 'postfix postfix/main_mailer_type select No configuration' "
    "| debconf-set-selections && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"
)


class BenchError(Exception):
    """A benchmark step could not be done; the message says which and why."""


def workDirectory(prefix: str) -> str:
    """
    A new temporary directory for one invocation's files, which the private
    RabbitMQ node can enter (it runs as user rabbitmq when we are root).
    """
    directory = tempfile.mkdtemp(prefix=prefix)
    os.chmod(directory, 0o755)
    return directory


def freePort() -> int:
    """
    @return: a TCP port of 127.0.0.1 that was free a moment ago (for
        programs that need a number on their command line).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requireProgram(name: str, hint: str) -> str:
    """
    @return: the path of program C{name}.
    @raise BenchError: it is not installed; the message says how to install it.
    """
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise BenchError(f"the benchmark needs {name!r}, which is not installed: {hint}")
    return path


class Program(protocol.ProcessProtocol):
    """
    One child process: keeps its output, fires C{ended} when it exits.
    """

    log = Logger()

    def __init__(self, name: str, reactor: Any, keepBytes: int = 1 << 20) -> None:
        self.name = name
        self.reactor = reactor
        self.output = bytearray()
        self.keepBytes = keepBytes
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._watchers: list[tuple[bytes, defer.Deferred[None]]] = []

    @property
    def pid(self) -> int:
        return self.transport.pid

    def start(self, argv: list[str], *, env: dict[str, str] | None = None, path: str | None = None) -> Program:
        self.argv = argv
        self.reactor.spawnProcess(self, argv[0], argv, env=env if env is not None else dict(os.environ), path=path)
        return self

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if len(self.output) > self.keepBytes:
            del self.output[: len(self.output) - self.keepBytes]
        for watcher in list(self._watchers):
            if watcher[0] in self.output:
                self._watchers.remove(watcher)
                watcher[1].callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        for _, d in self._watchers:
            d.errback(BenchError(f"{self.name} exited ({reason.getErrorMessage()}) "
                                 f"before it was ready; its output:\n{self.tail()}"))
        self._watchers = []
        self.ended.callback(None)

    def tail(self, size: int = 3000) -> str:
        return bytes(self.output[-size:]).decode("utf-8", "replace")

    def waitFor(self, text: bytes, timeout: float) -> defer.Deferred[None]:
        """
        @return: a Deferred that fires when C{text} has appeared in the
            output, or fails with L{BenchError} after C{timeout} seconds or
            when the process exits.
        """
        d: defer.Deferred[None] = defer.Deferred()
        if text in self.output:
            d.callback(None)
            return d
        self._watchers.append((text, d))

        def late(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                raise BenchError(
                    f"{self.name} did not print {text!r} within {timeout:g} s; its output:\n{self.tail()}"
                )
            return failure

        return d.addTimeout(timeout, self.reactor).addErrback(late)

    async def stop(self, signal: str = "TERM", timeout: float = 30.0) -> None:
        """Send C{signal}, then KILL after C{timeout} seconds; returns once the process is gone."""
        if self.ended.called:
            return
        try:
            self.transport.signalProcess(signal)
        except error.ProcessExitedAlready:
            return
        killer = self.reactor.callLater(timeout, self._kill)
        await self.ended
        if killer.active():
            killer.cancel()

    def _kill(self) -> None:
        self.log.warn("{name} did not stop: killing it", name=self.name)
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass


class ProcessStats:
    """
    Memory and CPU time of one process, read from /proc (Linux).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpuSeconds(self) -> float:
        """user + system CPU seconds used so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            # the command name in field 2 may contain spaces: split after it
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def memory(self) -> dict[str, int]:
        """C{VmRSS} and C{VmHWM} (peak RSS) in bytes."""
        found = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024
        return found


def cpuModel() -> str:
    """The processor's model name (from /proc/cpuinfo), or C{"unknown"}."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


def machineCPUSeconds() -> float:
    """Busy CPU seconds of the whole machine so far, all cores (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


class SmtpSink:
    """
    Postfix's C{smtp-sink}: accepts every message and throws it away.
    """

    def __init__(self, reactor: Any, *, pipelining: bool = True) -> None:
        self.reactor = reactor
        self.pipelining = pipelining
        self.port = 0
        self.program: Program | None = None

    async def start(self) -> int:
        """@return: (a coroutine returning) the port it listens on."""
        sink = requireProgram("smtp-sink", POSTFIX_INSTALL)
        self.port = freePort()
        argv = [sink]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to run as root
        if not self.pipelining:
            argv.append("-p")
        argv += [f"127.0.0.1:{self.port}", "1024"]
        name = "smtp-sink" + ("" if self.pipelining else " -p")
        self.program = Program(name, self.reactor).start(argv)
        await waitForPort(self.reactor, self.port, 10, name, self.program)
        return self.port

    async def stop(self) -> None:
        if self.program is not None:
            await self.program.stop()


class DelayProxy:
    """
    C{bench/delayproxy.py} in front of a server: its replies arrive
    C{delay} seconds late.
    """

    def __init__(self, reactor: Any, targetPort: int, delay: float) -> None:
        self.reactor = reactor
        self.targetPort = targetPort
        self.delay = delay
        self.port = 0
        self.program: Program | None = None

    async def start(self) -> int:
        script = os.path.join(REPOSITORY, "bench", "delayproxy.py")
        self.program = Program(f"delay proxy to {self.targetPort}", self.reactor)
        self.program.start([sys.executable, script, "0", str(self.targetPort), str(self.delay)])
        await self.program.waitFor(b"\n", 20)
        self.port = int(bytes(self.program.output).split()[2])
        return self.port

    async def stop(self) -> None:
        if self.program is not None:
            await self.program.stop()


async def waitForPort(reactor: Any, port: int, timeout: float, what: str, program: Program | None = None) -> None:
    """
    Wait until C{what} (a program, when given) accepts connections on
    127.0.0.1:C{port}.
    """
    deadline = reactor.seconds() + timeout
    while True:
        if program is not None and program.ended.called:
            raise BenchError(f"{what} exited at start; its output:\n{program.tail()}")
        try:
            factory = protocol.Factory.forProtocol(protocol.Protocol)
            connected = await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2).connect(factory)
        except error.ConnectError:
            if reactor.seconds() > deadline:
                raise BenchError(f"{what} is not listening on port {port} after {timeout:g} s") from None
            await task.deferLater(reactor, 0.1, lambda: None)
        else:
            connected.transport.abortConnection()
            return


class PostfixRelay:
    """
    A private Postfix instance (its own configuration and queue directories
    under C{directory}) that relays everything it receives on its own
    loopback port to C{[127.0.0.1]:relayPort}, without DNS.
    """

    def __init__(self, reactor: Any, directory: str, relayPort: int, *, settings: tuple[str, ...] = ()) -> None:
        """
        @param settings: more C{main.cf} lines (C{bench/submission.py}
            holds every message with one, so that Postfix only queues).
        """
        self.reactor = reactor
        self.settings = settings
        self.directory = directory
        self.configDir = os.path.join(directory, "etc")
        self.queueDir = os.path.join(directory, "queue")
        self.maillog = os.path.join(directory, "maillog")
        self.relayPort = relayPort
        self.port = 0
        self.started = False

    async def start(self) -> int:
        """@return: (a coroutine returning) the port of its SMTP server."""
        requireProgram("postfix", POSTFIX_INSTALL)
        if os.geteuid() != 0:
            raise BenchError("the Postfix reference needs root (Postfix's master runs as root); "
                             "run the benchmark as root or leave out the postfix scenario")
        self.port = freePort()
        dataDir = os.path.join(self.directory, "data")
        for d in (self.configDir, self.queueDir, dataDir):
            os.makedirs(d, exist_ok=True)
        shutil.chown(dataDir, "postfix")
        os.chmod(self.directory, 0o755)
        shutil.copy("/usr/share/postfix/master.cf.dist", os.path.join(self.configDir, "master.cf"))
        with open(os.path.join(self.configDir, "main.cf"), "w") as f:
            f.write(
                "compatibility_level = 3.6\n"
                f"queue_directory = {self.queueDir}\n"
                f"data_directory = {dataDir}\n"
                "mail_owner = postfix\n"
                "setgid_group = postdrop\n"
                "myhostname = relay.bench.invalid\n"
                "mydomain = bench.invalid\n"
                "mydestination =\n"
                "inet_interfaces = 127.0.0.1\n"
                "inet_protocols = ipv4\n"
                "mynetworks = 127.0.0.0/8\n"
                f"relayhost = [127.0.0.1]:{self.relayPort}\n"
                "smtpd_relay_restrictions = permit_mynetworks, reject\n"
                "smtp_dns_support_level = disabled\n"
                "smtp_tls_security_level = none\n"
                "smtpd_tls_security_level = none\n"
                f"maillog_file = {self.maillog}\n"
                f"maillog_file_prefixes = {self.directory}\n"
                "alias_maps =\n"
                "alias_database =\n"
                "local_recipient_maps =\n"
                "biff = no\n"
                "append_dot_mydomain = no\n"
                + "".join(line + "\n" for line in self.settings)
            )
        await self._run("postconf", "-c", self.configDir, "-F", "*/*/chroot = n")
        await self._run("postconf", "-c", self.configDir, "-M",
                        f"smtp/inet=127.0.0.1:{self.port} inet n - n - - smtpd")
        await self._run("postfix", "-c", self.configDir, "start")
        self.started = True
        await waitForPort(self.reactor, self.port, 30, "Postfix's smtpd")
        return self.port

    async def _run(self, command: str, *args: str) -> str:
        path = requireProgram(command, POSTFIX_INSTALL)
        out, err, code = await getProcessOutputAndValue(path, args, env=dict(os.environ), reactor=self.reactor)
        if code != 0:
            log = ""
            if os.path.exists(self.maillog):
                with open(self.maillog, errors="replace") as f:
                    log = f.read()[-2000:]
            raise BenchError(f"'{command} {' '.join(args)}' exited with {code}: "
                             f"{(out + err).decode(errors='replace')}\n{log}")
        return out.decode(errors="replace")

    def queuedFiles(self) -> int:
        """How many messages are in the queue (incoming, active, deferred, maildrop, hold)."""
        count = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(self.queueDir, sub)):
                count += len(files)
        return count

    def logCount(self, text: str) -> int:
        """How many lines of the mail log contain C{text}."""
        if not os.path.exists(self.maillog):
            return 0
        with open(self.maillog, errors="replace") as f:
            return sum(1 for line in f if text in line)

    async def stop(self) -> None:
        if self.started:
            self.started = False
            await self._run("postfix", "-c", self.configDir, "stop")


def twistdArgv(arguments: list[str]) -> list[str]:
    """The command line of C{twistd -n mqtwist ARGUMENTS} with this Python."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "mqtwist", *arguments]


def twistdEnvironment(tree: str) -> dict[str, str]:
    """The environment for C{twistd}: the mqtwist of source tree C{tree} first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(tree) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
