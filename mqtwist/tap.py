"""
The C{twistd mqtwist} command: its options and the service they make.

Every attribute of L{Config} (and of its nested L{SMTPTimeouts}) is a
setting that can be given four ways, derived from the attribute's name so
that no name is written twice:

    - on the command line: C{ehloName} is C{--ehlo-name}, and
      C{timeouts.connect} is C{--timeouts-connect};
    - in the environment: C{MQTWIST_EHLO_NAME}, C{MQTWIST_TIMEOUTS_CONNECT};
    - in the TOML file named by C{--config}: C{ehlo-name = "..."} at the top,
      C{connect = 30} in a C{[timeouts]} table;
    - not at all, and then the default of L{Config} applies.

Settings that are lists of tables (C{throttles}, C{backoff}) exist in the
TOML file only, as arrays of tables (C{[[throttles]]}); the attribute's
C{toml} metadata is the function that reads one table.

The command line wins over the environment, which wins over the TOML file,
which wins over the defaults.
"""

from __future__ import annotations

import atexit
import dataclasses
import difflib
import math
import platform
import os
import re
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import IService
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from mqtwist.amqp.url import BrokerURL
from mqtwist.config import Config
from mqtwist.hostport import parseHostPort
from mqtwist.loglevel import LogLevelService, parseLogLevel
from mqtwist.smtp.tls import POLICIES as TLS_POLICIES

