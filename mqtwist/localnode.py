"""
A private RabbitMQ node run from the Debian C{rabbitmq-server} package.

C{twistd mqtwist} starts one when no broker URL is given, and the test suite
starts one per session.  The node keeps everything (queues, logs, Erlang
cookie, feature flags) in its own data directory and listens on its own
ports, so it never touches a system-wide RabbitMQ.  Settings for the node can
be put in C{DATA/rabbitmq.conf} and C{DATA/advanced.config}.

Started as root, the node runs as the C{rabbitmq} system user (like Debian's
own wrapper does), so its data directory belongs to that user.  The server is
started through C{setpriv --pdeathsig TERM}: if this process dies without
stopping the node, the node is told to shut down all the same.

The node, and each C{rabbitmqctl}, runs in a session (and process group) of
its own (C{setsid}): a Ctrl-C in the terminal that runs this process, which
signals the terminal's foreground process group, reaches this process only,
which settles what it is doing before it stops the node.

One node at a time runs on a data directory: the node's processes and this
process hold an exclusive lock on C{DATA/mqtwist.lock} for as long as the
node runs (also after this process dies, until the node has stopped), and a
second start on the directory fails at once, before it changes anything in
it.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import tempfile
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, error, protocol, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwist.amqp.url import BrokerURL

INSTALL_HINT = (
    "install it with 'apt-get install rabbitmq-server', "
    "or give the URL of a running broker with --amqp amqp://..."
)


# rabbitmqctl's own Erlang node listens on the first free port of this range
# (RabbitMQ's default CTL_DIST_PORT_MIN..MAX): a port picked for a node in it
# is taken by any rabbitmqctl that starts before the node binds it, and the
# node then fails to start
RABBITMQCTL_DIST_PORTS = range(35672, 35683)

COOKIE_FILE = ".erlang.cookie"

#: the lock of a data directory, in it; it says which process started the
#: node, and the node's AMQP address, as a JSON object
LOCK_FILE = "mqtwist.lock"

# the node's file descriptor of the lock: its processes share the lock with
# this one, so that it is held until they have all ended
_NODE_LOCK_FD = 3

# The Erlang distribution (the node's RABBITMQ_DIST_PORT, and the port of
# each rabbitmqctl's own hidden node) listens on every interface unless told
# otherwise, and anyone who reaches it with the cookie controls the node:
# only rabbitmqctl, on this machine, talks to it, so loopback it is.  This is
# the kernel parameter that RabbitMQ's 'distribution.listener.interface' maps
# to (RabbitMQ's Networking guide); it binds the listener only, so
# rabbitmqctl still connects to the node (named @localhost) over loopback.
# A 'distribution.listener.interface' in DATA/rabbitmq.conf still wins.
DIST_INTERFACE_ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"

# epmd (port 4369) listens where ERL_EPMD_ADDRESS says (plus loopback, always:
# epmd(1)) when the node, or a rabbitmqctl, is the one that starts it.  An
# epmd that already runs, started for another node, keeps its own addresses:
# it is shared by every Erlang node of the machine, and stays up after ours
# stops.
EPMD_ADDRESS = "127.0.0.1"


class RabbitMQNotInstalled(Exception):
    """
    The programs of the C{rabbitmq-server} package (or C{setpriv}) are
    missing.
    """


class RabbitMQStartFailed(Exception):
    """
    The node did not start (also when another node runs on its data
    directory), or a C{rabbitmqctl} command failed.
    """


class RabbitMQEnded(Exception):
    """
    The node ended without being asked to stop: its Erlang VM crashed or
    was killed.  The message names the node, how its server process ended
    and where its log is.

    @ivar output: the last lines the node printed.
    """

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


class _ServerProcess(protocol.ProcessProtocol):
    """
    Keeps the last lines the server printed, for error messages, and fires
    C{ended} with the exit reason (L{error.ProcessDone} or
    L{error.ProcessTerminated}).

    @ivar endReason: once it ended, how (what C{ended} fires with).
    @ivar up: whether the node answered after its start.
    @ivar stopRequested: whether L{LocalRabbitMQ.stop} told it to stop.
    @ivar unexpectedEnd: once it ended on its own, why.
    """

    def __init__(self, tailBytes: int = 8192) -> None:
        self.ended: defer.Deferred[BaseException] = defer.Deferred()
        self.endReason: BaseException | None = None
        self.up = False
        self.stopRequested = False
        self.unexpectedEnd: RabbitMQEnded | None = None
        self._tail: collections.deque[bytes] = collections.deque()
        self._tailBytes = tailBytes
        self._size = 0

    def outReceived(self, data: bytes) -> None:
        self._tail.append(data)
        self._size += len(data)
        while self._size > self._tailBytes and len(self._tail) > 1:
            self._size -= len(self._tail.popleft())

    errReceived = outReceived

    def tail(self) -> str:
        return b"".join(self._tail).decode("utf-8", "replace")

    def processEnded(self, reason: Failure) -> None:
        self.endReason = reason.value
        # the exception as a value: given the Failure itself, the Deferred
        # would skip every callback for its errbacks
        self.ended.callback(reason.value or Exception("the process ended"))


class LocalRabbitMQ:
    """
    One private RabbitMQ node.

    @ivar url: the broker URL of the node (port 0 is replaced by the port
        picked in L{start}).
    """

    log = Logger()

    def __init__(
        self,
        dataDir: str,
        *,
        amqpPort: int = 0,
        distPort: int = 0,
        nodeName: str | None = None,
        interface: str = "127.0.0.1",
        user: str = "rabbitmq",
        startTimeout: float = 120.0,
        stopTimeout: float = 60.0,
        niceness: int = 0,
        rabbitmqBin: str = "/usr/lib/rabbitmq/bin",
        reactor: Any = None,
    ) -> None:
        """
        @param dataDir: where the node keeps its state; created if missing.
            Starting again on the same directory keeps durable queues and
            their messages.
        @param amqpPort: AMQP port; 0 picks a free one at start.
        @param distPort: Erlang distribution port (for C{rabbitmqctl}); 0
            picks a free one at start.
        @param nodeName: Erlang node name; by default one derived from
            C{dataDir}, so that a restart finds its own data again and two
            data directories never clash.
        @param interface: address the AMQP listener binds to.
        @param user: system user the node runs as when started as root.
        @param startTimeout: seconds the node may take to start.
        @param stopTimeout: seconds the node may take to stop before it is
            killed.
        @param niceness: the node's CPU scheduling priority (C{nice}, -20 to
            19; below 0 only as root): above 0 the node yields the CPU to
            processes of the default priority, such as mqtwist.
        @param rabbitmqBin: directory of C{rabbitmq-server} and
            C{rabbitmqctl} (without Debian's C{su} wrappers).
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.dataDir = os.path.abspath(dataDir)
        self.nodeName = nodeName or (
            "mqtwist-"
            + hashlib.sha1(self.dataDir.encode()).hexdigest()[:10]
            + "@localhost"
        )
        self._amqpPort = amqpPort
        self._distPort = distPort
        self._interface = interface
        self._user = user
        self._startTimeout = startTimeout
        self._stopTimeout = stopTimeout
        if not -20 <= niceness <= 19:
            raise ValueError(f"niceness {niceness} is out of range: give -20 to 19")
        self._niceness = niceness
        self._server = os.path.join(rabbitmqBin, "rabbitmq-server")
        self._ctl = os.path.join(rabbitmqBin, "rabbitmqctl")
        self._process: _ServerProcess | None = None
        #: this process's descriptor of the data directory's lock, from the
        #: start until the node has ended
        self._lockFd: int | None = None
        self.url = BrokerURL(host=interface, port=amqpPort)

    # -- start -------------------------------------------------------------

    def start(self) -> defer.Deferred[BrokerURL]:
        """
        Start the node and wait until it accepts AMQP connections.

        @return: a Deferred that fires with the L{BrokerURL} of the node
            (user guest, vhost C{/}), or errbacks with
            L{RabbitMQNotInstalled}, or with L{RabbitMQStartFailed} carrying
            the node's last output and where its log is, or saying that a
            node already runs on the data directory (which is then left
            untouched).
        """
        return defer.ensureDeferred(self._start())

    async def _start(self) -> BrokerURL:
        if self._process is not None:
            raise RabbitMQStartFailed(f"RabbitMQ node {self.nodeName} is already running")
        self._checkInstalled()
        self._lockFd = self._lockDataDirectory()
        try:
            process = await self._spawnServer()
        except BaseException:
            self._unlock()
            raise
        self._process = process
        process.ended.addCallback(self._serverEnded, process)
        try:
            await self._awaitStartup(process)
        except BaseException:
            await self.stop()
            raise
        process.up = True
        self.log.info("RabbitMQ node {node} is up", node=self.nodeName)
        return self.url

    async def _spawnServer(self) -> _ServerProcess:
        """
        Prepare the locked data directory, pick the ports and start the
        server, which shares the lock.

        @return: the server's L{_ServerProcess}.
        """
        self._prepareDirectory()
        if self._amqpPort == 0:
            self._amqpPort = await self._freePort()
        if self._distPort == 0:
            self._distPort = await self._freePort()
        self._recordLockHolder()
        self.url = BrokerURL(host=self._interface, port=self._amqpPort)
        self.log.info(
            "starting private RabbitMQ node {node} on {url} (data in {dataDir})",
            node=self.nodeName,
            url=self.url.redacted(),
            dataDir=self.dataDir,
        )
        process = _ServerProcess()
        argv = self._nodeCommand(self._server)
        if self._niceness:
            # set before the node's first thread starts: every thread
            # inherits it (a renice afterwards would miss the running ones)
            argv = [self._tool("nice", "coreutils"), "-n", str(self._niceness), *argv]
        self._reactor.spawnProcess(
            process, argv[0], argv, env=self._environment(), path=self.dataDir,
            childFDs={0: "w", 1: "r", 2: "r", _NODE_LOCK_FD: self._lockFd},
        )
        return process

    def _checkInstalled(self) -> None:
        for program in (self._server, self._ctl):
            if not os.access(program, os.X_OK):
                raise RabbitMQNotInstalled(
                    f"cannot start a private RabbitMQ node: {program} is "
                    f"missing (package rabbitmq-server not installed?); "
                    + INSTALL_HINT
                )
        for tool in ("setsid", "setpriv"):
            self._tool(tool, "util-linux")

    @staticmethod
    def _tool(name: str, package: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise RabbitMQNotInstalled(
                f"cannot start a private RabbitMQ node: {name} is missing "
                f"(install {package}), or give the URL of a running broker "
                f"with --amqp amqp://..."
            )
        return path

    def _nodeCommand(self, program: str, *args: str) -> list[str]:
        """
        The command line that runs a program of the node (the server or
        C{rabbitmqctl}): in a session of its own, as the node's user, told
        to end when this process does.
        """
        # A session of its own, and so a process group of its own: a
        # terminal's Ctrl-C signals the foreground process group, and a node
        # in ours would stop at once, while deliveries in flight still have
        # results to publish.  setsid execs in place (the process a reactor
        # spawns leads no process group, so setsid need not fork): the pid
        # stays that of the server, which signals reach.
        argv = [self._tool("setsid", "util-linux"), self._tool("setpriv", "util-linux")]
        if os.geteuid() == 0:
            argv += ["--reuid", self._user, "--regid", self._user, "--init-groups"]
        # TERM on our death: the node then shuts down cleanly on its own
        return argv + ["--pdeathsig", "TERM", "--", program, *args]

    def _lockDataDirectory(self) -> int:
        """
        Lock the data directory for the node about to start, creating the
        directory if need be.

        @return: the lock's file descriptor (close-on-exec).
        @raise RabbitMQStartFailed: when another node holds the lock (or the
            lock file cannot be opened); nothing in the directory was
            changed.
        """
        path = os.path.join(self.dataDir, LOCK_FILE)
        try:
            os.makedirs(self.dataDir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RabbitMQStartFailed(
                f"cannot start private RabbitMQ node {self.nodeName}: cannot open {path}, "
                f"the lock of its data directory ({e.strerror}): choose a data directory "
                f"this user can write to (--broker-dir)"
            ) from e
        try:
            # flock, not fcntl's record locks: it belongs to the open file,
            # which the node's processes inherit, and so outlives this process
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _readLockHolder(fd)
            os.close(fd)
            raise RabbitMQStartFailed(self._alreadyRunning(holder)) from None
        return fd

    def _alreadyRunning(self, holder: dict[str, Any]) -> str:
        pid = holder.get("pid")
        host, port = holder.get("host"), holder.get("port")
        found = f"a node already runs on its data directory {self.dataDir}"
        if isinstance(pid, int):
            if _processExists(pid):
                found += f", started by process {pid}"
            else:
                found += (
                    f", started by process {pid}, which has ended: that node stops on "
                    f"its own within seconds (else stop its Erlang VM, whose pid is in "
                    f"{os.path.join(self.dataDir, 'rabbitmq.pid')})"
                )
        share = "give --amqp with that node's URL"
        if isinstance(host, str) and isinstance(port, int):
            found += f", with AMQP on {host}:{port}"
            share = f"give --amqp amqp://guest:guest@{host}:{port}/"
        return (
            f"private RabbitMQ node {self.nodeName} was not started: {found}. Nothing "
            f"in that directory was changed. To run a second mqtwist beside the first, "
            f"give it a data directory and an AMQP port of its own (--broker-dir DIR "
            f"--broker-port PORT), or {share} to share the running node; from the same "
            f"working directory, also a delivery journal of its own (--delivery-journal FILE)"
        )

    def _recordLockHolder(self) -> None:
        # for the message of a second start: who runs the node, and where
        assert self._lockFd is not None
        record = json.dumps({"pid": os.getpid(), "host": self._interface, "port": self._amqpPort})
        os.ftruncate(self._lockFd, 0)
        os.pwrite(self._lockFd, record.encode() + b"\n", 0)

    def _unlock(self) -> None:
        """
        Let go of this process's share of the data directory's lock (the
        node's processes keep theirs until they end).
        """
        if self._lockFd is not None:
            os.close(self._lockFd)
            self._lockFd = None

    def _prepareDirectory(self) -> None:
        owner = pwd.getpwnam(self._user) if os.geteuid() == 0 else None
        if owner is not None:
            self._checkReachable(owner)
        enabledPlugins = os.path.join(self.dataDir, "enabled_plugins")
        if not os.path.exists(enabledPlugins):
            # no plugins: the management plugin alone doubles the start time
            with open(enabledPlugins, "w") as f:
                f.write("[].\n")
        self._writeCookie()
        if owner is not None:
            for directory, _, files in os.walk(self.dataDir):
                for path in [directory] + [os.path.join(directory, f) for f in files]:
                    os.lchown(path, owner.pw_uid, owner.pw_gid)

    def _writeCookie(self) -> None:
        # Left to Erlang, the node's VMs and the rabbitmqctl that polls it
        # race to create the cookie, and a VM that reads it between another
        # one's create and chmod 0400 refuses it ("must be accessible by
        # owner only"): if that VM is the node, the node does not start.
        # Erlang also derives its cookie from the clock; this one is random.
        path = os.path.join(self.dataDir, COOKIE_FILE)
        if os.path.lexists(path):
            return
        fd, temporary = tempfile.mkstemp(prefix=COOKIE_FILE + "-", dir=self.dataDir)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(20))
        os.chmod(temporary, 0o400)
        # renamed into place whole: no VM ever sees it empty or half-written
        os.rename(temporary, path)

    def _checkReachable(self, owner: pwd.struct_passwd) -> None:
        directory = os.path.dirname(self.dataDir)
        while True:
            st = os.stat(directory)
            if not (st.st_mode & stat.S_IXOTH or st.st_uid == owner.pw_uid):
                raise RabbitMQStartFailed(
                    f"the RabbitMQ node runs as user {self._user!r}, who "
                    f"cannot enter {directory} (mode {stat.filemode(st.st_mode)}) "
                    f"to reach its data directory {self.dataDir}: choose a "
                    f"data directory that user can reach, or 'chmod o+x "
                    f"{directory}'"
                )
            parent = os.path.dirname(directory)
            if parent == directory:
                return
            directory = parent

    def _environment(self) -> dict[str, str]:
        d = self.dataDir
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            # the Erlang cookie lives in $HOME: one private cookie per node
            "HOME": d,
            "RABBITMQ_NODENAME": self.nodeName,
            "RABBITMQ_NODE_IP_ADDRESS": self._interface,
            "RABBITMQ_NODE_PORT": str(self._amqpPort),
            "RABBITMQ_DIST_PORT": str(self._distPort),
            # the distribution and epmd on loopback only: see
            # DIST_INTERFACE_ERL_ARGS and EPMD_ADDRESS
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": DIST_INTERFACE_ERL_ARGS,
            "RABBITMQ_CTL_ERL_ARGS": DIST_INTERFACE_ERL_ARGS,
            "ERL_EPMD_ADDRESS": EPMD_ADDRESS,
            "RABBITMQ_MNESIA_BASE": os.path.join(d, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(d, "log"),
            "RABBITMQ_FEATURE_FLAGS_FILE": os.path.join(d, "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": os.path.join(d, "plugins-expand"),
            "RABBITMQ_PID_FILE": os.path.join(d, "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d, "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(d, "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(d, "rabbitmq-env.conf"),
            "ERL_CRASH_DUMP": os.path.join(d, "erl_crash.dump"),
        }

    async def _freePort(self) -> int:
        factory = protocol.Factory()
        factory.noisy = False
        # a port refused stays bound until a good one is found, so that the
        # next pick cannot return it again
        picked: list[Any] = []
        while not picked or picked[-1].getHost().port in RABBITMQCTL_DIST_PORTS:
            picked.append(self._reactor.listenTCP(0, factory, interface=self._interface))
        number: int = picked[-1].getHost().port
        await defer.gatherResults([port.stopListening() for port in picked])
        return number

    async def _awaitStartup(self, process: _ServerProcess) -> None:
        deadline = self._reactor.seconds() + self._startTimeout
        lastAnswer = "nothing yet"
        while True:
            remaining = int(deadline - self._reactor.seconds())
            if process.endReason is not None:
                raise self._startFailed(process, _howItEnded(process.endReason))
            if remaining <= 0:
                # the node may well be up and only unreachable for
                # rabbitmqctl (e.g. epmd was restarted under it): say why
                raise self._startFailed(
                    process,
                    f"it did not start within {self._startTimeout:g} s; the "
                    f"last answer of rabbitmqctl was: {lastAnswer}",
                )
            try:
                await self.rabbitmqctl("await_startup", "--timeout", str(remaining))
            except RabbitMQStartFailed as e:
                # 'await_startup' gives up at once while the node has not
                # registered with epmd yet: ask again shortly
                lastAnswer = str(e)
                await task.deferLater(self._reactor, 0.5, lambda: None)
            else:
                return

    def _startFailed(self, process: _ServerProcess, why: str) -> RabbitMQStartFailed:
        return RabbitMQStartFailed(
            f"private RabbitMQ node {self.nodeName} did not start: {why}. "
            f"Its log is in {os.path.join(self.dataDir, 'log')}; its last "
            f"output:\n{process.tail()}"
        )

    def _serverEnded(self, reason: BaseException, process: _ServerProcess) -> BaseException:
        if self._process is process:
            self._process = None
            self._unlock()
        if process.stopRequested:
            self.log.info("RabbitMQ node {node} stopped", node=self.nodeName)
            return reason
        # The start script exits when its Erlang VM ends, killed or not,
        # most often with status 0: that status says nothing of the node.
        process.unexpectedEnd = RabbitMQEnded(
            f"private RabbitMQ node {self.nodeName} ended unexpectedly, "
            f"without being asked to stop ({_howItEnded(reason)}: its Erlang "
            f"VM ended, crashed or killed). Its log is in "
            f"{os.path.join(self.dataDir, 'log')}",
            process.tail(),
        )
        # an end during the start is reported by start()'s error instead
        if process.up:
            self.log.error(
                "{error}; its last output:\n{output}",
                error=process.unexpectedEnd,
                output=process.unexpectedEnd.output,
            )
        return reason

    def whenEnded(self) -> defer.Deferred[None]:
        """
        Wait for the end of the running node.

        @return: a Deferred that fires with C{None} once the node has been
            stopped by L{stop} (at once if no node is running), or errbacks
            with L{RabbitMQEnded} when it ends without being asked to (its
            Erlang VM crashed or was killed; also when that happens during
            L{start}, which then errbacks with L{RabbitMQStartFailed}).
        """
        process = self._process
        if process is None:
            return defer.succeed(None)
        ended: defer.Deferred[None] = defer.Deferred()

        def report(reason: BaseException) -> BaseException:
            if process.unexpectedEnd is None:
                ended.callback(None)
            else:
                ended.errback(process.unexpectedEnd)
            return reason

        # after _serverEnded, which was added at the start
        process.ended.addCallback(report)
        return ended

    # -- commands ----------------------------------------------------------

    def rabbitmqctl(self, *args: str) -> defer.Deferred[str]:
        """
        Run C{rabbitmqctl -n NODE ARGS...} against this node.

        @return: a Deferred that fires with the command's standard output,
            or errbacks with L{RabbitMQStartFailed} naming the command, its
            exit code and its output when it exits with an error.
        """
        self._checkInstalled()
        argv = self._nodeCommand(self._ctl, "-n", self.nodeName, *args)
        d = getProcessOutputAndValue(
            argv[0], argv[1:], env=self._environment(), path=self.dataDir,
            reactor=self._reactor,
        )

        def check(result: tuple[bytes, bytes, int]) -> str:
            out, err, code = result
            if code != 0:
                raise RabbitMQStartFailed(
                    f"'rabbitmqctl -n {self.nodeName} {' '.join(args)}' exited "
                    f"with {code}: {(out + err).decode('utf-8', 'replace').strip()}"
                )
            return out.decode("utf-8", "replace")

        checked: defer.Deferred[str] = d.addCallback(check)
        return checked

    # -- stop --------------------------------------------------------------

    def stop(self) -> defer.Deferred[None]:
        """
        Stop the node: SIGTERM, which RabbitMQ answers with a clean
        shutdown; after C{stopTimeout} seconds the Erlang VM is killed.

        @return: a Deferred that fires with C{None} once the node has
            exited (at once if it is not running).
        """
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        self.log.info("stopping RabbitMQ node {node}", node=self.nodeName)
        process.stopRequested = True
        self._signal(process, "TERM")
        killer = self._reactor.callLater(self._stopTimeout, self._kill, process)
        await process.ended
        if killer.active():
            killer.cancel()

    def _kill(self, process: _ServerProcess) -> None:
        self.log.warn(
            "RabbitMQ node {node} did not stop within {timeout} s: killing it",
            node=self.nodeName,
            timeout=self._stopTimeout,
        )
        # the Erlang VM is a child of the start script: kill it by its pid file
        try:
            with open(os.path.join(self.dataDir, "rabbitmq.pid")) as f:
                os.kill(int(f.read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        self._signal(process, "KILL")

    @staticmethod
    def _signal(process: _ServerProcess, name: str) -> None:
        if process.transport is None:
            return
        try:
            process.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


def _readLockHolder(fd: int) -> dict[str, Any]:
    """
    What the lock file open on C{fd} says of the node that holds it: C{pid},
    C{host}, C{port}; nothing when it says nothing readable (the node that
    holds it may be picking its ports).
    """
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _processExists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    return True


def _howItEnded(reason: BaseException) -> str:
    if isinstance(reason, error.ProcessTerminated) and reason.signal is not None:
        return f"rabbitmq-server was ended by signal {reason.signal}"
    return f"rabbitmq-server exited with status {getattr(reason, 'exitCode', 0)}"


class LocalRabbitMQService(Service):
    """
    Runs a L{LocalRabbitMQ} for the lifetime of a service hierarchy.  Add it
    to a C{MultiService} I{before} the services that use the broker, so that
    it stops after them.

    When the node cannot start, or ends while the service runs, the service
    neither logs it as a failure nor stops anything: L{whenStarted} and
    L{whenEnded} hand the error to whoever runs the service, who decides
    (C{twistd mqtwist} logs it and exits with status 1, for a supervisor to
    start it again; an application that embeds the service may do anything
    else).
    """

    def __init__(self, node: LocalRabbitMQ) -> None:
        self.node = node
        self._result: BrokerURL | Failure | None = None
        self._waiting: list[defer.Deferred[BrokerURL]] = []
        self._failure: Failure | None = None
        self._endWaiters: list[defer.Deferred[None]] = []
        self._stopped = False

    def startService(self) -> None:
        Service.startService(self)
        self._result = None
        self._failure = None
        self._stopped = False
        self.node.start().addBoth(self._startDone)

    def _startDone(self, result: BrokerURL | Failure) -> None:
        self._result = result
        if not isinstance(result, Failure):
            self.node.whenEnded().addErrback(self._nodeFailed)
        elif self.running:
            self._nodeFailed(result)
        # else: stopService ended the start, which is no failure
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            self._fire(d)

    def _nodeFailed(self, failure: Failure) -> None:
        if not self.running or self._failure is not None:
            # the node ended while stopService stops it: the node has
            # said so in its log, and nobody waits for it any more
            return
        self._failure = failure
        waiting, self._endWaiters = self._endWaiters, []
        for d in waiting:
            d.errback(failure)

    def _fire(self, d: defer.Deferred[BrokerURL]) -> None:
        result = self._result
        if isinstance(result, Failure):
            d.errback(result)
        elif result is not None:
            d.callback(result)

    def whenStarted(self) -> defer.Deferred[BrokerURL]:
        """
        @return: a Deferred that fires with the node's L{BrokerURL} once it
            is up, or errbacks with why it could not start
            (L{RabbitMQNotInstalled}, L{RabbitMQStartFailed}).
        """
        d: defer.Deferred[BrokerURL] = defer.Deferred()
        if self._result is None:
            self._waiting.append(d)
        else:
            self._fire(d)
        return d

    def whenEnded(self) -> defer.Deferred[None]:
        """
        Learn when the node fails, to stop the application or to do without
        a broker.

        @return: a Deferred that errbacks with L{RabbitMQNotInstalled} or
            L{RabbitMQStartFailed} when the node could not start, or with
            L{RabbitMQEnded} when it ended on its own while the service was
            running (at once when either has happened since the service
            started); otherwise it fires with C{None} once L{stopService}
            has stopped the node (at once if it has).  Asked before the
            service starts, it waits for the start and what follows.
        """
        if self._failure is not None:
            return defer.fail(self._failure)
        if self._stopped:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._endWaiters.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop the node.

        @return: a Deferred that fires with C{None} once it has exited.
        """
        Service.stopService(self)
        return self.node.stop().addCallback(self._nodeStopped)

    def _nodeStopped(self, result: None) -> None:
        self._stopped = True
        waiting, self._endWaiters = self._endWaiters, []
        for d in waiting:
            d.callback(None)
