"""
An example mqtwist data plugin that works asynchronously: it fetches the
body of a message over HTTP, from the URL in the C{bodyurl} property of the
outbox JSON, just before the message is sent.

    {"envelope": "news@example.com", "recipient": "reader@example.org",
     "mime": "placeholder", "bodyurl": "https://templates.example.com/42"}

Messages without C{bodyurl} are left alone (the plugin returns C{None}).
Otherwise C{smtpOutData} returns a coroutine: the plugin has taken control,
and the message waits until the coroutine is done:

  - 200: the response body becomes the message body;
  - 4xx, a URL that is not http(s), or a body larger than C{maxBytes}:
    retrying cannot help; L{PermanentFailure} fails the message for good;
  - anything else (5xx, connection refused, ...): an exception, so the
    chain runs again and the message is retried later if that keeps failing.

The plugin's timeout (C{pluginTimeout}) cancels the coroutine, which cancels
the HTTP request.
"""

from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from mqtwist import CONTINUE, IDataPlugin, PermanentFailure


class _BodyCollector(Protocol):
    """
    Collects a response body of at most C{maxBytes} bytes.
    """

    def __init__(self, url, maxBytes):
        self.url = url
        self.maxBytes = maxBytes
        self.parts = []
        self.size = 0
        # Cancelling (the plugin timed out) drops the connection.
        self.done = Deferred(lambda d: self.transport.stopProducing())

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > self.maxBytes:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(
                    PermanentFailure(
                        f"the body at {self.url} is larger than "
                        f"{self.maxBytes} bytes"
                    )
                )
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        if self.done.called:
            return
        # Without a length, the end of the connection ends the body.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@implementer(IDataPlugin)
class HTTPBody:
    """
    Replace the body with the one fetched from the URL in the message's
    "bodyurl" property.
    """

    name = "http_body"
    userAgent = b"mqtwist-http-body/1.0"

    def __init__(self, maxBytes=10 * 1024 * 1024):
        """
        @param maxBytes: the largest body accepted.
        """
        self.maxBytes = maxBytes

    def smtpOutData(self, context, connection, message):
        url = message.json.get("bodyurl")
        if url is None:
            return None
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise PermanentFailure(
                f"bodyurl {url!r} is not an http or https URL; fix the message"
            )
        return self._fetch(context, message, url)

    async def _fetch(self, context, message, url):
        # One agent per service, kept in the plugin's own data.
        if "agent" not in context.data:
            context.data["agent"] = Agent(context.reactor)
        agent = context.data["agent"]
        response = await agent.request(
            b"GET", url.encode("ascii"), Headers({b"User-Agent": [self.userAgent]})
        )
        status = f"{response.code} {response.phrase.decode('ascii', 'replace')}"
        if response.code != 200:
            # Read and discard the error page, which ends the request.
            response.deliverBody(Protocol())
            if 400 <= response.code < 500:
                raise PermanentFailure(f"GET {url} answered {status}")
            raise RuntimeError(f"GET {url} answered {status}; retrying later")
        collector = _BodyCollector(url, self.maxBytes)
        response.deliverBody(collector)
        body = await collector.done
        context.log.info(
            "fetched the body of {recipient} from {url}: {size} bytes",
            recipient=message.recipient,
            url=url,
            size=len(body),
        )
        message.setMime(body)
        return CONTINUE


plugin = HTTPBody()
