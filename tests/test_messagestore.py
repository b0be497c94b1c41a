"""
The external message store (L{mqtwist.messagestore}): the C{key} property,
backend discovery by URL scheme, the settings, the loader's result entries
on a fake clock, and the Redis backend against a real C{redis-server}.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

import mqtwist.messagestore.backends
from mqtwist.config import Config
from mqtwist.config.sources import SettingError, configFrom
from mqtwist.content.message import Message
from mqtwist.errors import AttemptFailed, InvalidMessage
from mqtwist.messagestore import (
    IMessageStore,
    IMessageStoreBackend,
    MessageNotFound,
    MessageUnusable,
    StoreUnavailable,
)
from mqtwist.messagestore.discovery import findBackends, openStore, safeURL
from mqtwist.messagestore.interfaces import StoreSettings
from mqtwist.messagestore.loader import StoredMessages, noStore, storedMessages
from mqtwist.messagestore.redisstore import RedisBackend, RedisStore

JOB = {"envelope": "sender@example.org", "recipient": "rcpt@example.com"}


def parse(**properties) -> Message:
    return Message.fromJSON(json.dumps({**JOB, **properties}))


# -- the key property -------------------------------------------------------


def test_a_job_with_key_and_no_mime_has_its_message_in_the_store():
    message = parse(key="campaign-7/rcpt-1")
    assert message.storeKey == "campaign-7/rcpt-1"
    assert message.mime == b""
    # kept as it came, for the results
    assert message.json["key"] == "campaign-7/rcpt-1"


def test_mime_null_counts_as_no_mime():
    assert parse(key="k1", mime=None).storeKey == "k1"


def test_mime_wins_over_key():
    message = parse(key="k1", mime="Subject: x\r\n\r\nhi\r\n")
    assert message.storeKey is None
    assert message.mime == b"Subject: x\r\n\r\nhi\r\n"


@pytest.mark.parametrize(
    "key, words",
    [
        ("", "property 'key' is ''; give the key of the message in the message store"),
        (7, "property 'key' is 7;"),
        (["a"], "property 'key' is a list of 1 item;"),
        ("a\r\nb", "property 'key' is 'a\\r\\nb';"),
    ],
)
def test_a_bad_key_is_invalid(key, words):
    with pytest.raises(InvalidMessage) as caught:
        parse(key=key)
    assert words in caught.value.description
    # even beside a mime: a documented key with a bad value
    with pytest.raises(InvalidMessage):
        parse(key=key, mime="Subject: x\r\n\r\nhi\r\n")


def test_neither_mime_nor_key():
    with pytest.raises(InvalidMessage) as caught:
        parse()
    assert caught.value.description == (
        "property 'mime' is missing; it holds the message to send (or 'key', its key in the message store)"
    )


def test_without_a_store_a_key_job_is_invalid_naming_the_setting():
    failure = noStore(parse(key="k1"))
    assert (failure.state, failure.result, failure.permanent) == ("process", "invalid", True)
    assert failure.description == (
        "the job has 'key' 'k1' and no 'mime', and no message store is configured to load it from; "
        "start mqtwist with --message-store (e.g. redis://127.0.0.1:6379/0), or give the message in 'mime'"
    )


# -- discovery ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@store.example:6379/2", "redis://***@store.example:6379/2"),
        ("rediss://user:s3cret@store.example/0?ssl_cert_reqs=none", "rediss://***@store.example/0"),
        ("redis://s3cret@[::1]:6380", "redis://***@[::1]:6380"),
        ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock"),
        ("redis://host:notaport/0", "redis:..."),
    ],
)
def test_urls_are_shown_without_credentials(url, shown):
    assert safeURL(url) == shown


def test_redis_is_found_by_its_schemes():
    backends = findBackends()
    assert {"redis", "rediss", "unix"} <= set(backends)
    assert isinstance(backends["redis"], RedisBackend)
    verifyObject(IMessageStoreBackend, backends["redis"])


def test_an_unknown_scheme_names_the_installed_ones():
    with pytest.raises(ValueError) as caught:
        openStore("mongodb://u:s3cret@db/mail/messages", StoreSettings(), Clock())
    assert str(caught.value) == (
        "no message store backend serves mongodb://***@db/mail/messages (installed: redis://, rediss://, "
        "unix://); give a URL of one of those schemes, or install the backend that serves it"
    )


MEMORY_BACKEND = """
    from twisted.internet.defer import fail, succeed
    from zope.interface import implementer

    from mqtwist.messagestore import IMessageStore, IMessageStoreBackend, MessageNotFound


    @implementer(IMessageStore)
    class MemoryStore:
        def __init__(self, url):
            self.url = url
            self.data = {}

        def fetch(self, key):
            if key not in self.data:
                return fail(MessageNotFound(f"nothing under {key}"))
            return succeed(self.data[key])

        def store(self, key, data):
            self.data[key] = data
            return succeed(None)

        def delete(self, key):
            self.data.pop(key, None)
            return succeed(None)

        def close(self):
            return succeed(None)


    @implementer(IMessageStoreBackend)
    class MemoryBackend:
        schemes = SCHEMES

        def open(self, url, settings, reactor):
            return MemoryStore(url)


    memory = MemoryBackend()
