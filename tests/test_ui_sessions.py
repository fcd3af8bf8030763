"""Sessions for people (mesh.api.sessions, mesh.api.ui): the one-time login link of ``mesh ui``, the
session cookie it becomes, CSRF tokens on actions, logout, and a node restart.

The unit tests drive :class:`Sessions` with a clock of their own; the end-to-end tests a real
``mesh up`` on loopback through plain HTTP (the browser's side is tests/test_ui_e2e.py).
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from mesh import codec
from mesh.api.sessions import COOKIE, LOGIN_SECONDS, SESSION_SECONDS, Sessions
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.wire.auth import AuthError, MeshKey, load_key
from mesh.wire.client import MeshAuth, NodeClient
from tests.nodeutil import MESH, NodeProcess, node_env, wait_for

#: What tells mesh ui that a desktop browser is there to open its link.
DESKTOP = ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_login_token_works_once_and_only_before_it_expires() -> None:
    clock = Clock()
    sessions = Sessions(MeshKey.generate(), None, clock=clock)
    token = sessions.login_token()
    cookie = sessions.redeem(token)
    assert sessions.check(cookie).expires == int(clock.now) + SESSION_SECONDS
    with pytest.raises(AuthError, match="used already or has expired"):
        sessions.redeem(token)
    late = sessions.login_token()
    clock.now += LOGIN_SECONDS + 1
    with pytest.raises(AuthError, match="run `mesh ui`"):
        sessions.redeem(late)
    with pytest.raises(AuthError):
        sessions.redeem("never-given")


def test_a_session_is_refused_once_expired_forged_or_of_another_key(tmp_path: Path) -> None:
    clock = Clock()
    key = MeshKey.generate()
    sessions = Sessions(key, None, clock=clock)
    cookie = sessions.redeem(sessions.login_token())
    sid, expires, mac = cookie.split(".")
    later = f"{sid}.{int(expires) + 3600}.{mac}"
    with pytest.raises(AuthError, match="not made by a node of this mesh"):
        sessions.check(later)
    with pytest.raises(AuthError, match="not made by a node of this mesh"):
        Sessions(MeshKey.generate(), None, clock=clock).check(cookie)
    for malformed in ("", "x", "a.b.c", f"{sid}.{expires}", f"{sid}.1e9.{mac}"):
        with pytest.raises(AuthError, match="malformed session cookie"):
            sessions.check(malformed)
    assert Sessions(key, None, clock=clock).check(cookie).sid == sid  # a restarted node: same key, same session
    clock.now += SESSION_SECONDS
    with pytest.raises(AuthError, match="expired"):
        sessions.check(cookie)


def test_a_csrf_token_belongs_to_its_session() -> None:
    sessions = Sessions(MeshKey.generate(), None)
    one = sessions.check(sessions.redeem(sessions.login_token()))
    two = sessions.check(sessions.redeem(sessions.login_token()))
    sessions.check_csrf(one, sessions.csrf_token(one))
    for wrong in (None, "", sessions.csrf_token(two)):
        with pytest.raises(AuthError, match="x-mesh-csrf"):
            sessions.check_csrf(one, wrong)


def test_a_logout_outlives_a_restart_and_expired_ones_are_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    key = MeshKey.generate()
    path = str(tmp_path / "ui-logouts")
    sessions = Sessions(key, path, clock=clock)
    ended = sessions.redeem(sessions.login_token())
    kept = sessions.redeem(sessions.login_token())
    sessions.end(sessions.check(ended))
    restarted = Sessions(key, path, clock=clock)
    with pytest.raises(AuthError, match="logged out"):
        restarted.check(ended)
    restarted.check(kept)
    clock.now += SESSION_SECONDS + 1
    Sessions(key, path, clock=clock)
    assert Path(path).read_text() == ""  # rewritten without the expired entry


def test_a_logouts_file_that_cannot_be_read_or_written_costs_no_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory where the file should be (unreadable, unwritable): the node starts, a logout
    holds until a restart, and the log says what is not kept."""
    path = tmp_path / "ui-logouts"
    path.mkdir()
    sessions = Sessions(MeshKey.generate(), str(path), clock=Clock())
    cookie = sessions.redeem(sessions.login_token())
    sessions.end(sessions.check(cookie))
    with pytest.raises(AuthError, match="logged out"):
        sessions.check(cookie)
    assert "cannot be read" in caplog.text and "holds until a restart" in caplog.text


