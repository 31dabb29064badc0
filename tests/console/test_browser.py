"""The console in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium; nothing is downloaded): handoffs appear live, the run graph is drawn, an approval
given on the page lets the run finish; every page fits a 1366x768 and an 800 px wide window.
Saves the run graph to artifacts/run-graph.png."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import Stack
from .test_access import waiting_for_approval

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,1100",
]


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        pytest.skip("needs Debian's browser: apt-get install -y chromium chromium-driver")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# the run graph as drawn, read in one go: nodes' and edges' data attributes and text
SNAPSHOT = """
const svg = document.querySelector('svg#run-graph');
if (!svg) return null;
const pick = (el) => Object.assign({text: el.textContent}, el.dataset);
return {nodes: [...svg.querySelectorAll('g.g-node')].map(pick),
        edges: [...svg.querySelectorAll('g.g-edge')].map(pick)};
"""


def css(driver: WebDriver, selector: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def test_live_handoffs_the_run_graph_and_an_approval_that_lets_the_run_finish(
    stack: Stack, browser: WebDriver
) -> None:
    wait = WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException])
    # Given the live feed open in the browser
    browser.get(f"{stack.local_url}/#/feed")
    wait.until(lambda d: "on" in (d.find_element(By.ID, "live").get_attribute("class") or ""))

    # When alice publishes a run that fans out, is reviewed and then waits for an approval
    task = {"items": ["acme", "globex", "initech"], "approval": True}
    run_id = asyncio.run(stack.publish("alice", "c_plan", task))
    row = f'#feed tr.event[data-run="{run_id}"]'

    # Then its handoffs appear on the page as they happen
    wait.until(lambda d: css(d, f'{row}[data-kind="call"][data-to="c_review"]'))
    fan_out = css(browser, f'{row}[data-kind="call"][data-to="c_work"]')
    assert len(fan_out) == 3 and all(r.get_attribute("data-from") == "c_plan" for r in fan_out)
    assert css(browser, f'{row}[data-kind="submitted"][data-from="user:alice"]')
    wait.until(lambda d: css(d, f'{row}[data-kind="denied"]'))  # the reviewer's outside mail

    # When the run page is opened, the run is drawn as a graph, waiting for its approval
    browser.get(f"{stack.local_url}/#/run/{run_id}")
    wait.until(lambda d: css(d, "#run-pending button.approve"))
    graph = "svg#run-graph"
    drawn = wait.until(lambda d: d.execute_script(SNAPSHOT))  # one read: it redraws live
    nodes = {n["agent"]: n for n in drawn["nodes"]}
    assert set(nodes) == {"user:alice", "c_plan", "c_work", "c_review"}
    work = [e for e in drawn["edges"] if (e["from"], e["to"]) == ("c_plan", "c_work")]
    assert len(work) == 1 and work[0]["count"] == "3"
    assert "fan-out \u00d73" in work[0]["text"]  # the multiplication sign
    assert [e for e in drawn["edges"] if (e["from"], e["via"]) == ("user:alice", "submit")]
    # the reviewer completed; the mail it tried outside the team was refused (a detail)
    review = nodes["c_review"]
    assert (review["status"], review["refused"]) == ("completed", "1")
    assert "1 refused" in review["text"]
    assert nodes["c_plan"]["status"] == "waiting"

    # When the approval is given on the approvals page
    browser.get(f"{stack.local_url}/#/approvals")
    button = f'tr.approval[data-run="{run_id}"] button.approve'
    wait.until(lambda d: css(d, button))
    css(browser, button)[0].click()
    wait.until(lambda d: "approved" in d.find_element(By.ID, "toast").text)
    wait.until(lambda d: not css(d, f'tr.approval[data-run="{run_id}"]'))

    # Then the run finishes: the publisher it hands off to appears, the status is completed
    browser.get(f"{stack.local_url}/#/run/{run_id}")
    wait.until(lambda d: css(d, '#run-status[data-status="completed"]'))
    wait.until(lambda d: css(d, f'{graph} g.g-edge[data-to="c_publish"][data-via="handoff"]'))
    assert not css(browser, "#run-pending")

    def open_work(d: WebDriver) -> list[WebElement]:
        css(d, f'{graph} g.g-edge[data-to="c_work"]')[0].click()
        return css(d, "#details .task")

    cards = wait.until(open_work)
    assert len(cards) == 3 and all("completed" in c.text for c in cards)
    assert all("tool lookup" in c.text for c in cards)
    assert "user:alice → agent:c_plan" in browser.find_element(By.ID, "details").text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(ARTIFACTS / "run-graph.png"))

    # And the feed filters: this run's events that involve the reviewer, from the start
    browser.get(f"{stack.local_url}/#/feed?run={run_id}&agent=c_review")
    wait.until(lambda d: css(d, f'{row}[data-kind="denied"]'))
    rows = css(browser, "#feed tr.event")
    assert all(
        "c_review" in (r.get_attribute("data-from"), r.get_attribute("data-to")) for r in rows
    )
    assert {r.get_attribute("data-run") for r in rows} == {run_id}
    browser.get(f"{stack.local_url}/#/feed?run={run_id}&status=denied")
    wait.until(lambda d: css(d, f'{row}[data-kind="denied"]'))
    assert {r.get_attribute("data-status") for r in css(browser, "#feed tr.event")} == {"denied"}

    # And the costs page charts what it cost, against alice's budget
    browser.get(f"{stack.local_url}/#/costs")
    wait.until(lambda d: css(d, "svg#spend-chart path[data-series]"))
    assert css(browser, 'tr.level[data-level^="user:alice"]')
    series = {p.get_attribute("data-series") for p in css(browser, "svg#spend-chart path")}
    assert {"c_work", "c_review", "c_publish"} <= series
    assert os.path.getsize(ARTIFACTS / "run-graph.png") > 10_000


def test_off_loopback_a_user_signs_in_with_a_token_and_sees_only_their_runs(
    stack: Stack, browser: WebDriver
) -> None:
    mine = asyncio.run(stack.publish("alice", "c_plan", {"items": ["a"], "approval": False}))
    theirs = asyncio.run(stack.publish("bob", "c_plan", {"items": ["b"], "approval": False}))
    wait = WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException])
    # Given the console bound to 0.0.0.0: the page asks for a token first
    browser.get(f"{stack.remote_url}/#/runs")
    wait.until(lambda d: css(d, "#login input#token"))
    field = browser.find_element(By.ID, "token")
    field.send_keys("rb_alice_0000_forged\n")
    wait.until(lambda d: "the token was refused" in d.find_element(By.ID, "login").text)
    browser.find_element(By.ID, "token").send_keys(stack.tokens["alice"] + "\n")
    # Then alice sees her runs, and none of bob's
    wait.until(lambda d: "signed in as alice" in d.find_element(By.ID, "who").text)
    wait.until(lambda d: css(d, f'#runs-rows tr.run[data-run="{mine}"]'))
    assert not css(browser, f'#runs-rows tr.run[data-run="{theirs}"]')
    browser.get(f"{stack.remote_url}/#/run/{theirs}")
    wait.until(lambda d: css(d, ".error-box"))
    assert browser.find_element(By.CSS_SELECTOR, ".error-box").text == f"no run {theirs}"


def test_a_reviewer_scores_a_run_in_review_and_sees_only_what_their_scope_covers(
    stack: Stack, browser: WebDriver
) -> None:
    import httpx

    mine = asyncio.run(stack.publish("alice", "c_plan", {"items": ["r"], "approval": False}))
    theirs = asyncio.run(stack.publish("bob", "c_plan", {"items": ["s"], "approval": False}))
    with httpx.Client(base_url=stack.remote_url, timeout=10) as http:
        for user, run in (("alice", mine), ("bob", theirs)):  # each owner asks for a review
            asked = http.post(
                f"/api/reviews/{run}/request",
                json={"reason": "please check"},
                headers={"Authorization": f"Bearer {stack.tokens[user]}"},
            )
            assert asked.status_code == 200, asked.text
        # bob holds no review scope: alice's run in review does not exist for him
        bob = {"Authorization": f"Bearer {stack.tokens['bob']}"}
        assert http.get(f"/api/reviews/{mine}", headers=bob).status_code == 404
        denied = http.post(f"/api/reviews/{mine}/request", json={"reason": "x"}, headers=bob)
        assert denied.status_code == 404 and "you may send to review" in denied.json()["error"]
        forged = http.post(f"/api/reviews/{mine}/verdict", json={"verdict": "fail"}, headers=bob)
        assert forged.status_code == 404
    wait = WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException])
    browser.get(f"{stack.remote_url}/#/reviews")
    wait.until(lambda d: css(d, "#login input#token"))
    browser.find_element(By.ID, "token").send_keys(stack.tokens["carol"] + "\n")
    wait.until(lambda d: "signed in as carol" in d.find_element(By.ID, "who").text)
    # carol reviews alice's runs: alice's is listed, bob's is not
    wait.until(lambda d: css(d, f'#reviews tr.review[data-run="{mine}"][data-state="pending"]'))
    assert not css(browser, f'#reviews tr.review[data-run="{theirs}"]')
    css(browser, f'#reviews tr.review[data-run="{mine}"] a')[0].click()
    wait.until(lambda d: css(d, "#review-pass"))
    browser.find_element(By.ID, "review-score").send_keys("0.9")
    browser.find_element(By.ID, "review-comment").send_keys("looks right")
    browser.find_element(By.ID, "review-pass").click()
    wait.until(lambda d: css(d, f'#reviews tr.review[data-run="{mine}"][data-state="reviewed"]'))
    with httpx.Client(base_url=stack.remote_url, timeout=10) as http:
        carol = {"Authorization": f"Bearer {stack.tokens['carol']}"}
        (verdict,) = http.get(f"/api/reviews/{mine}", headers=carol).json()["verdicts"]
    assert (verdict["reviewer"], verdict["verdict"], verdict["score"], verdict["comment"]) == (
        "user:carol",
        "pass",
        0.9,
        "looks right",
    )


# what each page shows once loaded
PAGES = {
    "runs": "#runs-rows tr.run",
    "run": "svg#run-graph g.g-node",
    "costs": "svg#spend-chart",
    "reviews": "#reviews tbody tr",
    "approvals": "#approval-rows tr.approval",
    "dlq": "#dlq-rows tr",
    "feed": "#feed tr.event",
}
OVERFLOW = """
const inner = window.innerWidth, page = document.documentElement.scrollWidth;
// boxes that scroll sideways on their own may hold wider content; nothing else may stick out
const own = '.table-scroll, .graph-wrap, #timeline-box, #chart-box';
const out = [...document.querySelectorAll('header, header *, main, main *')].filter((el) => {
  const r = el.getBoundingClientRect();
  return r.width > 0 && (r.right > inner + 0.5 || r.left < -0.5) && !el.parentElement.closest(own);
}).map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.getAttribute('class') || ''}`);
const boxes = [...document.querySelectorAll(own)].filter((b) => b.getBoundingClientRect().right > inner + 0.5);
return {inner, page, out: out.slice(0, 8), boxes: boxes.length};
"""
GRAPH = """
const svg = document.querySelector('svg#run-graph'), box = document.getElementById('graph-box');
const a = svg.getBoundingClientRect(), b = box.getBoundingClientRect();
const left = b.left + box.clientLeft, top = b.top + box.clientTop;
const card = box.closest('.card').getBoundingClientRect();
return {svg: [a.left, a.top, a.right, a.bottom],
        box: [left, top, left + box.clientWidth, top + box.clientHeight],
        scrolls: box.scrollWidth > box.clientWidth + 1 || box.scrollHeight > box.clientHeight + 1,
        detailsBelow: document.getElementById('details').getBoundingClientRect().top >= card.bottom,
        layout: svg.dataset.layout, scale: Number(svg.dataset.scale)};
"""


def showing(selector: str) -> Callable[[WebDriver], list[WebElement]]:
    return lambda d: css(d, selector)


def viewport(driver: WebDriver, width: int, height: int) -> None:
    """A window whose page area is width x height CSS pixels."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])
    assert driver.execute_script("return window.innerWidth") == width


def test_every_page_fits_a_1366x768_and_an_800px_window(
    stack: Stack, browser: WebDriver, tmp_path: Path
) -> None:
    # Given a run that fans out, is reviewed and waits for an approval, and one to review
    task = {"items": ["acme", "globex", "initech"], "approval": True}
    run_id = asyncio.run(stack.publish("alice", "c_plan", task))
    asyncio.run(waiting_for_approval(stack, run_id))
    wait = WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException])
    shots = []
    for width, height in ((1366, 768), (800, 900)):
        viewport(browser, width, height)
        browser.get(f"{stack.local_url}/#/approvals")
        browser.refresh()  # loaded afresh at this size
        for page, ready in PAGES.items():
            # When each page is opened in a window of that size
            browser.get(f"{stack.local_url}/#/{page}" + (f"/{run_id}" if page == "run" else ""))
            wait.until(showing(ready))
            shot = tmp_path / f"{width}x{height}-{page}.png"
            assert browser.save_screenshot(str(shot))
            shots.append(shot)
            # Then nothing makes the page scroll sideways or sticks out of the window
            fit: dict[str, Any] = browser.execute_script(OVERFLOW)
            where = f"{page} at {width}x{height}"
            assert fit["page"] <= fit["inner"], f"{where}: the page scrolls sideways {fit}"
            assert not fit["out"] and not fit["boxes"], f"{where}: sticks out {fit}"
            if page != "run":
                continue
            # And the run graph lies inside its box (drawn to fit it), its details under it
            # when the window is narrow
            graph: dict[str, Any] = browser.execute_script(GRAPH)
            (x0, y0, x1, y1), (bx0, by0, bx1, by1) = graph["svg"], graph["box"]
            inside = x0 >= bx0 - 0.5 and y0 >= by0 - 0.5 and x1 <= bx1 + 0.5 and y1 <= by1 + 0.5
            assert inside and not graph["scrolls"], f"{where}: the graph is clipped {graph}"
            assert graph["scale"] >= 0.75, f"{where}: the graph is drawn too small {graph}"
            assert width > 1000 or graph["detailsBelow"], f"{where}: nothing stacks {graph}"
            assert css(browser, "#run-pending button.approve")
    assert all(os.path.getsize(shot) > 5_000 for shot in shots)