#: The help of every setting, by attribute path; the default is appended.
_HELP: dict[str, str] = {
    "amqp": "RabbitMQ URL, amqp[s]://user:password@host:port/vhost?heartbeat=30; "
    "when not given, mqtwist starts a private RabbitMQ node of its own",
    "brokerDir": "directory where the private RabbitMQ node keeps its data",
    "brokerPort": "AMQP port of the private RabbitMQ node",
    "brokerNice": "CPU priority (nice, -20 to 19) of the private RabbitMQ node; "
    "above 0 it leaves the CPU to mqtwist first",
    "outbox": "queue that delivery jobs are taken from",
    "results": "queue that receives every final result (empty: none)",
    "success": "queue that receives the results of delivered messages (empty: none)",
    "failure": "queue that receives the results of failed messages (empty: none)",
    "retry": "queue that receives a notice of every attempt to be retried (empty: none)",
    "smarthost": "host:port of a relay that takes all mail instead of MX delivery",
    "mxPort": "TCP port used for delivery to MX hosts",
    "nameservers": "comma-separated host:port of the DNS servers for MX lookups "
    "(empty: those of /etc/resolv.conf)",
    "plugins": "comma-separated names of the data plugins to run, in order "
    "(not given: every plugin found, ordered by name; empty: none)",
    "pluginTimeout": "seconds a data plugin may take before it is cancelled",
    "pluginRuns": "how many times the plugin chain runs before the attempt fails",
    "pluginRetryDelay": "seconds between two runs of the plugin chain",
    "prefetch": "outbox messages handed to this process before it acknowledges any",
    "concurrency": "deliveries in progress at once",
    "ehloName": "the name this host gives in EHLO/HELO",
    "security": "TLS policy of messages without 'security': optional (TLS when offered), "
    "opportunistic (TLS when offered, in clear if the handshake fails), required (TLS "
    "or no delivery) or verified (TLS with a certificate valid for the MX host name)",
    "tlsCertificate": "PEM file with the client certificate (and key, unless "
    "--tls-key) shown to servers that ask for one",
    "tlsKey": "PEM file with the private key of --tls-certificate",
    "tlsCaFile": "PEM file of the CA certificates trusted by the 'verified' policy "
    "(not given: the system's)",
    "smarthostUsername": "AUTH user name for --smarthost",
    "smarthostPassword": "AUTH password for --smarthost (prefer the environment or "
    "the TOML file to the command line)",
    "authCleartextHosts": "comma-separated host names (or *) to which AUTH may be "
    "sent on a connection without TLS",
    "maxConnectionsPerDestination": "SMTP connections open at once to one destination",
    "maxMessagesPerConnection": "messages one SMTP connection carries before it is closed",
    "idleTimeout": "seconds an unused SMTP connection stays open for the next message",
    "timeouts.connect": "seconds to wait for a TCP connection to an SMTP server",
    "timeouts.greeting": "seconds to wait for the SMTP greeting",
    "timeouts.ehlo": "seconds to wait for the reply to EHLO/HELO",
    "timeouts.mailfrom": "seconds to wait for the reply to MAIL FROM",
    "timeouts.rcptto": "seconds to wait for the reply to RCPT TO",
    "timeouts.data": "seconds to wait for the reply to DATA",
    "timeouts.message": "seconds to wait for the reply after the message body",
    "timeouts.rset": "seconds to wait for the reply to RSET",
    "timeouts.quit": "seconds to wait for the reply to QUIT",
    "timeouts.starttls": "seconds to wait for the reply to STARTTLS, and then for the "
    "TLS handshake",
    "timeouts.auth": "seconds to wait for each reply of the AUTH exchange",
    "retries": "comma-separated seconds between attempts for messages without "
    "'retries'; the last one repeats",
    "maxDeliverTime": "seconds after the first attempt when a message without "
    "'maxdelivertime' expires",
    "delayBuckets": "comma-separated delays, in seconds, that have a delay queue of their "
    "own; a retry delay is rounded up to the next one",
    "deadLetterQueue": "queue that takes a copy of each outbox message that cannot be "
    "settled with a result, the reason in its x-mqtwist-reason header (empty: such a "
    "message is dropped, with a log line)",
    "settleAttempts": "times the broker may fail to confirm the results of an outbox "
    "message before the message, when it comes back, goes to the dead-letter queue",
    "maxJobBytes": "bytes an outbox job may have, its mime included; a bigger one is "
    "refused as process/invalid",
    "maxJobDepth": "objects and lists inside one another that an outbox job may have",
    "maxJobItems": "keys of one object, or items of one list, that an outbox job may have",
    "maxJobString": "characters of one string of an outbox job outside its mime",
    "shutdownTimeout": "seconds that stopping waits for deliveries in flight",
    "reconnectMaxDelay": "the longest wait, in seconds, between reconnection attempts to "
    "RabbitMQ",
    "dnsTimeout": "seconds a DNS query may take, retransmissions included",
    "dnsMinCacheTime": "seconds an MX lookup stays cached at least, whatever its TTL",
    "mxAddressesPerAttempt": "addresses of a domain's mail exchangers tried within one "
    "attempt, in MX order, when one refuses, times out or answers 421",
    "messagesPerMinute": "messages per minute to one destination, in this process "
    "(0: no limit)",
    "connectionsPerMinute": "new SMTP connections per minute to one destination, in this "
    "process (0: no limit)",
    "destinationBacklog": "messages per destination that wait in this process for a "
    "connection; more are parked in a delay queue",
    "stuckAfter": "seconds without an ended delivery after which a busy destination counts "
    "as stuck, and only --destination-backlog of its messages wait",
    "stuckAfterOthers": "deliveries to other destinations that may end while a destination "
    "with messages waiting ends none, before it counts as stuck too (0: no such limit)",
    "parkDelay": "seconds a message is parked when its destination is busy",
    "parkDelayMax": "the longest a message is parked, in seconds: every deferral in a row "
    "doubles its park time (from the pause or --park-delay) up to this",
    "deferralLogInterval": "seconds over which the deferrals of one destination are "
    "gathered into one log line (0: a line for each)",
    "greylistDelay": "seconds until a greylisted message is tried again",
    "downAfterFailures": "failed connections in a row after which a destination is "
    "marked down",
    "downTime": "seconds a destination stays marked down",
    "dkimKeyCache": "DKIM private keys sent in messages that stay parsed, least recently "
    "used dropped first",
    "logLevel": "lowest level of the log events written: debug (every SMTP command and "
    "reply), info, warn, error or critical",
}

#: Defaults that are not a fixed value, described instead of computed (a
#: host name lookup has no place in C{--help}).
_DEFAULT_TEXT: dict[str, str] = {"ehloName": "this host's fully qualified name"}