# -- end to end --------------------------------------------------------------------------------


def login(node: NodeProcess) -> httpx.Client:
    """A client holding a session made through ``mesh ui``'s one-time link, as a browser would."""
    done = node.mesh("ui", "--no-open")
    assert done.returncode == 0, done.stderr.decode()
    url = done.stdout.decode().strip()
    assert url.startswith(node.url + "/ui/login?token="), url
    assert b"works once" in done.stderr
    browser = httpx.Client(trust_env=False, headers={"accept": "text/html"})
    response = browser.get(url)
    assert response.status_code == 200 and '<meta http-equiv="refresh" content="0; url=/">' in response.text
    return browser


def csrf(browser: httpx.Client, node: NodeProcess) -> str:
    page = browser.get(node.url + "/ui/mesh")
    assert page.status_code == 200, page.text
    found = re.search(r'<meta name="mesh-session" content="([^"]+)">', page.text)
    assert found, page.text[:500]
    return str(json.loads(html.unescape(found.group(1)))["csrf"])


def running_job(node: NodeProcess, tmp_path: Path, label: str) -> str:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f").write_text("x\n")
    with LocalStore(Path(node.home) / "cas") as store:
        snapshot = str(ingest(store, src))
    task = {"name": "sleep", "argv": ["sleep", "600"], "input": snapshot}
    with NodeClient(node.url, key=load_key(node.home)) as client:
        job = str(client.submit({"tasks": [task], "no_cache": True, "label": label})["id"])
        wait_for(lambda: client.job(job)["tasks"][0]["state"] == "running", what="the sleep task to run")
    return job


def error(response: httpx.Response) -> str:
    return str(json.loads(response.content)["error"])


def test_the_login_link_gives_a_strict_httponly_expiring_cookie_once(node: NodeProcess) -> None:
    done = node.mesh("ui", "--no-open")
    url = done.stdout.decode().strip()
    first = httpx.get(url, trust_env=False)
    assert first.status_code == 200 and "Logged in" in first.text
    cookie = first.headers["set-cookie"]
    parts = {p.strip().split("=")[0].lower(): p.strip() for p in cookie.split(";")}
    assert parts[COOKIE].startswith(f"{COOKIE}=") and "httponly" in parts and "path" in parts
    assert parts["samesite"].lower() == "samesite=strict"
    assert parts["max-age"] == f"Max-Age={SESSION_SECONDS}"
    again = httpx.get(url, trust_env=False)
    assert again.status_code == 401 and "used already" in again.text
    assert COOKIE not in again.headers.get("set-cookie", "")
    unsigned = httpx.post(node.url + "/v1/ui/logins", trust_env=False)
    assert unsigned.status_code == 401 and "unsigned request" in codec.decode(unsigned.content)["error"]


