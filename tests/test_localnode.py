"""
The private RabbitMQ node: a missing package, a directory the node cannot
reach, a restart on the same data directory, and (with a reactor that only
records the processes it is asked to start) the Erlang cookie, the ports,
the message when the node does not answer, and how the service reports a
node that fails to start or ends on its own; the Erlang distribution and
epmd of a real node listen on loopback only; the node and rabbitmqctl run in
a session of their own (out of reach of a terminal's Ctrl-C); one node at a
time on a data directory, whose lock its processes hold until they end.
"""

import fcntl
import json
import os
import pwd
import re
import socket
import stat
import struct
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from fixtures_rabbitmq import AMQPHelper
from helpers_localnode import (
    RecordingReactor,
    failStart,
    freeLoopbackPort,
    installed,
    lockHeld,
    nicenessOfThreads,
    secondInstanceAdvice,
    snapshot,
)
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, capturedLogs, formatEvent

from mqtwist.localnode import (
    COOKIE_FILE,
    LOCK_FILE,
    RABBITMQCTL_DIST_PORTS,
    LocalRabbitMQ,
    LocalRabbitMQService,
    RabbitMQEnded,
    RabbitMQNotInstalled,
    RabbitMQStartFailed,
)

# txamqp still uses defer.returnValue
pytestmark = pytest.mark.filterwarnings(
    "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning"
)


@pytest_twisted.inlineCallbacks
def test_not_installed_says_how_to_fix(dataDir):
    node = LocalRabbitMQ(dataDir, rabbitmqBin="/nonexistent/rabbitmq", reactor=reactor)
    with pytest.raises(RabbitMQNotInstalled) as info:
        yield node.start()
    message = str(info.value)
    assert "/nonexistent/rabbitmq/rabbitmq-server is missing" in message
    assert "apt-get install rabbitmq-server" in message
    assert "--amqp" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the node to another user")
@pytest_twisted.inlineCallbacks
def test_unreachable_data_directory(dataDir):
    os.chmod(dataDir, 0o700)
    node = LocalRabbitMQ(os.path.join(dataDir, "node"), reactor=reactor)
    with pytest.raises(RabbitMQStartFailed) as info:
        yield node.start()
    assert f"cannot enter {dataDir}" in str(info.value)
    assert "chmod o+x" in str(info.value)


@installed
@pytest_twisted.inlineCallbacks
def test_restart_on_same_directory_keeps_durable_queues(dataDir):
    first = LocalRabbitMQService(LocalRabbitMQ(dataDir, niceness=7, reactor=reactor))
    second = LocalRabbitMQService(LocalRabbitMQ(dataDir, reactor=reactor))
    try:
        first.startService()
        url = yield first.whenStarted()
        # every thread of the node runs at the niceness asked for
        assert set(nicenessOfThreads(dataDir)) == {7}
        helper = AMQPHelper(url, reactor)
        yield helper.connect()
        yield helper.declare("kept", {"x-max-priority": 5})
        yield helper.publish("kept", b"survives a restart")
        yield helper.close()
        yield first.stopService()
        assert not os.path.exists(os.path.join(dataDir, "rabbitmq.pid"))
        cookie = readCookie(dataDir)

        second.startService()
        url = yield second.whenStarted()
        assert set(nicenessOfThreads(dataDir)) == {0}
        assert second.node.nodeName == first.node.nodeName
        assert readCookie(dataDir) == cookie
        helper = AMQPHelper(url, reactor)
        yield helper.connect()
        received = yield helper.fetch("kept")
        yield helper.close()
        assert [r.body for r in received] == [b"survives a restart"]
    finally:
        for service in (first, second):
            if service.running:
                yield service.stopService()


