"""
The external message store: jobs that carry C{key} instead of C{mime}
(MailerQ's "message store"), their message loaded once an SMTP connection
is ready to carry it.

  - L{interfaces}: L{IMessageStore} (fetch, store, delete) and
    L{IMessageStoreBackend}, the plugins that open a store from a URL;
  - L{errors}: how a store says that a message could not be had;
  - L{discovery}: the installed backends, chosen by URL scheme;
  - L{redisstore}: the Redis backend that mqtwist ships;
  - L{loader}: the store as deliveries use it (time-out, size limit,
    C{storage} result entries, removal when the job has ended).
"""

from mqtwist.messagestore.errors import MessageNotFound, MessageUnusable, StoreError, StoreUnavailable
from mqtwist.messagestore.interfaces import IMessageStore, IMessageStoreBackend

__all__ = [
    "IMessageStore",
    "IMessageStoreBackend",
    "MessageNotFound",
    "MessageUnusable",
    "StoreError",
    "StoreUnavailable",
]
