"""
L{mqtwist.dataplugin.interfaces} and the objects of L{mqtwist.dataplugin.chain} that implement
them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer
from zope.interface.verify import verifyObject

import mqtwist
from mqtwist.config import Config
from mqtwist.dataplugin.chain import ConnectionInfo, PluginContext, PluginMessage
from mqtwist.dataplugin.interfaces import (
    COMPLETE,
    CONTINUE,
    Control,
    IConnectionInfo,
    IDataPlugin,
    IPluginContext,
    IPluginMessage,
)
from mqtwist.errors import PermanentFailure


def makeInfo(**overrides: Any) -> ConnectionInfo:
    fields: dict[str, Any] = dict(
        hostname="mx1.example.org",
        address="192.0.2.7",
        localAddress="198.51.100.3",
        greeting="mx1.example.org ESMTP",
        extensions={"SIZE": "1000", "PIPELINING": ""},
        tls=True,
    )
    fields.update(overrides)
    return ConnectionInfo(**fields)


def test_packageExports() -> None:
    assert mqtwist.CONTINUE is CONTINUE is Control.CONTINUE
    assert mqtwist.COMPLETE is COMPLETE is Control.COMPLETE
    assert mqtwist.PermanentFailure is PermanentFailure
    assert mqtwist.IDataPlugin is IDataPlugin
    assert CONTINUE is not COMPLETE


def test_importingMqtwistIsLight() -> None:
    """
    The twistd drop-in imports C{mqtwist}: that must not install a reactor
    or load the delivery machinery.
    """
    code = (
        "import sys, mqtwist; "
        "print(sorted(m for m in sys.modules if m == 'twisted.internet.reactor' "
        "or m.startswith(('mqtwist.dataplugin.chain', 'mqtwist.smtp', 'mqtwist.amqp', "
        "'twisted.mail', 'txamqp'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    ).stdout
    assert out.strip() == "[]"


def test_dataPluginIsAPlugin() -> None:
    """
    Declaring IDataPlugin alone is enough for getPlugins (which wants
    IPlugin providers).
    """
    assert IDataPlugin.extends(IPlugin)

    @implementer(IDataPlugin)
    class Plugin:
        name = "p"

        def smtpOutData(self, context: Any, connection: Any, message: Any) -> None:
            return None

    assert IPlugin.providedBy(Plugin())
    assert verifyObject(IPlugin, Plugin())


def test_pluginContext() -> None:
    clock = MemoryReactorClock()
    config = Config(ehloName="test")
    context = PluginContext(clock, Logger(), config)
    assert verifyObject(IPluginContext, context)
    assert context.reactor is clock and context.config is config
    assert context.data == {}
    named = PluginContext.forPlugin("dkim", clock, config, {"k": 1})
    assert verifyObject(IPluginContext, named)
    assert named.log.namespace == "mqtwist.plugins.dkim"
    assert named.data == {"k": 1}


def test_connectionInfo() -> None:
    info = makeInfo()
    assert verifyObject(IConnectionInfo, info)
    assert (info.hostname, info.address, info.localAddress, info.greeting) == (
        "mx1.example.org", "192.0.2.7", "198.51.100.3", "mx1.example.org ESMTP",
    )
    assert dict(info.extensions) == {"SIZE": "1000", "PIPELINING": ""}
    assert info.tls is True
    assert "mx1.example.org" in repr(info)


@pytest.mark.parametrize(
    "attribute", ["hostname", "address", "localAddress", "greeting", "extensions",
                  "tls", "data"]
)
def test_connectionInfoIsReadOnly(attribute: str) -> None:
    with pytest.raises(AttributeError):
        setattr(makeInfo(), attribute, "changed")


def test_connectionExtensionsAreACopyAndReadOnly() -> None:
    extensions = {"SIZE": "1000"}
    info = makeInfo(extensions=extensions)
    extensions["STARTTLS"] = ""
    assert "STARTTLS" not in info.extensions
    with pytest.raises(TypeError):
        info.extensions["X"] = ""  # type: ignore[index]


def test_connectionDataPerPlugin() -> None:
    store: dict[str, dict[str, Any]] = {}
    info = makeInfo(store=store)
    a = info.forPlugin("a")
    b = info.forPlugin("b")
    assert verifyObject(IConnectionInfo, a)
    a.data["seen"] = 1
    assert b.data == {}
    assert info.forPlugin("a").data == {"seen": 1}
    assert store == {"a": {"seen": 1}, "b": {}}
    assert (a.hostname, a.tls, dict(a.extensions)) == (
        info.hostname, info.tls, dict(info.extensions),
    )


def test_pluginMessage() -> None:
    outbox = {"envelope": "a@example.com", "recipient": "b@example.org", "mime": "x"}
    message = PluginMessage(outbox, "a@example.com", "b@example.org", b"x")
    assert verifyObject(IPluginMessage, message)
    assert message.json is outbox
    message.setMime(b"new")
    assert message.mime == b"new"
    assert outbox["mime"] == "x"
    message.setMime(bytearray(b"array"))
    assert message.mime == b"array" and type(message.mime) is bytes
    with pytest.raises(AttributeError):
        message.mime = b"direct"  # type: ignore[misc]


@pytest.mark.parametrize("body", ["text", None, 12])
def test_setMimeWantsBytes(body: Any) -> None:
    message = PluginMessage({}, "a@example.com", "b@example.org", b"x")
    with pytest.raises(TypeError, match="setMime\\(\\) takes the body as bytes"):
        message.setMime(body)
    assert message.mime == b"x"
    with pytest.raises(TypeError):
        PluginMessage({}, "a@example.com", "b@example.org", body)


def test_interfaceDoctest() -> None:
    import doctest

    import mqtwist.dataplugin.interfaces

    result = doctest.testmod(mqtwist.dataplugin.interfaces)
    assert result.attempted > 0 and result.failed == 0