class NodeWithOwnEpmd(LocalRabbitMQ):
    """
    A node whose VMs use (and so start) an epmd of their own on
    C{epmdPort}, not the machine's shared one on 4369: an epmd that already
    runs keeps the addresses it was started with.
    """

    def __init__(self, dataDir: str, epmdPort: int, **kwargs: Any) -> None:
        super().__init__(dataDir, **kwargs)
        self.epmdPort = epmdPort

    def _environment(self) -> dict[str, str]:
        return {**super()._environment(), "ERL_EPMD_PORT": str(self.epmdPort)}


def epmdRequest(port: int, request: bytes) -> bytes:
    """Send one request of the epmd protocol and return the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack(">H", len(request)) + request)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer


def epmdNames(port: int) -> dict[str, int]:
    """The nodes registered with the epmd on C{port}, with their ports."""
    # NAMES_REQ: the epmd port (4 bytes), then "name N at port P" lines
    text = epmdRequest(port, b"n")[4:].decode()
    return {name: int(p) for name, p in re.findall(r"^name (\S+) at port (\d+)$", text, re.M)}


def listeningAddresses(port: int) -> set[str]:
    """
    The addresses that TCP sockets in the LISTEN state are bound to on
    C{port}, read from /proc/net/tcp and /proc/net/tcp6.
    """
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, hexPort = local.split(":")
                if state != "0A" or int(hexPort, 16) != port:
                    continue
                # the address is printed as 32-bit words in host byte order
                raw = bytes.fromhex(address)
                if sys.byteorder == "little":
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, raw))
    return found


@installed
@pytest_twisted.inlineCallbacks
def test_erlang_distribution_and_epmd_listen_on_loopback_only(dataDir):
    """
    The node's Erlang distribution port, which gives whoever reaches it
    with the cookie control of the node, listens on 127.0.0.1 only, not on
    every interface; so does the port of rabbitmqctl's own Erlang node, and
    the epmd that the node starts.  rabbitmqctl still reaches the node.
    """
    epmdPort = freeLoopbackPort()
    node = NodeWithOwnEpmd(dataDir, epmdPort, reactor=reactor)
    nodeName = node.nodeName.partition("@")[0]
    try:
        yield node.start()
        names = epmdNames(epmdPort)
        assert set(names) == {nodeName}
        distPort = names[nodeName]
        assert listeningAddresses(distPort) == {"127.0.0.1"}
        # epmd always listens on loopback, IPv6's too when there is one
        assert "127.0.0.1" in listeningAddresses(epmdPort) <= {"127.0.0.1", "::1"}
        status = yield node.rabbitmqctl("status")
        assert f"Interface: 127.0.0.1, port: {distPort}, protocol: clustering" in status

        # a rabbitmqctl command is its own Erlang node, registered with
        # epmd while it runs
        command = node.rabbitmqctl("eval", "timer:sleep(6000).")
        cliPorts: dict[str, int] = {}
        deadline = reactor.seconds() + 15
        while not cliPorts and not command.called and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.1)
            cliPorts = {n: p for n, p in epmdNames(epmdPort).items() if n != nodeName}
        assert len(cliPorts) == 1, cliPorts
        (cliPort,) = cliPorts.values()
        assert listeningAddresses(cliPort) == {"127.0.0.1"}
        assert (yield command).strip() == "ok"
        # the epmd that the node started runs on (it answers), and does not
        # hold the data directory's lock
        yield node.stop()
        assert epmdRequest(epmdPort, b"n")
        assert not lockHeld(dataDir)
    finally:
        yield node.stop()
        yield stopEpmd(epmdPort)


@defer.inlineCallbacks
def stopEpmd(port: int):
    """
    Stop the epmd on C{port}, once no node is registered with it any more
    (epmd refuses KILL_REQ before).
    """
    for _ in range(50):
        try:
            if epmdRequest(port, b"k") == b"OK":
                return
        except OSError:
            return  # not running (any more)
        yield deferLater(reactor, 0.1)
    pytest.fail(f"the test's epmd on port {port} would not stop")


def readCookie(dataDir: str) -> bytes:
    with open(os.path.join(dataDir, COOKIE_FILE), "rb") as f:
        return f.read()


@installed
def test_cookie_is_in_place_before_any_erlang_vm_starts(dataDir):
    """
    Left to Erlang, the node and the rabbitmqctl polling it race to create
    the cookie, and the loser may refuse the other's half-made file: the
    node writes it before it starts either of them.
    """
    fake = RecordingReactor()
    node = LocalRabbitMQ(dataDir, amqpPort=40001, distPort=40003, reactor=fake)
    started = node.start()
    server, ctl = fake.spawned
    assert not server.isRabbitmqctl() and ctl.isRabbitmqctl()
    for process in (server, ctl):
        assert process.env["HOME"] == node.dataDir
        assert process.cookie is not None, process.argv
        assert stat.S_IMODE(process.cookie.st_mode) == 0o400
        if os.geteuid() == 0:
            assert process.cookie.st_uid == pwd.getpwnam("rabbitmq").pw_uid
        assert process.cookieBytes == server.cookieBytes
    assert re.fullmatch(rb"[0-9a-f]{40}", server.cookieBytes)
    ctl.end()
    assert started.result == node.url
    node.stop()
    assert server.protocol.ended.called

    # stopped, it starts again, with the same cookie
    restarted = node.start()
    assert [p.isRabbitmqctl() for p in fake.spawned] == [False, True, False, True]
    assert fake.spawned[2].cookieBytes == server.cookieBytes
    fake.spawned[3].end()
    assert restarted.result == node.url
    node.stop()
    assert fake.spawned[2].protocol.ended.called


@installed
def test_node_ports_avoid_the_range_rabbitmqctl_listens_on(dataDir):
    """
    rabbitmqctl's own Erlang node takes the first free port of
    35672-35682: a node port picked there would be taken by the
    rabbitmqctl that waits for the node, and the node would not start.
    """
    first, last = RABBITMQCTL_DIST_PORTS[0], RABBITMQCTL_DIST_PORTS[-1]
    fake = RecordingReactor((first + 1, last, 40001, first + 3, 40003))
    node = LocalRabbitMQ(dataDir, reactor=fake)
    node.start()
    server = fake.spawned[0]
    assert server.env["RABBITMQ_NODE_PORT"] == "40001"
    assert server.env["RABBITMQ_DIST_PORT"] == "40003"
    assert node.url.port == 40001
    assert [port.listening for port in fake.ports] == [False] * 5
    fake.spawned[1].end()
    node.stop()


@installed
def test_start_timeout_says_what_rabbitmqctl_answered(dataDir):
    """
    When the node never answers (e.g. epmd was restarted under it), the
    error says what rabbitmqctl said, not only that time ran out.
    """
    fake = RecordingReactor()
    node = LocalRabbitMQ(dataDir, amqpPort=40001, distPort=40003, startTimeout=2, reactor=fake)
    started = node.start()
    answer = b"Error: epmd reports: node 'mqtwist-x' not running at all"
    while not started.called:
        fake.spawned[-1].end(69, answer)
        fake.advance(0.5)
    failure = started.result
    started.addErrback(lambda _: None)
    assert failure.check(RabbitMQStartFailed)
    message = str(failure.value)
    assert "did not start within 2 s" in message
    assert "epmd reports: node 'mqtwist-x' not running at all" in message
    assert [p.isRabbitmqctl() for p in fake.spawned] == [False, True, True, True]
    # and the server was stopped
    assert fake.spawned[0].protocol.ended.called


@installed
def test_niceness_is_set_before_the_node_starts(dataDir):
    """
    The node starts under C{nice}, so that its first thread, and every
    thread after it, has the niceness; rabbitmqctl keeps the default.
    """
    fake = RecordingReactor()
    node = LocalRabbitMQ(dataDir, amqpPort=40001, distPort=40003, niceness=10, reactor=fake)
    node.start()
    server, ctl = fake.spawned
    assert server.argv[0].endswith("/nice") and server.argv[1:3] == ["-n", "10"]
    assert server.argv[3].endswith("/setsid") and server.argv[-1].endswith("/rabbitmq-server")
    assert not ctl.argv[0].endswith("/nice")
    ctl.end()
    node.stop()


def test_niceness_out_of_range_is_refused(dataDir):
    with pytest.raises(ValueError, match="niceness 20 is out of range: give -20 to 19"):
        LocalRabbitMQ(dataDir, niceness=20)


def nodeEvents(events) -> list[tuple[LogLevel, str]]:
    """The level and text of each event the node logged."""
    return [
        (event["log_level"], formatEvent(event))
        for event in events
        if event.get("log_namespace") == "mqtwist.localnode.LocalRabbitMQ"
    ]


def startedService(fake: "RecordingReactor", dataDir: str) -> LocalRabbitMQService:
    """A service whose node is up: its first rabbitmqctl answered."""
    service = LocalRabbitMQService(
        LocalRabbitMQ(dataDir, amqpPort=40001, distPort=40003, reactor=fake)
    )
    service.startService()
    fake.spawned[1].end()
    assert service.whenStarted().result == service.node.url
    return service


@installed
def test_service_reports_a_node_that_ends_on_its_own(dataDir):
    """
    The Erlang VM of a running node is killed: its start script exits 0.
    The node logs an error with its last output, and the service's
    L{LocalRabbitMQService.whenEnded} errbacks with L{RabbitMQEnded}, also
    for a caller that asks later; the service itself stops nothing.
    """
    fake = RecordingReactor()
    service = startedService(fake, dataDir)
    ended = service.whenEnded()
    assert not ended.called
    with capturedLogs() as events:
        fake.spawned[0].end(0, b"  Starting broker... completed with 0 plugins.\nKilled\n")
    failure = ended.result
    ended.addErrback(lambda _: None)
    assert failure.check(RabbitMQEnded)
    node = service.node.nodeName
    logDir = os.path.join(service.node.dataDir, "log")
    assert str(failure.value) == (
        f"private RabbitMQ node {node} ended unexpectedly, without being asked "
        f"to stop (rabbitmq-server exited with status 0: its Erlang VM ended, "
        f"crashed or killed). Its log is in {logDir}"
    )
    assert failure.value.output.endswith("completed with 0 plugins.\nKilled\n")
    ((level, text),) = nodeEvents(events)
    assert level == LogLevel.error
    assert text == f"{failure.value}; its last output:\n{failure.value.output}"
    later = service.whenEnded()
    assert later.result is failure
    later.addErrback(lambda _: None)
    assert service.running

    # stopping the service afterwards: nothing left to stop, no new failure
    stopped = service.stopService()
    assert stopped.called and stopped.result is None


@installed
def test_service_stop_is_no_failure(dataDir):
    """
    A node stopped by C{stopService} ends as asked: C{whenEnded} fires with
    C{None}, and the node says so at info level.
    """
    fake = RecordingReactor()
    service = startedService(fake, dataDir)
    ended = service.whenEnded()
    with capturedLogs() as events:
        stopped = service.stopService()
    assert stopped.called and stopped.result is None
    assert ended.called and ended.result is None
    node = service.node.nodeName
    assert nodeEvents(events) == [
        (LogLevel.info, f"stopping RabbitMQ node {node}"),
        (LogLevel.info, f"RabbitMQ node {node} stopped"),
    ]
    # asked once stopped, it has nothing to wait for
    assert service.whenEnded().result is None


@installed
def test_service_reports_a_node_that_did_not_start(dataDir):
    """
    The server exits during its start (here: its AMQP port is taken): the
    start error, with the node's output, is what C{whenStarted} and
    C{whenEnded} errback with, and the node logs no error of its own.
    """
    fake = RecordingReactor()
    service = LocalRabbitMQService(
        LocalRabbitMQ(dataDir, amqpPort=40001, distPort=40003, reactor=fake)
    )
    ended = service.whenEnded()  # asked before the start: waits for it
    with capturedLogs() as events:
        service.startService()
        failStart(fake)
    started = service.whenStarted()
    assert ended.called and started.called
    failure = ended.result
    assert started.result is failure
    for d in (started, ended):
        d.addErrback(lambda _: None)
    assert failure.check(RabbitMQStartFailed)
    message = str(failure.value)
    assert f"private RabbitMQ node {service.node.nodeName} did not start: " \
        "rabbitmq-server exited with status 0." in message
    assert message.endswith("BOOT FAILED\n{listen_error, eaddrinuse}\n")
    assert [level for level, _ in nodeEvents(events)] == [LogLevel.info]  # "starting ..."
    service.stopService()


@installed
def test_service_stopped_during_the_start_is_no_failure(dataDir):
    """
    C{stopService} while the node starts ends the start: C{whenStarted}
    errbacks, but C{whenEnded} fires with C{None}.
    """
    fake = RecordingReactor()
    service = LocalRabbitMQService(
        LocalRabbitMQ(dataDir, amqpPort=40001, distPort=40003, reactor=fake)
    )
    service.startService()
    ended = service.whenEnded()
    stopped = service.stopService()
    fake.spawned[1].end(69, b"Error: node not running")
    fake.advance(0.5)
    assert stopped.called and ended.called and ended.result is None
    started = service.whenStarted()
    assert started.result.check(RabbitMQStartFailed)
    started.addErrback(lambda _: None)


@installed
def test_node_and_rabbitmqctl_run_in_a_session_of_their_own(dataDir):
    """
    A terminal's Ctrl-C signals the terminal's foreground process group:
    the server and each rabbitmqctl start under setsid, in a session (and
    process group) of their own, and still under setpriv --pdeathsig TERM,
    so that they end when this process dies; the server shares the data
    directory's lock, as its file descriptor 3.
    """
    fake = RecordingReactor()
    node = LocalRabbitMQ(dataDir, amqpPort=40001, distPort=40003, reactor=fake)
    node.start()
    server, ctl = fake.spawned
    for process in (server, ctl):
        assert process.argv[0].endswith("/setsid") and process.argv[1].endswith("/setpriv"), process.argv
        assert process.argv[process.argv.index("--pdeathsig") + 1] == "TERM"
    assert os.path.samestat(os.fstat(server.childFDs[3]), os.stat(os.path.join(dataDir, LOCK_FILE)))
    assert set(server.childFDs) == {0, 1, 2, 3}
    assert ctl.childFDs is None  # getProcessOutputAndValue's stdio, nothing more
    ctl.end()
    node.stop()


@installed
@pytest_twisted.inlineCallbacks
def test_real_node_leads_a_session_of_its_own(dataDir):
    """
    The process spawned for the node (the start script, which signals
    reach) leads a session of its own, setsid having run in place; the
    node's Erlang VM, its child, is in that session, out of this process's
    session and process group.
    """
    node = LocalRabbitMQ(dataDir, reactor=reactor)
    try:
        yield node.start()
        with open(os.path.join(dataDir, "rabbitmq.pid")) as f:
            vm = int(f.read())
        session = os.getsid(vm)
        assert session != os.getsid(0)
        assert os.getpgid(vm) == session != os.getpgid(0)
        with open(f"/proc/{vm}/stat") as f:
            parent = int(f.read().rpartition(")")[2].split()[1])
        assert parent == session
        with open(f"/proc/{session}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[1].endswith(b"/rabbitmq-server")
    finally:
        yield node.stop()


@installed
def test_second_start_on_a_running_nodes_directory_changes_nothing(dataDir):
    """
    A node runs on the data directory: a second start there fails at once,
    says who runs the node there and how to run a second instance, logs
    nothing (not even that it starts), starts no process and changes no
    file; once the first node has stopped, the directory can be used.
    """
    fake = RecordingReactor()
    first = LocalRabbitMQ(dataDir, amqpPort=40001, distPort=40003, reactor=fake)
    first.start()
    fake.spawned[1].end()
    before = snapshot(dataDir)
    assert json.loads(before[os.path.join(dataDir, LOCK_FILE)][0]) == {
        "pid": os.getpid(), "host": "127.0.0.1", "port": 40001
    }

    second = LocalRabbitMQ(dataDir, amqpPort=40005, distPort=40007, reactor=fake)
    with capturedLogs() as events:
        started = second.start()
    failure = started.result
    started.addErrback(lambda _: None)
    assert failure.check(RabbitMQStartFailed)
    assert str(failure.value) == (
        f"private RabbitMQ node {second.nodeName} was not started: a node already runs on its data "
        f"directory {second.dataDir}, started by process {os.getpid()}, with AMQP on 127.0.0.1:40001. "
        + secondInstanceAdvice(40001)
    )
    assert len(fake.spawned) == 2
    assert nodeEvents(events) == []
    assert snapshot(dataDir) == before

    first.stop()
    assert not lockHeld(dataDir)
    restarted = second.start()
    fake.spawned[3].end()
    assert restarted.result == second.url
    assert lockHeld(dataDir)
    second.stop()
    assert not lockHeld(dataDir)


@installed
def test_second_start_names_a_node_whose_starter_has_ended(dataDir):
    """
    The process that started the node has ended (killed) while the node
    still shuts down, holding the lock: the message says so, and where the
    Erlang VM's pid is, in case it does not stop.
    """
    ended = subprocess.Popen(["true"])
    ended.wait()
    lockPath = os.path.join(dataDir, LOCK_FILE)
    with open(lockPath, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write(json.dumps({"pid": ended.pid, "host": "127.0.0.1", "port": 5672}))
        holder.flush()
        node = LocalRabbitMQ(dataDir, reactor=RecordingReactor())
        started = node.start()
        failure = started.result
        started.addErrback(lambda _: None)
    assert str(failure.value) == (
        f"private RabbitMQ node {node.nodeName} was not started: a node already runs on its data "
        f"directory {node.dataDir}, started by process {ended.pid}, which has ended: that node stops "
        f"on its own within seconds (else stop its Erlang VM, whose pid is in "
        f"{node.dataDir}/rabbitmq.pid), with AMQP on 127.0.0.1:5672. " + secondInstanceAdvice(5672)
    )


@installed
@pytest_twisted.inlineCallbacks
def test_the_nodes_processes_hold_the_lock_until_the_node_ends(dataDir):
    """
    When this process dies, its node shuts down (setpriv's pdeathsig) but
    takes seconds: its processes hold the data directory's lock until they
    have ended, so that a restarted mqtwist does not start a second node on
    the directory meanwhile (a second Erlang VM with the same node name
    fails, writes erl_crash.dump, and rabbitmqctl would answer for the
    first one).
    """
    node = LocalRabbitMQ(dataDir, reactor=reactor)
    try:
        yield node.start()
        # as if this process had died: only the node's processes hold it
        node._unlock()
        assert lockHeld(dataDir)
        kept = {name: snapshot(dataDir)[os.path.join(dataDir, name)] for name in (COOKIE_FILE, "rabbitmq.pid")}
        other = LocalRabbitMQ(dataDir, reactor=reactor)
        with pytest.raises(RabbitMQStartFailed, match="a node already runs on its data directory"):
            yield other.start()
        assert {name: snapshot(dataDir)[os.path.join(dataDir, name)] for name in kept} == kept
        assert not os.path.exists(os.path.join(dataDir, "erl_crash.dump"))
        # the node still answers
        assert "ok" in (yield node.rabbitmqctl("eval", "ok."))
    finally:
        yield node.stop()
    assert not lockHeld(dataDir)
