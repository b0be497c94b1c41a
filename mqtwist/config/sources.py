"""
Where settings come from: the command line, C{MQTWIST_*} environment
variables and a TOML file, merged into one L{Config}.

Every setting declared in L{mqtwist.config.settings} (an attribute of
L{Config}, or of a settings class nested in it such as L{SMTPTimeouts})
can be given four ways, its names derived from the attribute's:

    - on the command line: C{ehloName} is C{--ehlo-name}, and
      C{timeouts.connect} is C{--timeouts-connect};
    - in the environment: C{MQTWIST_EHLO_NAME}, C{MQTWIST_TIMEOUTS_CONNECT};
    - in the TOML file named by C{--config}: C{ehlo-name = "..."} at the top,
      C{connect = 30} in a C{[timeouts]} table;
    - not at all, and then the default of L{Config} applies.

Settings that are lists of tables (C{throttles}, C{backoff}) exist in the
TOML file only, as arrays of tables (C{[[throttles]]}).  The command line
wins over the environment, which wins over the TOML file, which wins over
the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping
from typing import Any

from mqtwist.config.settings import DEFAULT_TEXT, HELP, TOML_TABLE, Config, checkValue, kebab


class SettingError(ValueError):
    """
    A setting was given a value it does not take; the text names where the
    value came from (C{--prefetch}, C{MQTWIST_PREFETCH}, C{prefetch in
    /etc/mqtwist.toml}), what is wrong and what is accepted.
    """


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


@dataclasses.dataclass(frozen=True)
class Setting:
    """
    One setting and the names it goes by.
    """

    #: C{"ehloName"}, or C{"timeouts.connect"} for a nested one
    path: str
    #: the long option without dashes, C{"ehlo-name"}
    option: str
    #: C{"MQTWIST_EHLO_NAME"}
    environ: str
    #: where it sits in the TOML file: C{("ehlo-name",)}, C{("timeouts", "connect")}
    tomlKey: tuple[str, ...]
    #: the declaration (L{mqtwist.config.settings.setting})
    declaration: dataclasses.Field[Any]
    parse: Callable[[object], Any]

    @property
    def help(self) -> str:
        """
        What the setting does, without its default.
        """
        return str(self.declaration.metadata[HELP])

    @property
    def default(self) -> str:
        """
        The default as C{--help} and the README show it; C{""} for none.
        """
        text = self.declaration.metadata.get(DEFAULT_TEXT)
        if text is not None:
            return str(text)
        value: Any = self.declaration.default
        if value is dataclasses.MISSING:
            value = self.declaration.default_factory()  # type: ignore[operator]
        if value is None:
            return ""
        if isinstance(value, list):
            return ",".join(str(item) for item in value)
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    def value(self, given: object) -> Any:
        """
        Parse and check C{given}.

        @raise ValueError: saying what is wrong and what is accepted.
        """
        value = self.parse(given)
        checkValue(self.declaration, value)
        return value


def _settingsOf(cls: type, prefix: tuple[str, ...] = ()) -> list[Setting]:
    settings = []
    hints = typing.get_type_hints(cls)
    for declaration in dataclasses.fields(cls):
        if TOML_TABLE in declaration.metadata:
            continue
        names = prefix + (declaration.name,)
        hint = hints[declaration.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            settings.extend(_settingsOf(hint, names))
            continue
        if hint not in _PARSERS:
            raise TypeError(f"mqtwist.config.sources has no parser for {hint!r}; add one to _PARSERS")
        option = "-".join(kebab(name) for name in names)
        settings.append(
            Setting(
                path=".".join(names),
                option=option,
                environ="MQTWIST_" + option.upper().replace("-", "_"),
                tomlKey=tuple(kebab(name) for name in names),
                declaration=declaration,
                parse=_PARSERS[hint],
            )
        )
    return settings


#: Every setting of L{Config}, in the order of its attributes.
SETTINGS: list[Setting] = _settingsOf(Config)

#: The settings that are TOML arrays of tables: TOML key -> (attribute,
#: reader of one table).
TABLE_SETTINGS: dict[str, tuple[str, Callable[[Mapping[str, Any], str], Any]]] = {
    kebab(declaration.name): (declaration.name, declaration.metadata[TOML_TABLE])
    for declaration in dataclasses.fields(Config)
    if TOML_TABLE in declaration.metadata
}

#: the variable that names the TOML file, as C{--config} does
CONFIG_VARIABLE = "MQTWIST_CONFIG"
#: the admin API's token, which is no setting: a setting is an option too,
#: and the command line is what ps shows
ADMIN_TOKEN_VARIABLE = "MQTWIST_ADMIN_TOKEN"


def configFrom(
    commandLine: Mapping[str, object],
    environ: Mapping[str, str],
    configFile: str | None = None,
    sources: dict[str, str] | None = None,
) -> Config:
    """
    The configuration from the TOML file, the environment and the command
    line, the later winning.

    @param commandLine: values given on the command line, by option name
        without dashes (C{"ehlo-name"}); C{None} for an option not given.
    @param environ: where C{MQTWIST_*} variables (and C{MQTWIST_CONFIG})
        are read.
    @param configFile: the TOML file of C{--config}; C{None} reads the one
        C{MQTWIST_CONFIG} names, if any.
    @param sources: filled with where each given setting came from, by
        attribute path (C{"plugins"}: C{"MQTWIST_PLUGINS"}), to name it in
        a later error.
    @raise SettingError: naming the option, variable or TOML key that has a
        bad value, what is wrong with it and what is accepted.
    """
    given: dict[str, tuple[object, str]] = {}
    source = "--config"
    if configFile is None:
        configFile, source = environ.get(CONFIG_VARIABLE) or None, CONFIG_VARIABLE
    if configFile is not None:
        given.update(_readTOML(configFile, source))
    for setting in SETTINGS:
        if setting.environ in environ:
            given[setting.path] = (environ[setting.environ], setting.environ)
        if commandLine.get(setting.option) is not None:
            given[setting.path] = (commandLine[setting.option], f"--{setting.option}")
    if sources is not None:
        sources.update((path, source) for path, (_, source) in given.items())
    return _buildConfig(given)


def warnOfUnknownVariables(environ: Mapping[str, str]) -> None:
    """
    Warn on standard error (the log has not started yet) of each
    C{MQTWIST_} variable that is not a setting: a misspelt one would be
    ignored without a word.  Other programs may have C{MQTWIST_} variables
    of their own, hence a warning, not an error.
    """
    known = [setting.environ for setting in SETTINGS] + [CONFIG_VARIABLE, ADMIN_TOKEN_VARIABLE]
    for name in sorted(environ):
        if name.startswith("MQTWIST_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            hint = f"did you mean {close[0]}? " if close else ""
            sys.stderr.write(
                f"twistd mqtwist: warning: {name} is not a setting, and is ignored; "
                f"{hint}(see twistd mqtwist --help)\n"
            )


def _readTOML(path: str, source: str) -> dict[str, tuple[object, str]]:
    """
    Read the settings of a TOML file.

    @return: attribute path -> (value, where it came from).
    @raise SettingError: when the file cannot be read, is not TOML or has a
        key that is not a setting.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise SettingError(
            f"{source}: cannot read {path}: {e.strerror}; give the path of a readable TOML file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise SettingError(f"{source}: {path} is not valid TOML: {e}") from None
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
                raise SettingError(f"{path}: {key!r} must be a table, [{key}]")
            entries = [((key, inner), innerValue) for inner, innerValue in value.items()]
        else:
            entries = [((key,), value)]
        for tomlKey, entryValue in entries:
            if tomlKey not in byKey:
                raise SettingError(f"{path}: {_unknownKey(tomlKey, byKey)}")
            where = ".".join(tomlKey)
            given[byKey[tomlKey].path] = (entryValue, f"{where} in {path}")
    return given


def _unknownKey(tomlKey: tuple[str, ...], byKey: Mapping[tuple[str, ...], Setting]) -> str:
    name = ".".join(tomlKey)
    known = [".".join(key) for key in byKey]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "the keys are the long option names"
    return f"unknown key {name!r}; {hint} (see twistd mqtwist --help)"


def _readTables(key: str, value: object, path: str) -> list[Any]:
    """
    Read an array of tables such as C{[[throttles]]}.

    @raise SettingError: naming the table and what is wrong.
    """
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise SettingError(f"{path}: {key!r} must be an array of tables, [[{key}]]")
    readTable = TABLE_SETTINGS[key][1]
    try:
        return [readTable(table, f"[[{key}]] number {n} in {path}") for n, table in enumerate(value, 1)]
    except ValueError as e:
        raise SettingError(str(e)) from None


def _buildConfig(given: Mapping[str, tuple[object, str]]) -> Config:
    """
    Make the L{Config} of the given settings, defaults for the others.

    @param given: attribute path -> (raw value, where it came from).
    @raise SettingError: naming the source of a bad value.
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
            raise SettingError(f"{source}: {e}") from None
        head, _, inner = setting.path.partition(".")
        if inner:
            nested.setdefault(head, {})[inner] = value
        else:
            values[head] = value
    hints = typing.get_type_hints(Config)
    for head, innerValues in nested.items():
        values[head] = hints[head](**innerValues)
    try:
        return Config(**values)
    except ValueError as e:
        # settings each good alone, refused together (Config.check)
        raise SettingError(str(e)) from None


def readmeTable() -> str:
    """
    The rows of the README's table of settings, one a setting, in the
    order of L{SETTINGS}: what C{tests/test_tap.py} compares the README
    with, and what to paste there after adding or changing a setting
    (C{python -m mqtwist.config.sources}).
    """
    rows = []
    for setting in SETTINGS:
        default = setting.default
        # a default described in words is no literal to quote
        if default and not setting.declaration.metadata.get(DEFAULT_TEXT):
            default = f"``{default}``"
        rows.append(
            f"   * - ``--{setting.option}``\n"
            f"     - ``{setting.environ}``\n"
            f"     - {default}\n".replace(" \n", "\n")
            + f"     - {setting.help}\n"
        )
    return "".join(rows)


if __name__ == "__main__":
    sys.stdout.write(readmeTable())
