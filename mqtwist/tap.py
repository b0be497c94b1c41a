"""
The C{twistd mqtwist} command: its options and the service they make.

Every setting of L{mqtwist.config.Config} is an option (C{ehloName} is
C{--ehlo-name}); L{mqtwist.config.sources} says how the command line, the
environment and the TOML file of C{--config} are merged.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

from twisted.application.service import IService
from twisted.python import usage
from twisted.python.failure import Failure

from mqtwist.config import Config
from mqtwist.config.sources import (
    ADMIN_TOKEN_VARIABLE,
    SETTINGS,
    SettingError,
    configFrom,
    warnOfUnknownVariables,
)
from mqtwist.loglevel import LogLevelService, parseLogLevel
from mqtwist.twistdexit import stopWithStatus


class Options(usage.Options):
    """
    The options of C{twistd mqtwist}.  After parsing, C{config} is the
    L{Config} they describe.

    @ivar config: the settings from the command line, the environment, the
        TOML file and the defaults, in that order of precedence.
    """

    synopsis = "[options]"
    longdesc = (
        "Deliver the JSON delivery jobs of a RabbitMQ queue over ESMTP. Every option can "
        "also be set in the environment (--ehlo-name is MQTWIST_EHLO_NAME) or in the TOML "
        "file of --config (ehlo-name = \"...\"; SMTP timeouts in a [timeouts] table). The "
        "command line wins over the environment, which wins over the file, which wins over "
        "the defaults."
    )
    optFlags = [
        ["list-plugins", None, "print the data plugins that are installed, and exit"],
    ]
    optParameters = [
        ["config", None, None, "TOML file with settings; keys are the long option names"],
    ] + [
        [setting.option, None, None, setting.help + (f" [default: {setting.default}]" if setting.default else "")]
        for setting in SETTINGS
    ]

    config: Config

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """
        @param environ: where C{MQTWIST_*} variables are read; the process
            environment when C{None}.
        """
        super().__init__()
        self.environ = os.environ if environ is None else environ

    def postOptions(self) -> None:
        """
        Build C{self.config}, or list the data plugins and exit.

        @raise usage.UsageError: naming the option, variable or TOML key that
            has a bad value, what is wrong with it and what is accepted;
            under C{twistd}, C{SystemExit} with that text instead.
        """
        if self["list-plugins"]:
            self._listPlugins()
            raise SystemExit(0)
        warnOfUnknownVariables(self.environ)
        try:
            sources: dict[str, str] = {}
            self.config = configFrom(self, self.environ, self["config"], sources)
            if self.config.plugins is not None:
                self._checkPluginNames(self.config.plugins, sources["plugins"])
            if self.config.logFormat == "json":
                self._logAsJSON(sources.get("logFormat", "--log-format"))
        except (SettingError, usage.UsageError) as error:
            if getattr(self, "parent", None) is None:
                raise usage.UsageError(str(error)) from None
            # under twistd (our parent options), whose answer to a usage
            # error is its whole --help, about 190 lines, before the one
            # that says what is wrong: a journal would hold those for
            # every failed restart
            raise SystemExit(f"twistd mqtwist: {error} (twistd mqtwist --help lists every setting)") from None

    def opt_version(self) -> None:
        """
        Print the versions of mqtwist, Twisted, txamqp and Python, and exit.
        """
        from importlib.metadata import version

        import mqtwist

        sys.stdout.write(
            f"mqtwist {mqtwist.__version__} (Twisted {version('twisted')}, "
            f"txamqp {version('txamqp')}, Python {platform.python_version()})\n"
        )
        raise SystemExit(0)

    def _logAsJSON(self, source: str) -> None:
        """
        Under twistd, make its log observer write JSON lines from the start
        (see L{mqtwist.logformat.twistdObserver}); a program that
        embeds the service sets up its own observers.

        @raise usage.UsageError: when twistd is told to log elsewhere.
        """
        parent = getattr(self, "parent", None)
        if parent is None:
            return
        from mqtwist.logformat import useUnderTwistd

        for option in ("logger", "syslog"):
            if parent.get(option):
                raise usage.UsageError(
                    f"{source}: json is written to twistd's --logfile or standard output, not with "
                    f"twistd's --{option}; leave out one of the two"
                )
        try:
            parent["logger"] = useUnderTwistd(parent.get("logfile"), bool(parent.get("nodaemon")))
        except ValueError as e:
            raise usage.UsageError(f"{source}: {e}") from None

    def _listPlugins(self) -> None:
        from mqtwist.dataplugin.discovery import describePlugins

        try:
            sys.stdout.write(describePlugins())
        except ValueError as e:
            raise usage.UsageError(f"--list-plugins: {e}") from None

    def _checkPluginNames(self, names: list[str], source: str) -> None:
        from mqtwist.dataplugin.discovery import selectPlugins

        try:
            selectPlugins(names)
        except ValueError as e:
            raise usage.UsageError(f"{source}: {e}") from None


def makeService(options: Options) -> IService:
    """
    The service of C{twistd mqtwist}: a L{mqtwist.service.MailerService}
    with the parsed configuration, and a L{LogLevelService} child that
    keeps events below C{logLevel} from twistd's log, and a
    L{ReloadOnHangup} child that applies the configuration read again on
    SIGHUP (see L{mqtwist.reload}).  When the service
    cannot work (see L{MailerService.whenFailed}), twistd stops it as on
    SIGTERM and exits with L{mqtwist.twistdexit.FAILURE_EXIT_STATUS}.
    """
    from mqtwist.reload import ReloadOnHangup
    from mqtwist.service import MailerService

    try:
        token = options.environ.get(ADMIN_TOKEN_VARIABLE, "").strip() or None
        service = MailerService(options.config, adminToken=token)
    except ValueError as e:
        # a setting that only the service can check (a DKIM key file, ...)
        raise SystemExit(f"twistd mqtwist: {e}") from None
    # twistd's log observer is in place by the time the service starts;
    # the level holds until the process ends: the services stopped beside
    # it log as they wind down
    LogLevelService(parseLogLevel(options.config.logLevel), untilExit=True).setServiceParent(service)
    ReloadOnHangup(
        service, lambda: configFrom(options, options.environ, options["config"]), service.reactor
    ).setServiceParent(service)
    service.whenFailed().addErrback(_failed, service.reactor)
    return service


def _failed(failure: Failure, reactor: object) -> None:
    # the service has logged the failure already
    stopWithStatus(reactor)
