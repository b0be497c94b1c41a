"""
Outbox JSON parsing and validation, result entries and result JSON.
"""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtwist.content.message import Message, ParseSettings, ResultEntry, invalidResultJSON, queueFor
from mqtwist.errors import AttemptFailed, InvalidMessage
from mqtwist.timeformat import formatTime, parseTime

GOOD = {"envelope": "sender@example.org", "recipient": "rcpt@example.com", "mime": "Subject: x\r\n\r\nhi\r\n"}


def parse(**changes):
    obj = dict(GOOD)
    obj.update(changes)
    return Message.fromJSON(json.dumps(obj))


def refusal(data) -> str:
    with pytest.raises(InvalidMessage) as caught:
        Message.fromJSON(data if isinstance(data, (str, bytes)) else json.dumps(data))
    assert caught.value.state == "process"
    assert caught.value.result == "invalid"
    assert caught.value.permanent
    return caught.value.description


def test_good_message():
    message = parse(id="abc-1", campaign={"n": 3})
    assert message.envelope == "sender@example.org"
    assert message.recipient == "rcpt@example.com"
    assert message.mime == b"Subject: x\r\n\r\nhi\r\n"
    assert message.label == "abc-1"
    assert message.attempts == 0


def test_null_sender():
    assert parse(envelope="").envelope == ""
    obj = dict(GOOD)
    del obj["envelope"]
    assert Message.fromJSON(json.dumps(obj)).envelope == ""


@pytest.mark.parametrize(
    "data, words",
    [
        (b"{not json", "not valid JSON"),
        (b'{"recipient": "a@b.c", "mime": "x", "maxattempts": NaN}', "NaN is not a JSON number"),
        (b'{"recipient": "a@b.c", "mime": "x", "maxattempts": -Infinity}', "-Infinity is not a JSON number"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "must be a JSON object, not a JSON list"),
        ('"text"', "JSON object, not a JSON str"),
        ({"mime": "x"}, "'recipient' is missing"),
        ({"recipient": "a@b.c"}, "'mime' is missing"),
        ({"recipient": 5, "mime": "x"}, "'recipient' must be a string, not int"),
        ({"recipient": "nobody", "mime": "x"}, "not an address of the form local@domain"),
        ({"recipient": "@example.com", "mime": "x"}, "local@domain"),
        ({"recipient": "a@", "mime": "x"}, "local@domain"),
        ({"recipient": "<a@b.c>", "mime": "x"}, "contains '<'"),
        ({"recipient": "a b@c.d", "mime": "x"}, "contains ' '"),
        ({"recipient": "a@b..c", "mime": "x"}, "malformed domain"),
        ({"recipient": "a@-b.c", "mime": "x"}, "malformed domain"),
        ({"recipient": "a..b@c.d", "mime": "x"}, "malformed local part"),
        ({"recipient": "x" * 65 + "@c.d", "mime": "x"}, "longer than 64"),
        ({"recipient": "a@b.c", "mime": 5}, "'mime' must be a string"),
        ({"recipient": "a@b.c", "mime": "x", "envelope": ["x"]}, "'envelope' must be a string"),
        ({"recipient": "a@b.c", "mime": "x", "keepmime": "yes"}, "'keepmime' must be true or false"),
        ({"recipient": "a@b.c", "mime": "x", "ips": "1.2.3.4"}, "'ips' must be a list"),
        ({"recipient": "a@b.c", "mime": "x", "ips": [1]}, "'ips' must be a list of IP address strings"),
        ({"recipient": "a@b.c", "mime": "x", "retries": [10, -1]}, "'retries' must be a non-empty list"),
        ({"recipient": "a@b.c", "mime": "x", "retries": []}, "'retries' must be a non-empty list"),
        ({"recipient": "a@b.c", "mime": "x", "maxattempts": True}, "'maxattempts' must be a whole number, not a boolean"),
        ({"recipient": "a@b.c", "mime": "x", "maxattempts": 0}, "at least 1"),
        ({"recipient": "a@b.c", "mime": "x", "maxdelivertime": "tomorrow"}, "'maxdelivertime'"),
        # digits are seconds, refused alike when 0 (they meant the default)
        ({"recipient": "a@b.c", "mime": "x", "maxdelivertime": "0"}, "'maxdelivertime' in seconds must be positive"),
        ({"recipient": "a@b.c", "mime": "x", "maxdelivertime": "\u00b2"}, "'maxdelivertime' is '\u00b2'; give seconds"),
        ({"recipient": "a@b.c", "mime": "x", "nextattempt": "2026-01-01"}, "'nextattempt'"),
        ({"recipient": "a@b.c", "mime": "x", "queues": []}, "'queues' must be an object"),
        ({"recipient": "a@b.c", "mime": "x", "queues": {"success": 3}}, "'queues.success' must be a queue name"),
        ({"recipient": "a@b.c", "mime": "x", "queues": {"success": "q" * 256}},
         "'queues.success' is 256 bytes long; AMQP queue names are at most 255 bytes"),
        ({"recipient": "a@b.c", "mime": "x", "security": "maybe"}, "'security' is 'maybe'"),
        ({"recipient": "a@b.c", "mime": "x", "priority": 300}, "'priority' must be an integer 0-255"),
        ({"recipient": "a@b.c", "mime": "x", "tags": "t"}, "'tags' must be a list"),
        ({"recipient": "a@b.c", "mime": "x", "smarthost": "relay"}, "'smarthost' must be an object"),
        ({"recipient": "a@b.c", "mime": "x", "smarthost": {"hostname": "r", "port": 0}}, "'smarthost.port'"),
        ({"recipient": "a@b.c", "mime": "x", "results": {}}, "'results' must be a list"),
        # an entry that is not an object would break the attempt count
        ({"recipient": "a@b.c", "mime": "x", "results": [None]}, "'results' must be a list"),
        ({"recipient": "a@b.c", "mime": "x", "results": [{"state": "connect"}, "x"]}, "(objects)"),
        ({"recipient": "a@b.c", "mime": {"text": 5}}, "mime.text"),
        ({"recipient": "a@b.c", "mime": "x", "dkim": {}}, "dkim"),
        ({"recipient": "a@b.c", "mime": "x", "headers": {"append": {"X-A": "1\r\nBcc: x@y"}}}, "X-A"),
    ],
)
def test_refusals_name_the_cause(data, words):
    assert words in refusal(data)


