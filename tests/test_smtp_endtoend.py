"""
The SMTP engine's features through the whole service: a real RabbitMQ,
L{MailerService}, and real SMTP servers (see L{test_end_to_end}).
"""

from __future__ import annotations

import pytest_twisted
from helpers_endtoend import decoded, job, makeConfig, publishAll, running
from helpers_smtpsession import PASSWORD

from mqtwist.service import MailerService


@pytest_twisted.ensureDeferred
async def test_ips_bind_and_tls_and_auth_from_the_message(rabbitmq, amqp, startSMTPServer, certificates, queues):
    """
    The message's C{ips} picks the local address (one this host lacks gives
    C{bind}/C{error} and a retry); its C{security} and its C{smarthost}
    credentials reach the SMTP session; the password is not published.
    """
    smtp = await startSMTPServer(
        tlsCert=certificates["cert"], tlsKey=certificates["key"], auth=f"mailer:{PASSWORD}"
    )
    plain = await startSMTPServer()
    smarthost = {"hostname": smtp.host, "port": smtp.port, "username": "mailer", "password": PASSWORD}
    service = MailerService(makeConfig(rabbitmq, plain, queues), plugins=[])
    async with running(service):
        await publishAll(
            amqp,
            queues["outbox"],
            [
                job(1, ips=["127.0.0.1"]),
                job(2, ips=["192.0.2.77"], maxattempts=1),
                job(3, security="required", smarthost=smarthost),
            ],
        )
        success = {r["id"]: r for r in decoded(await amqp.collect(queues["success"], 2))}
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
    bound = success["job-1"]["results"][-1]
    assert bound["state"] == "message" and bound["from"] == "127.0.0.1"
    assert failure["id"] == "job-2"
    entry = failure["results"][0]
    assert (entry["state"], entry["result"]) == ("bind", "error")
    assert "192.0.2.77" in entry["description"]
    secure = success["job-3"]["results"][-1]
    assert secure["state"] == "message" and secure["cipher"]["version"].startswith("TLSv1.")
    assert "password" not in success["job-3"]["smarthost"]
    assert PASSWORD not in str(success) + str(failure)
    assert [(e["login"], e["success"]) for e in smtp.events if e["event"] == "auth"] == [("mailer", True)]
    assert [m.rcptTos for m in plain.messages] == [("rcpt1@example.com",)]
