"""End to end: ``mesh watch`` keeps a real node's ``/files`` live, and the health checks both ways.

Real ``mesh watch`` processes against a real ``mesh up`` on loopback (MESH_MDNS=0) whose
watchers time out after WATCH_TIMEOUT seconds (MESH_WATCH_TIMEOUT), with a 0.1 s debounce.
Every wait is a condition with a deadline of the time the behaviour is documented to take
plus a margin.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.cas.digest import Digest
from mesh.cas.space import MTIME_SLACK_NS
from mesh.cas.store import LocalStore
from mesh.errors import NodeError
from mesh.wire.auth import load_key
from mesh.wire.client import NodeClient
from tests.nodeutil import MESH, NodeProcess, free_port, node_env, wait_for
from tests.watchutil import FAST, WatchProcess, listed, wait_listed

#: The node's watcher timeout in these tests (the default is 15 s).
WATCH_TIMEOUT = 3.0
#: What a change may take to reach /files: the 0.1 s debounce, a snapshot and a beat, on a busy machine.
SETTLE = 5.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the tests of this file that do not restart it."""
    home = tmp_path_factory.mktemp("watchnode") / "home"
    process = NodeProcess(str(home), env={"MESH_WATCH_TIMEOUT": str(WATCH_TIMEOUT)}).start()
    try:
        yield process
    finally:
        process.stop()


def tree(tmp_path: Path, name: str = "watched") -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "a.txt").write_text("alpha\n")
    (directory / "b.txt").write_text("beta\n")
    return directory


@pytest.mark.parametrize("mode", ["notify", "poll"])
def test_files_follows_creates_edits_renames_and_deletes(node: NodeProcess, tmp_path: Path, mode: str) -> None:
    """With OS notifications, and with rescans alone (--no-notify, a 0.3 s poll): each change
    shows in /files within the debounce plus a margin; a clean stop takes the files out at once."""
    directory = tree(tmp_path)
    args = FAST if mode == "notify" else [*FAST, "--no-notify", "--poll", "0.3"]
    watcher = WatchProcess.start(node, directory, *args)
    try:
        wait_listed(node, directory, ["a.txt", "b.txt"], timeout=30, what="the first snapshot")
        (directory / "sub").mkdir()
        (directory / "sub" / "c.txt").write_text("gamma\n")
        wait_listed(node, directory, ["a.txt", "b.txt", "sub/c.txt"], timeout=SETTLE, what="a created file")
        before = listed(node, directory)["a.txt"]
        (directory / "a.txt").write_text("alpha, edited\n")
        wait_for(lambda: listed(node, directory)["a.txt"] != before, timeout=SETTLE, what="an edit")
        os.rename(directory / "b.txt", directory / "sub" / "renamed.txt")
        wait_listed(node, directory, ["a.txt", "sub/c.txt", "sub/renamed.txt"], timeout=SETTLE, what="a rename")
        (directory / "a.txt").unlink()
        wait_listed(node, directory, ["sub/c.txt", "sub/renamed.txt"], timeout=SETTLE, what="a delete")
        rows = [r for r in listed_rows(node) if r["directory"] == str(directory)]
        assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
        assert all(r["node"] == node_id(node) for r in rows)
        printed = node.mesh("files", "--node", node.url)
        assert printed.returncode == 0, printed.stderr
        where = f"{node_id(node)}\t{socket.gethostname()}:{directory}"
        assert f"sub/c.txt\t{where}\nsub/renamed.txt\t{where}\n".encode() in printed.stdout
    finally:
        status = watcher.stop()
    assert status == 0, watcher.stderr()
    # A clean stop deregisters: gone well before the node's timeout would drop it.
    wait_listed(node, directory, [], timeout=WATCH_TIMEOUT * 0.6, what="a stopped watcher's files to go")


def listed_rows(node: NodeProcess) -> list[dict[str, object]]:
    from tests.watchutil import files_of

    return files_of(node.url, node.home)


def node_id(node: NodeProcess) -> str:
    with NodeClient(node.url) as client:
        return str(client.health()["node"])


#: Runs its arguments in a user namespace of its own that allows no inotify instance: the
#: notifier fails as it does when the user's inotify limit is reached.
NO_INOTIFY = [
    "unshare",
    "--user",
    "--map-root-user",
    "sh",
    "-c",
    'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"',
    "-",
]