@pytest.mark.parametrize("field", ["recipient", "envelope"])
@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\x7f", "\t"])
def test_control_characters_in_addresses_are_refused(field, bad):
    obj = dict(GOOD)
    obj[field] = f"a{bad}x@example.com"
    description = refusal(obj)
    assert field in description
    assert "control character" in description


@given(st.text(alphabet=st.characters(max_codepoint=31), min_size=1), st.text(min_size=0, max_size=10))
def test_no_address_with_a_control_character_passes(bad, tail):
    obj = dict(GOOD, recipient=f"a{bad}{tail}@example.com")
    with pytest.raises(InvalidMessage):
        Message.fromJSON(json.dumps(obj))


def test_non_ascii_and_literal_addresses_are_accepted():
    assert parse(recipient="pélé@exämple.com").recipient == "pélé@exämple.com"
    assert parse(recipient="a@[127.0.0.1]").recipient == "a@[127.0.0.1]"


def test_queue_overrides():
    message = parse(queues={"success": "mine", "failure": None, "retry": ""})
    assert message.queueFor("success", "success") == "mine"
    assert message.queueFor("failure", "failure") is None
    assert message.queueFor("retry", "retry") is None
    assert message.queueFor("results", "results") == "results"
    assert message.queueFor("results", "") is None
    # an invalid message's object still routes its results where it asked
    none: frozenset[str] = frozenset()
    assert queueFor({"queues": {"failure": "f2"}}, "failure", "failure", none) == "f2"
    assert queueFor({"queues": {"failure": 7}}, "failure", "failure", none) == "failure"
    # the refusal of a name too long for AMQP, with a control character or
    # of mqtwist's own goes to the default queue
    assert queueFor({"queues": {"failure": "f" * 256}}, "failure", "failure", none) == "failure"
    assert queueFor({"queues": {"failure": "a\nb"}}, "failure", "failure", none) == "failure"
    assert queueFor({"queues": {"failure": "outbox"}}, "failure", "failure", frozenset(["outbox"])) == "failure"
    assert queueFor(None, "results", "results", none) == "results"


@pytest.mark.parametrize("kind", ["results", "success", "failure", "retry"])
def test_a_job_cannot_send_its_results_to_a_queue_of_mqtwists_own(kind):
    """
    A result published to the outbox (or a delay queue, or the dead-letter
    queue) would come back as a job, round after round.
    """
    settings = ParseSettings(reservedQueues=frozenset(["outbox", "outbox.delay.60s"]))
    with pytest.raises(InvalidMessage) as raised:
        Message.fromJSON(json.dumps({"recipient": "a@b.c", "mime": "x", "queues": {kind: "outbox.delay.60s"}}), settings)
    assert raised.value.description == (
        f"property 'queues.{kind}' names 'outbox.delay.60s', a queue of mqtwist's own (the outbox, a delay "
        "queue, the dead-letter or the held queue): results published there would come back as jobs; give a queue "
        "for results"
    )


