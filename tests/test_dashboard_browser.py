"""
The dashboard in a real browser: Debian's headless Chromium, driven with
Playwright, against a running service with real traffic (a real RabbitMQ
outbox, the loopback DNS, two SMTP sinks as two destinations).

The page asks for the token and then shows what the admin API says: the
totals, the destinations with their in-flight and parked numbers, a chart
whose lines add up to the totals.  A click on a destination's Pause button
holds its new messages while the other destination's flow; a click on
Resume delivers them.  Cancel… asks for a recipient domain and cancels
its messages until Lift; the form pauses a tag for a time; Drain keeps the
outbox's messages there until Undrain.  A wrong token brings the login
form back with an error, and the page stops sending it.

Chromium runs on a thread of its own (Playwright's asyncio API on its own
event loop), so the reactor, which runs the service under test, never
waits for the browser.  With C{MQTWIST_DASHBOARD_PNG=docs/dashboard.png}
the test also writes the screenshot that the README shows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from fixtures_dns import mxConfig, mxDomain
from helpers_endtoend import brokerURL, publishAll, running
from helpers_http import HTTPClient
from helpers_mxdelivery import collectIds, job
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from mqtwist.service import MailerService

T = TypeVar("T")

TOKEN = "browser-test-token"
CHROMIUM = "/usr/bin/chromium"
#: this machine's closed network refuses Chromium's own background
#: connections (updates, sync, QUIC probes); without these it stalls
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: milliseconds the browser waits for the page to show something
WAIT_MS = 30_000
FAST, HELD = "mx mx.fast.test", "mx mx.held.test"
#: the chart's drawing height and top margin (dashboard.js drawChart)
CHART_HEIGHT, CHART_TOP = 160, 10

#: what the page shows: the figures and, per destination, its columns
#: destination, in flight, waiting, parked and state
SHOWN = """() => ({
  totals: Object.fromEntries(["delivered", "failed", "deferred", "held"].map(
    (name) => [name, document.getElementById(name).textContent])),
  inFlight: document.getElementById("in-flight").textContent,
  cluster: document.getElementById("cluster").textContent,
  destinations: [...document.querySelectorAll("#destinations tbody tr")].map(
    (row) => [0, 1, 2, 3, 5].map((i) => row.cells[i].textContent)),
})"""

#: the chart's lines: each line's y coordinates, and the count at the top
CHART = """() => {
  const svg = document.getElementById("chart");
  const lines = {};
  for (const line of svg.querySelectorAll("polyline")) {
    const points = line.getAttribute("points");
    lines[line.getAttribute("class")] = points ? points.split(" ").map((p) => Number(p.split(",")[1])) : [];
  }
  return { highest: Number(svg.dataset.highest), lines };
}"""


class BrowserThread:
    """
    Playwright's asyncio API on a thread and event loop of its own, with
    one Chromium and a fresh profile.
    """

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="chromium", daemon=True)
        self.thread.start()
        self.context: Any = None
        self._playwright: Any = None
        #: errors the pages' scripts threw, which a test ends by checking
        self.pageErrors: list[str] = []

    def start(self) -> None:
        """Start Chromium; blocks, for the fixture, before the test runs."""
        self._submit(self._start).result(timeout=60)

    async def _start(self) -> None:
        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        self.context = await self._playwright.chromium.launch_persistent_context(
            str(self.profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1100, "height": 900},
        )

    def stop(self) -> None:
        """Close Chromium and end the thread; blocks."""
        self._submit(self._stop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _stop(self) -> None:
        if self.context is not None:
            await self.context.close()
        if self._playwright is not None:
            await self._playwright.stop()

    def run(self, work: Callable[[], Awaitable[T]]) -> Deferred[T]:
        """
        Run C{work()} on the browser's thread.

        @return: a Deferred firing, on the reactor thread, with its result.
        """
        done: Deferred[T] = Deferred()

        def fire(future: Future[T]) -> None:
            if future.exception() is not None:
                reactor.callFromThread(done.errback, future.exception())
            else:
                reactor.callFromThread(done.callback, future.result())

        self._submit(work).add_done_callback(fire)
        return done

    async def newPage(self, url: str) -> Any:
        """A new tab (with its own sessionStorage) at C{url}."""

        async def open() -> Any:
            page = await self.context.new_page()
            page.on("pageerror", lambda error: self.pageErrors.append(str(error)))
            await page.goto(url)
            return page

        return await self.run(open)

    def _submit(self, work: Callable[[], Awaitable[T]]) -> Future[T]:
        async def call() -> T:
            return await work()

        return asyncio.run_coroutine_threadsafe(call(), self.loop)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[BrowserThread]:
    """Debian's Chromium, headless, driven by Playwright; skipped without it."""
    pytest.importorskip("playwright.async_api", reason="playwright is not installed: pip install -e '.[test]'")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (./dev test does)")
    browser = BrowserThread(tmp_path / "chromium-profile")
    try:
        browser.start()
    except Exception as e:
        browser.stop()
        pytest.skip(f"{CHROMIUM} cannot start here: {e}")
    yield browser
    browser.stop()


