"""The web UI in a real browser: Debian's Chromium driven by Playwright against a real node on loopback.

One node and one browser serve the whole module (tests/browser.py keeps the browser inside a
loopback-only network namespace). A person logs in through ``mesh ui``'s one-time link, watches
a job's lines arrive while it runs, cancels it and re-runs a finished task from the page, opens a
build's page by its URL, reads a log of 100,000 lines, sees a real ``mesh watch``'s files come
and go; without a session the detailed pages, the files and actions are refused. Screenshots
of the main pages are saved under the pytest temporary directory (the path is printed).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.wire.auth import load_key
from mesh.wire.client import NodeClient
from tests.browser import ARGS, Forwarder, chromium_in, loopback_namespace, unavailable
from tests.nodeutil import NodeProcess, wait_for
from tests.watchutil import FAST, WatchProcess

WHY_NOT = unavailable()
if WHY_NOT is None:
    from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no browser tests: {WHY_NOT}")

#: How long a page may take to show what the node did (the node and the browser share 2 cores).
SHOWN = 20_000
PIPELINE = """\
steps:
  - name: build
    run: echo building; cat src.txt
  - name: check
    depends_on: [build]
    run: test "$(cat src.txt)" = good
"""


@pytest.fixture(scope="module")
def ui_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(str(tmp_path_factory.mktemp("ui") / "home"), slots=4).start()
    try:
        yield node
    finally:
        node.stop(timeout=30)


@pytest.fixture(scope="module")
def browser(ui_node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with loopback_namespace() as namespace:
        forwarder = Forwarder(namespace, ui_node.port)
        try:
            with sync_playwright() as playwright:
                executable = chromium_in(namespace, tmp_path_factory.mktemp("chromium"))
                launched = playwright.chromium.launch(executable_path=executable, args=ARGS)
                expect.set_options(timeout=SHOWN)  # every wait for the page, on a machine shared by many tests
                try:
                    yield launched
                finally:
                    launched.close()
        finally:
            forwarder.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("screenshots")
    print(f"screenshots of the UI: {directory}")
    return directory


@pytest.fixture(scope="module")
def snapshot(ui_node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    src = tmp_path_factory.mktemp("input")
    (src / "f").write_text("x\n")
    with LocalStore(Path(ui_node.home) / "cas") as store:
        return str(ingest(store, src))


def login_url(node: NodeProcess) -> str:
    done = node.mesh("ui", "--no-open")
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


@pytest.fixture
def page(browser: Browser, ui_node: NodeProcess) -> Iterator[Page]:
    """A page of a browser context that logged in through the one-time link; the test fails if
    the page's script threw, or a content security policy refused something."""
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    errors: list[str] = []
    try:
        opened = context.new_page()
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        opened.goto(login_url(ui_node))
        expect(opened.get_by_role("heading", name="Overview")).to_be_visible()
        yield opened
    finally:
        context.close()
    assert not errors, errors


@contextmanager
def refused_page(browser: Browser, url: str) -> Iterator[Page]:
    """A page of a browser context without a session, at ``url``, which the node refused (401)."""
    anonymous = browser.new_context()
    try:
        stranger = anonymous.new_page()
        response = stranger.goto(url)
        assert response is not None and response.status == 401
        expect(stranger.get_by_role("heading", name="mesh: not logged in")).to_be_visible()
        yield stranger
    finally:
        anonymous.close()


def client(node: NodeProcess) -> NodeClient:
    return NodeClient(node.url, key=load_key(node.home))


def submit(node: NodeProcess, snapshot: str, label: str, *tasks: dict[str, Any], cache: bool = False) -> str:
    with client(node) as c:
        job = {"tasks": [{"input": snapshot, **task} for task in tasks], "no_cache": not cache, "label": label}
        return str(c.submit(job)["id"])


def state(node: NodeProcess, job: str) -> str:
    with client(node) as c:
        return str(c.job(job)["state"])