def test_a_session_reads_and_acts_with_its_csrf_token_and_nothing_else(node: NodeProcess, tmp_path: Path) -> None:
    job = running_job(node, tmp_path, "secret-label-1")
    browser = login(node)
    json_accept = {"accept": "application/json"}
    listed = browser.get(node.url + "/v1/jobs", headers=json_accept)
    assert listed.status_code == 200 and listed.json()["jobs"][0]["id"] == job
    assert "secret-label-1" in browser.get(node.url + "/status", headers=json_accept).text  # the details
    assert "secret-label-1" not in httpx.get(node.url + "/status", trust_env=False).text  # open: counts only
    files = browser.get(node.url + "/files", headers=json_accept)  # the UI's files page reads it
    assert files.status_code == 200 and files.json() == {"files": [], "total": 0, "next": None, "directories": []}
    bad = browser.get(node.url + "/files?dir=no-colon", headers=json_accept)
    assert bad.status_code == 400 and "HOST:DIRECTORY" in error(bad)
    token = csrf(browser, node)
    cancel = node.url + f"/v1/jobs/{job}/cancel"
    refused = browser.post(cancel, headers=json_accept)
    assert refused.status_code == 401 and "x-mesh-csrf" in error(refused)
    refused = browser.post(cancel, headers={**json_accept, "x-mesh-csrf": "0" * 64})
    assert refused.status_code == 401
    with NodeClient(node.url, key=load_key(node.home)) as client:
        assert client.job(job)["state"] == "running"  # nothing was done
        done = browser.post(cancel, headers={**json_accept, "x-mesh-csrf": token})
        assert done.status_code == 200, done.text
        wait_for(lambda: client.job(job)["state"] == "cancelled", what="the job cancelled by the session")
    # The peers' endpoints and the writes of the CLI take the key, never a session.
    for method, path in (
        ("POST", "/v1/jobs"),
        ("POST", "/v1/gossip"),
        ("POST", "/v1/blobs:missing"),
        ("PUT", "/v1/blobs/b3:" + "0" * 64 + ":1"),
        ("POST", "/v1/ui/logins"),
        ("POST", "/v1/steal"),
        ("DELETE", "/v1/projects/x"),
    ):
        response = browser.request(method, node.url + path, headers={**json_accept, "x-mesh-csrf": token}, content=b"")
        assert response.status_code == 401, (method, path, response.text)


def test_without_a_session_the_pages_and_the_api_refuse(node: NodeProcess, tmp_path: Path) -> None:
    job = running_job(node, tmp_path, "secret-label-2")
    anonymous = httpx.Client(trust_env=False, headers={"accept": "text/html"})
    page = anonymous.get(node.url + f"/ui/jobs/{job}")
    assert page.status_code == 401 and "mesh ui" in page.text and "secret-label-2" not in page.text
    overview = anonymous.get(node.url + "/")
    assert overview.status_code == 200 and 'name="mesh-session"' not in overview.text
    assert "script-src 'self'" in overview.headers["content-security-policy"]  # only the node's own script
    for method, path in (
        ("GET", f"/v1/jobs/{job}"),
        ("GET", f"/v1/jobs/{job}/events"),
        ("POST", f"/v1/jobs/{job}/cancel"),
        ("GET", "/files"),
    ):
        response = anonymous.request(method, node.url + path, headers={"accept": "application/json"})
        assert response.status_code == 401, (method, path)
    forged_cookie = {COOKIE: "0" * 32 + ".9999999999." + "0" * 64}
    forged = httpx.get(node.url + "/ui/mesh", cookies=forged_cookie, headers={"accept": "text/html"}, trust_env=False)
    assert forged.status_code == 401 and "not made by a node of this mesh" in forged.text
    assert "max-age=0" in forged.headers["set-cookie"].lower()  # the bad cookie is cleared
    assert httpx.get(node.url + "/files", cookies=forged_cookie, trust_env=False).status_code == 401
    counts = httpx.get(node.url + "/status", cookies=forged_cookie, trust_env=False)  # the open answer
    assert counts.status_code == 200 and "secret-label-2" not in counts.text and "running" in counts.text
    signed = httpx.get(node.url + "/ui/mesh", auth=MeshAuth(load_key(node.home)), trust_env=False)
    assert signed.status_code == 200  # the key is a way in too