def test_a_number_too_big_for_a_float_is_refused():
    with pytest.raises(InvalidMessage, match="1e999 is too big for a number of 64 bits"):
        Message.fromJSON('{"recipient": "a@b.c", "mime": "x", "campaign": 1e999}')


def test_result_json_strips_mime_keeps_unknown_properties_and_secrets_out():
    message = parse(
        id=17, campaign="c", smarthost={"hostname": "relay", "username": "u", "password": "secret"}
    )
    message.record(ResultEntry("rcptto", "error", parseTime("2026-11-24 10:00:00"), False, code=451, status="4.3.0", description="try later"))
    published = json.loads(message.resultJSON())
    assert "mime" not in published
    assert published["id"] == 17 and published["campaign"] == "c"
    assert published["smarthost"] == {"hostname": "relay", "username": "u"}
    assert b"secret" not in message.resultJSON()
    assert published["results"] == [
        {"time": "2026-11-24 10:00:00", "state": "rcptto", "result": "error", "code": 451, "status": "4.3.0", "description": "try later"}
    ]
    # the outbox copy keeps everything, the body included
    assert json.loads(message.outboxJSON())["mime"] == GOOD["mime"]
    assert message.attempts == 1


def test_keys_mailerq_does_not_document_are_kept_in_nested_objects():
    """
    A key of C{dsn}, C{smarthost} or C{queues} that mqtwist does not know is
    the sender's own: never a reason to refuse the job, and in its results.
    """
    message = parse(
        dsn={"notify": "FAILURE", "campaign": "c1"},
        smarthost={"hostname": "relay", "region": "eu"},
        queues={"results": "r", "archive": "a"},
    )
    published = json.loads(message.resultJSON())
    assert published["dsn"] == {"notify": "FAILURE", "campaign": "c1"}
    assert published["smarthost"] == {"hostname": "relay", "region": "eu"}
    assert published["queues"] == {"results": "r", "archive": "a"}
    assert message.dsn is not None and message.dsn.notify == ["FAILURE"]


def test_keepmime():
    message = parse(keepmime=True)
    assert json.loads(message.resultJSON())["mime"] == GOOD["mime"]


def test_attempts_and_first_try_time():
    message = parse(results=[
        {"time": "2026-11-24 08:00:00", "state": "process", "result": "invalid"},
        {"time": "2026-11-24 09:00:00", "state": "process", "result": "deferred"},
        {"time": "2026-11-24 10:00:00", "state": "connect", "result": "error"},
        {"time": "2026-11-24 10:10:00", "state": "process", "result": "timeout"},
        {"time": "2026-11-24 10:20:00", "state": "rcptto", "result": "error"},
    ])
    assert message.attempts == 2
    # a deferral counts as trying (the expiry clock starts), not as an attempt
    assert message.firstTryTime == parseTime("2026-11-24 09:00:00")


def test_result_entry_from_failure_and_connection_facts():
    failure = AttemptFailed("data", "error", "plugin broke", plugin="stamp")
    entry = ResultEntry.fromFailure(failure, 0, {"mta": "mx.example", "messages": 3})
    assert not entry.final and not entry.accepted
    assert entry.toJSON() == {
        "time": "1970-01-01 00:00:00", "state": "data", "result": "error",
        "description": "plugin broke", "plugin": "stamp", "category": "other", "mta": "mx.example", "messages": 3,
    }


def test_invalid_result_json():
    failure = InvalidMessage("the message is not valid JSON: x")
    published = json.loads(invalidResultJSON(b"{broken", failure, 0))
    assert published == {
        "input": "{broken",
        "results": [{"time": "1970-01-01 00:00:00", "state": "process", "result": "invalid", "description": "the message is not valid JSON: x", "category": "invalid"}],
    }
    # NaN is not JSON: the input comes back as text, never as a bare NaN
    published = json.loads(invalidResultJSON(b'{"maxattempts": NaN}', failure, 0))
    assert published["input"] == '{"maxattempts": NaN}' and "maxattempts" not in published
    obj = {"id": "x1", "recipient": "bad", "mime": "body"}
    published = json.loads(invalidResultJSON(json.dumps(obj).encode(), InvalidMessage("bad recipient"), 0))
    assert published["id"] == "x1" and "mime" not in published
    assert published["results"][0]["description"] == "bad recipient"


def test_time_format_round_trip():
    assert formatTime(parseTime("2026-02-28 23:59:59")) == "2026-02-28 23:59:59"


def test_mime_object_is_built_once_and_kept_in_the_json():
    message = parse(mime={"from": "a@example.org", "to": "b@example.com", "subject": "hi", "text": "hello"}, keepmime=True)
    assert b"Subject: hi\r\n" in message.mime
    assert message.json["mime"] == message.mime.decode()
    again = Message.fromJSON(message.outboxJSON())
    assert again.mime == message.mime  # same Date and Message-ID on a retry