def test_logging_in_through_the_one_time_link(browser: Browser, ui_node: NodeProcess, shots: Path) -> None:
    url = login_url(ui_node)
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    try:
        page = context.new_page()
        loaded: list[tuple[str, int]] = []
        page.on("requestfinished", lambda r: loaded.append((r.url, r.sizes()["responseBodySize"])))
        page.goto(url)
        expect(page).to_have_url(ui_node.url + "/")
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        page.wait_for_load_state("networkidle")
        assert all(where.startswith(ui_node.url + "/") for where, _ in loaded), loaded  # nothing from elsewhere
        assert 0 < sum(size for _, size in loaded) < 200_000, loaded  # the first page is light
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
        page.screenshot(path=shots / "overview.png", full_page=True)
    finally:
        context.close()
    other = browser.new_context()
    try:
        again = other.new_page()
        response = again.goto(url)  # the link works once
        assert response is not None and response.status == 401
        expect(again.get_by_text("used already or has expired")).to_be_visible()
        assert other.cookies() == []
    finally:
        other.close()


def test_a_running_jobs_lines_appear_live_and_it_is_cancelled_from_the_page(
    page: Page, ui_node: NodeProcess, snapshot: str, shots: Path
) -> None:
    script = (
        r"printf '\033[32mgreen\033[0m plain\n'; echo oops >&2; "
        r'i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo "tick $i"; sleep 1; done'
    )
    job = submit(ui_node, snapshot, "ticking", {"name": "tick", "argv": ["sh", "-c", script]})
    page.goto(f"{ui_node.url}/ui/jobs/{job}")
    log = page.get_by_role("log")
    expect(log).to_contain_text("tick 1", timeout=SHOWN)
    page.evaluate("window.stayed = true")  # gone if the page were loaded again
    expect(log).to_contain_text("tick 3", timeout=SHOWN)
    assert state(ui_node, job) == "running"  # the lines came while it ran
    assert page.evaluate("window.stayed === true")
    expect(log.locator("span.f2")).to_have_text("green")  # ANSI colours rendered, not shown as codes
    expect(log.locator(".ln.err")).to_have_text("oops")  # stderr told apart from stdout
    assert "\x1b" not in log.inner_text()
    page.screenshot(path=shots / "job-running.png", full_page=True)
    page.keyboard.press("j")  # the row cursor and the focus stay on the task across the table's redraws
    task_link = page.get_by_role("link", name="tick", exact=True)
    expect(task_link).to_be_focused()
    took = page.locator("tbody tr").first.locator("td").nth(5)
    expect(took).not_to_have_text(took.inner_text(), timeout=SHOWN)  # the running duration ticked: redrawn
    expect(task_link).to_be_focused()
    expect(page.locator("tbody tr.cursor")).to_have_count(1)

    expect(page.get_by_role("button", name="Re-run job")).to_be_hidden()  # not while it runs
    page.get_by_role("button", name="Cancel job").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Cancel job {job}?")
    assert state(ui_node, job) == "running"  # nothing before the confirmation
    dialog.get_by_role("button", name="Confirm").click()
    wait_for(lambda: state(ui_node, job) == "cancelled", what="the job cancelled from the page")
    expect(page.get_by_role("heading", level=1)).to_contain_text("cancelled", timeout=SHOWN)
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    expect(page.get_by_role("button", name="Re-run job")).to_be_visible()  # once it has ended


