"""
mqtwist: an outbound mail transfer agent on Twisted.

Delivery jobs come as JSON from a RabbitMQ outbox queue, go out over ESMTP,
and their results are published to result queues.  Data plugins
(L{IDataPlugin}) may change each body just before it is sent; what they need
is importable from here::

    from mqtwist import COMPLETE, CONTINUE, IDataPlugin, PermanentFailure

This module stays light (no reactor, no protocol code) because the
C{twistd} drop-in in C{twisted/plugins/} imports it.
"""

from mqtwist.dataplugin.interfaces import COMPLETE, CONTINUE, IDataPlugin
from mqtwist.errors import PermanentFailure

#: the release; setup.cfg reads it from here
__version__ = "0.1.0"

__all__ = ["COMPLETE", "CONTINUE", "IDataPlugin", "PermanentFailure", "__version__"]