def expectedView(status: dict[str, Any], destinations: dict[str, Any]) -> dict[str, Any]:
    """What the page should show, as L{SHOWN} reads it, for these answers of the API."""

    def state(paused: dict[str, Any] | None) -> str:
        if paused is None:
            return "open"
        return "paused: " + paused["reason"] + (" until " + paused["until"] if paused["until"] else "")

    return {
        "totals": {name: str(status["totals"].get(name, 0)) for name in ("delivered", "failed", "deferred", "held")},
        "inFlight": str(status["inFlight"]),
        "cluster": f"{status['cluster']['member']}, one of {len(status['cluster']['members'])} process(es)",
        "destinations": [
            [d["destination"], str(d["inFlight"]), str(d["waiting"]), str(d["parked"]), state(d["paused"])]
            for d in destinations["destinations"]
        ],
    }


async def nextRefresh(browser: BrowserThread, page: Any) -> None:
    """Wait until the page has drawn the API's answers once more."""
    drawn = await browser.run(lambda: page.evaluate("() => Number(document.body.dataset.refreshes || 0)"))
    await browser.run(
        lambda: page.wait_for_function(
            "(n) => Number(document.body.dataset.refreshes || 0) > n", arg=drawn, timeout=WAIT_MS
        )
    )


async def showsTheAPI(browser: BrowserThread, page: Any, admin: HTTPClient) -> dict[str, Any]:
    """
    Wait until the page shows what the API says (it reads it every 2 s),
    for ten of its refreshes at most.

    @return: what it shows.
    """
    for _ in range(10):
        _, status, _ = await admin.call("GET", "/api/status")
        _, destinations, _ = await admin.call("GET", "/api/destinations")
        expected = expectedView(status, destinations)
        shown = await browser.run(lambda: page.evaluate(SHOWN))
        if shown == expected:
            return shown
        await nextRefresh(browser, page)
    assert shown == expected
    return shown


async def chartAddsUp(browser: BrowserThread, page: Any, admin: HTTPClient) -> dict[str, Any]:
    """
    Wait until the API's history holds every outcome of the totals, and the
    page's chart draws those samples.

    @return: the API's history.
    """
    for _ in range(10):
        _, status, _ = await admin.call("GET", "/api/status")
        _, history, _ = await admin.call("GET", "/api/history")
        samples = history["samples"]
        chart = await browser.run(lambda: page.evaluate(CHART))
        lines = ("delivered", "failed", "deferred")
        sampled = all(sum(s[line] for s in samples) == status["totals"].get(line, 0) for line in lines)
        if sampled and len(chart["lines"]["delivered"]) == len(samples):
            break
        await nextRefresh(browser, page)
    assert sampled, (status["totals"], samples)
    highest = max(1, *(s[line] for s in samples for line in lines))
    assert chart["highest"] == highest
    for line in lines:
        # the count each point stands for, read back from its height
        drawn = [round((CHART_HEIGHT - y) * highest / (CHART_HEIGHT - CHART_TOP)) for y in chart["lines"][line]]
        assert drawn == [s[line] for s in samples], line
    return history


async def nextSample(browser: BrowserThread, page: Any, admin: HTTPClient) -> None:
    """Wait, a page refresh at a time, until the API's history has one more sample."""
    _, history, _ = await admin.call("GET", "/api/history")
    taken = len(history["samples"])
    while len(history["samples"]) == taken:
        await nextRefresh(browser, page)
        _, history, _ = await admin.call("GET", "/api/history")


async def heldInQueue(browser: BrowserThread, page: Any, amqp: Any, queue: str, count: int) -> None:
    """Wait, a page refresh at a time, until the held queue has C{count} messages."""
    for _ in range(30):
        if await amqp.count(queue) == count:
            return
        await nextRefresh(browser, page)
    raise AssertionError(f"{queue} holds {await amqp.count(queue)} messages, not {count}")


