"""
Re-reading the configuration of a running C{twistd mqtwist} on SIGHUP.

An operator adds or changes an IP pool (C{[[pools]]}, C{default-ips}) by
editing the TOML file and sending the process SIGHUP (C{systemctl reload}
does that with C{ExecReload=/bin/kill -HUP $MAINPID}).  The command line
and the environment are read again as they were at the start; they still
win over the file.  What L{MailerService.reconfigure} cannot change while
running is named in the log as waiting for a restart, and a file that
cannot be read or has a bad value changes nothing.

Only C{twistd mqtwist} takes SIGHUP: a program that embeds
L{MailerService} keeps its own signal handling and calls
L{MailerService.reconfigure} itself.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwist.config import Config
from mqtwist.config.sources import SettingError
from mqtwist.service import MailerService

_Handler = Callable[[int, FrameType | None], Any] | int | None


class ReloadOnHangup(Service):
    """
    While running, re-read the configuration on SIGHUP and hand it to a
    L{MailerService}; the previous SIGHUP handler is put back on stop.

    @param service: the service to reconfigure.
    @param readConfig: reads the configuration anew (the file, the
        environment and the command line), raising L{SettingError} naming
        what is wrong; it is called in a thread of the reactor's pool,
        since it reads a file.
    """

    log = Logger()

    def __init__(self, service: MailerService, readConfig: Callable[[], Config], reactor: Any) -> None:
        self.service = service
        self.readConfig = readConfig
        self.reactor = reactor
        self._previous: _Handler = None
        self._reloading: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> None:
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)

    def _hangup(self, signum: int, frame: FrameType | None) -> None:
        # a signal handler may run between any two bytecodes of the reactor
        # thread: do the work from the reactor's loop
        self.reactor.callFromThread(self.reload)

    def reload(self) -> Deferred[None]:
        """
        Read the configuration and apply it.  A reload asked for while one
        is under way waits for it, then reads the file again.

        @return: a Deferred firing with C{None} when the new configuration
            is applied, or was refused and logged; it never fails.
        """
        previous = self._reloading
        if previous is not None:
            return previous.addCallback(lambda _: self.reload())
        self.log.info("SIGHUP: reading the configuration again")
        reading: Deferred[Config] = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.readConfig)
        done = reading.addCallbacks(self._apply, self._readingFailed)
        self._reloading = done

        def finished(_: object) -> None:
            self._reloading = None

        done.addBoth(finished)
        return done

    def _apply(self, config: Config) -> None:
        try:
            waiting = self.service.reconfigure(config)
        except ValueError as e:
            self._refuse(e)
            return
        if waiting:
            self.log.warn(
                "changed settings that take effect only after a restart: {settings}",
                settings=", ".join(waiting),
            )

    def _readingFailed(self, failure: Failure) -> None:
        if isinstance(failure.value, SettingError):
            self._refuse(failure.value)
        else:
            self.log.failure("reading the configuration on SIGHUP failed, nothing changed", failure)

    def _refuse(self, error: BaseException) -> None:
        self.log.error(
            "the configuration read on SIGHUP is refused, nothing changed: {error}\n"
            "What to do: correct it and send SIGHUP again.",
            error=error,
        )
