"""
Finding the installed data plugins and choosing the ones to run.

Plugins are the objects providing L{IDataPlugin} in the modules of the
L{mqtwist.plugins} package, which spans every C{mqtwist/plugins/} folder on
C{sys.path} (see that package).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from twisted.logger import Logger
from twisted.plugin import getCache

import mqtwist.plugins
from mqtwist.dataplugin.interfaces import IDataPlugin

__all__ = [
    "FoundPlugin",
    "describePlugins",
    "discoverPlugins",
    "findPlugins",
    "selectPlugins",
]

log = Logger()


@dataclass(frozen=True)
class FoundPlugin:
    """
    A discovered plugin and where it came from.
    """

    plugin: IDataPlugin
    #: the plugin module, as C{mqtwist.plugins.NAME}
    module: str
    #: the first paragraph of the plugin's class docstring (else its
    #: module's), on one line
    summary: str

    @property
    def name(self) -> str:
        name: str = self.plugin.name
        return name


def _summary(docstring: str | None) -> str:
    """
    The first paragraph of a docstring on one line: its summary, even when
    that is wrapped over two lines.
    """
    paragraph = (docstring or "").strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split())


def findPlugins() -> dict[str, FoundPlugin]:
    """
    Find the installed data plugins, with their modules.

    This is C{twisted.plugin.getPlugins(IDataPlugin, mqtwist.plugins)}
    written out, because the module of each plugin is wanted for messages
    and listings and C{getPlugins} does not give it.  The same object found
    in two modules (one imported it from the other) counts once.

    @return: the plugins by name, ordered by name.
    @raise ValueError: if two plugins have the same name, naming both
        modules, or a plugin's name is not a non-empty C{str}.
    """
    found: dict[str, FoundPlugin] = {}
    for dropin in getCache(mqtwist.plugins).values():
        for cached in dropin.plugins:
            try:
                plugin = IDataPlugin(cached, None)
            except Exception:
                # A module that broke after it was cached: skip it, as
                # getPlugins does, but say which.
                log.failure(
                    "cannot load the plugin {plugin} from {module}",
                    plugin=cached.name,
                    module=dropin.moduleName,
                )
                continue
            if plugin is None:
                continue
            name = getattr(plugin, "name", None)
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"the data plugin {cached.name} in {dropin.moduleName} has "
                    f"the name {name!r}; give it a non-empty str name"
                )
            if name in found:
                if found[name].plugin is plugin:
                    continue
                raise ValueError(
                    f"two data plugins are called {name!r}: one in "
                    f"{found[name].module}, one in {dropin.moduleName}; "
                    f"uninstall one of them or rename it"
                )
            summary = _summary(type(plugin).__doc__) or _summary(
                dropin.description
            )
            found[name] = FoundPlugin(plugin, dropin.moduleName, summary)
    return dict(sorted(found.items()))


def discoverPlugins() -> dict[str, IDataPlugin]:
    """
    The installed data plugins by name, ordered by name.

    @raise ValueError: as L{findPlugins}.
    """
    return {name: found.plugin for name, found in findPlugins().items()}


def selectPlugins(
    names: Sequence[str] | None,
    available: Mapping[str, IDataPlugin] | None = None,
) -> list[IDataPlugin]:
    """
    The plugins to run, in the order they run.

    @param names: plugin names in the order wanted (the C{plugins} setting);
        C{None} for all of them ordered by name.
    @param available: the plugins to choose from; L{discoverPlugins}C{()}
        if C{None}.
    @raise ValueError: if a name is unknown (naming it and what was found)
        or given twice.
    """
    if available is None:
        available = discoverPlugins()
    if names is None:
        return [available[name] for name in sorted(available)]
    selected: list[IDataPlugin] = []
    for name in names:
        if name not in available:
            known = ", ".join(sorted(available)) or "none"
            raise ValueError(
                f"the data plugin {name!r} named in the plugins setting is not "
                f"installed (found: {known}); install the distribution that "
                f"provides it, or remove it from the setting"
            )
        if available[name] in selected:
            raise ValueError(
                f"the data plugin {name!r} is named twice in the plugins "
                f"setting; name each plugin once"
            )
        selected.append(available[name])
    return selected


def describePlugins(found: Mapping[str, FoundPlugin] | None = None) -> str:
    """
    The text that C{twistd mqtwist --list-plugins} prints: one line per
    plugin with its name, module and summary, or where plugins were looked
    for when there are none.

    @param found: L{findPlugins}C{()} if C{None}.
    """
    if found is None:
        found = findPlugins()
    if not found:
        # Only folders under existing sys.path entries: where a plugin
        # module could be installed.
        folders = "\n".join(
            f"  {path}"
            for path in mqtwist.plugins.__path__
            if os.path.isdir(os.path.dirname(os.path.dirname(path)))
        )
        return (
            "No data plugins are installed. Plugin modules are looked for "
            f"in these folders:\n{folders}\n"
        )
    rows = [("NAME", "MODULE", "DESCRIPTION")] + [
        (name, each.module, each.summary) for name, each in found.items()
    ]
    nameWidth = max(len(row[0]) for row in rows)
    moduleWidth = max(len(row[1]) for row in rows)
    return "".join(
        f"{row[0]:<{nameWidth}}  {row[1]:<{moduleWidth}}  {row[2]}".rstrip() + "\n"
        for row in rows
    )
