"""
The interfaces of the data plugin protocol (C{docs/plugins.rst}).

A data plugin is called once per delivery attempt, when the SMTP
transaction has sent its envelope (C{MAIL FROM}, C{RCPT TO}) and before any
byte of the body goes out.  It may read the outbox message, replace the
body, and take as long as it needs, as long as it never blocks the reactor:

    >>> from zope.interface import implementer
    >>> from mqtwist.dataplugin.interfaces import IDataPlugin
    >>> @implementer(IDataPlugin)
    ... class Signature:
    ...     "Append a signature to every body."
    ...     name = "signature"
    ...     def smtpOutData(self, context, connection, message):
    ...         message.setMime(message.mime + b"--\\r\\nsent by mqtwist\\r\\n")
    ...         return None      # did not take control: next plugin at once
    >>> plugin = Signature()     # the instance is what discovery finds

L{IDataPlugin} extends L{twisted.plugin.IPlugin}, so declaring
C{@implementer(IDataPlugin)} is all a plugin class needs for
C{getPlugins(IDataPlugin, mqtwist.plugins)} to find its instances.

How a plugin hands control back:

  - return C{None}: it did not take control; the next plugin is called at
    once;
  - return a L{Deferred} (or a coroutine, from an C{async def}): it took
    control; nothing more happens to the message until that fires;
  - fire it with L{CONTINUE} (or C{None}): call the next plugin, or send when
    none is left;
  - fire it with L{COMPLETE}: skip the remaining plugins and send now;
  - fail it (or raise): run the whole chain again from the first plugin, a
    bounded number of times; a L{mqtwist.errors.PermanentFailure} ends the
    message for good instead.
"""

from __future__ import annotations

import enum

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

__all__ = [
    "COMPLETE",
    "CONTINUE",
    "Control",
    "IConnectionInfo",
    "IDataPlugin",
    "IPluginContext",
    "IPluginMessage",
]


class Control(enum.Enum):
    """
    What a data plugin's Deferred fires with to hand control back.
    """

    #: call the next plugin, or send the body when none is left
    CONTINUE = "continue"
    #: skip the remaining plugins and send the body now
    COMPLETE = "complete"


#: fire a plugin's Deferred with this to go on with the next plugin
CONTINUE = Control.CONTINUE
#: fire a plugin's Deferred with this to skip the rest of the chain and send
COMPLETE = Control.COMPLETE


class IPluginContext(Interface):
    """
    What a data plugin keeps across calls: one context per plugin, living as
    long as the service.
    """

    reactor = Attribute(
        "The reactor to do I/O and timing with (a L{twisted.internet.task."
        "Clock} or L{twisted.internet.testing.MemoryReactorClock} in tests). "
        "Use it instead of importing the global reactor, so that the plugin "
        "can be tested without a network."
    )
    log = Attribute(
        "A L{twisted.logger.Logger} in the namespace C{mqtwist.plugins.NAME}; "
        "log with named fields: C{log.info('fetched {url}', url=url)}."
    )
    config = Attribute(
        "The service's L{mqtwist.config.Config}. Read it, do not change it."
    )
    data = Attribute(
        "A C{dict} that belongs to this plugin alone and lives as long as the "
        "service: caches, counters, HTTP agents. Other plugins do not see it."
    )


class IConnectionInfo(Interface):
    """
    The SMTP connection a message is about to be sent over.  Everything but
    C{data} is read-only: the envelope has already gone out.
    """

    hostname = Attribute(
        "The remote host name as C{str}: the MX name (or the smarthost) that "
        "was connected to."
    )
    address = Attribute("The remote IP address as C{str} (C{'192.0.2.25'}).")
    localAddress = Attribute(
        "The local IP address of the connection as C{str}: the source IP."
    )
    greeting = Attribute(
        "The text of the server's 220 greeting as C{str}, without the reply "
        "code; lines of a multi-line greeting are joined with C{'\\n'}."
    )
    extensions = Attribute(
        "The extensions of the server's EHLO reply, a read-only mapping of "
        "the upper-case keyword (C{'SIZE'}, C{'PIPELINING'}) to its "
        "parameters as C{str} (C{''} when there are none). Empty after HELO."
    )
    tls = Attribute("C{True} when the connection is encrypted (STARTTLS).")
    data = Attribute(
        "A C{dict} that belongs to this plugin alone and lives as long as the "
        "SMTP connection: every message sent over the same connection sees "
        "the same dict."
    )


class IPluginMessage(Interface):
    """
    The outbox message being delivered to one recipient.
    """

    json = Attribute(
        "The outbox JSON object as a C{dict} (C{docs/messages.rst}), including "
        "properties that mqtwist does not know (C{'id'}, C{'campaign'}, ...). "
        "Treat it as read-only: the envelope is already out, and the body "
        "that is sent is the one set with L{setMime}."
    )
    envelope = Attribute("The envelope sender (MAIL FROM) as C{str}.")
    recipient = Attribute("The recipient (RCPT TO) as C{str}.")
    mime = Attribute(
        "The body that will be sent, as C{bytes}: the full RFC 5322 message "
        "as built from the JSON, or as changed by an earlier plugin."
    )

    def setMime(body: bytes) -> None:
        """
        Replace the body that will be sent over SMTP.

        The JSON published in results does not change.  Line ends may be
        LF or CRLF: they are made CRLF on the wire.

        @param body: the full RFC 5322 message.
        @raise TypeError: if C{body} is not C{bytes} (encode text first).
        """


class IDataPlugin(IPlugin):
    """
    A plugin that sees (and may replace) the body of every message just
    before it is sent: mqtwist's form of the C{mq_smtp_out_data} hook.

    Plugins are instances: a plugin module defines a class that declares
    C{@implementer(IDataPlugin)} and makes an instance of it at module
    level.  Since this interface extends L{IPlugin}, nothing else needs to be
    declared for discovery.  The first line of the class docstring is what
    C{twistd mqtwist --list-plugins} shows.
    """

    name = Attribute(
        "A short name (C{str}), unique among installed plugins: the "
        "C{plugins} setting selects and orders plugins by it, and results "
        "name the plugin that failed a delivery with it."
    )

    def smtpOutData(
        context: IPluginContext,
        connection: IConnectionInfo,
        message: IPluginMessage,
    ) -> object:
        """
        Called once per delivery attempt of C{message}, before its body is
        sent over C{connection}.  Must not block.

        @return: C{None} when the plugin is done at once (the next plugin is
            called); or a L{Deferred} or coroutine when the plugin takes
            control, which fires with L{CONTINUE} (or C{None}) to go on,
            with L{COMPLETE} to send without calling further plugins, or
            fails to have the chain run again from the first plugin
            (L{mqtwist.errors.PermanentFailure}: to fail the message for
            good).  Raising is the same as returning a failed Deferred.  A
            Deferred that does not fire within C{Config.pluginTimeout}
            seconds is cancelled and counts as failed.
        """