def test_a_finished_task_is_rerun_from_the_page(page: Page, ui_node: NodeProcess, snapshot: str) -> None:
    job = submit(
        ui_node,
        snapshot,
        "two steps",
        {"name": "first", "argv": ["sh", "-c", "echo first-ran-$RANDOM"]},
        {"name": "second", "argv": ["echo", "second-ran"], "after": ["first"]},
    )
    wait_for(lambda: state(ui_node, job) == "succeeded", what="the two-task job to end")
    page.goto(f"{ui_node.url}/ui/jobs/{job}")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("first")  # by dependency: first, then what runs after it
    expect(rows.nth(1)).to_contain_text("second")
    rows.nth(0).get_by_role("button", name="Re-run").click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/(?!" + job + r")[^/]+/tasks/first$"), timeout=SHOWN)
    again = page.url.split("/ui/jobs/")[1].split("/")[0]
    wait_for(lambda: state(ui_node, again) == "succeeded", what="the re-run to end")
    expect(page.get_by_role("log")).to_contain_text("first-ran-", timeout=SHOWN)
    expect(page.get_by_role("heading", level=1)).to_contain_text("succeeded", timeout=SHOWN)


def repository(tree: Path) -> str:
    tree.mkdir()
    (tree / ".mesh.yml").write_text(PIPELINE)
    (tree / "src.txt").write_text("good\n")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "good"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def build(ui_node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Build #1 of project demo, finished."""
    tree = tmp_path_factory.mktemp("project") / "repo"
    commit = repository(tree)
    assert ui_node.mesh("project", "add", "demo", str(tree)).returncode == 0
    done = ui_node.mesh("run", "-C", str(tree), "--project", "demo")
    assert done.returncode == 0, done.stderr.decode()
    return {"commit": commit, "tree": str(tree)}


def test_a_builds_page_opens_by_its_url(page: Page, ui_node: NodeProcess, build: dict[str, str], shots: Path) -> None:
    page.goto(f"{ui_node.url}/ui/builds/demo/1")
    expect(page.get_by_role("heading", level=1)).to_contain_text("demo #1")
    facts = page.locator(".facts").first
    expect(facts).to_contain_text(build["commit"])
    expect(facts).to_contain_text("trigger run")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("build")
    expect(rows.nth(1)).to_contain_text("check")
    expect(rows.nth(1)).to_contain_text("succeeded")
    expect(rows.nth(1)).to_contain_text("ran")  # cached or not
    page.screenshot(path=shots / "build.png", full_page=True)
    rows.nth(0).get_by_role("link", name="build").click()
    expect(page).to_have_url(f"{ui_node.url}/ui/builds/demo/1/tasks/build")
    expect(page.get_by_role("log")).to_contain_text("building")
    page.screenshot(path=shots / "build-task.png", full_page=True)  # README.md shows it, as docs/ui.png
    page.goto(ui_node.url + "/")
    project = page.locator("tr", has=page.get_by_role("link", name="demo", exact=True))
    expect(project).to_contain_text("#1")
    expect(project.get_by_role("img")).to_have_attribute("src", "/v1/projects/demo/badge.svg")
    page.keyboard.press("j")  # the keyboard: j to the first row, Enter opens it; g m: the mesh
    expect(page.get_by_role("link", name="demo", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{ui_node.url}/ui/projects/demo")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Project demo")
    page.keyboard.press("g")
    page.keyboard.press("m")
    expect(page).to_have_url(f"{ui_node.url}/ui/mesh")
    expect(page.get_by_text("cache hit rate")).to_be_visible()
    page.screenshot(path=shots / "mesh.png", full_page=True)


def test_a_build_is_rerun_from_its_page(page: Page, ui_node: NodeProcess, build: dict[str, str]) -> None:
    page.goto(f"{ui_node.url}/ui/builds/demo/1")
    page.get_by_role("button", name="Re-run build").click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(r"/ui/builds/demo/([2-9]|\d\d+)$"), timeout=SHOWN)
    expect(page.get_by_role("heading", level=1)).to_contain_text("succeeded", timeout=SHOWN)
    expect(page.locator(".facts").first).to_contain_text(build["commit"])
    expect(page.locator(".facts").first).to_contain_text("trigger rerun")
    page.locator(".facts").first.get_by_role("link", name="#1").click()  # the build it re-ran
    expect(page).to_have_url(f"{ui_node.url}/ui/builds/demo/1")


def test_a_log_of_100000_lines_shows_its_tail_and_the_whole_on_request(
    page: Page, ui_node: NodeProcess, snapshot: str, shots: Path
) -> None:
    job = submit(ui_node, snapshot, "long", {"name": "long", "argv": ["seq", "1", "100000"]})
    wait_for(lambda: state(ui_node, job) == "succeeded", what="seq to end")
    page.goto(f"{ui_node.url}/ui/jobs/{job}")
    expect(page.locator(".logbar")).to_contain_text("100,000 lines · showing the last 1,000", timeout=SHOWN)
    log = page.get_by_role("log")
    expect(log.locator('.ln[data-n="100000"]')).to_have_text("100000")
    assert log.locator(".ln").count() < 300  # only the lines in view are in the page
    page.get_by_role("button", name="Show the whole log").click()
    expect(page.locator(".logbar")).not_to_contain_text("showing the last")
    log.evaluate("box => { box.scrollTop = 0; }")
    expect(log.locator('.ln[data-n="1"]')).to_have_text("1")
    log.evaluate("box => { box.scrollTop = box.scrollHeight / 2; }")
    expect(log.locator('.ln[data-n="50000"]')).to_have_text("50000")
    assert log.locator(".ln").count() < 300
    page.screenshot(path=shots / "long-log.png")


def test_a_cached_tasks_log_is_read_from_the_store(page: Page, ui_node: NodeProcess, snapshot: str) -> None:
    """A result from the action cache ran nowhere: its job's events carry no output, the page
    reads the task's stdout and stderr blobs."""
    task = {"name": "echo", "argv": ["sh", "-c", "echo from-the-cache; echo to-stderr >&2"]}
    first = submit(ui_node, snapshot, "first", task, cache=True)
    wait_for(lambda: state(ui_node, first) == "succeeded", what="the first run")
    second = submit(ui_node, snapshot, "second", task, cache=True)
    wait_for(lambda: state(ui_node, second) == "succeeded", what="the cached run")
    page.goto(f"{ui_node.url}/ui/jobs/{second}")
    expect(page.locator("tbody tr").first).to_contain_text("cached")
    log = page.get_by_role("log")
    expect(log.locator(".ln").first).to_have_text("from-the-cache")
    expect(log.locator(".ln.err")).to_have_text("to-stderr")
    expect(page.locator(".logbar")).to_contain_text("read from the store")


#: The contrast of every text on its background (WCAG 2's formula), computed in the page.
CONTRASTS = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const linear = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
  const background = (e) => {
    for (; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const found = [];
  for (const e of document.querySelectorAll("body *")) {
    const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !e.getClientRects().length) continue;
    const [a, b] = [lum(rgb(getComputedStyle(e).color)), lum(background(e))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    found.push([Math.round(100 * ratio) / 100, e.textContent.trim().slice(0, 30)]);
  }
  return found;
}"""


def test_every_text_is_readable_against_its_background(
    browser: Browser, page: Page, ui_node: NodeProcess, snapshot: str
) -> None:
    """WCAG AA: a contrast of 4.5:1 at least, on the overview, a job's page with a coloured log and
    a failed task, the mesh page and the open overview."""
    script = r"printf '\033[31mred\033[0m \033[1;33mbold yellow\033[0m\n'; echo warning >&2; exit 1"
    job = submit(ui_node, snapshot, "colours", {"name": "colours", "argv": ["sh", "-c", script]})
    wait_for(lambda: state(ui_node, job) == "failed", what="the job to fail")
    anonymous = browser.new_context()
    try:
        for seen, path in ((page, "/"), (page, f"/ui/jobs/{job}"), (page, "/ui/mesh"), (anonymous.new_page(), "/")):
            seen.goto(ui_node.url + path)
            seen.wait_for_load_state("networkidle")
            if "jobs" in path:
                expect(seen.get_by_role("log")).to_contain_text("bold yellow")
            texts = seen.evaluate(CONTRASTS)
            assert len(texts) > 15, texts  # the page's texts were found
            poor = [(ratio, text) for ratio, text in texts if ratio < 4.5]
            assert not poor, (path, poor)
    finally:
        anonymous.close()


def test_without_a_session_details_and_actions_are_refused(
    browser: Browser, page: Page, ui_node: NodeProcess, snapshot: str
) -> None:
    secret = "secret-command-line-7d1f"
    job = submit(ui_node, snapshot, secret, {"name": "sleep", "argv": ["sh", "-c", f"sleep 600 # {secret}"]})
    wait_for(lambda: state(ui_node, job) == "running", what="the job to run")
    with refused_page(browser, f"{ui_node.url}/ui/jobs/{job}") as stranger:
        stranger.goto(ui_node.url + "/")
        expect(stranger.get_by_role("heading", name="mesh node")).to_be_visible()
        expect(stranger.locator("main")).to_contain_text("running")  # the counts
        assert secret not in stranger.content()
        refused = stranger.evaluate(
            """async (job) => {
                const cancel = await fetch(`/v1/jobs/${job}/cancel`, {method: "POST"});
                const read = await fetch(`/v1/jobs/${job}`, {headers: {accept: "application/json"}});
                return [cancel.status, read.status];
            }""",
            job,
        )
        assert refused == [401, 401]
        assert state(ui_node, job) == "running"
    # A session without its CSRF token cannot act either; then it logs out, and is refused.
    status = page.evaluate(f"fetch('/v1/jobs/{job}/cancel', {{method: 'POST'}}).then(r => r.status)")
    assert status == 401 and state(ui_node, job) == "running"
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="mesh node")).to_be_visible()
    response = page.goto(f"{ui_node.url}/ui/jobs/{job}")
    assert response is not None and response.status == 401
    with client(ui_node) as c:
        c.cancel(job)


def test_the_mesh_page_shows_a_peer_as_it_joins(page: Page, ui_node: NodeProcess, tmp_path: Path, shots: Path) -> None:
    page.goto(f"{ui_node.url}/ui/mesh")
    expect(page.get_by_text("No peers")).to_be_visible()
    key = load_key(ui_node.home)
    assert key is not None
    peer = NodeProcess(
        str(tmp_path / "peer"), env={"MESH_KEY": key.text()}, extra_args=["--peer", ui_node.addr, "--label", "rack=b7"]
    ).start()
    try:
        row = page.locator("tr", has=page.get_by_text(peer.url, exact=True))
        expect(row).to_contain_text("alive", timeout=SHOWN)  # without a reload
        expect(row).to_contain_text("labels rack=b7")
        expect(row).to_contain_text(re.compile(r"\d+/2"))  # slots busy of total
        expect(row).to_contain_text(re.compile(r"\d+\.\d s ago"))
        expect(row.locator("td").nth(6)).to_have_text("0")  # no directory watched through it yet
        directory = tmp_path / "on-the-peer"
        directory.mkdir()
        (directory / "far.txt").write_text("far\n")
        watcher = WatchProcess.start(peer, directory, *FAST, home=ui_node.home)  # the mesh key is in its home
        try:
            expect(row.locator("td").nth(6)).to_have_text("1")  # gossip says a directory is watched through it
            page.screenshot(path=shots / "mesh.png", full_page=True)
            peer_id = row.locator("td").first.inner_text()
            page.get_by_role("link", name="Files", exact=True).click()  # the mesh's files: the peer's too
            where = f"{socket.gethostname()}:{os.path.realpath(directory)}"
            expect(page.locator("tr", has=page.get_by_role("link", name=where, exact=True))).to_contain_text(peer_id)
            expect(page.locator("tr", has=page.get_by_text("far.txt", exact=True))).to_contain_text(where)
        finally:
            watcher.stop()
    finally:
        peer.stop()


def test_the_files_page_shows_a_watched_directorys_files_come_and_go(
    browser: Browser, page: Page, ui_node: NodeProcess, tmp_path: Path, shots: Path
) -> None:
    """A real ``mesh watch`` of 252 files: the files page (``g f``) lists its directory, and its
    files a page of 100 at a time; a new file appears and a deleted one leaves without a reload.
    Without a session, the page and /files are refused."""
    directory = tmp_path / "watched"
    (directory / "many").mkdir(parents=True)
    (directory / "a.txt").write_text("alpha\n")
    (directory / "b.txt").write_text("beta\n")
    for i in range(250):
        (directory / "many" / f"{i:04}.txt").write_text(f"{i}\n")
    where = f"{socket.gethostname()}:{os.path.realpath(directory)}"
    watcher = WatchProcess.start(ui_node, directory, *FAST)
    try:
        page.keyboard.press("g")
        page.keyboard.press("f")
        expect(page).to_have_url(f"{ui_node.url}/ui/files")
        expect(page.get_by_role("link", name="Files", exact=True)).to_have_attribute("aria-current", "page")
        directory_link = page.get_by_role("link", name=where, exact=True)
        expect(page.locator("tr", has=directory_link)).to_contain_text("252")  # its node and count
        page.keyboard.press("j")  # the keyboard: the directory's row, Enter keeps only its files
        expect(directory_link).to_be_focused()
        page.keyboard.press("Enter")
        expect(page).to_have_url(re.compile(r"/ui/files\?dir="))
        files = page.locator("table").nth(1).locator("tbody tr")
        expect(files).to_have_count(100)  # a page at a time
        expect(page.locator("main")).to_contain_text("files 1–100 of 252")
        expect(page.get_by_role("heading", level=2, name=f"Files of {where}")).to_be_visible()
        expect(files.first).to_contain_text("a.txt")
        with client(ui_node) as c:
            expect(files.first).to_contain_text(str(c.health()["node"]))
        page.evaluate("window.stayed = true")  # gone if the page were loaded again
        (directory / "a-new.txt").write_text("new\n")
        (directory / "b.txt").unlink()
        paths = page.locator("table").nth(1).locator("tbody td:first-child > code")
        expect(paths.filter(has_text=re.compile(r"^a-new\.txt$"))).to_have_count(1)
        expect(paths.filter(has_text=re.compile(r"^b\.txt$"))).to_have_count(0)
        expect(page.locator("main")).to_contain_text("files 1–100 of 252")
        assert page.evaluate("window.stayed === true")
        poor = [(ratio, text) for ratio, text in page.evaluate(CONTRASTS) if ratio < 4.5]
        assert not poor, poor
        page.screenshot(path=shots / "files.png")
        page.get_by_role("link", name="next page →").click()
        expect(page.locator("main")).to_contain_text("files 101–200 of 252")
        expect(files).to_have_count(100)
        expect(files.first).to_contain_text("many/0098.txt")  # after a-new.txt, a.txt and 98 of many/
        expect(page.get_by_role("link", name="← previous page")).to_be_visible()
        assert page.evaluate("fetch('/files?limit=1').then(r => r.status)") == 200  # the session reads /files
        with refused_page(browser, f"{ui_node.url}/ui/files") as stranger:
            read = stranger.evaluate(
                """(where) => fetch(`/files?dir=${encodeURIComponent(where)}`, {headers: {accept: "application/json"}})
                    .then(async (r) => [r.status, await r.text()])""",
                where,
            )
            assert read[0] == 401 and "a-new.txt" not in read[1], read
        page.keyboard.press("g")
        page.keyboard.press("m")
        expect(page.locator("table.kv")).to_contain_text("1 directory through this node")  # the mesh page counts them
    finally:
        watcher.stop()