def test_a_failed_notifier_leaves_the_rescans_to_follow_changes(node: NodeProcess, tmp_path: Path) -> None:
    probe = subprocess.run([*NO_INOTIFY, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace without inotify here: {probe.stderr.strip()}")
    directory = tree(tmp_path)
    watcher = WatchProcess.start(node, directory, *FAST, "--poll", "0.3", launcher=NO_INOTIFY)
    try:
        watcher.said("OS notifications of")
        assert "failed" in watcher.stderr() and "rescanning every poll interval instead" in watcher.stderr()
        wait_listed(node, directory, ["a.txt", "b.txt"], timeout=30)
        (directory / "c.txt").write_text("gamma\n")
        wait_listed(node, directory, ["a.txt", "b.txt", "c.txt"], timeout=SETTLE, what="a file made after the failure")
    finally:
        assert watcher.stop() == 0


def test_a_second_watcher_of_a_directory_is_refused_and_a_killed_one_times_out(
    node: NodeProcess, tmp_path: Path
) -> None:
    directory = tree(tmp_path)
    first = WatchProcess.start(node, directory, *FAST)
    try:
        wait_listed(node, directory, ["a.txt", "b.txt"], timeout=30)
        second = subprocess.run(
            [*MESH, "watch", str(directory), "--node", node.url],
            env=node_env(node.home),
            capture_output=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert b"already watched through this node by a live watcher" in second.stderr, second.stderr
        assert f"pid {first.process.pid}".encode() in second.stderr
        first.stop(signal.SIGKILL)
        # Killed: nothing deregisters it; the node drops it once it was silent WATCH_TIMEOUT seconds.
        wait_listed(node, directory, [], timeout=WATCH_TIMEOUT + SETTLE, what="a killed watcher's files to go")
        assert "unhealthy: not heard from" in node.log()
        # Its directory is free again: a new watcher registers.
        third = WatchProcess.start(node, directory, *FAST)
        try:
            wait_listed(node, directory, ["a.txt", "b.txt"], timeout=30, what="a new watcher's files")
        finally:
            assert third.stop() == 0
    finally:
        first.stop(signal.SIGKILL)


def test_a_watcher_with_no_node_is_refused(tmp_path: Path) -> None:
    directory = tree(tmp_path)
    done = subprocess.run(
        [*MESH, "watch", str(directory), "--node", f"http://127.0.0.1:{free_port()}"],
        env=node_env(str(tmp_path / "home")),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert b"no mesh node answers at" in done.stderr, done.stderr


def test_a_watched_path_that_is_not_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    done = subprocess.run(
        [*MESH, "watch", str(tmp_path / "file")], env=node_env(str(tmp_path / "home")), capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert b"not a directory" in done.stderr


def test_files_needs_the_mesh_key(node: NodeProcess) -> None:
    with NodeClient(node.url, key=None) as client:
        with pytest.raises(Exception, match="mesh key"):
            client.request("GET", "/files")
    with NodeClient(node.url, key=load_key(node.home)) as client:
        answer = client.request("GET", "/files", params={"limit": "1"})
    assert set(answer) == {"files", "total", "next", "directories"}  # directories: for the web UI


def test_a_node_restarted_under_a_watcher_holds_it_then_resyncs(tmp_path: Path) -> None:
    node = NodeProcess(str(tmp_path / "home"), env={"MESH_WATCH_TIMEOUT": str(WATCH_TIMEOUT)}).start()
    directory = tree(tmp_path)
    watcher = WatchProcess.start(node, directory, *FAST)
    try:
        wait_listed(node, directory, ["a.txt", "b.txt"], timeout=30)
        assert node.stop() == 0
        watcher.said("is not serving", timeout=WATCH_TIMEOUT + SETTLE)
        (directory / "while-down.txt").write_text("made while the node was down\n")
        (directory / "a.txt").unlink()
        node.start()  # the same home and port: it knows no watcher
        watcher.said("serves again: resyncing", timeout=SETTLE)
        wait_listed(node, directory, ["b.txt", "while-down.txt"], timeout=SETTLE, what="the resync")
        assert watcher.process.poll() is None
    finally:
        watcher.stop()
        node.stop()


RUN_PIPELINE = """\
steps:
  - name: show
    run: echo "state is $(cat state.txt)"; if grep -q first state.txt; then sleep 60; fi
    cache: false
"""


def test_run_on_change_cancels_the_stale_run_and_runs_the_latest_state(node: NodeProcess, tmp_path: Path) -> None:
    """--run: an edit starts the pipeline; a second edit while it runs cancels that run (its job
    ends cancelled on the node) and the pipeline runs on the latest state."""
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / ".mesh.yml").write_text(RUN_PIPELINE)
    (directory / "state.txt").write_text("zero\n")
    watcher = WatchProcess.start(node, directory, *FAST, "--run")
    try:
        watcher.said("watching")
        (directory / "state.txt").write_text("first\n")
        wait_for(lambda: "state is first" in watcher.stdout(), timeout=60, what="the first run to start")
        (directory / "state.txt").write_text("second\n")
        watcher.said("pipeline succeeded", timeout=60)
        err = watcher.stderr()
        assert "made job" in err and "stale: cancelling it" in err, err
        assert "state is second" in watcher.stdout()
        assert "state is zero" not in watcher.stdout()  # no run before the first change
        # A watcher that stops cancels its run under way, as mesh run does.
        (directory / "state.txt").write_text("first again\n")
        wait_for(lambda: "state is first again" in watcher.stdout(), timeout=60, what="a third run to start")
    finally:
        assert watcher.stop() == 0
    assert "the run under way" in watcher.stderr()
    with NodeClient(node.url, key=load_key(node.home)) as client:
        jobs = [j for j in client.jobs()["jobs"] if str(j["label"]).endswith("project")]
        assert [j["state"] for j in jobs] == ["cancelled", "succeeded", "cancelled"], jobs


def test_a_watched_snapshot_is_kept_through_eviction_while_watched(tmp_path: Path) -> None:
    """A node at its store cap evicts its least recently used blobs, but not those of a live
    watcher's snapshot: the watched file, older, stays; a newer unwatched blob goes."""
    node = NodeProcess(str(tmp_path / "home"), env={"MESH_STORE_MAX": "2M"}).start()
    directory = tmp_path / "watched"
    directory.mkdir()
    (directory / "big").write_bytes(os.urandom(500_000))
    key = load_key(node.home)
    assert key is not None
    # A client home of its own: the watcher uploads through the node, whose cap sees every byte.
    client_env = {"MESH_KEY": key.text()}
    watcher = WatchProcess.start(node, directory, *FAST, home=str(tmp_path / "client"), env=client_env)
    try:
        with NodeClient(node.url, key=key) as client, LocalStore(os.path.join(node.home, "cas")) as store:

            def put(data: bytes) -> Digest:
                digest = Digest.of(data)
                answer = client.http.put(f"/v1/blobs/{digest}", content=data)
                assert answer.status_code in (200, 201), answer.content.decode(errors="replace")
                return digest

            def settled(digest: Digest) -> bool:  # older than what the cap counts as still being written
                return time.time_ns() - os.stat(store.blob_path(digest)).st_mtime_ns > 2 * MTIME_SLACK_NS

            wait_listed(node, directory, ["big"], timeout=30)
            watched = Digest.parse(listed(node, directory)["big"])
            unwatched = put(os.urandom(500_000))
            wait_for(lambda: settled(watched) and settled(unwatched), timeout=5, what="the blobs to settle")
            put(os.urandom(1_200_000))  # over the 2 MiB cap: the least recently used blob that may go, goes
            assert client.http.get(f"/v1/blobs/{unwatched}").status_code == 404
            assert client.http.get(f"/v1/blobs/{watched}").status_code == 200
    finally:
        assert watcher.stop() == 0
        node.stop()


def test_a_watcher_the_node_dropped_registers_again_when_it_comes_back(node: NodeProcess, tmp_path: Path) -> None:
    """A watcher stopped (SIGSTOP) past the node's timeout is dropped; once it runs again its
    next beat is refused and it registers again and resyncs in full. With --run, a resync of
    a tree that did not change runs nothing; the next change runs once."""
    directory = tree(tmp_path)
    (directory / ".mesh.yml").write_text("steps:\n  - name: list\n    run: ls\n")
    files = [".mesh.yml", "a.txt", "b.txt"]
    watcher = WatchProcess.start(node, directory, *FAST, "--run")
    try:
        wait_listed(node, directory, files, timeout=30)
        watcher.process.send_signal(signal.SIGSTOP)
        wait_listed(node, directory, [], timeout=WATCH_TIMEOUT + SETTLE, what="a silent watcher to be dropped")
        watcher.process.send_signal(signal.SIGCONT)
        wait_listed(node, directory, files, timeout=SETTLE, what="the watcher to come back")
        assert "forgot this watcher: registering again" in watcher.stderr()
        (directory / "c.txt").write_text("a change\n")
        watcher.said("pipeline succeeded", timeout=60)
        assert watcher.stderr().count("running the pipeline") == 1, watcher.stderr()
        assert "c.txt" in watcher.stdout()
    finally:
        watcher.process.send_signal(signal.SIGCONT)
        assert watcher.stop() == 0


def test_bad_watcher_requests_get_clear_errors(node: NodeProcess) -> None:
    with NodeClient(node.url, key=load_key(node.home)) as client:

        def refused(method: str, path: str, body: object = None) -> tuple[int | None, str]:
            with pytest.raises(NodeError) as caught:
                client.request(method, path, body=body)
            return caught.value.status, str(caught.value)

        assert refused("POST", "/v1/watches", {"dir": "relative", "host": "h", "pid": 1}) == (
            400,
            "a watched directory is an absolute path of at most 4096 characters",
        )
        status, message = refused("POST", "/v1/watches/" + "0" * 20, {})
        assert status == 404 and "register again" in message
        watcher = client.request("POST", "/v1/watches", body={"dir": "/nowhere", "host": "h", "pid": 1})
        assert watcher["beat"] == pytest.approx(WATCH_TIMEOUT / 3)
        beat = f"/v1/watches/{watcher['id']}"
        assert refused("POST", beat, {"snapshot": "b3:nonsense"})[0] == 400
        status, message = refused("POST", beat, {"snapshot": str(Digest.of(b"never uploaded"))})
        assert status == 422 and "upload its blobs first" in message
        assert refused("POST", "/v1/watches/not-an-id", {})[0] == 400
        assert refused("GET", "/files?limit=x")[0] == 400
        client.request("DELETE", beat)
        assert refused("DELETE", beat)[0] == 404
