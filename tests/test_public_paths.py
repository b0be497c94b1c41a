"""
The import paths that the README documented for plugin authors and for
programs that embed mqtwist keep working after the layout changed.
"""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "module, names",
    [
        ("mqtwist", ["COMPLETE", "CONTINUE", "IDataPlugin", "PermanentFailure"]),
        ("mqtwist.interfaces", ["IDataPlugin", "IPluginContext", "IConnectionInfo", "IPluginMessage", "CONTINUE"]),
        ("mqtwist.testing", ["verifyPlugin"]),
        ("mqtwist.config", ["Config", "SMTPTimeouts", "ThrottleRule", "BackoffRule", "DKIMKeyRule"]),
        ("mqtwist.service", ["MailerService"]),
        ("mqtwist.message", ["Message", "ResultEntry"]),
        ("mqtwist.amqp.localnode", ["RabbitMQNotInstalled", "RabbitMQStartFailed", "RabbitMQEnded"]),
    ],
)
def test_documented_paths_import(module: str, names: list[str]) -> None:
    loaded = importlib.import_module(module)
    assert [name for name in names if not hasattr(loaded, name)] == []


def test_the_old_paths_are_the_same_objects() -> None:
    import mqtwist.amqp.localnode
    import mqtwist.content.message
    import mqtwist.dataplugin.interfaces
    import mqtwist.interfaces
    import mqtwist.localnode
    import mqtwist.message

    assert mqtwist.message.Message is mqtwist.content.message.Message
    assert mqtwist.interfaces.IDataPlugin is mqtwist.dataplugin.interfaces.IDataPlugin
    assert mqtwist.amqp.localnode.RabbitMQEnded is mqtwist.localnode.RabbitMQEnded
