"""
Mail taken in over SMTP (C{--submission}): an ESMTP server whose accepted
messages become outbox jobs, one for each recipient.

L{mqtwist.submission.envelope.Submission} is what the server hands over
after the final dot; the queueing side turns it into jobs and answers
when the broker has confirmed every one of them.
"""
