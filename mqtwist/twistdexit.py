"""
An exit status for C{twistd}, which has none to set.

When mqtwist cannot work (its private RabbitMQ node did not start, or
ended), C{twistd mqtwist} must exit with a status other than 0, so that a
supervisor (systemd's C{Restart=on-failure}) starts it again.  But once its
reactor has stopped (every shutdown trigger run, the services stopped),
twistd removes its pid file, logs "Server Shut Down." and returns, and the
process exits 0.  Only exit handlers run later, and C{SystemExit} raised in
one is ignored: L{stopWithStatus} registers one that ends the process
itself, once what is buffered is written.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

#: The exit status of C{twistd mqtwist} when mqtwist cannot work.
FAILURE_EXIT_STATUS = 1

log = Logger()


def stopWithStatus(reactor: Any, status: int = FAILURE_EXIT_STATUS) -> None:
    """
    Stop the reactor, which stops the services as SIGTERM does, and make
    the process exit with C{status} once twistd is done.
    """
    log.info(
        "twistd mqtwist stops, and exits with status {status} for its supervisor to start it again",
        status=status,
    )
    # the handlers registered before this one, such as the standard
    # library's logging.shutdown, which twistd's log does not use, do not run
    atexit.register(_exit, status)
    # the node may fail before the reactor runs (not installed: at once)
    reactor.callWhenRunning(_stopReactor, reactor)


def _stopReactor(reactor: Any) -> None:
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # already stopping, e.g. on SIGTERM


def _exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