def _parseStr(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string; give text")
    return value.strip()


def _parseInt(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number; give digits, e.g. 10")
    return value


def _parseFloat(value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a number; give a number of seconds, e.g. 2.5")
    return float(value)


def _listOf(parseItem: Callable[[object], Any]) -> Callable[[object], list[Any]]:
    def parse(value: object) -> list[Any]:
        if isinstance(value, str):
            items: list[object] = [item for item in value.split(",") if item.strip()]
        elif isinstance(value, list):
            items = value
        else:
            raise ValueError(f"{value!r} is not a list; give comma-separated values")
        return [parseItem(item) for item in items]

    return parse


def _parseOptionalStr(value: object) -> str | None:
    # Empty means "not set", so that a later source can undo an earlier one
    # (MQTWIST_SMARTHOST= overrides the smarthost of the TOML file).
    return _parseStr(value) or None


_PARSERS: dict[object, Callable[[object], Any]] = {
    str: _parseStr,
    str | None: _parseOptionalStr,
    int: _parseInt,
    float: _parseFloat,
    list[str]: _listOf(_parseStr),
    # Only "not given" is None; an empty list is a list (--plugins= runs none).
    list[str] | None: _listOf(_parseStr),
    list[int]: _listOf(_parseInt),
}


def _parserFor(hint: object) -> Callable[[object], Any]:
    """
    The function that turns a command-line, environment or TOML value into a
    value of type C{hint}, raising C{ValueError} that says what is accepted.
    """
    if hint not in _PARSERS:
        raise TypeError(f"mqtwist.tap has no option type for {hint!r}; add one to _PARSERS")
    return _PARSERS[hint]


def _checkNotNegative(value: float) -> None:
    if value < 0:
        raise ValueError(f"{value:g} is negative; give 0 or more")


def _checkPositive(value: int) -> None:
    if value < 1:
        raise ValueError(f"{value} is too small; give a whole number of 1 or more")


def _checkPort(value: int) -> None:
    if not 0 < value < 65536:
        raise ValueError(f"{value} is not a port number; give a port 1-65535")


def _checkNiceness(value: int) -> None:
    if not -20 <= value <= 19:
        raise ValueError(f"{value} is not a niceness; give -20 (first) to 19 (last)")


def _checkNotEmpty(value: str) -> None:
    if not value:
        raise ValueError("it is empty; give a name")


def _checkHostPort(value: str | None) -> None:
    if value is None:
        return
    if parseHostPort(value, 0)[1] == 0:
        raise ValueError(f"{value!r} has no port; use host:port, e.g. relay.example.com:587")


def _checkNameservers(values: list[str]) -> None:
    for value in values:
        parseHostPort(value, 53)


def _checkAMQPURL(value: str | None) -> None:
    if value is not None:
        BrokerURL.parse(value)


def _checkDelays(values: list[int]) -> None:
    if not values:
        raise ValueError("the list is empty; give at least one number of seconds")
    for value in values:
        _checkNotNegative(value)


#: What a value must be beyond its type, by attribute path; a number that
#: is not here must not be negative.
def _checkSecurity(value: str) -> None:
    if value not in TLS_POLICIES:
        raise ValueError(f"{value!r} is not a TLS policy; use one of {', '.join(TLS_POLICIES)}")


def _checkLogLevel(value: str) -> None:
    parseLogLevel(value)


_CHECKS: dict[str, Callable[[Any], None]] = {
    "amqp": _checkAMQPURL,
    "brokerPort": _checkPort,
    "brokerNice": _checkNiceness,
    "outbox": _checkNotEmpty,
    "smarthost": _checkHostPort,
    "mxPort": _checkPort,
    "nameservers": _checkNameservers,
    "pluginRuns": _checkPositive,
    "settleAttempts": _checkPositive,
    "maxJobBytes": _checkPositive,
    "maxJobDepth": _checkPositive,
    "maxJobItems": _checkPositive,
    "maxJobString": _checkPositive,
    "prefetch": _checkPositive,
    "concurrency": _checkPositive,
    "ehloName": _checkNotEmpty,
    "maxConnectionsPerDestination": _checkPositive,
    "maxMessagesPerConnection": _checkPositive,
    "retries": _checkDelays,
    "delayBuckets": _checkDelays,
    "security": _checkSecurity,
    "logLevel": _checkLogLevel,
}


@dataclasses.dataclass(frozen=True)
class _Setting:
    """
    One attribute of L{Config} and the names it goes by.
    """

    #: C{"ehloName"}, or C{"timeouts.connect"} for a nested one
    path: str
    #: the long option without dashes, C{"ehlo-name"}
    option: str
    #: C{"MQTWIST_EHLO_NAME"}
    environ: str
    #: where it sits in the TOML file: C{("ehlo-name",)}, C{("timeouts", "connect")}
    tomlKey: tuple[str, ...]
    parse: Callable[[object], Any]
    help: str

    def value(self, given: object) -> Any:
        """
        Parse and check C{given}.

        @raise ValueError: saying what is wrong and what is accepted.
        """
        value = self.parse(given)
        if self.path in _CHECKS:
            _CHECKS[self.path](value)
        elif isinstance(value, (int, float)):
            _checkNotNegative(value)
        return value


def _kebab(name: str) -> str:
    return re.sub(r"(?=[A-Z])", "-", name).lower()


def _describeDefault(field: dataclasses.Field[Any], path: str) -> str:
    if path in _DEFAULT_TEXT:
        return _DEFAULT_TEXT[path]
    value: Any = field.default
    if value is dataclasses.MISSING:
        value = field.default_factory()  # type: ignore[misc,operator]
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _settingsOf(cls: type, prefix: tuple[str, ...] = ()) -> list[_Setting]:
    settings = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "toml" in field.metadata:
            continue
        names = prefix + (field.name,)
        hint = hints[field.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            settings.extend(_settingsOf(hint, names))
            continue
        path = ".".join(names)
        option = "-".join(_kebab(name) for name in names)
        default = _describeDefault(field, path)
        settings.append(
            _Setting(
                path=path,
                option=option,
                environ="MQTWIST_" + option.upper().replace("-", "_"),
                tomlKey=tuple(_kebab(name) for name in names),
                parse=_parserFor(hint),
                help=_HELP.get(path, "") + (f" [default: {default}]" if default else ""),
            )
        )
    return settings


#: Every setting of L{Config}, in the order of its attributes.
SETTINGS: list[_Setting] = _settingsOf(Config)


#: The settings that are TOML arrays of tables: TOML key -> (attribute,
#: reader of one table).
TABLE_SETTINGS: dict[str, tuple[str, Callable[[Mapping[str, Any], str], Any]]] = {
    _kebab(field.name): (field.name, field.metadata["toml"])
    for field in dataclasses.fields(Config)
    if "toml" in field.metadata
}


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
    ] + [[setting.option, None, None, setting.help] for setting in SETTINGS]

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
        self._warnOfUnknownVariables()
        try:
            self.config = self._settings()
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            # under twistd (our parent options), whose answer to a usage
            # error is its whole --help, about 190 lines, before the one
            # that says what is wrong: a journal would hold those for
            # every failed restart
            raise SystemExit(f"twistd mqtwist: {error} (twistd mqtwist --help lists every setting)") from None

    def _settings(self) -> Config:
        """
        The configuration from the TOML file, the environment and the
        command line, the later winning.

        @raise usage.UsageError: as L{postOptions} says.
        """
        given: dict[str, tuple[object, str]] = {}
        configFile, configSource = self._configFile()
        if configFile is not None:
            given.update(_readTOML(configFile, configSource))
        for setting in SETTINGS:
            if setting.environ in self.environ:
                given[setting.path] = (self.environ[setting.environ], setting.environ)
            if self[setting.option] is not None:
                given[setting.path] = (self[setting.option], f"--{setting.option}")
        config = _buildConfig(given)
        if config.plugins is not None:
            self._checkPluginNames(config.plugins, given["plugins"][1])
        return config

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

    def _warnOfUnknownVariables(self) -> None:
        # a misspelt variable would be ignored without a word; other
        # programs may have MQTWIST_ variables of their own, hence a warning
        # on standard error (the log has not started yet), not an error
        known = [setting.environ for setting in SETTINGS] + ["MQTWIST_CONFIG"]
        for name in sorted(self.environ):
            if name.startswith("MQTWIST_") and name not in known:
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
                hint = f"did you mean {close[0]}? " if close else ""
                sys.stderr.write(
                    f"twistd mqtwist: warning: {name} is not a setting, and is ignored; "
                    f"{hint}(see twistd mqtwist --help)\n"
                )

    def _configFile(self) -> tuple[str | None, str]:
        if self["config"] is not None:
            return self["config"], "--config"
        return self.environ.get("MQTWIST_CONFIG") or None, "MQTWIST_CONFIG"

    def _listPlugins(self) -> None:
        from mqtwist.discovery import describePlugins

        try:
            sys.stdout.write(describePlugins())
        except ValueError as e:
            raise usage.UsageError(f"--list-plugins: {e}")

    def _checkPluginNames(self, names: list[str], source: str) -> None:
        from mqtwist.discovery import selectPlugins

        try:
            selectPlugins(names)
        except ValueError as e:
            raise usage.UsageError(f"{source}: {e}")


def _readTOML(path: str, source: str) -> dict[str, tuple[object, str]]:
    """
    Read the settings of a TOML file.

    @return: attribute path -> (value, where it came from).
    @raise usage.UsageError: when the file cannot be read, is not TOML or
        has a key that is not a setting.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(
            f"{source}: cannot read {path}: {e.strerror}; give the path of a readable TOML file"
        )
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"{source}: {path} is not valid TOML: {e}")
    byKey = {setting.tomlKey: setting for setting in SETTINGS}
    tables = {key[0] for key in byKey if len(key) > 1}
    given: dict[str, tuple[object, str]] = {}
    for key, value in document.items():
        if key in TABLE_SETTINGS:
            given[TABLE_SETTINGS[key][0]] = (_readTables(key, value, path), f"{key} in {path}")
            continue
        entries: list[tuple[tuple[str, ...], object]]
        if key in tables:
            if not isinstance(value, dict):
                raise usage.UsageError(f"{path}: {key!r} must be a table, [{key}]")
            entries = [((key, inner), innerValue) for inner, innerValue in value.items()]
        else:
            entries = [((key,), value)]
        for tomlKey, entryValue in entries:
            if tomlKey not in byKey:
                raise usage.UsageError(f"{path}: {_unknownKey(tomlKey, byKey)}")
            where = ".".join(tomlKey)
            given[byKey[tomlKey].path] = (entryValue, f"{where} in {path}")
    return given


def _unknownKey(tomlKey: tuple[str, ...], byKey: Mapping[tuple[str, ...], _Setting]) -> str:
    name = ".".join(tomlKey)
    known = [".".join(key) for key in byKey]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "the keys are the long option names"
    return f"unknown key {name!r}; {hint} (see twistd mqtwist --help)"


def _readTables(key: str, value: object, path: str) -> list[Any]:
    """
    Read an array of tables such as C{[[throttles]]}.

    @raise usage.UsageError: naming the table and what is wrong.
    """
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise usage.UsageError(f"{path}: {key!r} must be an array of tables, [[{key}]]")
    readTable = TABLE_SETTINGS[key][1]
    try:
        return [readTable(table, f"[[{key}]] number {n} in {path}") for n, table in enumerate(value, 1)]
    except ValueError as e:
        raise usage.UsageError(str(e))


def _buildConfig(given: Mapping[str, tuple[object, str]]) -> Config:
    """
    Make the L{Config} of the given settings, defaults for the others.

    @param given: attribute path -> (raw value, where it came from).
    @raise usage.UsageError: naming the source of a bad value.
    """
    values: dict[str, Any] = {
        attribute: given[attribute][0]
        for attribute, _ in TABLE_SETTINGS.values()
        if attribute in given
    }
    nested: dict[str, dict[str, Any]] = {}
    for setting in SETTINGS:
        if setting.path not in given:
            continue
        raw, source = given[setting.path]
        try:
            value = setting.value(raw)
        except ValueError as e:
            raise usage.UsageError(f"{source}: {e}")
        head, _, inner = setting.path.partition(".")
        if inner:
            nested.setdefault(head, {})[inner] = value
        else:
            values[head] = value
    hints = typing.get_type_hints(Config)
    for head, innerValues in nested.items():
        values[head] = hints[head](**innerValues)
    return Config(**values)


#: The exit status of C{twistd mqtwist} when mqtwist cannot work (its
#: private RabbitMQ node did not start or ended): not 0, so that a
#: supervisor (systemd's C{Restart=on-failure}) starts it again.
FAILURE_EXIT_STATUS = 1

log = Logger()


def makeService(options: Options) -> IService:
    """
    The service of C{twistd mqtwist}: a L{mqtwist.service.MailerService}
    with the parsed configuration, and a L{LogLevelService} child that
    keeps events below C{logLevel} from twistd's log.  When the service
    cannot work (see L{MailerService.whenFailed}), twistd stops it as on
    SIGTERM and exits with L{FAILURE_EXIT_STATUS}.
    """
    from mqtwist.service import MailerService

    try:
        service = MailerService(options.config)
    except ValueError as e:
        # a setting that only the service can check (a DKIM key file, ...)
        raise SystemExit(f"twistd mqtwist: {e}") from None
    # twistd's log observer is in place by the time the service starts
    # the level holds until the process ends: the services stopped beside
    # it log as they wind down
    LogLevelService(parseLogLevel(options.config.logLevel), untilExit=True).setServiceParent(service)
    service.whenFailed().addErrback(_stopTwistd, service.reactor)
    return service


def _stopTwistd(failure: Failure, reactor: Any) -> None:
    """
    Stop the reactor, which stops the services as SIGTERM does, and make
    the process exit with L{FAILURE_EXIT_STATUS}.  The service has logged
    C{failure} already.
    """
    log.info(
        "twistd mqtwist stops, and exits with status {status} for its supervisor to start it again",
        status=FAILURE_EXIT_STATUS,
    )
    # twistd has no exit status to set: once its reactor has stopped (every
    # shutdown trigger run, the services stopped), it removes its pid file,
    # logs "Server Shut Down." and returns, and the process exits 0.  Only
    # exit handlers run later, and SystemExit raised in one is ignored: this
    # one ends the process itself, once what is buffered is written (the
    # handlers registered before it, such as the standard library's
    # logging.shutdown, which twistd's log does not use, do not run).
    atexit.register(_exit, FAILURE_EXIT_STATUS)
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
