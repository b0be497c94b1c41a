"""
A submission account's messages-per-minute holds for all the processes of
an outbox: two services of one outbox in this process, each with its
submission endpoint; what one accepts counts against the account in the
other (told on the control exchange within a fraction of a second).
"""

from __future__ import annotations

import smtplib

import pytest
import pytest_twisted
from helpers_endtoend import makeConfig, running
from test_cluster_split import until
from test_submission_end_to_end import portOf, sendmail

from mqtwist.service import MailerService

MESSAGE = b"From: a@example.org\r\nSubject: rate\r\n\r\nbody\r\n"


@pytest_twisted.ensureDeferred
async def test_an_accounts_rate_holds_for_all_the_processes(rabbitmq, smtpServer, queues):
    def config(member: str):
        # the trusted loopback's rate: 3 a minute, for both together
        return makeConfig(
            rabbitmq, smtpServer, queues,
            submission=["tcp:0:interface=127.0.0.1"], submissionMessagesPerMinute=3,
            clusterMember=member, deliveryJournal="",
        )

    first, second = MailerService(config("a"), plugins=[]), MailerService(config("b"), plugins=[])
    async with running(first), running(second):
        await until(lambda: first.cluster.members.live == second.cluster.members.live == ("a", "b"), "both know both")
        for _ in range(2):
            assert await sendmail(portOf(first), "a@example.org", ["x@example.com"], MESSAGE) == {}
        assert await sendmail(portOf(second), "a@example.org", ["x@example.com"], MESSAGE) == {}
        account = second.submission.access.network("127.0.0.1")
        await until(lambda: not second.submission.limiter.allows(account), "the first's two counted by the second")
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            await sendmail(portOf(second), "a@example.org", ["x@example.com"], MESSAGE)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (450, b"4.7.1 Rate limit exceeded; try again later")
        # and the first counts the second's
        assert not first.submission.limiter.allows(first.submission.access.network("127.0.0.1"))