def test_secrets_never_reach_published_json():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    message = parse(
        mime="From: a@example.org\r\n\r\nx\r\n",
        dkim={"domain": "example.org", "selector": "s1", "key": pem},
        headers={"append": {"X-Campaign": "c1"}},
        smarthost={"hostname": "relay", "username": "u", "password": "hunter2"},
    )
    assert len(message.dkim) == 1 and message.headerEdits == {"append": {"X-Campaign": "c1"}}
    published = message.resultJSON()
    assert b"PRIVATE KEY" not in published and b"hunter2" not in published
    assert json.loads(published)["dkim"] == {"domain": "example.org", "selector": "s1"}
    invalid = invalidResultJSON(json.dumps(dict(message.json, recipient="bad")).encode(), InvalidMessage("x"), 0)
    assert b"PRIVATE KEY" not in invalid and b"hunter2" not in invalid
    # the outbox copy keeps what the next attempt needs
    assert b"PRIVATE KEY" in message.outboxJSON()


def test_labels_shown_leave_out_only_what_is_between():
    from mqtwist.content.message import labelsShown

    assert labelsShown(["a"]) == "a"
    assert labelsShown(["a", "b", "c", "d"]) == "a, b, c, d"
    assert labelsShown(["a", "b", "c", "d", "e"]) == "a, b, c, ... e"
    assert labelsShown(["a", "b"], shown=1) == "a, b"


@pytest.mark.parametrize(
    "job, description",
    [
        ({"ips": ["x"]}, "ips holds 'x', which is no IPv4 or IPv6 address"),
        ({"smarthost": {"hostname": "exa mple.com"}},
         "smarthost.hostname is 'exa mple.com', which is no host name or IP address; give a name such as "
         "relay.example.com"),
        ({"smarthost": {"hostname": "relay.example.com", "port": "\u00b2"}},
         "property 'smarthost.port' must be a port number 1-65535"),
        ({"smarthost": {"hostname": "relay.example.com", "username": "u\r\nRSET"}},
         "smarthost.username contains the control character '\\r' at position 1"),
        ({"dsn": {"orcpt": "a" * 501 + "@b.c"}},
         "property 'dsn.orcpt' is 505 characters long, more than the 500 of RFC 3461 (section 4.2)"),
    ],
)
def test_values_sent_to_servers_are_checked_when_read(job, description):
    """
    Local addresses, a smarthost's name and credentials and the ORCPT are
    refused when the job is read, instead of failing every attempt until
    the job expires (or reaching a command line).
    """
    with pytest.raises(InvalidMessage) as raised:
        Message.fromObject({"recipient": "a@b.c", "mime": "x", **job})
    assert raised.value.description.startswith(description)


def test_a_password_with_a_control_character_is_refused_without_quoting_it():
    with pytest.raises(InvalidMessage) as raised:
        Message.fromObject({"recipient": "a@b.c", "mime": "x", "smarthost": {"hostname": "r.example", "password": "se\x00cret"}})
    assert "se" not in raised.value.description.replace("smarthost.password", "")


POOLS = ParseSettings(pools={"bulk": ("192.0.2.10", "192.0.2.11")}, defaultIps=("192.0.2.1",))


@pytest.mark.parametrize(
    "job, ips",
    [
        ({"pool": "bulk"}, ["192.0.2.10", "192.0.2.11"]),
        # as MailerQ documents: ips, more precise, wins over pool
        ({"pool": "bulk", "ips": ["192.0.2.20"]}, ["192.0.2.20"]),
        ({"pool": "no-such-pool", "ips": ["192.0.2.20"]}, ["192.0.2.20"]),
        ({}, ["192.0.2.1"]),
        ({"ips": []}, []),
    ],
)
def test_a_pool_selects_its_addresses(job, ips):
    message = Message.fromObject({"recipient": "a@b.c", "mime": "x", **job}, POOLS)
    assert message.ips == ips


@pytest.mark.parametrize(
    "pool, description",
    [
        ("other", "property 'pool' names 'other', which is no [[pools]] table of mqtwist's configuration (bulk); "
         "give a configured pool, or 'ips'"),
        (["bulk"], "property 'pool' must be the name of a pool (a string), not a list of 1 item"),
    ],
)
def test_an_unknown_pool_is_invalid(pool, description):
    with pytest.raises(InvalidMessage) as raised:
        Message.fromObject({"recipient": "a@b.c", "mime": "x", "pool": pool}, POOLS)
    assert raised.value.description == description
