"""
The limits of an outbox job (L{mqtwist.content.joblimits}) as L{decodeJSON} applies
them: each refused with a description that names the place, the limit and
the option; each at its exact boundary.
"""

from __future__ import annotations

import json

import pytest

from mqtwist.content.joblimits import JobLimits, encodeJSON, encodeMime
from mqtwist.content.message import decodeJSON, invalidResultJSON
from mqtwist.errors import InvalidMessage


def refusal(data: bytes, **limits: int) -> str:
    with pytest.raises(InvalidMessage) as caught:
        decodeJSON(data, JobLimits(**limits))
    return caught.value.description


def nested(depth: int) -> bytes:
    # the job itself is level 1
    return b'{"recipient":"a@example.com","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_depth_is_refused_past_the_limit_only():
    decodeJSON(nested(5), JobLimits(maxDepth=5))
    assert refusal(nested(6), maxDepth=5) == (
        "property 'x[0][0][0][0]' is nested 6 levels deep, more than the 5 an outbox job may have "
        "(--max-job-depth); flatten it"
    )


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_depth_beyond_the_parser_is_refused_like_any_other(depth):
    """
    json.loads recurses: past ~1,000 levels it raises RecursionError, which
    is reported as the depth limit, not as a crash.
    """
    assert refusal(nested(depth)) == (
        "the message nests objects and lists deeper than the 32 levels an outbox job may have "
        "(--max-job-depth); flatten it"
    )


def test_items_are_refused_past_the_limit_only():
    decodeJSON(json.dumps({"recipient": "a@example.com", "tags": ["t"] * 3}).encode(), JobLimits(maxItems=3))
    assert refusal(json.dumps({"tags": ["t"] * 4}).encode(), maxItems=3) == (
        "property 'tags' has 4 items, more than the 3 an object or list of an outbox job may have "
        "(--max-job-items)"
    )
    wide = {f"k{n}": n for n in range(4)}
    assert refusal(json.dumps(wide).encode(), maxItems=3).startswith("the message has 4 keys, more than the 3")


def test_strings_outside_mime_are_limited_and_mime_is_not():
    limits = {"maxString": 10}
    decodeJSON(json.dumps({"mime": "x" * 1000, "headers": {"h": "y" * 10}}).encode(), JobLimits(**limits))
    decodeJSON(json.dumps({"mime": {"html": "x" * 1000}}).encode(), JobLimits(**limits))
    description = refusal(json.dumps({"campaign": {"name": "y" * 1_000_000}}).encode(), **limits)
    assert description == (
        "property 'campaign.name' is 1000000 characters long, more than the 10 a string of an outbox "
        "job may have outside 'mime' (--max-job-string): 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy'"
        "... (999960 more characters)"
    )
    assert refusal(json.dumps({"k" * 11: 1}).encode(), **limits).startswith(
        "a key of the message is 11 characters long"
    )


def test_the_whole_size_is_checked_before_parsing():
    assert refusal(b"x" * 101, maxBytes=100) == (
        "the message is 101 bytes, more than the 100 bytes an outbox job may have (--max-job-bytes); "
        "send a smaller message"
    )
    with pytest.raises(InvalidMessage):
        decodeJSON(b"x" * 100, JobLimits(maxBytes=100))  # not JSON, but not too big


@pytest.mark.parametrize(
    "text, where",
    [
        (r'{"campaign": "a\ud800b"}', "property 'campaign' holds a lone surrogate (\\ud800) at character 1"),
        (r'{"x": ["\udfff"]}', "property 'x[0]' holds a lone surrogate (\\udfff) at character 0"),
        (r'{"x": {"\ud800": 1}}', "a key of 'x' holds a lone surrogate"),
        (r'{"mime": "\ud83d"}', "property 'mime' holds a lone surrogate (\\ud83d)"),
        # a byte that is not UTF-8 is for the job's own mime only
        (r'{"mime": "\udcff\udd00"}', "property 'mime' holds a lone surrogate (\\udd00) at character 1"),
        (r'{"subject": "\udce9"}', "property 'subject' holds a lone surrogate (\\udce9)"),
        (r'{"mime": {"text": "\udce9"}}', "property 'mime.text' holds a lone surrogate (\\udce9)"),
    ],
)
def test_lone_surrogates_are_refused_wherever_they_are(text, where):
    assert refusal(text.encode()).startswith(where)


def test_a_surrogate_pair_is_one_character_and_fine():
    assert decodeJSON(rb'{"recipient": "\ud83d\ude00@example.com"}')["recipient"] == "\U0001f600@example.com"


def test_invalid_results_of_anything_encode_as_utf8():
    """
    The invalid result of a job with a lone surrogate, of invalid UTF-8
    and of a job too deep for the parser: always valid UTF-8 JSON.
    """
    for data in (rb'{"id": "s", "campaign": "\ud800"}', b'{"id": "\xff"}', nested(10_000)):
        try:
            decodeJSON(data)
        except InvalidMessage as e:
            failure = e
        result = json.loads(invalidResultJSON(data, failure, 0).decode("utf-8"))
        assert result["results"][0]["result"] == "invalid"


def test_encode_json_replaces_what_utf8_cannot_carry():
    assert encodeJSON({"a": "x\ud800y", "b": "\U0001f600"}) == '{"a": "x\ufffdy", "b": "\U0001f600"}'.encode()


def test_the_bytes_of_a_message_that_are_not_utf8_travel_in_mime():
    """
    A message taken in over SMTP in ISO-8859-1: its bytes that are not
    UTF-8 are in the job's mime as U+DC80-U+DCFF, read as they are and
    encoded again escaped (in a retry copy), never replaced.
    """
    raw = b"Subject: K\xf6ln\r\n\r\nGr\xfc\xdfe, caf\xc3\xa9\r\n"
    mime = raw.decode("utf-8", "surrogateescape")
    job = decodeJSON(json.dumps({"id": "8bit", "mime": mime}).encode())
    assert job["mime"] == mime
    encoded = encodeJSON(dict(job, description="x\udce9"))
    assert b'"mime": "Subject: K\\udcf6ln\\r\\n\\r\\nGr\\udcfc\\udcdfe, caf\xc3\xa9\\r\\n"' in encoded
    # anywhere else it is replaced, as any lone surrogate
    assert b'"description": "x\xef\xbf\xbd"' in encoded
    assert decodeJSON(encoded)["mime"].encode("utf-8", "surrogateescape") == raw
    assert encodeMime(mime) == encodeJSON({"mime": mime})[len(b'{"mime": '):-1]
