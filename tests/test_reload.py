"""
Changing IP pools without a restart: C{MailerService.reconfigure}, and
SIGHUP to C{twistd mqtwist}, which reads its TOML file again.
"""

from __future__ import annotations

import textwrap
import uuid

import pytest
import pytest_twisted
from helpers_endtoend import job, makeConfig
from twistdprocess import brokerArguments, endTwistd, startTwistd

from mqtwist.config import PoolRule
from mqtwist.service import MailerService


def test_reconfigure_applies_pools_and_names_what_waits_for_a_restart(rabbitmq, smtpServer, queues):
    config = makeConfig(rabbitmq, smtpServer, queues, pools=[PoolRule("bulk", ("127.0.0.7",))])
    service = MailerService(config, plugins=[])
    changed = makeConfig(
        rabbitmq,
        smtpServer,
        queues,
        pools=[PoolRule("bulk", ("127.0.0.9",)), PoolRule("news", ("::1",))],
        defaultIps=["127.0.0.8"],
        prefetch=config.prefetch + 1,
        concurrency=config.concurrency + 1,
    )
    assert service.reconfigure(changed) == ["prefetch", "concurrency"]
    assert service.parseSettings.pools == {"bulk": ("127.0.0.9",), "news": ("::1",)}
    assert service.parseSettings.defaultIps == ("127.0.0.8",)
    # what waits for a restart is not applied
    assert service.config.prefetch == config.prefetch


def test_reconfigure_refuses_a_configuration_that_fails_its_checks(rabbitmq, smtpServer, queues):
    config = makeConfig(rabbitmq, smtpServer, queues, pools=[PoolRule("bulk", ("127.0.0.7",))])
    service = MailerService(config, plugins=[])
    bad = makeConfig(rabbitmq, smtpServer, queues, pools=[PoolRule("bulk", ("127.0.0.9",))], prefetch=0)
    with pytest.raises(ValueError, match="prefetch"):
        service.reconfigure(bad)
    assert service.parseSettings.pools == {"bulk": ("127.0.0.7",)}


def poolsFile(path, address: str, extra: str = "") -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            {extra}
            [[pools]]
            name = "bulk"
            ips = ["{address}"]
            """
        )
    )


@pytest_twisted.ensureDeferred
async def test_sighup_reads_the_pools_again(rabbitmq, amqp, smtpServer, tmp_path):
    """
    A job of pool C{bulk} is sent from the pool's address; after the file
    gives the pool another address and twistd got SIGHUP, the next job is
    sent from that one.  A file with a bad value changes nothing, and says
    so; a changed setting that needs a restart is named.
    """
    base = f"reload-{uuid.uuid4().hex[:8]}"
    for kind in ("outbox", "success", "failure"):
        await amqp.declare(f"{base}.{kind}")
    settings = tmp_path / "mqtwist.toml"
    poolsFile(settings, "127.0.0.7")
    twistd = startTwistd(
        *brokerArguments(rabbitmq),
        "--config", str(settings),
        "--smarthost", f"{smtpServer.host}:{smtpServer.port}",
        "--outbox", f"{base}.outbox", "--success", f"{base}.success", "--failure", f"{base}.failure",
    )
    try:
        await amqp.publish(f"{base}.outbox", job(1, pool="bulk"))
        await amqp.collect(f"{base}.success", 1)

        poolsFile(settings, "127.0.0.9", extra="prefetch = 7")
        twistd.transport.signalProcess("HUP")
        await twistd.waitForOutput(b"IP pools now {'bulk': ['127.0.0.9']}")
        await twistd.waitForOutput(b"changed settings that take effect only after a restart: prefetch")
        await amqp.publish(f"{base}.outbox", job(2, pool="bulk"))
        await amqp.collect(f"{base}.success", 1)

        poolsFile(settings, "not-an-address")
        twistd.transport.signalProcess("HUP")
        await twistd.waitForOutput(b"the configuration read on SIGHUP is refused, nothing changed")
        await amqp.publish(f"{base}.outbox", job(3, pool="bulk"))
        await amqp.collect(f"{base}.success", 1)
    finally:
        twistd.transport.signalProcess("TERM")
        await twistd.ended
        await endTwistd(twistd)
    received = await smtpServer.waitForMessages(3)
    assert {m.rcptTos[0]: m.peer[0] for m in received} == {
        "rcpt1@example.com": "127.0.0.7",
        "rcpt2@example.com": "127.0.0.9",
        "rcpt3@example.com": "127.0.0.9",
    }
    assert b"not-an-address" in twistd.output
