"""
L{Config} checks itself with the declarations of its settings, so that a
program that embeds mqtwist gets the checks of C{twistd mqtwist}.
"""

from __future__ import annotations

from typing import Any

import pytest

from mqtwist.config import Config, SMTPTimeouts
from mqtwist.service import MailerService


@pytest.mark.parametrize(
    "settings, text",
    [
        ({"pluginRuns": 0}, "setting pluginRuns (--plugin-runs): 0 is too small; give a whole number of 1 or more"),
        ({"pluginTimeout": 0}, "setting pluginTimeout (--plugin-timeout): 0 is too small; give a number of seconds"),
        ({"pluginRetryDelay": -1}, "setting pluginRetryDelay (--plugin-retry-delay): -1 is negative; give 0 or more"),
        ({"brokerPort": 70000}, "setting brokerPort (--broker-port): 70000 is not a port number"),
        ({"security": "maybe"}, "setting security (--security): 'maybe' is not a TLS policy; use one of optional"),
        ({"delayBuckets": [0, 5]}, "setting delayBuckets (--delay-buckets): 0 is too small"),
        ({"amqp": "http://x"}, "setting amqp (--amqp): "),
        ({"logLevel": "loud"}, "setting logLevel (--log-level): "),
        ({"timeouts": SMTPTimeouts(connect=-1)}, "setting timeouts.connect (--timeouts-connect): -1 is negative"),
    ],
)
def test_a_bad_value_is_refused_at_construction(settings: dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError) as raised:
        Config(ehloName="x", **settings)
    assert str(raised.value).startswith(text)


def test_a_value_changed_later_is_refused_by_the_service() -> None:
    """
    A program may change a L{Config} after making it: L{MailerService}
    checks it again.
    """
    config = Config(ehloName="x", amqp="amqp://guest:guest@127.0.0.1:5672/")
    config.prefetch = 0
    with pytest.raises(ValueError, match=r"^setting prefetch \(--prefetch\): 0 is too small"):
        MailerService(config, plugins=[])


def test_dkim_key_protocols_reach_the_service(tmp_path) -> None:
    """
    A C{[[dkim-keys]]} rule's C{protocols} is what the service signs with
    for a job that names only the domain.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from mqtwist.config import DKIMKeyRule

    keyfile = tmp_path / "example.org.pem"
    keyfile.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    rule = DKIMKeyRule("example.org", "s1", str(keyfile), protocols=("dkim", "arc"))
    config = Config(ehloName="x", amqp="amqp://guest:guest@127.0.0.1:5672/", dkimKeys=[rule])
    service = MailerService(config, plugins=[])
    configured = service.parseSettings.dkimKeys.configured("example.org")
    assert configured is not None and configured.protocols == (True, True)


def test_settings_that_do_not_fit_together_are_refused() -> None:
    with pytest.raises(ValueError) as info:
        Config(submission=["tcp:2525"], submissionMaxSize=2_000_000, maxJobBytes=1_000_000)
    assert str(info.value).startswith(
        "setting submissionMaxSize (--submission-max-size) is 2000000 bytes, more than maxJobBytes "
        "(--max-job-bytes) 1000000: a message taken in with 250 would make a job the outbox refuses"
    )
    # without a submission endpoint the size is of no consequence
    Config(submissionMaxSize=2_000_000, maxJobBytes=1_000_000)
    with pytest.raises(ValueError) as info:
        Config(submission=["tcp:2525"], submissionMaxSize=2_000_000, submissionMaxMemory=1_000_000)
    assert str(info.value).startswith(
        "setting submissionMaxMemory (--submission-max-memory) is 1000000 bytes, less than submissionMaxSize "
        "(--submission-max-size) 2000000: a message of the largest size would always be refused"
    )
    with pytest.raises(ValueError) as info:
        Config(clusterHeartbeat=2, clusterMemberTimeout=3)
    assert "a member would be taken for gone after missing a single heartbeat" in str(info.value)
