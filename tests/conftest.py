"""
Shared fixtures, each kind in a module of its own so that they can be read
(and reused) separately, registered here once for every test module:

  - L{fixtures_rabbitmq}: a private RabbitMQ node for the session
    (C{rabbitmqNode}, C{rabbitmq}), a helper connection to it (C{amqp}),
    mqtwist's own clients of it (C{clients}), and a data directory for a
    node a test starts itself (C{dataDir});
  - L{fixtures_smtp}: real SMTP servers (C{startSMTPServer}, C{smtpServer});
  - L{fixtures_dns}: a DNS server and mail hosts on loopback (C{dnsServer},
    C{mailHosts});
  - L{fixtures_postfix}: Postfix as the receiving MTA (C{postfixReceiver})
    and a recording proxy (C{startRecordingProxy});
  - L{fixtures_tls}: a CA and a server certificate (C{certificates});
  - L{fixtures_queues}: the queue names of one test (C{queues});
  - L{fixtures_dkim}: a name server for DKIM keys (C{nameServer});
  - L{fixtures_plugins}: data plugins installed as other distributions
    install them (C{installPlugin});
  - L{fixtures_redis}: Redis servers, the message store (C{startRedis},
    C{redisServer});
  - L{fixtures_cluster}: a RabbitMQ cluster of three nodes
    (C{rabbitmqCluster}, C{cluster}).

A test module never imports a fixture: it names it as an argument.  Plain
helpers that several test modules share are imported from the
C{helpers_*} modules (and from the fixture modules that define what their
fixtures return).
"""

import pytest

pytest_plugins = [
    "fixtures_rabbitmq",
    "fixtures_smtp",
    "fixtures_dns",
    "fixtures_postfix",
    "fixtures_tls",
    "fixtures_queues",
    "fixtures_dkim",
    "fixtures_plugins",
    "fixtures_redis",
    "fixtures_cluster",
]

# The helpers' asserts explain a failure as those of a test module do.
pytest.register_assert_rewrite(
    "helpers_amqpprotocol",
    "helpers_deferred",
    "helpers_dkim",
    "helpers_endtoend",
    "helpers_localnode",
    "helpers_mxdelivery",
    "helpers_smtpprotocol",
    "helpers_smtpsession",
)


@pytest.fixture(autouse=True)
def _inTemporaryDirectory(tmp_path, monkeypatch):
    """
    Each test runs in a directory of its own, so that what a service keeps
    under its working directory by default (the delivery journal in
    C{.state/}) is never shared by two tests, nor left in the checkout.
    """
    monkeypatch.chdir(tmp_path)