"""


@pytest.fixture
def installBackend(tmp_path):
    """
    Install a backend module as another distribution would: into
    C{SITE/mqtwist/messagestore/backends/}, no C{__init__.py} anywhere.
    """
    roots: list[str] = []

    def install(module: str, schemes: tuple[str, ...], site: str = "site") -> None:
        folder = tmp_path / site / "mqtwist" / "messagestore" / "backends"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{module}.py").write_text(textwrap.dedent(MEMORY_BACKEND).replace("SCHEMES", repr(schemes)))
        root = str(tmp_path / site)
        sys.path.append(root)
        roots.append(root)
        importlib.invalidate_caches()
        importlib.reload(mqtwist.messagestore.backends)

    yield install
    for root in roots:
        sys.path.remove(root)
    for name in [n for n in sys.modules if n.startswith("mqtwist.messagestore.backends.")]:
        if getattr(sys.modules[name], "__file__", "").startswith(str(tmp_path)):
            del sys.modules[name]
    importlib.reload(mqtwist.messagestore.backends)


def test_a_backend_plugin_adds_a_scheme(installBackend):
    installBackend("memorystore", ("memory",))
    backends = findBackends()
    assert {"memory", "redis"} <= set(backends)
    store = openStore("memory://here", StoreSettings(), Clock())
    verifyObject(IMessageStore, store)
    assert store.url == "memory://here"


def test_two_backends_of_one_scheme_stop_the_start(installBackend):
    installBackend("memorystore", ("redis",))
    with pytest.raises(ValueError) as caught:
        findBackends()
    assert "two message store backends serve redis:// URLs" in str(caught.value)
    assert "uninstall one of them" in str(caught.value)


# -- settings ------------------------------------------------------------------


def test_the_settings_and_their_defaults():
    config = Config()
    assert config.messageStore is None
    assert (config.messageStoreTimeout, config.messageStoreThreads) == (20.0, 4)
    assert config.messageStoreMaxBytes == 64 * 1024 * 1024
    assert config.messageStoreCleanup == "delete"
    assert storedMessages(config, Clock()) is None


def test_the_url_is_never_in_the_configs_repr():
    assert "s3cret" not in repr(Config(messageStore="redis://:s3cret@localhost:6379/0"))


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("message-store", "localhost:6379", "it is no URL; give scheme://..."),
        ("message-store-cleanup", "sometimes", "'sometimes' is neither delete nor keep"),
        ("message-store-timeout", "0", "greater than 0"),
        ("message-store-threads", "0", "whole number of 1 or more"),
    ],
)
def test_bad_settings_are_refused(option, value, words):
    with pytest.raises(SettingError) as caught:
        configFrom({option: value}, environ={})
    assert f"--{option}" in str(caught.value) and words in str(caught.value)


def test_the_store_of_the_configuration():
    config = Config(
        messageStore="redis://:s3cret@127.0.0.1:1/0", messageStoreMaxBytes=10_000, maxJobBytes=5_000
    )
    loader = storedMessages(config, Clock())
    assert isinstance(loader.store, RedisStore)
    assert loader.name == "redis://***@127.0.0.1:1/0"
    # the smaller of the two limits
    assert loader.maxBytes == loader.store.settings.maxBytes == 5_000
    assert loader.deleteEnded


# -- the loader on a fake clock --------------------------------------------------


@implementer(IMessageStore)
class FakeStore:
    def __init__(self, answer=None):
        self.answer = answer
        self.fetched: list[str] = []
        self.deleted: list[str] = []
        self.pending: Deferred | None = None

    def fetch(self, key):
        self.fetched.append(key)
        if self.answer is None:
            self.pending = Deferred()
            return self.pending
        return self.answer

    def store(self, key, data):
        return succeed(None)

    def delete(self, key):
        self.deleted.append(key)
        return succeed(None)

    def close(self):
        return succeed(None)


def loader(store, clock=None, **options):
    settings = {"name": "fake://store", "timeout": 5.0, "maxBytes": 100, "deleteEnded": True}
    settings.update(options)
    return StoredMessages(store, reactor=clock or Clock(), **settings)


def failureOf(deferred) -> AttemptFailed:
    failures = []
    deferred.addErrback(failures.append)
    (failure,) = failures
    assert isinstance(failure.value, AttemptFailed)
    return failure.value


def test_loaded():
    result = []
    store = FakeStore(succeed(b"Subject: x\r\n\r\nhi\r\n"))
    loader(store).load(parse(key="k1")).addCallback(result.append)
    assert result == [b"Subject: x\r\n\r\nhi\r\n"] and store.fetched == ["k1"]


def test_not_found_is_storage_error_and_final():
    store = FakeStore(fail(MessageNotFound("the message store fake://store has nothing under the key 'k1'")))
    failure = failureOf(loader(store).load(parse(key="k1")))
    assert (failure.state, failure.result, failure.permanent) == ("storage", "error", True)
    assert failure.description == (
        "the message store fake://store has nothing under the key 'k1'; the job fails for good; store the "
        "message before publishing its job, or give it in 'mime'"
    )


def test_unusable_is_storage_error_and_final():
    store = FakeStore(fail(MessageUnusable("the key 'k1' holds a list")))
    failure = failureOf(loader(store).load(parse(key="k1")))
    assert (failure.state, failure.result, failure.permanent) == ("storage", "error", True)


def test_a_store_that_is_down_is_retried():
    store = FakeStore(fail(StoreUnavailable("connection refused", "lost")))
    failure = failureOf(loader(store).load(parse(key="k1")))
    assert (failure.state, failure.result, failure.permanent) == ("storage", "lost", False)
    assert failure.description == "connection refused; the job is tried again later"


def test_a_slow_store_times_out_and_is_retried():
    clock = Clock()
    store = FakeStore()
    loading = loader(store, clock).load(parse(key="k1"))
    clock.advance(4.9)
    assert not loading.called
    clock.advance(0.1)
    failure = failureOf(loading)
    assert (failure.state, failure.result, failure.permanent) == ("storage", "timeout", False)
    assert failure.description == (
        "the message store fake://store did not answer within 5 s (key 'k1'); the job is tried again later"
    )
    # the fetch was cancelled
    assert store.pending.called


def test_a_cancelled_load_is_no_store_failure():
    store = FakeStore()
    failures, events = [], []
    globalLogPublisher.addObserver(events.append)
    try:
        loading = loader(store).load(parse(key="k1"))
        loading.addErrback(failures.append)
        loading.cancel()
    finally:
        globalLogPublisher.removeObserver(events.append)
    # the envelope was refused, or the service stops: the cancellation
    # itself comes out, and nothing is logged
    assert failures[0].check(CancelledError) and store.pending.called
    assert events == []


def test_a_backend_that_does_not_check_the_size():
    failure = failureOf(loader(FakeStore(succeed(b"x" * 101))).load(parse(key="k1")))
    assert (failure.state, failure.result, failure.permanent) == ("storage", "error", True)
    assert "is 101 bytes, more than the 100 bytes a message may have" in failure.description


def test_an_unexpected_error_is_logged_and_retried():
    store = FakeStore(fail(RuntimeError("bug")))
    failures = []
    loader(store).load(parse(key="k1")).addErrback(failures.append)
    assert (failures[0].value.state, failures[0].value.result, failures[0].value.permanent) == (
        "storage",
        "error",
        False,
    )
    assert failures[0].value.description == "RuntimeError: 'bug'; the job is tried again later"


def test_ended_deletes_unless_keepmime_or_keep():
    store = FakeStore()
    loader(store).ended(parse(key="k1"))
    loader(store).ended(parse(key="k2", keepmime=True))
    loader(store, deleteEnded=False).ended(parse(key="k3"))
    loader(store).ended(parse(key="k4", mime="Subject: x\r\n\r\n"))
    assert store.deleted == ["k1"]


# -- the Redis backend against redis-server ----------------------------------------


def redisStore(url: str, **settings) -> RedisStore:
    from twisted.internet import reactor

    return RedisStore(url, StoreSettings(**{"timeout": 5.0, "maxBytes": 1000, "threads": 2, **settings}), reactor)


@pytest_twisted.ensureDeferred
async def test_redis_store_fetch_delete(redisServer):
    store = redisStore(redisServer.url)
    verifyObject(IMessageStore, store)
    try:
        body = b"Subject: \xc3\xa9t\xc3\xa9\r\n\r\n" + bytes(range(256)) + b"\r\n"
        await store.store("m/1", body)
        assert redisServer.client().get("m/1") == body
        assert await store.fetch("m/1") == body
        await store.delete("m/1")
        assert redisServer.client().exists("m/1") == 0
        # deleting what is not there is no error
        await store.delete("m/1")
        with pytest.raises(MessageNotFound) as caught:
            await store.fetch("m/1")
        assert str(caught.value) == f"the message store {redisServer.url} has nothing under the key 'm/1'"
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_redis_store_refuses_without_reading_it_whole(redisServer):
    store = redisStore(redisServer.url, maxBytes=1000)
    redisServer.client().set("big", b"x" * 1001)
    redisServer.client().set("fits", b"x" * 1000)
    redisServer.client().rpush("list", b"a")
    redisServer.client().set("empty", b"")
    try:
        with pytest.raises(MessageUnusable) as caught:
            await store.fetch("big")
        assert "is 1001 bytes, more than the 1000 bytes a message may have" in str(caught.value)
        assert await store.fetch("fits") == b"x" * 1000
        with pytest.raises(MessageUnusable) as caught:
            await store.fetch("list")
        assert "holds a Redis list, set or hash, not a message (a string)" in str(caught.value)
        with pytest.raises(MessageUnusable) as caught:
            await store.fetch("empty")
        assert "holds an empty string" in str(caught.value)
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_redis_store_down_or_wrong_password_never_shows_the_password(startRedis):
    server = startRedis(password="s3cret-pw")
    wrong = redisStore(server.url.replace("s3cret-pw", "not-it"))
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await wrong.fetch("k")
        assert caught.value.result == "lost"
        assert "not-it" not in str(caught.value) and "redis://***@127.0.0.1" in str(caught.value)
    finally:
        await wrong.close()
    right = redisStore(server.url)
    try:
        await right.store("k", b"Subject: x\r\n\r\n")
        assert await right.fetch("k") == b"Subject: x\r\n\r\n"
        server.stop()
        with pytest.raises(StoreUnavailable) as caught:
            await right.fetch("k")
        assert caught.value.result == "lost"
        assert "s3cret-pw" not in str(caught.value)
        assert str(caught.value).startswith("the message store redis://***@127.0.0.1:")
    finally:
        await right.close()


def test_a_url_redis_cannot_take():
    with pytest.raises(ValueError) as caught:
        RedisStore("redis://:s3cret@localhost:6379/notadb", StoreSettings(), Clock())
    assert str(caught.value) == (
        "the message store URL redis://***@localhost:6379/notadb does not end with a database number; "
        "give redis://host:port/0 (0-15 by default)"
    )
    with pytest.raises(ValueError) as caught:
        RedisStore("redis://:s3cret@localhost/0?socket_timeout=soon", StoreSettings(), Clock())
    assert str(caught.value) == (
        "the message store URL redis://***@localhost/0 is not one Redis takes: "
        "Invalid value for 'socket_timeout' in connection URL."
    )


# -- docs/plugins.rst ---------------------------------------------------------------

PLUGINS_RST = Path(__file__).parent.parent / "docs" / "plugins.rst"


def test_the_interfaces_are_documented():
    text = PLUGINS_RST.read_text()
    for interface in (IMessageStore, IMessageStoreBackend):
        assert interface.__name__ in text
        for name in interface.names(all=True):
            assert f"``{name}" in text, (interface.__name__, name)


@pytest_twisted.ensureDeferred
async def test_the_documented_backend_works(tmp_path):
    from twisted.internet import reactor

    text = PLUGINS_RST.read_text()
    (block,) = [
        textwrap.dedent(code)
        for code in re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
        if textwrap.dedent(code).startswith("# mqtwist/messagestore/backends/filestore.py\n")
    ]
    namespace: dict = {}
    exec(compile(block, "filestore.py", "exec"), namespace)
    backend = namespace["file"]
    verifyObject(IMessageStoreBackend, backend)
    store = backend.open(f"file://{tmp_path}", StoreSettings(), reactor)
    verifyObject(IMessageStore, store)
    await store.store("m1", b"Subject: x\r\n\r\n")
    assert await store.fetch("m1") == b"Subject: x\r\n\r\n"
    await store.delete("m1")
    await store.delete("m1")
    with pytest.raises(MessageNotFound):
        await store.fetch("m1")
    with pytest.raises(MessageNotFound):
        await store.fetch("../etc/passwd")
    await store.close()
