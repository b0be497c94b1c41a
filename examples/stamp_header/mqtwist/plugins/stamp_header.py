"""
An example mqtwist data plugin that works synchronously: it adds an
C{X-Mqtwist-Stamp} header to the top of every message, naming the server
the message goes to, how many messages that SMTP connection has carried,
and when it was sent.

It shows the three things a plugin is given: the C{context} (its clock),
the C{connection} (its host name, address and per-connection C{data}) and
the C{message} (its body, replaced with C{setMime}).  Because it changes the
body and is done at once, it returns C{None}: the next plugin is called
straight away.
"""

from email.utils import formatdate

from zope.interface import implementer

from mqtwist import IDataPlugin


@implementer(IDataPlugin)
class StampHeader:
    """
    Add an X-Mqtwist-Stamp header: the MX, the message count of the
    connection and the time of sending.
    """

    name = "stamp_header"
    header = b"X-Mqtwist-Stamp"

    def smtpOutData(self, context, connection, message):
        # Counted per connection: the dict lives as long as the connection.
        count = connection.data.get("messages", 0) + 1
        connection.data["messages"] = count
        context.data["stamped"] = context.data.get("stamped", 0) + 1

        body = message.mime
        # Keep the body's own line ends; the SMTP layer makes them CRLF.
        firstLine = body.split(b"\n", 1)[0]
        lineEnd = b"\r\n" if firstLine.endswith(b"\r") else b"\n"
        sentAt = formatdate(context.reactor.seconds(), usegmt=True)
        value = (
            f"{connection.hostname} [{connection.address}]; "
            f"message {count} of the connection; {sentAt}"
        )
        message.setMime(self.header + b": " + value.encode("ascii") + lineEnd + body)
        return None


plugin = StampHeader()