@pytest_twisted.ensureDeferred
async def test_dashboard_shows_figures_and_pauses(
    rabbitmq, amqp, dnsServer, mailHosts, queues, chromium: BrowserThread, tmp_path: Path
) -> None:
    fast = await mailHosts.sink("127.0.0.2", hostname="mx.fast.test")
    held = await mailHosts.sink("127.0.0.3", hostname="mx.held.test")
    mxDomain(dnsServer, "fast.test", "127.0.0.2")
    mxDomain(dnsServer, "held.test", "127.0.0.3")
    config = mxConfig(brokerURL(rabbitmq), queues, dnsServer, mailHosts, admin="tcp:0")
    service = MailerService(config, plugins=[], adminToken=TOKEN)
    async with running(service):
        port = service.httpServices["admin"].port.getHost().port
        admin = HTTPClient(port, TOKEN)
        url = f"http://127.0.0.1:{port}/"

        # the page asks for the token, then shows the API's figures
        page = await chromium.newPage(url)
        await chromium.run(lambda: page.wait_for_selector("#login", state="visible", timeout=WAIT_MS))
        assert await chromium.run(lambda: page.is_hidden("#board"))
        await chromium.run(lambda: page.fill("#token", TOKEN))
        await chromium.run(lambda: page.click("#login button[type=submit]"))
        await chromium.run(lambda: page.wait_for_selector("#board", state="visible", timeout=WAIT_MS))
        shown = await showsTheAPI(chromium, page, admin)
        assert shown["totals"] == {"delivered": "0", "failed": "0", "deferred": "0", "held": "0"}
        assert shown["destinations"] == []

        # traffic to both destinations in waves, each in a sample of the
        # chart of its own, with permanent failures among it
        for wave, (toFast, toHeld, refused) in enumerate([(6, 3, 1), (3, 1, 0), (4, 4, 1)]):
            ids = {f"fast-{wave}-{n}" for n in range(toFast)} | {f"held-{wave}-{n}" for n in range(toHeld)}
            await publishAll(
                amqp,
                queues["outbox"],
                [job(f"f{wave}.{n}@fast.test", f"fast-{wave}-{n}") for n in range(toFast)]
                + [job(f"h{wave}.{n}@held.test", f"held-{wave}-{n}") for n in range(toHeld)]
                + [job("reject@fast.test", f"refused-{wave}-{n}") for n in range(refused)],
            )
            await collectIds(amqp, queues["success"], ids)
            await collectIds(amqp, queues["failure"], {f"refused-{wave}-{n}" for n in range(refused)})
            await nextSample(chromium, page, admin)
        shown = await showsTheAPI(chromium, page, admin)
        assert shown["totals"] == {"delivered": str(13 + 8), "failed": "2", "deferred": "0", "held": "0"}
        assert [row[0] for row in shown["destinations"]] == [FAST, HELD]
        assert [row[4] for row in shown["destinations"]] == ["open", "open"]
        await fast.waitForMessages(13)
        await held.waitForMessages(8)
        assert len(fast.messages) == 13 and len(held.messages) == 8
        await chartAddsUp(chromium, page, admin)

        # a click on the held destination's Pause button pauses it
        heldRow = page.locator(f'#destinations tr[data-destination="{HELD}"]')
        await chromium.run(lambda: heldRow.get_by_role("button", name="Pause").click())
        await chromium.run(lambda: heldRow.get_by_role("button", name="Resume").wait_for(timeout=WAIT_MS))
        _, pauses, _ = await admin.call("GET", "/api/pauses")
        assert [(p["destination"], p["until"], p["reason"], p["by"]) for p in pauses] == [
            (HELD, None, "paused from the dashboard", "127.0.0.1")
        ]
        state = await chromium.run(lambda: heldRow.locator("td.paused").text_content())
        assert state == "paused: paused from the dashboard"

        # its new messages are held, not sent; the other's are delivered
        await publishAll(
            amqp,
            queues["outbox"],
            [job(f"later{n}@held.test", f"held-later-{n}") for n in range(3)]
            + [job(f"later{n}@fast.test", f"fast-later-{n}") for n in range(3)],
        )
        await collectIds(amqp, queues["success"], {f"fast-later-{n}" for n in range(3)})
        await heldInQueue(chromium, page, amqp, service.config.heldQueueName, 3)
        shown = await showsTheAPI(chromium, page, admin)
        assert shown["totals"]["held"] == "3"
        if os.environ.get("MQTWIST_DASHBOARD_PNG"):
            # relative to the checkout: the tests run in a directory of their own
            screenshot = Path(__file__).parent.parent / os.environ["MQTWIST_DASHBOARD_PNG"]
            await chromium.run(lambda: page.screenshot(path=str(screenshot), full_page=True))
        await fast.waitForMessages(13 + 3)
        assert len(fast.messages) == 13 + 3
        assert len(held.messages) == 8
        assert not any(m.rcptTos[0].startswith("later") for m in held.messages)

        # a click on Resume: the held messages are delivered at once
        await chromium.run(lambda: heldRow.get_by_role("button", name="Resume").click())
        await chromium.run(lambda: heldRow.get_by_role("button", name="Pause").wait_for(timeout=WAIT_MS))
        _, pauses, _ = await admin.call("GET", "/api/pauses")
        assert pauses == []
        resumed = await collectIds(amqp, queues["success"], {f"held-later-{n}" for n in range(3)})
        for result in resumed:
            assert (result["results"][0]["state"], result["results"][0]["result"]) == ("process", "deferred")
            assert result["results"][0]["description"] == (
                f"not tried: destination {HELD} paused by 127.0.0.1 (destination={HELD}): paused from the dashboard"
            )
            assert result["results"][-1]["state"] == "message" and len(result["results"]) >= 2
        await held.waitForMessages(8 + 3)
        later = sorted((m for m in held.messages if m.rcptTos[0].startswith("later")), key=lambda m: m.rcptTos)
        assert [(m.rcptTos, m.data.split(b"\r\n")[0]) for m in later] == [
            ((f"later{n}@held.test",), f"Subject: held-later-{n}".encode()) for n in range(3)
        ]

        # the page shows the figures after it all, the held queue empty
        shown = await showsTheAPI(chromium, page, admin)
        assert shown["totals"] == {"delivered": str(21 + 6), "failed": "2", "deferred": "0", "held": "3"}
        assert [row[4] for row in shown["destinations"]] == ["open", "open"]
        assert await amqp.count(service.config.heldQueueName) == 0
        await chartAddsUp(chromium, page, admin)
        await chromium.run(lambda: page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True))
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chromium.pageErrors == []


