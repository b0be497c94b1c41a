"""
--amqp with the nodes of a cluster: comma-separated URLs, each read as one
URL always was (L{mqtwist.amqp.url.parseBrokerURLs}), for the service and
the C{mqtwist} command.
"""

from __future__ import annotations

import pytest

from mqtwist.amqp.url import BrokerURL, parseBrokerURLs
from mqtwist.cli.common import readSettings
from mqtwist.config import Config


def test_oneURL():
    """One URL is what BrokerURL.parse makes of it, a comma in its password included."""
    for text in ("amqp://u:p@h:1/v?heartbeat=5", "amqp://u:a,b@h/", "amqps://h"):
        assert parseBrokerURLs(text) == (BrokerURL.parse(text),)


def test_nodes():
    """Several URLs, in their order, each with its own port, user and TLS; spaces around the commas are allowed."""
    nodes = parseBrokerURLs("amqp://u:p@n1:5672/v, amqp://u:q,r@n2:5673/v,AMQPS://n3/v?heartbeat=10")
    assert nodes == (
        BrokerURL(host="n1", port=5672, vhost="v", username="u", password="p"),
        BrokerURL(host="n2", port=5673, vhost="v", username="u", password="q,r"),
        BrokerURL(host="n3", port=5671, vhost="v", tls=True, heartbeat=10),
    )


def test_badNode():
    """A bad URL among several is refused with BrokerURL.parse's message, its password hidden."""
    with pytest.raises(ValueError) as caught:
        parseBrokerURLs("amqp://n1/,amqp://u:secret@n2:99999/")
    assert str(caught.value) == "AMQP URL 'amqp://u:***@n2:99999/': bad port: Port out of range 0-65535"
    with pytest.raises(ValueError, match=r"^AMQP URL 'ftp://n2/': scheme 'ftp' is not amqp:// or amqps://$"):
        # not a URL of its own (no comma before amqp://): the first URL's host is wrong
        parseBrokerURLs("ftp://n2/,amqp://n1/")


def test_nodeTwice():
    with pytest.raises(ValueError) as caught:
        parseBrokerURLs("amqp://u:secret@n1/,amqp://u:secret@N1:5672/%2f")
    assert str(caught.value) == (
        "AMQP URLs 'amqp://u:***@n1:5672/%2F,amqp://u:***@n1:5672/%2F': amqp://u:***@n1:5672/%2F "
        "is given twice; give each node of the cluster once"
    )
    assert "secret" not in str(caught.value)


def test_setting():
    """The amqp setting takes the list, and checks each URL."""
    Config(amqp="amqp://n1/,amqp://n2/")
    with pytest.raises(ValueError, match=r"^setting amqp \(--amqp\): AMQP URL 'amqp://n2/v/w': the vhost"):
        Config(amqp="amqp://n1/,amqp://n2/v/w")


def test_commandSettings():
    """The mqtwist command reads the same list: every node, the first as its url."""
    settings = readSettings("amqp://n1:1/,amqp://n2:2/", None, 5.0, environ={})
    assert [url.host for url in settings.nodes] == ["n1", "n2"]
    assert settings.url == settings.nodes[0]
