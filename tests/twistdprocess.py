"""
Run C{twistd -n mqtwist} as a child process in tests, as a user would.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure


class Twistd(ProcessProtocol):
    """
    One C{twistd -n mqtwist} process; C{ended} fires when it is gone.
    """

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = bytearray()
        self._watchers: list[tuple[bytes, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        watchers, self._watchers = self._watchers, []
        for text, seen in watchers:
            if text in self.output:
                seen.callback(None)
            else:
                self._watchers.append((text, seen))

    def waitForOutput(self, text: bytes, timeout: float = 60) -> Deferred[None]:
        """
        @return: a Deferred firing once the process has written C{text}; it
            fails with what the process wrote when that takes longer than
            C{timeout} seconds or the process ends first.
        """
        seen: Deferred[None] = Deferred()
        if text in self.output:
            seen.callback(None)
            return seen
        self._watchers.append((text, seen))

        def giveUp(reason: str) -> None:
            if not seen.called:
                self._watchers = [(t, d) for t, d in self._watchers if d is not seen]
                seen.errback(AssertionError(
                    f"twistd did not write {text!r} ({reason}); it wrote:\n"
                    + self.output.decode(errors="replace")[-4000:]
                ))

        timer = reactor.callLater(timeout, giveUp, f"not within {timeout} s")
        self.ended.addCallback(lambda _: giveUp("it ended first"))
        return seen.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


def startTwistd(*arguments: str, env: dict[str, str] | None = None, usePTY: bool = False) -> Twistd:
    """
    Start C{twistd -n mqtwist ARGUMENTS} with this interpreter; C{env}
    entries are added to this process's environment.

    @param usePTY: run it as a terminal runs a command: in a session of its
        own whose controlling terminal is a pseudo-terminal, its standard
        input, output and error; writing C{b"\\x03"} (Ctrl-C) to the
        transport then sends SIGINT to the terminal's foreground process
        group, the process and its children that stayed in its group.
        Its output arrives with the terminal's line ends (CR LF).
    """
    process = Twistd()
    command = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "mqtwist", *arguments,
    ]
    reactor.spawnProcess(process, sys.executable, command, env={**os.environ, **(env or {})}, usePTY=usePTY)
    return process


def brokerArguments(url: Any) -> list[str]:
    """
    The C{--amqp} option for the test broker at C{url} (a L{BrokerURL}).
    """
    return ["--amqp", f"amqp://{url.username}:{url.password}@{url.host}:{url.port}/"]


async def exitStatus(twistd: Twistd, timeout: float = 120) -> int:
    """
    Wait for twistd to log its last line and exit; its exit status.
    """
    await twistd.waitForOutput(b"Server Shut Down.", timeout=timeout)
    await twistd.ended
    return os.waitstatus_to_exitcode(twistd.transport.status)


async def endTwistd(twistd: Twistd) -> None:
    """Kill twistd if a failed test left it running."""
    if not twistd.ended.called:
        twistd.transport.signalProcess("KILL")
        await twistd.ended


def nodeName(output: str) -> str:
    (name,) = set(re.findall(r"starting private RabbitMQ node (\S+) ", output))
    return name