def test_sessions_survive_a_restart_and_a_logout_ends_one_for_good(node: NodeProcess) -> None:
    kept, ended = login(node), login(node)
    token = csrf(ended, node)
    stale = ended.cookies[COOKIE]
    out = ended.post(node.url + "/ui/logout", headers={"accept": "application/json", "x-mesh-csrf": token})
    assert out.status_code == 200 and out.json() == {"logged_out": True}
    node.stop()
    node.start()
    assert kept.get(node.url + "/ui/mesh").status_code == 200
    again = httpx.get(node.url + "/ui/mesh", cookies={COOKIE: stale}, trust_env=False)  # a copy kept
    assert again.status_code == 401 and "logged out" in again.text


def _mesh_ui(node: NodeProcess, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``mesh ui`` against ``node`` with only ``env`` of the desktop variables."""
    base = {k: v for k, v in node_env(node.home, MESH_NODE=node.url).items() if k not in DESKTOP}
    return subprocess.run([*MESH, "ui"], env={**base, **env}, capture_output=True, timeout=60)


def test_mesh_ui_opens_the_link_only_where_a_browser_is(node: NodeProcess, tmp_path: Path) -> None:
    headless = _mesh_ui(node)
    assert headless.returncode == 0 and b"open it in a browser" in headless.stderr
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(0o755)
    done = _mesh_ui(node, BROWSER=str(browser))
    assert done.returncode == 0 and b"opened in your browser" in done.stderr, done.stderr
    url = done.stdout.decode().strip()
    assert opened.read_text() == url
    assert httpx.get(url, trust_env=False).status_code == 200  # the browser was given a good link
    elsewhere = subprocess.run(
        [*MESH, "ui", "--node", "http://127.0.0.1:9"], env=node_env(node.home), capture_output=True, timeout=60
    )
    assert elsewhere.returncode == 1 and b"no mesh node answers at http://127.0.0.1:9" in elsewhere.stderr


def _lands(url: str) -> str:
    """Where the login page at ``url`` goes on to (it is redeemed: a link works once)."""
    first = httpx.get(url, trust_env=False)
    assert first.status_code == 200, first.text
    (target,) = re.findall(r'content="0; url=([^"]*)"', first.text)
    assert f'href="{target}"' in first.text
    return html.unescape(target)


@pytest.mark.parametrize(
    ("page", "lands"),
    [
        (None, "/"),
        ("/ui/builds/web/2", "/ui/builds/web/2"),
        (
            "http://elsewhere.example:7474/ui/jobs/0123456789abcdef0123/tasks/t:2",
            "/ui/jobs/0123456789abcdef0123/tasks/t:2",
        ),
    ],
)
def test_mesh_ui_page_gives_a_link_that_goes_on_to_that_page(node: NodeProcess, page: str | None, lands: str) -> None:
    """``mesh ui PAGE``: a link shared in a chat is reached after logging in."""
    done = node.mesh("ui", "--no-open", *([page] if page else []))
    assert done.returncode == 0, done.stderr.decode()
    assert _lands(done.stdout.decode().strip()) == lands


@pytest.mark.parametrize(
    "hostile",
    ["//evil.example/ui/x", "https://evil.example/ui/x", "/ui//evil.example", "/elsewhere", "/ui/x\\y", "/ui/x?y"],
)
def test_a_login_link_goes_on_only_to_a_page_of_the_ui(node: NodeProcess, hostile: str) -> None:
    """``next`` is in a URL anyone can edit: one made to send a person to another site, or
    anywhere but the UI, goes to the overview."""
    done = node.mesh("ui", "--no-open")
    assert done.returncode == 0, done.stderr.decode()
    assert _lands(done.stdout.decode().strip() + "&" + urlencode({"next": hostile})) == "/"


def test_a_page_refused_for_want_of_a_session_says_how_to_reach_it(node: NodeProcess) -> None:
    refused = httpx.get(node.url + "/ui/builds/web/2", headers={"accept": "text/html"}, trust_env=False)
    assert refused.status_code == 401 and "mesh ui\n/ui/builds/web/2" in refused.text, refused.text
