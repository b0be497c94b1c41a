"""
Parsing of broker URLs.
"""

import pytest

from mqtwist.amqp.url import BrokerURL


def test_defaults():
    url = BrokerURL.parse("amqp://broker.example")
    assert url == BrokerURL(
        host="broker.example", port=5672, vhost="/", username="guest",
        password="guest", tls=False, heartbeat=60, authMechanism="PLAIN",
        connectTimeout=30.0,
    )


def test_amqps_default_port_and_tls():
    url = BrokerURL.parse("amqps://broker.example/")
    assert (url.port, url.tls, url.vhost) == (5671, True, "/")


def test_everything_given():
    url = BrokerURL.parse(
        "amqp://mail%40x:p%3Ass%2Fw@10.0.0.1:5673/prod%2fmail"
        "?heartbeat=15&auth_mechanism=amqplain&connection_timeout=2.5"
    )
    assert url == BrokerURL(
        host="10.0.0.1", port=5673, vhost="prod/mail", username="mail@x",
        password="p:ss/w", tls=False, heartbeat=15, authMechanism="AMQPLAIN",
        connectTimeout=2.5,
    )


@pytest.mark.parametrize(
    "text, vhost",
    [("amqp://h", "/"), ("amqp://h/", "/"), ("amqp://h/%2f", "/"), ("amqp://h/%2F", "/"),
     ("amqp://h/mail", "mail")],
)
def test_vhost(text, vhost):
    assert BrokerURL.parse(text).vhost == vhost


def test_ipv6_host():
    url = BrokerURL.parse("amqp://[::1]:5999/v")
    assert (url.host, url.port) == ("::1", 5999)
    assert url.redacted() == "amqp://guest:***@[::1]:5999/v"


def test_heartbeat_zero_switches_off():
    assert BrokerURL.parse("amqp://h/?heartbeat=0").heartbeat == 0


def test_password_never_shown():
    url = BrokerURL.parse("amqps://user:s3cret@h:1/v")
    for text in (str(url), repr(url), url.redacted()):
        assert "s3cret" not in text
    assert str(url) == "amqps://user:***@h:1/v"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("http://u:s3cret@h/", "scheme 'http' is not amqp:// or amqps://"),
        ("broker:5672", "is not amqp:// or amqps://"),
        ("amqp://", "no host name"),
        ("amqp://u:s3cret@h:port/", "bad port"),
        ("amqp://u:s3cret@h:70000/", "bad port"),
        ("amqp://u:s3cret@h/a/b", "the vhost must be one path segment"),
        ("amqp://u:s3cret@h/?heartbeat=x", "heartbeat='x' is not a number"),
        ("amqp://u:s3cret@h/?heartbeat=-1", "heartbeat=-1 is outside 0..65535"),
        ("amqp://u:s3cret@h/?heartbeat=1&heartbeat=2", "'heartbeat' is given more than once"),
        ("amqp://u:s3cret@h/?auth_mechanism=EXTERNAL", "auth_mechanism 'EXTERNAL' is not one of"),
        ("amqp://u:s3cret@h/?connection_timeout=0", "connection_timeout must be more than 0"),
        ("amqp://u:s3cret@h/?colour=red", "unknown query parameter(s) colour"),
        ("amqp://u:s3cret@h/#frag", "fragment"),
    ],
)
def test_bad_urls(text, problem):
    with pytest.raises(ValueError) as info:
        BrokerURL.parse(text)
    message = str(info.value)
    assert problem in message
    assert "s3cret" not in message
    assert message.startswith("AMQP URL '")
