"""
L{mqtwist.dataplugin.discovery}: plugins installed by other distributions, into an
C{mqtwist/plugins/} folder of their own on C{sys.path}, are found and run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

import mqtwist.plugins
from mqtwist.dataplugin.chain import PluginChain
from mqtwist.dataplugin.discovery import (
    describePlugins,
    discoverPlugins,
    findPlugins,
    selectPlugins,
)
from mqtwist.dataplugin.interfaces import IDataPlugin
from mqtwist.dataplugin.testing import makeConfig, makeConnection, makeMessage, verifyPlugin

PLUGIN_SOURCE = '''
"""Plugins of the {dist} distribution."""

from zope.interface import implementer

from mqtwist import CONTINUE, IDataPlugin
from twisted.internet.defer import succeed


@implementer(IDataPlugin)
class Tag:
    """Tag the body with {name}.

    More text that the listing leaves out.
    """

    def __init__(self, name):
        self.name = name

    def smtpOutData(self, context, connection, message):
        message.setMime(message.mime + b"tagged by {name}\\r\\n")
        return succeed(CONTINUE)


plugin = Tag("{name}")
'''


def tagPlugin(name: str, dist: str = "thirdparty") -> str:
    return PLUGIN_SOURCE.format(name=name, dist=dist)


def test_thirdPartyPluginIsFoundAndRuns(installPlugin: Callable[..., Path]) -> None:
    path = installPlugin("thirdparty", tagPlugin("tagger"))
    assert not (path.parent / "__init__.py").exists()
    found = discoverPlugins()
    assert list(found) == ["tagger"]
    plugin = found["tagger"]
    verifyPlugin(plugin)
    assert type(plugin).__module__ == "mqtwist.plugins.thirdparty"
    assert (path.parent / "dropin.cache").exists()

    chain = PluginChain(
        selectPlugins(None), reactor=MemoryReactorClock(), config=makeConfig()
    )
    results: list[bytes] = []
    chain.run(makeConnection(), makeMessage(mime=b"body\r\n")).addCallback(
        results.append
    )
    assert results == [b"body\r\ntagged by tagger\r\n"]


def test_foundFromTheCacheAgain(installPlugin: Callable[..., Path]) -> None:
    installPlugin("thirdparty", tagPlugin("tagger"))
    assert list(discoverPlugins()) == ["tagger"]
    del sys.modules["mqtwist.plugins.thirdparty"]
    assert list(discoverPlugins()) == ["tagger"]


def test_pluginsOfSeveralDistributionsOrderedByName(
    installPlugin: Callable[..., Path]
) -> None:
    installPlugin("zeta", tagPlugin("zeta"), site="one")
    installPlugin("alpha", tagPlugin("alpha"), site="two")
    found = findPlugins()
    assert list(found) == ["alpha", "zeta"]
    assert found["alpha"].module == "mqtwist.plugins.alpha"
    assert found["alpha"].summary == "Tag the body with alpha."
    assert [p.name for p in selectPlugins(None)] == ["alpha", "zeta"]
    assert [p.name for p in selectPlugins(["zeta", "alpha"])] == ["zeta", "alpha"]


def test_duplicateNamesNameBothModules(installPlugin: Callable[..., Path]) -> None:
    installPlugin("first", tagPlugin("same"), site="one")
    installPlugin("second", tagPlugin("same"), site="two")
    with pytest.raises(ValueError) as raised:
        discoverPlugins()
    message = str(raised.value)
    assert "two data plugins are called 'same'" in message
    assert "mqtwist.plugins.first" in message
    assert "mqtwist.plugins.second" in message


def test_sameObjectInTwoModulesCountsOnce(installPlugin: Callable[..., Path]) -> None:
    installPlugin("original", tagPlugin("shared"))
    installPlugin("reexport", "from mqtwist.plugins.original import plugin\n")
    found = findPlugins()
    assert list(found) == ["shared"]
    assert found["shared"].module in (
        "mqtwist.plugins.original", "mqtwist.plugins.reexport"
    )


def test_badNameIsReported(installPlugin: Callable[..., Path]) -> None:
    installPlugin("noname", tagPlugin("").replace('Tag("")', "Tag(None)"))
    with pytest.raises(ValueError, match="in mqtwist.plugins.noname has the name None"):
        discoverPlugins()


def test_otherPluginsAreIgnored(installPlugin: Callable[..., Path]) -> None:
    installPlugin(
        "other",
        """
        from twisted.plugin import IPlugin
        from zope.interface import implementer

        @implementer(IPlugin)
        class NotAData:
            name = "other"

        plugin = NotAData()
        """,
    )
    installPlugin("good", tagPlugin("good"))
    assert list(discoverPlugins()) == ["good"]


def test_brokenModuleDoesNotHideOthers(installPlugin: Callable[..., Path]) -> None:
    installPlugin("broken", "raise ImportError('missing dependency')\n")
    installPlugin("good", tagPlugin("good"))
    assert list(discoverPlugins()) == ["good"]


def test_describePlugins(installPlugin: Callable[..., Path]) -> None:
    installPlugin("thirdparty", tagPlugin("tagger"))
    installPlugin("longer_module", tagPlugin("a"))
    assert describePlugins() == (
        "NAME    MODULE                         DESCRIPTION\n"
        "a       mqtwist.plugins.longer_module  Tag the body with a.\n"
        "tagger  mqtwist.plugins.thirdparty     Tag the body with tagger.\n"
    )


def test_describeNoPlugins() -> None:
    text = describePlugins({})
    assert text.startswith("No data plugins are installed.")
    assert mqtwist.plugins.__path__[0] in text


# --- selectPlugins without discovery -----------------------------------------


@implementer(IDataPlugin)
class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def smtpOutData(self, context: Any, connection: Any, message: Any) -> None:
        return None


AVAILABLE = {name: Named(name) for name in ("b", "a", "c")}


def test_selectAllOrderedByName() -> None:
    assert [p.name for p in selectPlugins(None, AVAILABLE)] == ["a", "b", "c"]


def test_selectInTheGivenOrder() -> None:
    assert [p.name for p in selectPlugins(["c", "a"], AVAILABLE)] == ["c", "a"]
    assert selectPlugins([], AVAILABLE) == []


def test_selectUnknown() -> None:
    with pytest.raises(ValueError) as raised:
        selectPlugins(["a", "dkim"], AVAILABLE)
    assert str(raised.value) == (
        "the data plugin 'dkim' named in the plugins setting is not installed "
        "(found: a, b, c); install the distribution that provides it, or "
        "remove it from the setting"
    )


def test_selectUnknownWhenNoneInstalled() -> None:
    with pytest.raises(ValueError, match=r"\(found: none\)"):
        selectPlugins(["x"], {})


def test_selectTwice() -> None:
    with pytest.raises(ValueError, match="'a' is named twice"):
        selectPlugins(["a", "b", "a"], AVAILABLE)


def test_moduleBrokenAfterCachingIsSkipped(
    installPlugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from twisted.logger import Logger

    import mqtwist.dataplugin.discovery

    events: list[dict[str, Any]] = []
    logger = Logger(observer=events.append)  # type: ignore[arg-type]
    monkeypatch.setattr(mqtwist.dataplugin.discovery, "log", logger)
    installPlugin("good", tagPlugin("good"))
    path = installPlugin("flaky", tagPlugin("flaky"))
    assert list(discoverPlugins()) == ["flaky", "good"]
    # The module breaks but looks older than the cache, which still lists it.
    path.write_text("raise ImportError('broken after caching')\n")
    os.utime(path, (0, 0))
    del sys.modules["mqtwist.plugins.flaky"]
    assert list(discoverPlugins()) == ["good"]
    assert [(e["plugin"], e["module"]) for e in events] == [
        ("plugin", "mqtwist.plugins.flaky")
    ]