@pytest_twisted.ensureDeferred
async def test_wrong_token_shows_the_login_again(rabbitmq, dnsServer, mailHosts, queues, chromium: BrowserThread) -> None:
    config = mxConfig(brokerURL(rabbitmq), queues, dnsServer, mailHosts, admin="tcp:0")
    service = MailerService(config, plugins=[], adminToken=TOKEN)
    async with running(service):
        port = service.httpServices["admin"].port.getHost().port

        async def open() -> Any:
            page = await chromium.context.new_page()
            # counts the page's calls, and puts its timers under the test's clock
            await page.add_init_script(
                "window.apiCalls = 0; const realFetch = window.fetch;"
                "window.fetch = (...args) => { window.apiCalls++; return realFetch(...args); };"
            )
            await page.clock.install()
            await page.goto(f"http://127.0.0.1:{port}/")
            return page

        page = await chromium.run(open)
        await chromium.run(lambda: page.fill("#token", "not-" + TOKEN))
        await chromium.run(lambda: page.click("#login button[type=submit]"))
        await chromium.run(lambda: page.wait_for_selector("#error", state="visible", timeout=WAIT_MS))
        error = await chromium.run(lambda: page.text_content("#error"))
        assert error is not None and error.startswith("the token was refused")
        assert await chromium.run(lambda: page.is_visible("#login"))
        assert await chromium.run(lambda: page.is_hidden("#board"))
        assert await chromium.run(lambda: page.evaluate("window.apiCalls")) == 5

        # ten seconds of polling later: the refused token was forgotten, not sent again
        await chromium.run(lambda: page.clock.run_for(10_000))
        assert await chromium.run(lambda: page.evaluate("window.apiCalls")) == 5
        assert await chromium.run(lambda: page.evaluate("sessionStorage.getItem('mqtwist-token')")) is None
        assert await chromium.run(lambda: page.text_content("#error")) == error

        # the right token opens the board
        await chromium.run(lambda: page.fill("#token", TOKEN))
        await chromium.run(lambda: page.click("#login button[type=submit]"))
        await chromium.run(lambda: page.wait_for_selector("#board", state="visible", timeout=WAIT_MS))
        assert await chromium.run(lambda: page.is_hidden("#error"))
    assert chromium.pageErrors == []


