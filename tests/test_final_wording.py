"""
What a final result says of the attempt before it: a message that runs out
of attempts ends in a C{process}/C{timeout} entry whose description quotes
its last attempt, so that description must not promise what no longer
happens.
"""

from __future__ import annotations

import json

import pytest_twisted
from helpers_endtoend import makeConfig, publishAll, running

from mqtwist.service import MailerService


@pytest_twisted.ensureDeferred
async def test_a_refused_login_then_out_of_attempts_claims_no_retry(rabbitmq, amqp, startSMTPServer, queues):
    """
    A refused login is retried (the credentials may be fixed meanwhile), so
    its attempt is not final; the expiry that ends the message quotes it,
    and once said "(the message will be retried)" in a final result.
    """
    smtp = await startSMTPServer(auth="mailer:right", authCleartext=True)
    config = makeConfig(
        rabbitmq, smtp, queues, smarthostUsername="mailer", smarthostPassword="wrong",
        authCleartextHosts=["127.0.0.1"],
    )
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [json.dumps(
            {"id": "login", "recipient": "r@example.com", "mime": "x", "maxattempts": 1}
        ).encode()])
        (failure,) = [json.loads(r.body) for r in await amqp.collect(queues["failure"], 1)]
    attempt, final = failure["results"]
    assert (attempt["state"], attempt["result"], attempt["code"]) == ("auth", "error", 535)
    refused = (
        f"127.0.0.1:{smtp.port} refused the login as mailer: Authentication credentials invalid; "
        f"check the credentials"
    )
    assert attempt["description"] == refused
    assert (final["state"], final["result"]) == ("process", "timeout")
    assert final["description"] == (
        f"gave up after 1 attempt (maxattempts 1); the last attempt: auth/error 535 5.7.8 {refused}"
    )
