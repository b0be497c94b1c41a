"""
The ESMTP client side of mqtwist.

  - L{mqtwist.smtp.reply}: L{Reply} and the reply parser.
  - L{mqtwist.smtp.body}: L{encodeBody}, a body as it goes on the wire.
  - L{mqtwist.smtp.protocol}: L{ESMTPClient}, one connection carrying any
    number of transactions, pipelined when the server allows it.
  - L{mqtwist.smtp.connect}: L{openConnection}, TCP connect plus greeting
    and EHLO.
  - L{mqtwist.smtp.pool}: L{ConnectionPool} of connections per
    L{Destination}.

Every failure of this layer is an L{mqtwist.errors.AttemptFailed} whose
C{state} and C{result} are those of the result entry (C{docs/messages.rst}).
"""

from mqtwist.smtp.body import encodeBody
from mqtwist.smtp.connect import openConnection
from mqtwist.smtp.pool import ConnectionPool, Destination
from mqtwist.smtp.protocol import ESMTPClient
from mqtwist.smtp.reply import Reply

__all__ = ["ConnectionPool", "Destination", "ESMTPClient", "Reply", "encodeBody", "openConnection"]