@pytest_twisted.ensureDeferred
async def test_dashboard_cancel_form_and_drain(
    rabbitmq, amqp, dnsServer, mailHosts, queues, chromium: BrowserThread
) -> None:
    sink = await mailHosts.sink("127.0.0.2", hostname="mx.fast.test")
    mxDomain(dnsServer, "fast.test", "127.0.0.2")
    config = mxConfig(brokerURL(rabbitmq), queues, dnsServer, mailHosts, admin="tcp:0")
    service = MailerService(config, plugins=[], adminToken=TOKEN)
    async with running(service):
        port = service.httpServices["admin"].port.getHost().port
        admin = HTTPClient(port, TOKEN)
        await publishAll(amqp, queues["outbox"], [job("first@fast.test", "first")])
        await collectIds(amqp, queues["success"], {"first"})
        page = await chromium.newPage(f"http://127.0.0.1:{port}/")
        await chromium.run(lambda: page.fill("#token", TOKEN))
        await chromium.run(lambda: page.click("#login button[type=submit]"))
        row = page.locator(f'#destinations tr[data-destination="{FAST}"]')
        await chromium.run(lambda: row.wait_for(timeout=WAIT_MS))

        # Cancel… asks for the domain (a destination is none), then cancels it
        prompts: list[tuple[str, str]] = []

        async def answer(dialog: Any) -> None:
            prompts.append((dialog.message, dialog.default_value))
            await dialog.accept("fast.test")

        async def cancelFromRow() -> None:
            page.once("dialog", answer)
            await row.get_by_role("button", name="Cancel…").click()
            await page.locator("#controls tbody tr").wait_for(timeout=WAIT_MS)

        await chromium.run(cancelFromRow)
        assert len(prompts) == 1 and prompts[0][1] == ""
        assert "recipient domain" in prompts[0][0] and FAST in prompts[0][0]
        _, cancels, _ = await admin.call("GET", "/api/cancels")
        assert [(c["domain"], c["until"], c["reason"], c["by"]) for c in cancels] == [
            ("fast.test", None, "cancelled from the dashboard", "127.0.0.1")
        ]
        await publishAll(amqp, queues["outbox"], [job("gone@fast.test", "gone")])
        (cancelled,) = await collectIds(amqp, queues["failure"], {"gone"})
        (entry,) = cancelled["results"]
        assert (entry["state"], entry["result"]) == ("process", "cancelled")
        assert entry["description"] == "cancelled by 127.0.0.1 (domain=fast.test): cancelled from the dashboard"

        # the cancel's Lift button lifts it
        lift = page.locator("#controls tbody tr").get_by_role("button", name="Lift")
        await chromium.run(lambda: lift.click())
        await chromium.run(lambda: page.locator("#controls tbody tr").wait_for(state="detached", timeout=WAIT_MS))
        _, cancels, _ = await admin.call("GET", "/api/cancels")
        assert cancels == []

        # the form: a pause of a tag for 600 s, with a reason
        await chromium.run(lambda: page.select_option("#control-kind", "pauses"))
        await chromium.run(lambda: page.select_option("#control-field", "tag"))
        await chromium.run(lambda: page.fill("#control-value", "spring-sale"))
        await chromium.run(lambda: page.fill("#control-seconds", "600"))
        await chromium.run(lambda: page.fill("#control-reason", "complaints"))
        await chromium.run(lambda: page.click("#control button[type=submit]"))
        await chromium.run(lambda: page.locator("#controls tbody tr").wait_for(timeout=WAIT_MS))
        _, pauses, _ = await admin.call("GET", "/api/pauses")
        assert [(p["tag"], p["reason"], p["until"] is not None) for p in pauses] == [("spring-sale", "complaints", True)]
        shown = await chromium.run(lambda: page.locator("#controls tbody tr td").all_text_contents())
        assert shown[:2] == ["pause", "tag=spring-sale"] and shown[2] == pauses[0]["until"]
        await chromium.run(lambda: page.locator("#controls tbody tr").get_by_role("button", name="Resume").click())
        await chromium.run(lambda: page.locator("#controls tbody tr").wait_for(state="detached", timeout=WAIT_MS))
        _, pauses, _ = await admin.call("GET", "/api/pauses")
        assert pauses == []

        # Drain: the badge says drained and the outbox keeps its message;
        # Undrain: it is delivered
        await chromium.run(lambda: page.click("#drain"))
        await chromium.run(lambda: page.wait_for_selector('#service-state[data-state="drained"]', timeout=WAIT_MS))
        _, status, _ = await admin.call("GET", "/api/status")
        assert status["state"] == "drained"
        await publishAll(amqp, queues["outbox"], [job("later@fast.test", "after-drain")])
        assert await amqp.count(queues["outbox"]) == 1
        await chromium.run(lambda: page.click("#undrain"))
        await chromium.run(lambda: page.wait_for_selector('#service-state[data-state="consuming"]', timeout=WAIT_MS))
        await collectIds(amqp, queues["success"], {"after-drain"})
        await sink.waitForMessages(2)
        assert [m.rcptTos for m in sink.messages] == [("first@fast.test",), ("later@fast.test",)]
    assert chromium.pageErrors == []
