"""
Tests for L{mqtwist.tap}: the options of C{twistd mqtwist}, where they come
from, how bad values are reported, and the drop-in that makes
C{twistd mqtwist} exist.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IService, IServiceMaker, ServiceMaker
from twisted.logger import LogLevel
from twisted.plugin import getPlugins
from twisted.python import usage
from zope.interface import implementer
from zope.interface.verify import verifyObject

import mqtwist.dataplugin.discovery
import mqtwist.delivery
from mqtwist import CONTINUE, IDataPlugin
from mqtwist.config import Config, DKIMKeyRule, SMTPTimeouts
from mqtwist.config.sources import SETTINGS, TABLE_SETTINGS, readmeTable
from mqtwist.dataplugin.discovery import FoundPlugin
from mqtwist.loglevel import LogLevelService
from mqtwist.tap import Options, makeService

TOP = Path(__file__).resolve().parent.parent


def parse(args: list[str], environ: dict[str, str] | None = None) -> Config:
    """
    Parse C{args} as C{twistd mqtwist} would, with C{environ} as the whole
    environment.
    """
    options = Options(environ or {})
    options.parseOptions(args)
    return options.config


def parseError(args: list[str], environ: dict[str, str] | None = None) -> str:
    """
    The message of the L{usage.UsageError} that parsing C{args} raises.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse(args, environ)
    return str(raised.value)


def attribute(config: Config, path: str) -> Any:
    value: Any = config
    for name in path.split("."):
        value = getattr(value, name)
    return value


def setting(option: str) -> Any:
    (found,) = [each for each in SETTINGS if each.option == option]
    return found


