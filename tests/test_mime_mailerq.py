"""
The C{mime} object in MailerQ's forms (issue 16): the JSON examples of
MailerQ 5.6's "JSON specification" and "Responsive email" pages, copied
exactly, and each form they use -- addresses as C{{"name", "email"}},
C{textVersion}, C{content} as an HTML string, attachments inline -- built
and read back by independent parsers (Perl's MIME::Parser and Python's
C{email}), field by field.  What needs a download is refused naming the
key; keys mqtwist does not use are ignored.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers_endtoend import decoded, makeConfig, publishAll, running
from perlmodules import needsPerl

from mqtwist.content.message import Message, loadJSON
from mqtwist.content.mime import buildMime
from mqtwist.errors import InvalidMessage
from mqtwist.service import MailerService

HERE = Path(__file__).parent
REFERENCE = HERE.parent.parent / "shared" / "reference" / "mailerq-5.6"
NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
HOST = "mx.example.net"

needsMimeTools = needsPerl("MIME::Parser", "JSON::PP", package="libmime-tools-perl")

# -- MailerQ's examples, exactly as its pages print them ------------------------

# json-messages.md ("JSON specification"), the nested "mime" object
SPEC_NESTED = """\
{
    "envelope": "my-sender-address@my-domain.com",
    "recipient": "info@example.org",
    "mime": {
        "from": "my-sender-address@my-domain.com",
        "to": "info@example.org",
        "subject": "This is the subject line",
        "text": "text version of the mail"
    }
}
"""

# json-messages.md, "a possible valid JSON input" (responsive-email blocks)
SPEC_RESPONSIVE = """\
{
    "envelope": "my-sender-address@my-domain.com",
    "recipient": "info@example.org",
    "mime": {
        "from": "my-sender-address@my-domain.com",
        "to": "info@example.org",
        "subject": "Example subject",
        "textVersion": "This is the example message text",
        "headers": {
            "x-my-special-header": "special-value"
        },
        "content": {
            "blocks": [ {
                "type": "image",
                "src": "http://www.example.com/logo.png"
            }, {
                "type": "button",
                "label": "Click the button!",
                "link": {
                    "url": "http://www.mailerq.com"
                }
            } ]
        },
        "attachments": [ {
            "url": "http://www.example.com/a-special-file.pdf",
            "name": "brochure.pdf"
        } ]
    }
}
"""

# responsiveemail.md, the first example (trailing commas and all)
RESPONSIVE_BLOCKS = """\
{
    "envelope": "sender@example.com",
    "recipient": "receiver@example.com",
    "mime": {
        "from": {
            "name": "John Doe",
            "email": "sender@example.com",
        },
        "subject": "Example email",
        "text": "Text version",
        "background": {
            "color": "white"
        },
        "content": {
            "blocks": [{
                "type": "html",
                "content": "<p>Example content</p>"
            }, {
                "type": "button",
                "label": "click here"
            }]
        }
    }    
}
"""  # noqa: W291 (the page has the trailing spaces)

# responsiveemail.md, "Writing your own HTML code"
RESPONSIVE_OWN_HTML = """\
{
    "envelope": "sender@example.com",
    "recipient": "receiver@example.com",
    "mime": {
        "from": {
            "name": "John Doe",
            "email": "sender@example.com",
        },
        "to": {
            "name": "Mister Receiver",
            "email": "receiver@example.com",
        },
        "cc": {
            "name": "Someone Else",
            "email": "randomguy@example.com",
        },
        "subject": "Example email",
        "headers": {
            "list-unsubscribe": "<mailto:unsubscribe@example.com>"
        },
        "text": "This is the pure text version of the email",
        "content": "<html><head> ..... </body></html>",
        "attachments": [ {
            "url": "http://www.example.com/document.pdf"
        } ]
    }
}
"""


EXAMPLES = {
    "json-messages.md": [SPEC_NESTED, SPEC_RESPONSIVE],
    "responsiveemail.md": [RESPONSIVE_BLOCKS, RESPONSIVE_OWN_HTML],
}


def job(text: str, **changes: Any) -> Message:
    obj = loadJSON(text)
    obj["mime"].update(changes)
    return Message.fromObject({k: v for k, v in obj.items()}, now=NOW)


def refusal(text: str) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        Message.fromJSON(text, now=NOW)
    assert caught.value.state == "process"
    assert caught.value.result == "invalid"
    return caught.value


def build(**obj: Any) -> bytes:
    obj.setdefault("from", "sender@example.com")
    return buildMime(obj, now=NOW, hostname=HOST)


def parsed(mime: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def perlParse(mime: bytes) -> dict[str, Any]:
    """
    What MIME::Parser makes of C{mime}.
    """
    done = subprocess.run(
        ["perl", str(HERE / "mimedump.pl")], input=mime, capture_output=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def body(part: dict[str, Any]) -> str:
    return base64.b64decode(part["body"]).decode(part["charset"] or "ascii")


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="MailerQ's pages are not beside the checkout")
def test_examplesAreVerbatim() -> None:
    """
    The examples here are MailerQ's, character for character.
    """
    for page, examples in EXAMPLES.items():
        text = (REFERENCE / page).read_text()
        for example in examples:
            assert "\n" + example + "````" in text


def test_responsivePageIsReadDespiteItsTrailingCommas() -> None:
    """
    As printed, the "Responsive email" examples are not strict JSON (a
    comma after the last member of some objects); mqtwist reads them as
    their authors meant, and reads nothing else differently.
    """
    for example in EXAMPLES["responsiveemail.md"]:
        with pytest.raises(ValueError):
            json.loads(example)
        assert loadJSON(example) == json.loads(re.sub(r",(\s*[}\]])", r"\1", example))


@pytest.mark.parametrize(
    "text, value",
    [
        ('{"a": [1, 2,], "b": {"c": 3,},}', {"a": [1, 2], "b": {"c": 3}}),
        ('{"a": ",}", "b": "\\",]",}', {"a": ",}", "b": '",]'}),
        ('{"a": [1,\r\n\t]}', {"a": [1]}),
        ('{"a": "", "b": [""  ,],}', {"a": "", "b": [""]}),
    ],
)
def test_trailingCommasAreTheOneLeniency(text: str, value: Any) -> None:
    assert loadJSON(text) == value


@pytest.mark.parametrize("text", ['{"a": ,}', '{"a": 1,,}', "[,]", '{,}', '{"a": [1 2,]}'])
def test_otherwiseTheJSONMustBeStrict(text: str) -> None:
    with pytest.raises(ValueError):
        loadJSON(text)


# -- the examples -----------------------------------------------------------------


@needsMimeTools
def test_specNestedExample() -> None:
    """
    The JSON specification's nested "mime" object is built into a text
    message with those fields, which both parsers read back.
    """
    message = Message.fromJSON(SPEC_NESTED, now=NOW)
    assert message.envelope == "my-sender-address@my-domain.com"
    assert message.recipient == "info@example.org"
    perl = perlParse(message.mime)
    headers = perl["headers"]
    assert headers["from"] == ["my-sender-address@my-domain.com"]
    assert headers["to"] == ["info@example.org"]
    assert headers["subject"] == ["This is the subject line"]
    assert headers["date"] == ["Tue, 14 Nov 2023 22:13:20 +0000"]
    assert headers["mime-version"] == ["1.0"]
    assert len(headers["message-id"]) == 1
    assert perl["structure"] == ["text/plain"]
    (part,) = perl["parts"]
    assert part["encoding"] == "7bit"
    assert body(part) == "text version of the mail"
    python = parsed(message.mime)
    assert python["From"] == "my-sender-address@my-domain.com"
    assert python["Subject"] == "This is the subject line"
    assert python.get_content() == "text version of the mail"


def test_specResponsiveExampleRefused() -> None:
    """
    The JSON specification's responsive-email example needs downloads (an
    image block and an attachment by URL): refused, naming both keys.
    """
    description = refusal(SPEC_RESPONSIVE).description
    assert description == (
        "properties 'mime.content.blocks' and 'mime.attachments[0].url' are not supported: "
        "mqtwist downloads nothing to build a message (responsive-email blocks, attachments "
        "by URL); give the HTML as a string in 'content' or 'html' and attachments inline, "
        "in base64 'data'"
    )


def test_responsiveBlocksExampleRefused() -> None:
    description = refusal(RESPONSIVE_BLOCKS).description
    assert description.startswith("property 'mime.content.blocks' is not supported: ")
    assert "background" not in description


def test_responsiveOwnHtmlExampleRefused() -> None:
    description = refusal(RESPONSIVE_OWN_HTML).description
    assert description.startswith("property 'mime.attachments[0].url' is not supported: ")


@needsMimeTools
def test_responsiveOwnHtmlWithoutTheDownload() -> None:
    """
    The "Writing your own HTML code" example without its attachment by URL:
    addresses as C{{"name", "email"}}, the text, C{content} as the HTML,
    a further header; a C{multipart/alternative} of the two bodies.
    """
    message = job(RESPONSIVE_OWN_HTML, attachments=[])
    perl = perlParse(message.mime)
    headers = perl["headers"]
    assert headers["from"] == ["John Doe <sender@example.com>"]
    assert headers["to"] == ["Mister Receiver <receiver@example.com>"]
    assert headers["cc"] == ["Someone Else <randomguy@example.com>"]
    assert headers["subject"] == ["Example email"]
    assert headers["list-unsubscribe"] == ["<mailto:unsubscribe@example.com>"]
    assert perl["structure"] == ["multipart/alternative", "  text/plain", "  text/html"]
    text, html = perl["parts"]
    assert body(text) == "This is the pure text version of the email"
    assert body(html) == "<html><head> ..... </body></html>"
    python = parsed(message.mime)
    assert python["From"].addresses[0].display_name == "John Doe"
    assert python["From"].addresses[0].addr_spec == "sender@example.com"
    assert b"\r\nlist-unsubscribe: <mailto:unsubscribe@example.com>\r\n" in message.mime
    htmlPart = python.get_body(("html",))
    assert htmlPart is not None
    assert htmlPart.get_content() == "<html><head> ..... </body></html>"


@needsMimeTools
def test_specResponsiveWithInlineContent() -> None:
    """
    The JSON specification's responsive example with its blocks given as
    an HTML string and its attachment inline: C{textVersion} is the text,
    the attachment's type comes from its name.
    """
    pdf = b"%PDF-1.4\n" + bytes(range(256))
    message = job(
        SPEC_RESPONSIVE,
        content="<p>Click the button!</p>",
        attachments=[{"data": base64.b64encode(pdf).decode(), "name": "brochure.pdf"}],
    )
    perl = perlParse(message.mime)
    headers = perl["headers"]
    assert headers["subject"] == ["Example subject"]
    assert headers["x-my-special-header"] == ["special-value"]
    assert perl["structure"] == [
        "multipart/mixed", "  multipart/alternative", "    text/plain", "    text/html", "  application/pdf",
    ]
    text, html, attachment = perl["parts"]
    assert body(text) == "This is the example message text"
    assert body(html) == "<p>Click the button!</p>"
    assert base64.b64decode(attachment["body"]) == pdf
    assert attachment["filename"] == "brochure.pdf"
    assert attachment["encoding"] == "base64"
    (python,) = parsed(message.mime).iter_attachments()
    assert python.get_content_type() == "application/pdf"
    assert python.get_content_disposition() == "attachment"
    assert python.get_content() == pdf


# -- the forms one by one -----------------------------------------------------------


@pytest.mark.parametrize(
    "given, name, address",
    [
        ("a@example.org", "", "a@example.org"),
        ({"name": "Ann", "email": "a@example.org"}, "Ann", "a@example.org"),
        ({"name": "Ann", "address": "a@example.org"}, "Ann", "a@example.org"),
        ({"email": "a@example.org"}, "", "a@example.org"),
        ({"name": None, "email": "a@example.org"}, "", "a@example.org"),
        ({"name": "Ann", "email": "a@example.org", "address": "a@example.org"}, "Ann", "a@example.org"),
        ({"name": "Ann", "email": "a@example.org", "comment": "ignored"}, "Ann", "a@example.org"),
    ],
)
def test_addressForms(given: Any, name: str, address: str) -> None:
    message = parsed(build(**{"from": given, "to": [given, given], "replyTo": given, "cc": given, "text": "x"}))
    for field, count in (("From", 1), ("To", 2), ("Reply-To", 1), ("Cc", 1)):
        addresses = message[field].addresses
        assert [(a.display_name, a.addr_spec) for a in addresses] == [(name, address)] * count


@needsMimeTools
def test_nonAsciiNamesEncoded() -> None:
    """
    Names in MailerQ's address form are written as RFC 2047 encoded words.
    """
    mime = build(**{
        "from": {"name": "Jörg Müller", "email": "joerg@example.com"},
        "to": [{"name": "Zoë", "email": "zoe@bücher.example"}],
        "subject": "Grüße",
        "textVersion": "Grüße\n",
    })
    head = mime[: mime.index(b"\r\n\r\n")]
    assert head.isascii()
    assert b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.com>\r\n" in head
    assert b"To: =?utf-8?q?Zo=C3=AB?= <zoe@xn--bcher-kva.example>\r\n" in head
    headers = perlParse(mime)["headers"]
    assert headers["from"] == ["Jörg Müller <joerg@example.com>"]
    assert headers["to"] == ["Zoë <zoe@xn--bcher-kva.example>"]
    assert headers["subject"] == ["Grüße"]


def test_sameBodyUnderBothNames() -> None:
    """
    C{text} and C{textVersion}, C{html} and C{content}: one or the other,
    or both when they agree.
    """
    for obj in ({"text": "t", "textVersion": "t"}, {"textVersion": "t"}, {"text": "t"}):
        message = parsed(build(**obj))
        assert message.get_content_type() == "text/plain"
        assert message.get_content() == "t"
    for obj in ({"html": "<p>h</p>", "content": "<p>h</p>"}, {"content": "<p>h</p>"}):
        message = parsed(build(**obj))
        assert message.get_content_type() == "text/html"
        assert message.get_content() == "<p>h</p>"


@pytest.mark.parametrize(
    "attachment, type, filename",
    [
        ({"data": "YWJj"}, "application/octet-stream", None),
        ({"data": "YWJj", "name": "photo.png"}, "image/png", "photo.png"),
        ({"data": "YWJj", "name": "notes.txt"}, "text/plain", "notes.txt"),
        ({"data": "YWJj", "name": "mail.eml"}, "application/octet-stream", "mail.eml"),
        ({"data": "YWJj", "name": "noextension"}, "application/octet-stream", "noextension"),
        ({"data": "YWJj", "name": "a.png", "type": "application/x-mine"}, "application/x-mine", "a.png"),
        ({"data": "YWJj", "name": "a.pdf", "type": None, "size": 3, "url": None}, "application/pdf", "a.pdf"),
    ],
)
def test_inlineAttachment(attachment: dict[str, Any], type: str, filename: str | None) -> None:
    """
    An attachment given inline: C{data} in base64; C{type} from the name
    when missing (never a C{message/*} or C{multipart/*} type);
    C{name} optional.
    """
    message = parsed(build(text="x", attachments=[attachment]))
    (part,) = message.iter_attachments()
    assert part.get_content_type() == type
    assert part.get_content_disposition() == "attachment"
    assert part.get_filename() == filename
    assert part.get_payload(decode=True) == b"abc"


def sameBoundary(mime: bytes) -> bytes:
    """
    C{mime} with its (random) multipart boundary made a fixed one.
    """
    match = re.search(rb'boundary="([^"]+)"', mime)
    assert match is not None
    return mime.replace(match.group(1), b"BOUNDARY")


def test_unknownKeysIgnored() -> None:
    """
    Keys that mqtwist does not use -- the responsive-email's C{bcc},
    C{background}, C{font}, anything else -- in the object, its addresses
    and its attachments change nothing in the message.
    """
    plain: dict[str, Any] = {
        "from": {"name": "A", "email": "a@example.org"},
        "to": [{"name": "B", "email": "b@example.org"}],
        "subject": "s",
        "headers": {"Message-ID": "<fixed@example.org>"},
        "text": "t",
        "attachments": [{"name": "a.txt", "type": "text/plain", "data": "YWJj"}],
    }
    extended = json.loads(json.dumps(plain))
    extended.update(bcc="hidden@example.org", background={"color": "white"}, font={"size": 12},
                    version=2, body="y", dkim={"selector": "x"}, **{"x-custom": [1, {"deep": None}]})
    extended["from"]["id"] = 7
    extended["to"][0]["tags"] = ["x"]
    extended["attachments"][0].update(size=3, disposition="inline", encoding="gzip")
    mime = buildMime(extended, now=NOW, hostname=HOST)
    assert sameBoundary(mime) == sameBoundary(buildMime(plain, now=NOW, hostname=HOST))
    assert b"hidden" not in mime and b"Bcc" not in mime


def test_whatIsKept() -> None:
    """
    What "kept" means for a C{mime} object: the built text replaces it in the
    job (so a retry sends the same message), results carry C{mime} only with
    C{keepmime}, and then as that text; keys the object had but mqtwist did
    not use are in neither.  Custom properties of the job are kept as ever.
    """
    obj = json.loads(SPEC_NESTED)
    obj["mime"]["bcc"] = "hidden@example.org"
    obj["campaign"] = {"id": 7}
    for keepmime in (False, True):
        message = Message.fromJSON(json.dumps(dict(obj, keepmime=keepmime)), now=NOW)
        assert message.json["mime"] == message.mime.decode("ascii")
        result = json.loads(message.resultJSON())
        assert result["campaign"] == {"id": 7}
        assert result.get("mime") == (message.mime.decode("ascii") if keepmime else None)
        again = Message.fromJSON(message.outboxJSON())
        assert again.mime == message.mime
        assert b"hidden" not in message.mime


# -- refused -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj, says",
    [
        ({"text": "x", "content": {"blocks": []}}, "property 'mime.content.blocks' is not supported"),
        ({"text": "x", "content": {"width": 600}}, "property 'mime.content' is an object"),
        ({"text": "x", "content": 5}, "property 'mime.content' must be a string, not int"),
        ({"content": ["<p>"]}, "property 'mime.content' must be a string, not list"),
        ({"textVersion": 5}, "property 'mime.textVersion' must be a string, not int"),
        ({"text": "a", "textVersion": "b"}, "properties 'mime.text' and 'mime.textVersion' both give the text body"),
        ({"html": "a", "content": "b"}, "properties 'mime.html' and 'mime.content' both give the HTML body"),
        ({"text": "x", "attachments": [{"data": "YWJj"}, {"url": "http://example.com/a.pdf"}]},
         "property 'mime.attachments[1].url' is not supported"),
        ({"text": "x", "attachments": [{"url": "http://example.com/a.pdf", "data": "YWJj"}]},
         "property 'mime.attachments[0].url' is not supported"),
        ({"text": "x", "attachments": [{"url": "u"}] * 5},
         "properties 'mime.attachments[0].url', 'mime.attachments[1].url', "
         "'mime.attachments[2].url' and 2 more are not supported"),
        ({"text": "x", "attachments": [{"name": "a.pdf"}]}, "property 'mime.attachments[0].data' is missing"),
        ({"text": "x", "attachments": [{"name": "", "data": "YWJj"}]}, "property 'mime.attachments[0].name'"),
        ({"text": "x", "attachments": [{"name": 5, "data": "YWJj"}]}, "property 'mime.attachments[0].name'"),
        ({"text": "x", "attachments": [{"type": "pdf", "data": "YWJj"}]}, "property 'mime.attachments[0].type'"),
        ({"text": "x", "from": {"name": "A"}}, "property 'mime.from' has no 'email'"),
        ({"text": "x", "from": {"email": 5}}, "property 'mime.from.email' must be a string, not int"),
        ({"text": "x", "from": {"address": ["a@example.org"]}}, "property 'mime.from.address' must be a string"),
        ({"text": "x", "from": {"name": 5, "email": "a@example.org"}}, "property 'mime.from.name' must be a string"),
        ({"text": "x", "from": {"email": "a@example.org", "address": "b@example.org"}},
         "property 'mime.from' has both 'email' 'a@example.org' and 'address' 'b@example.org'; give one"),
        ({"text": "x", "to": {"email": "not an address"}}, "mime.to.email"),
        ({"text": "x", "cc": [{"email": "a@example.org"}, {"name": "B"}]}, "property 'mime.cc[1]' has no 'email'"),
        ({"text": "x", "from": {"name": "A\r\nBcc: x@example.org", "email": "a@example.org"}}, "mime.from.name"),
        ({"subject": "s", "background": {"color": "white"}}, "property 'mime' has no content"),
    ],
)
def test_refused(obj: dict[str, Any], says: str) -> None:
    obj.setdefault("from", "sender@example.com")
    with pytest.raises(InvalidMessage) as caught:
        buildMime(obj, now=NOW, hostname=HOST)
    assert caught.value.state == "process"
    assert caught.value.result == "invalid"
    assert says in caught.value.description


# -- through the service -------------------------------------------------------------


@needsMimeTools
@pytest_twisted.ensureDeferred
async def test_examplesThroughTheService(rabbitmq: Any, amqp: Any, smtpServer: Any, queues: dict[str, str]) -> None:
    """
    MailerQ's two JSON-specification examples published as printed: the
    nested object is built and delivered, read back from the receiving
    server by MIME::Parser; the responsive one ends C{process}/C{invalid}
    naming what would need a download, and nothing of it is sent.
    """
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues))
    async with running(service):
        await publishAll(amqp, queues["outbox"], [SPEC_RESPONSIVE.encode(), SPEC_NESTED.encode()])
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (received,) = await smtpServer.waitForMessages(1)

    assert received.mailFrom == "my-sender-address@my-domain.com"
    assert received.rcptTos == ("info@example.org",)
    perl = perlParse(received.data)
    assert perl["headers"]["from"] == ["my-sender-address@my-domain.com"]
    assert perl["headers"]["to"] == ["info@example.org"]
    assert perl["headers"]["subject"] == ["This is the subject line"]
    assert perl["structure"] == ["text/plain"]
    # on the wire the message ends with a line break (RFC 5321's end of data)
    assert body(perl["parts"][0]) == "text version of the mail\n"
    assert received.data.endswith(b"\r\n\r\ntext version of the mail\r\n")
    assert "mime" not in success
    (delivered,) = success["results"]
    assert delivered["result"] == "accepted"

    assert "mime" not in failure
    (entry,) = failure["results"]
    assert (entry["state"], entry["result"]) == ("process", "invalid")
    assert entry["description"].startswith(
        "properties 'mime.content.blocks' and 'mime.attachments[0].url' are not supported: "
    )