def writeTOML(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mqtwist.toml"
    path.write_text(text)
    return str(path)


#: a rules file that exists: the shipped one
SHIPPED_CATEGORIES = str(Path(mqtwist.delivery.__file__).parent / "categories.toml")

#: An accepted value of each kind of setting, as text and as parsed.
SAMPLES: dict[object, tuple[str, Any]] = {
    int: ("7", 7),
    float: ("2.5", 2.5),
    str: ("some-name", "some-name"),
    str | None: ("relay.example:2525", "relay.example:2525"),
    list[int]: ("5,10,20", [5, 10, 20]),
    list[str]: ("127.0.0.1:53,[::1]:5353", ["127.0.0.1:53", "[::1]:5353"]),
    list[str] | None: ("", []),
}

#: Sample text that suits a setting better than the sample of its kind.
SPECIAL_SAMPLES = {
    "amqp": ("amqp://guest:guest@localhost:5672/%2f", "amqp://guest:guest@localhost:5672/%2f"),
    "security": ("verified", "verified"),
    "logLevel": ("debug", "debug"),
    "categoryRules": (SHIPPED_CATEGORIES, SHIPPED_CATEGORIES),
    "logFormat": ("json", "json"),
    "dkimSign": ("named", "named"),
    "queueType": ("quorum", "quorum"),
    "defaultIps": ("192.0.2.1,2001:db8::1", ["192.0.2.1", "2001:db8::1"]),
    "messageStore": ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    "messageStoreCleanup": ("keep", "keep"),
    "dsnNotify": ("DELAY,FAILURE", "DELAY,FAILURE"),
    "dsnRet": ("FULL", "FULL"),
    "submissionTrustedNetworks": ("10.0.0.0/8,2001:db8::/32", ["10.0.0.0/8", "2001:db8::/32"]),
    "submissionAuthCleartext": ("loopback", "loopback"),
    "submissionTls": ("required", "required"),
    "cluster": ("off", "off"),
}


def hintOf(path: str) -> object:
    import typing

    owner: Any = Config
    *heads, last = path.split(".")
    for head in heads:
        owner = typing.get_type_hints(owner)[head]
    return typing.get_type_hints(owner)[last]


def sampleFor(path: str) -> tuple[str, Any]:
    return SPECIAL_SAMPLES.get(path) or SAMPLES[hintOf(path)]


class TestNames:
    """
    Each attribute of L{Config} is an option, a variable and a TOML key.
    """

    def test_everyConfigAttributeIsASetting(self) -> None:
        paths = {each.path for each in SETTINGS}
        paths |= {attribute for attribute, _ in TABLE_SETTINGS.values()}
        expected = {field.name for field in dataclasses.fields(Config) if field.name != "timeouts"}
        expected |= {f"timeouts.{field.name}" for field in dataclasses.fields(SMTPTimeouts)}
        assert paths == expected

    def test_namesFollowTheAttribute(self) -> None:
        ehlo = setting("ehlo-name")
        assert (ehlo.path, ehlo.environ, ehlo.tomlKey) == (
            "ehloName",
            "MQTWIST_EHLO_NAME",
            ("ehlo-name",),
        )
        perDestination = setting("max-connections-per-destination")
        assert perDestination.environ == "MQTWIST_MAX_CONNECTIONS_PER_DESTINATION"
        connect = setting("timeouts-connect")
        assert (connect.path, connect.environ, connect.tomlKey) == (
            "timeouts.connect",
            "MQTWIST_TIMEOUTS_CONNECT",
            ("timeouts", "connect"),
        )

    def test_everySettingHasHelp(self) -> None:
        assert [each.path for each in SETTINGS if len(each.help) < 10] == []

    def test_helpShowsDefaults(self) -> None:
        helps = {option: text for option, _, _, text in Options({}).optParameters}
        assert helps["prefetch"].endswith("[default: 200]")
        assert helps["retries"].endswith("[default: 600,600,1800,1800,3600,3600,7200]")
        assert helps["timeouts-data"].endswith("[default: 120]")
        assert helps["ehlo-name"].endswith("[default: this host's fully qualified name]")
        assert "[default" not in helps["smarthost"]

    def test_usageListsEveryOption(self) -> None:
        text = Options({}).getUsage(width=200)
        for each in SETTINGS:
            assert f"--{each.option}=" in text
        assert "--config=" in text
        assert "--list-plugins" in text


class TestSources:
    """
    Settings from the command line, the environment and a TOML file.
    """

    def test_defaults(self) -> None:
        assert parse([]) == Config()

    @pytest.mark.parametrize("path", [each.path for each in SETTINGS])
    def test_commandLine(self, path: str) -> None:
        text, value = sampleFor(path)
        option = next(each.option for each in SETTINGS if each.path == path)
        config = parse([f"--{option}={text}"])
        assert attribute(config, path) == value

    @pytest.mark.parametrize("path", [each.path for each in SETTINGS])
    def test_environment(self, path: str) -> None:
        text, value = sampleFor(path)
        variable = next(each.environ for each in SETTINGS if each.path == path)
        assert attribute(parse([], {variable: text}), path) == value

    def test_tomlFile(self, tmp_path: Path) -> None:
        path = writeTOML(
            tmp_path,
            """
            amqp = "amqp://mq.example:5673/mail"
            outbox = "jobs"
            results = ""
            smarthost = "relay.example:587"
            prefetch = 20
            idle-timeout = 2.5
            retries = [60, 120]
            nameservers = ["127.0.0.1:5353"]
            plugins = []
            ehlo-name = "mx.sender.example"

            [timeouts]
            connect = 5
            message = 90.5
            """,
        )
        config = parse(["--config", path])
        assert config.amqp == "amqp://mq.example:5673/mail"
        assert config.outbox == "jobs"
        assert config.results == ""
        assert config.smarthost == "relay.example:587"
        assert config.prefetch == 20
        assert config.idleTimeout == 2.5
        assert config.retries == [60, 120]
        assert config.nameservers == ["127.0.0.1:5353"]
        assert config.plugins == []
        assert config.ehloName == "mx.sender.example"
        assert config.timeouts == SMTPTimeouts(connect=5.0, message=90.5)
        # What the file leaves out keeps its default.
        assert config.concurrency == Config().concurrency

    def test_tomlFileFromEnvironment(self, tmp_path: Path) -> None:
        path = writeTOML(tmp_path, "concurrency = 3\n")
        assert parse([], {"MQTWIST_CONFIG": path}).concurrency == 3

    def test_commandLineConfigWinsOverEnvironmentConfig(self, tmp_path: Path) -> None:
        path = writeTOML(tmp_path, "concurrency = 3\n")
        assert parse(["--config", path], {"MQTWIST_CONFIG": "/nonexistent.toml"}).concurrency == 3

    def test_precedence(self, tmp_path: Path) -> None:
        """
        Command line over environment over TOML file over defaults.
        """
        path = writeTOML(tmp_path, "prefetch = 1\n[timeouts]\nquit = 1\n")
        environ = {"MQTWIST_PREFETCH": "2", "MQTWIST_TIMEOUTS_QUIT": "2"}
        args = ["--config", path]
        assert parse(args + ["--prefetch=3", "--timeouts-quit=3"], environ).prefetch == 3
        assert parse(args + ["--timeouts-quit=3"], environ).timeouts.quit == 3
        assert parse(args, environ).prefetch == 2
        assert parse(args, environ).timeouts.quit == 2
        assert parse(args).prefetch == 1
        assert parse(args).timeouts.quit == 1
        assert parse([]).prefetch == Config().prefetch
        assert parse([]).timeouts.quit == SMTPTimeouts().quit

    def test_emptyUnsetsAnOptionalValue(self, tmp_path: Path) -> None:
        """
        An empty value sets an optional setting back to C{None}, so that a
        later source can undo the smarthost or broker of an earlier one.
        """
        path = writeTOML(tmp_path, 'smarthost = "relay.example:25"\namqp = "amqp://mq/"\n')
        config = parse(["--config", path, "--amqp="], {"MQTWIST_SMARTHOST": ""})
        assert (config.smarthost, config.amqp) == (None, None)

    def test_pluginsNotGivenMeansAll(self) -> None:
        assert parse([]).plugins is None
        assert parse(["--plugins="]).plugins == []

    def test_listSpacesAndEmptyItems(self) -> None:
        assert parse(["--retries", " 5, 10 ,,20 "]).retries == [5, 10, 20]

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as stopped:
            parse(["--version"])
        assert stopped.value.code == 0
        assert capsys.readouterr().out.startswith(f"mqtwist {mqtwist.__version__} (Twisted ")

    def test_otherEnvironmentIgnored(self, capsys: pytest.CaptureFixture[str]) -> None:
        """
        Variables that are not settings are ignored; one that starts with
        C{MQTWIST_}, perhaps misspelt, gets a warning that names it.
        """
        assert parse([], {"MQTWIST_PREFECH": "5", "MQTWIST_HOME": "x", "PATH": "/bin"}) == Config()
        assert capsys.readouterr().err == (
            "twistd mqtwist: warning: MQTWIST_HOME is not a setting, and is ignored; "
            "(see twistd mqtwist --help)\n"
            "twistd mqtwist: warning: MQTWIST_PREFECH is not a setting, and is ignored; "
            "did you mean MQTWIST_PREFETCH? (see twistd mqtwist --help)\n"
        )

    def test_processEnvironmentByDefault(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MQTWIST_OUTBOX", "from-environ")
        options = Options()
        options.parseOptions([])
        assert options.config.outbox == "from-environ"


#: Command lines with a bad value, and what the error must say.
BAD_VALUES = [
    (["--prefetch", "many"], "--prefetch: 'many' is not a whole number"),
    (["--prefetch", "1.5"], "--prefetch: '1.5' is not a whole number"),
    (["--prefetch", "0"], "--prefetch: 0 is too small; give a whole number of 1 or more"),
    (["--concurrency", "-4"], "--concurrency: -4 is too small"),
    (["--max-deliver-time", "-1"], "--max-deliver-time: -1 is negative; give 0 or more"),
    (["--plugin-runs", "0"], "--plugin-runs: 0 is too small"),
    (["--idle-timeout", "-0.5"], "--idle-timeout: -0.5 is negative; give 0 or more"),
    (["--plugin-timeout", "soon"], "--plugin-timeout: 'soon' is not a number"),
    (["--timeouts-connect", "inf"], "--timeouts-connect: inf is not a number"),
    (["--broker-port", "65536"], "--broker-port: 65536 is not a port number; give a port 1-65535"),
    (["--broker-nice", "20"], "--broker-nice: 20 is not a niceness; give -20 (first) to 19 (last)"),
    (["--mx-port", "0"], "--mx-port: 0 is not a port number"),
    (["--retries", "60,soon"], "--retries: 'soon' is not a whole number"),
    (["--retries", "60,-1"], "--retries: -1 is negative"),
    (["--retries", ""], "--retries: the list is empty"),
    (["--delay-buckets", ","], "--delay-buckets: the list is empty"),
    (["--outbox", ""], "--outbox: it is empty; give a name"),
    (["--ehlo-name", " "], "--ehlo-name: it is empty"),
    (["--smarthost", "relay.example"], "--smarthost: 'relay.example' has no port; use host:port"),
    (["--smarthost", "relay.example:smtp"], "--smarthost: 'relay.example:smtp' has no valid port"),
    (["--smarthost", ":25"], "--smarthost: ':25' has no host name"),
    (["--nameservers", "127.0.0.1:99999"], "--nameservers: '127.0.0.1:99999' has no valid port"),
    (["--amqp", "http://mq.example/"], "--amqp: AMQP URL 'http://mq.example/': scheme 'http' is not amqp:// or amqps://"),
    (["--amqp", "amqp:///vhost"], "--amqp: AMQP URL 'amqp:///vhost': no host name"),
]


class TestErrors:
    """
    Bad values are refused with a L{usage.UsageError} that names the option,
    says what is wrong and what is accepted.
    """

    @pytest.mark.parametrize("args, message", BAD_VALUES)
    def test_badValue(self, args: list[str], message: str) -> None:
        assert parseError(args).startswith(message)

    @pytest.mark.parametrize(
        "each",
        [each for each in SETTINGS if hintOf(each.path) in (int, float, list[int])],
        ids=lambda each: each.option,
    )
    def test_everyNumberNamesItsSource(self, each: Any, tmp_path: Path) -> None:
        """
        A value that is not a number names the option, the variable, or the
        key and the file it came from.
        """
        assert parseError([f"--{each.option}=x"]).startswith(f"--{each.option}: 'x' is not a")
        assert parseError([], {each.environ: "x"}).startswith(f"{each.environ}: 'x' is not a")
        table, key = (each.tomlKey[0], each.tomlKey[1]) if len(each.tomlKey) == 2 else ("", each.tomlKey[0])
        path = writeTOML(tmp_path, (f"[{table}]\n" if table else "") + f'{key} = "x"\n')
        where = ".".join(each.tomlKey)
        assert parseError(["--config", path]).startswith(f"{where} in {path}: 'x' is not a")

    def test_passwordNotShown(self) -> None:
        message = parseError(["--amqp", "ftp://user:s3cret@mq.example/"])
        assert "s3cret" not in message
        assert message.startswith("--amqp: ")

    def test_tomlWrongType(self, tmp_path: Path) -> None:
        path = writeTOML(tmp_path, "prefetch = true\n")
        assert parseError(["--config", path]) == (
            f"prefetch in {path}: True is not a whole number; give digits, e.g. 10"
        )
        path = writeTOML(tmp_path, "outbox = 5\n")
        assert parseError(["--config", path]) == f"outbox in {path}: 5 is not a string; give text"
        path = writeTOML(tmp_path, "retries = 60\n")
        assert parseError(["--config", path]).startswith(f"retries in {path}: 60 is not a list")

    def test_tomlUnknownKey(self, tmp_path: Path) -> None:
        path = writeTOML(tmp_path, 'prefetch = 5\nehlo_name = "x"\n')
        assert parseError(["--config", path]) == (
            f"{path}: unknown key 'ehlo_name'; did you mean 'ehlo-name'? "
            "(see twistd mqtwist --help)"
        )
        path = writeTOML(tmp_path, "[timeouts]\nconect = 5\n")
        assert "unknown key 'timeouts.conect'; did you mean 'timeouts.connect'?" in parseError(
            ["--config", path]
        )
        path = writeTOML(tmp_path, "[xyzzy]\nport = 5\n")
        assert parseError(["--config", path]) == (
            f"{path}: unknown key 'xyzzy'; the keys are the long option names "
            "(see twistd mqtwist --help)"
        )

    def test_tomlTimeoutsNotATable(self, tmp_path: Path) -> None:
        path = writeTOML(tmp_path, "timeouts = 5\n")
        assert parseError(["--config", path]) == f"{path}: 'timeouts' must be a table, [timeouts]"

    def test_tomlInvalid(self, tmp_path: Path) -> None:
        path = writeTOML(tmp_path, "prefetch = 5\nconcurrency 10\n")
        message = parseError(["--config", path])
        assert message.startswith(f"--config: {path} is not valid TOML: ")
        assert "line 2" in message

    def test_tomlUnreadable(self, tmp_path: Path) -> None:
        missing = tmp_path / "missing.toml"
        assert parseError(["--config", str(missing)]) == (
            f"--config: cannot read {missing}: No such file or directory; "
            "give the path of a readable TOML file"
        )
        assert parseError([], {"MQTWIST_CONFIG": str(missing)}).startswith(
            f"MQTWIST_CONFIG: cannot read {missing}"
        )

    def test_badValueInEnvironmentWhenCommandLineWins(self) -> None:
        """
        A value that is overridden is not looked at.
        """
        assert parse(["--prefetch", "5"], {"MQTWIST_PREFETCH": "x"}).prefetch == 5


@implementer(IDataPlugin)
class StampPlugin:
    """
    Adds a stamp.
    """

    name = "stamp"

    def smtpOutData(self, context: Any, connection: Any, message: Any) -> Any:
        return CONTINUE


@pytest.fixture
def installedStamp(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Make discovery find one plugin, C{stamp}, whatever is installed.
    """
    found = {"stamp": FoundPlugin(StampPlugin(), "mqtwist.plugins.stamp", "Adds a stamp.")}
    monkeypatch.setattr(mqtwist.dataplugin.discovery, "findPlugins", lambda: dict(found))


class TestPlugins:
    """
    C{--plugins} names installed plugins; C{--list-plugins} shows them.
    """

    def test_knownPlugin(self, installedStamp: None) -> None:
        assert parse(["--plugins", "stamp"]).plugins == ["stamp"]

    def test_unknownPlugin(self, installedStamp: None) -> None:
        message = parseError(["--plugins", "stamp,dkim-extra"])
        assert message.startswith("--plugins: the data plugin 'dkim-extra' ")
        assert "(found: stamp)" in message

    def test_unknownPluginFromEnvironment(self, installedStamp: None) -> None:
        message = parseError([], {"MQTWIST_PLUGINS": "nope"})
        assert message.startswith("MQTWIST_PLUGINS: the data plugin 'nope' ")

    def test_pluginTwice(self, installedStamp: None) -> None:
        assert parseError(["--plugins", "stamp,stamp"]).startswith(
            "--plugins: the data plugin 'stamp' is named twice"
        )

    def test_listPlugins(self, installedStamp: None, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exited:
            # Listing does not depend on the other settings being right.
            Options({"MQTWIST_PREFETCH": "x"}).parseOptions(["--list-plugins"])
        assert exited.value.code == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[1].split() == ["stamp", "mqtwist.plugins.stamp", "Adds", "a", "stamp."]


class TestService:
    """
    L{makeService} makes the service of the parsed configuration.
    """

    def test_makeService(self) -> None:
        options = Options({})
        # A broker URL keeps the service from preparing a private node; the
        # service is not started.
        options.parseOptions(["--amqp", "amqp://guest:guest@127.0.0.1:1/", "--plugins="])
        service = makeService(options)
        assert verifyObject(IService, service)
        assert service.config is options.config  # type: ignore[attr-defined]

    def test_makeServiceFiltersTheLog(self) -> None:
        """
        The service has a L{LogLevelService} child with the level of
        C{--log-level}.
        """
        options = Options({})
        options.parseOptions(
            ["--amqp", "amqp://guest:guest@127.0.0.1:1/", "--plugins=", "--log-level", "WARN"]
        )
        service = makeService(options)
        (levels,) = [child for child in service if isinstance(child, LogLevelService)]  # type: ignore[attr-defined]
        assert levels.level is LogLevel.warn and levels.untilExit

    @pytest.mark.parametrize(
        "files, why",
        [
            (["--tls-certificate", "/nonexistent/client.pem"], "/nonexistent/client.pem: No such file or directory"),
            (["--tls-ca-file", "/nonexistent/ca.pem"], "(tls-ca-file /nonexistent/ca.pem): /nonexistent/ca.pem: No such"),
            (["--tls-certificate", "{notPEM}"], "no start line"),
        ],
    )
    def test_badTLSFilesStopTheStart(self, files: list[str], why: str, tmp_path: Path) -> None:
        """
        TLS files that cannot be loaded stop C{twistd mqtwist} before it
        starts, naming them and the cause, instead of failing every
        STARTTLS later.
        """
        notPEM = tmp_path / "notpem.txt"
        notPEM.write_text("this is not PEM\n")
        options = Options({})
        options.parseOptions(
            ["--amqp", "amqp://guest:guest@127.0.0.1:1/", "--plugins="]
            + [each.format(notPEM=notPEM) for each in files]
        )
        with pytest.raises(SystemExit) as stopped:
            makeService(options)
        message = str(stopped.value)
        assert message.startswith("twistd mqtwist: cannot load the TLS files (tls-")
        assert why in message and "check that each exists" in message

    def test_badLogLevel(self) -> None:
        assert parseError(["--log-level", "verbose"]) == (
            "--log-level: 'verbose' is not a log level; use one of "
            "debug, info, warn, error, critical"
        )


class TestDropIn:
    """
    The C{twisted/plugins} drop-in makes C{twistd mqtwist}.
    """

    def test_noInitModules(self) -> None:
        assert not (TOP / "twisted" / "__init__.py").exists()
        assert not (TOP / "twisted" / "plugins" / "__init__.py").exists()

    def test_found(self) -> None:
        makers = [maker for maker in getPlugins(IServiceMaker) if maker.tapname == "mqtwist"]
        assert len(makers) == 1
        (maker,) = makers
        assert isinstance(maker, ServiceMaker)
        assert maker.module == "mqtwist.tap"
        assert isinstance(maker.options(), Options)

    def test_importsNoReactor(self) -> None:
        """
        Twisted imports every drop-in to list them; this one must not
        install a reactor (or load anything heavy) when it does.
        """
        check = (
            "import sys, twisted.plugins.mqtwist_plugin as m\n"
            "assert m.__file__.startswith(sys.argv[1]), m.__file__\n"
            "loaded = [n for n in ('twisted.internet.reactor', 'mqtwist.tap', 'mqtwist.service')"
            " if n in sys.modules]\n"
            "print(loaded)\n"
        )
        environ = dict(os.environ, PYTHONPATH=str(TOP))
        result = subprocess.run(
            [sys.executable, "-c", check, str(TOP)],
            capture_output=True,
            text=True,
            env=environ,
            cwd=TOP,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"


class TestUnderTwistd:
    """
    What C{twistd mqtwist} itself prints for a bad setting.
    """

    def twistd(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "mqtwist", *arguments],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(TOP)),
            cwd=TOP,
            timeout=60,
        )

    def test_aBadSettingIsOneLine(self) -> None:
        """
        A bad value stops twistd with status 1 and the one line that names
        it, not after twistd's whole --help.
        """
        result = self.twistd("--broker-nice", "99")
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == (
            "twistd mqtwist: --broker-nice: 99 is not a niceness; give -20 (first) to 19 (last) "
            "(twistd mqtwist --help lists every setting)\n"
        )

    def test_anUnknownOptionStillGetsTheHelp(self) -> None:
        result = self.twistd("--no-such-option")
        assert result.returncode == 1
        assert "--max-connections-per-destination" in result.stdout
        assert result.stdout.rstrip().endswith("option --no-such-option not recognized")


class TestReadme:
    """
    README.rst documents every option.
    """

    def test_everyOptionDocumented(self) -> None:
        readme = (TOP / "README.rst").read_text()
        options = Options({})
        names = [parameter[0] for parameter in options.optParameters]
        names += [flag[0] for flag in options.optFlags]
        missing = [name for name in names if f"--{name}" not in readme]
        assert missing == []
        variables = [each.environ for each in SETTINGS] + ["MQTWIST_CONFIG"]
        assert [name for name in variables if name not in readme] == []

    def test_tableIsTheDeclarations(self) -> None:
        """
        The README's table of settings is the one made from their
        declarations: paste the output of C{python -m
        mqtwist.config.sources} after the C{--config} row when this fails.
        """
        readme = (TOP / "README.rst").read_text()
        start = readme.index("   * - ``--config FILE``\n")
        start = readme.index("   * - ``--", start + 1)
        end = readme.index("   * - ``--list-plugins``")
        assert readme[start:end] == readmeTable()

    def test_tomlExampleIsValid(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """
        The TOML example of the README is accepted and means what it says.
        """
        readme = (TOP / "README.rst").read_text()
        start = readme.index(".. code-block:: toml\n\n") + len(".. code-block:: toml\n\n")
        # the block ends at the first text that is not indented
        block = re.split(r"\n(?=\S)", readme[start:], maxsplit=1)[0]
        path = writeTOML(tmp_path, "\n".join(line[4:] for line in block.splitlines()))
        found = FoundPlugin(StampPlugin(), "mqtwist.plugins.stamp_header", "")
        monkeypatch.setattr(mqtwist.dataplugin.discovery, "findPlugins", lambda: {"stamp_header": found})
        config = parse(["--config", path])
        assert config.amqp == "amqps://mailer:secret@mq.example.org:5671/mail?heartbeat=30"
        assert (config.failure, config.retry, config.prefetch) == ("bounces", "", 500)
        assert config.plugins == ["stamp_header"]
        assert config.timeouts == SMTPTimeouts(connect=10, message=300)
        assert config.dkimKeys == [DKIMKeyRule("example.org", "mail2026", "/etc/mqtwist/dkim/example.org.pem")]


def test_badSecurityPolicy() -> None:
    options = Options({})
    with pytest.raises(usage.UsageError, match="--security: 'maybe' is not a TLS policy; use one of optional"):
        options.parseOptions(["--security", "maybe", "--plugins="])


class TestDKIMKeys:
    """
    C{[[dkim-keys]]} tables: signing keys by domain, from the TOML file.
    """

    def test_read(self, tmp_path: Path) -> None:
        path = tmp_path / "mqtwist.toml"
        path.write_text(
            '[[dkim-keys]]\ndomain = "example.org"\nselector = "s1"\nkeyfile = "/etc/k.pem"\n'
        )
        options = Options({})
        options.parseOptions(["--config", str(path), "--plugins="])
        (rule,) = options.config.dkimKeys
        assert (rule.domain, rule.selector, rule.keyfile) == ("example.org", "s1", "/etc/k.pem")

    def test_missingKeyfile(self, tmp_path: Path) -> None:
        path = tmp_path / "mqtwist.toml"
        path.write_text('[[dkim-keys]]\ndomain = "example.org"\nselector = "s1"\n')
        options = Options({})
        with pytest.raises(usage.UsageError, match=r"\[\[dkim-keys\]\] number 1 in .*'keyfile' is missing"):
            options.parseOptions(["--config", str(path), "--plugins="])
