"""mesh.pipelines.gitsnap: a commit fetched into the node's mirror and snapshotted from git's objects,
against real git repositories in temporary directories (file:// and path URLs, no network)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest, walk
from mesh.cas.store import LocalStore
from mesh.cas.tree import Kind
from mesh.errors import CommitNotFound, GitError, InvalidCommit, InvalidGitUrl
from mesh.ignore import tree_rules
from mesh.pipelines import gitsnap
from tests.nodeutil import wait_for
from tests.treeutil import mesh

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env).stdout.decode()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return path


def fill(repo: Path) -> None:
    """Files, an executable, symlinks, nested directories, an empty file, a non-UTF-8 name, .meshignore."""
    (repo / "README").write_text("hello\n")
    (repo / "empty").write_bytes(b"")
    (repo / "build.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "build.sh").chmod(0o755)
    (repo / "a" / "b" / "c").mkdir(parents=True)
    (repo / "a" / "b" / "c" / "deep.txt").write_text("deep\n")
    (repo / "a" / "same.txt").write_text("hello\n")  # same content as README: one blob
    os.symlink("b/c/deep.txt", repo / "a" / "link")
    os.symlink("/nowhere/at/all", repo / "dangling")
    (repo / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name\n")
    (repo / "big.bin").write_bytes(os.urandom(gitsnap.STREAM_THRESHOLD + 12345))
    (repo / ".mesh.yml").write_text("steps:\n  - name: build\n    run: ./build.sh\n")
    (repo / ".meshignore").write_text("*.log\nsecret/\n")
    (repo / "debug.log").write_text("left out by .meshignore\n")
    (repo / "secret").mkdir()
    (repo / "secret" / "key").write_text("left out too\n")
    (repo / "a" / ".meshignore").write_text("!keep.log\n")
    (repo / "a" / "keep.log").write_text("kept again by a/.meshignore\n")


def checkout_snapshot(store: LocalStore, repo: Path, commit: str, where: Path, home: Path) -> Digest:
    """What ``mesh snapshot`` makes of a clean checkout of ``commit`` (a worktree of its own)."""
    git(repo, "worktree", "add", "-q", "--detach", str(where), commit)
    try:
        done = mesh("snapshot", str(where), check=True)
        digest = Digest.parse(done.stdout.decode().strip())
        # The same, in process, to be sure the CLI ran with the rules compared against.
        assert ingest(store, where, ignore=tree_rules(where, home=home).ignore) == digest
        return digest
    finally:
        git(repo, "worktree", "remove", "--force", str(where))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def test_a_commit_snapshot_equals_the_snapshot_of_its_clean_checkout(
    repo: Path, store: LocalStore, home: Path, tmp_path: Path
) -> None:
    fill(repo)
    commit = commit_all(repo, "first")
    mirror = gitsnap.fetch(f"file://{repo}", commit, home / "git")

    root, times = gitsnap.snapshot_commit(store, mirror, commit)

    assert times is None
    assert root == checkout_snapshot(store, repo, commit, tmp_path / "wt", home)
    entries = {path: e for path, e in walk(store, root)}
    assert entries[b"build.sh"].kind == Kind.EXECUTABLE
    assert entries[b"a/link"].kind == Kind.SYMLINK and entries[b"a/link"].link == b"b/c/deep.txt"
    assert entries[b"dangling"].link == b"/nowhere/at/all"
    assert entries[b"a/b/c/deep.txt"].kind == Kind.FILE
    assert entries[b"empty"].size == 0
    assert b"caf\xe9.txt" in entries
    assert store.get(entries[b"big.bin"].blob) == (repo / "big.bin").read_bytes()
    assert b"debug.log" not in entries and b"secret" not in entries
    assert b"a/keep.log" in entries


def test_the_mirror_lives_under_the_cache_named_by_a_hash_and_a_readable_suffix(repo: Path, home: Path) -> None:
    commit = commit_all(repo, "first")
    mirror = gitsnap.fetch(str(repo), commit, home / "git")
    name = os.path.basename(mirror)
    assert os.path.dirname(mirror) == str(home / "git")
    assert name.endswith("-repo") and len(name.split("-")[0]) == 16
    assert gitsnap.mirror_path(f"file://{repo}", home / "git") != mirror  # another URL, another mirror


def test_a_second_fetch_of_a_new_commit_reuses_the_mirror(repo: Path, store: LocalStore, home: Path) -> None:
    (repo / "f").write_text("one\n")
    first = commit_all(repo, "first")
    mirror = gitsnap.fetch(f"file://{repo}", first, home / "git")
    marker = Path(mirror) / "mesh-test-marker"
    marker.write_text("still the same mirror")
    (repo / "f").write_text("two\n")
    second = commit_all(repo, "second")

    assert gitsnap.fetch(f"file://{repo}", second, home / "git") == mirror

    assert marker.exists()
    assert set(os.listdir(home / "git")) == {os.path.basename(mirror), os.path.basename(mirror) + ".lock"}
    one, _ = gitsnap.snapshot_commit(store, mirror, first)
    two, _ = gitsnap.snapshot_commit(store, mirror, second)
    assert one != two
    assert gitsnap.read_file(mirror, second, "f") == b"two\n"
    # Both commits are kept by refs of their own, for re-runs.
    refs = git(Path(mirror), "for-each-ref", "--format=%(refname)", "refs/mesh/")
    assert f"refs/mesh/{first}" in refs and f"refs/mesh/{second}" in refs


def test_a_commit_the_server_does_not_give_by_id_is_fetched_through_the_pushed_ref(repo: Path, home: Path) -> None:
    first = commit_all(repo, "first")
    git(repo, "config", "uploadpack.allowAnySHA1InWant", "false")
    git(repo, "config", "protocol.version", "0")
    url = f"file://{repo}"
    mirror = gitsnap.fetch(url, first, home / "git")
    second = commit_all(repo, "second")
    commit_all(repo, "third")  # the branch's tip now: ``second`` is advertised by no ref
    # Protocol v0 is asked for by the mirror too, where wants must be advertised tips.
    git(Path(mirror), "config", "protocol.version", "0")
    assert gitsnap.fetch(url, second, home / "git", ref="refs/heads/main") == mirror
    assert gitsnap.read_file(mirror, second, ".mesh.yml") is None
    # A commit that no branch holds any more cannot be had either way.
    git(repo, "checkout", "-q", "-b", "gone")
    gone = commit_all(repo, "on a branch deleted since")
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-q", "-D", "gone")
    with pytest.raises(CommitNotFound, match=f"has no commit {gone}"):
        gitsnap.fetch(url, gone, home / "git")


def test_two_concurrent_fetches_of_one_repository_are_serialized(repo: Path, home: Path, tmp_path: Path) -> None:
    first = commit_all(repo, "first")
    url = f"file://{repo}"
    mirror = gitsnap.fetch(url, first, home / "git")
    commits = [commit_all(repo, "second"), commit_all(repo, "third")]
    # Every fetch runs this upload-pack: it logs its start and end around a wide window.
    log = tmp_path / "uploads.log"
    script = tmp_path / "upload-pack"
    script.write_text(f'#!/bin/sh\necho start >> {log}\nsleep 0.5\necho end >> {log}\nexec git-upload-pack "$@"\n')
    script.chmod(0o755)
    git(Path(mirror), "config", "remote.origin.uploadpack", str(script))
    errors: list[BaseException] = []

    def run(commit: str) -> None:
        try:
            gitsnap.fetch(url, commit, home / "git")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in commits]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    lines = log.read_text().split()
    assert lines == ["start", "end"] * (len(lines) // 2) and len(lines) >= 2
    for c in commits:
        assert gitsnap.read_file(mirror, c, "nothing") is None  # both commits are there


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "fd::3",
        "foo::https://example.com/r.git",
        "ftp://example.com/r.git",
        "-uhttps://example.com",
        "",
    ],
)
def test_a_refused_transport_is_a_clear_error(url: str, home: Path) -> None:
    with pytest.raises(InvalidGitUrl, match="refused|not a git repository URL"):
        gitsnap.fetch(url, "0" * 40, home / "git")
    assert not (home / "git").exists()


@pytest.mark.parametrize("url", ["https://h/r.git", "ssh://h/r", "git@h:r.git", "git://h/r", "file:///r", "/r"])
def test_the_five_transports_are_taken(url: str) -> None:
    assert gitsnap.check_url(url) == url


@pytest.mark.parametrize("commit", ["HEAD", "main", "abc123", "0" * 39, "G" * 40, "A" * 40, "0" * 41, "--all"])
def test_a_bad_commit_id_is_a_clear_error(commit: str, repo: Path, home: Path) -> None:
    with pytest.raises(InvalidCommit, match="is not a commit id"):
        gitsnap.fetch(str(repo), commit, home / "git")


def test_a_commit_the_repository_does_not_have_is_a_clear_error(repo: Path, home: Path, store: LocalStore) -> None:
    commit_all(repo, "first")
    with pytest.raises(CommitNotFound, match="has no commit 1234567"):
        gitsnap.fetch(str(repo), "1234567" + "0" * 33, home / "git")
    mirror = gitsnap.mirror_path(str(repo), home / "git")
    with pytest.raises(CommitNotFound, match="fetch it first"):
        gitsnap.snapshot_commit(store, mirror, "1234567" + "0" * 33)


def test_a_repository_that_does_not_exist_fails_with_gits_own_words(tmp_path: Path, home: Path) -> None:
    with pytest.raises(GitError, match="does not appear to be a git repository") as info:
        gitsnap.fetch(str(tmp_path / "nothing"), "1" * 40, home / "git")
    assert not isinstance(info.value, CommitNotFound)


def test_a_submodule_is_an_empty_directory_as_in_a_checkout(
    repo: Path, store: LocalStore, home: Path, tmp_path: Path
) -> None:
    sub = make_repo(tmp_path / "sub")
    (sub / "inside").write_text("not fetched\n")
    commit_all(sub, "sub")
    (repo / "top").write_text("top\n")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "vendor/sub")
    commit = commit_all(repo, "with a submodule")
    mirror = gitsnap.fetch(str(repo), commit, home / "git")

    root, _ = gitsnap.snapshot_commit(store, mirror, commit)

    entries = dict(walk(store, root))
    assert entries[b"vendor/sub"].kind == Kind.DIRECTORY
    assert not [p for p in entries if p.startswith(b"vendor/sub/")]
    assert root == checkout_snapshot(store, repo, commit, tmp_path / "wt", home)


def test_read_file_gives_the_pipeline_file_of_a_commit(repo: Path, home: Path) -> None:
    (repo / ".mesh.yml").write_text("steps: []\n")
    (repo / "dir").mkdir()
    (repo / "dir" / "x").write_text("x")
    os.symlink(".mesh.yml", repo / "alias.yml")
    commit = commit_all(repo, "first")
    mirror = gitsnap.fetch(str(repo), commit, home / "git")
    assert gitsnap.read_file(mirror, commit, ".mesh.yml") == b"steps: []\n"
    assert gitsnap.read_file(mirror, commit, "/dir/x") == b"x"
    assert gitsnap.read_file(mirror, commit, "missing.yml") is None
    assert gitsnap.read_file(mirror, commit, "dir") is None
    assert gitsnap.read_file(mirror, commit, "alias.yml") is None


def test_an_executable_mode_is_kept_whatever_the_checkouts_umask(repo: Path, store: LocalStore, home: Path) -> None:
    (repo / "tool").write_text("#!/bin/sh\n")
    git(repo, "add", "tool")
    git(repo, "update-index", "--chmod=+x", "tool")
    git(repo, "commit", "-q", "-m", "x")  # not add -A: that would take the work tree's mode again
    commit = git(repo, "rev-parse", "HEAD").strip()
    mirror = gitsnap.fetch(str(repo), commit, home / "git")
    root, _ = gitsnap.snapshot_commit(store, mirror, commit)
    assert dict(walk(store, root))[b"tool"].kind == Kind.EXECUTABLE
    assert stat.S_IMODE((repo / "tool").stat().st_mode) & 0o100 == 0  # the work tree's file was not


def test_blobs_an_earlier_snapshot_stored_are_not_read_again_unless_the_store_lost_them(
    repo: Path, store: LocalStore, home: Path, tmp_path: Path
) -> None:
    fill(repo)
    commit = commit_all(repo, "first")
    mirror = gitsnap.fetch(str(repo), commit, home / "git")
    root, _ = gitsnap.snapshot_commit(store, mirror, commit)
    (repo / "README").write_text("changed\n")
    second = commit_all(repo, "second")
    gitsnap.fetch(str(repo), second, home / "git")
    before = store.statistics().blobs_already_present

    gitsnap.snapshot_commit(store, mirror, second)

    # No file was offered to the store again: only the directory nodes that did not change
    # (a, a/b, a/b/c) were, as every node is.
    assert store.statistics().blobs_already_present == before + 3
    # Another store (or one whose blobs were evicted) gets every blob again from git.
    with LocalStore(tmp_path / "other") as other:
        assert gitsnap.snapshot_commit(other, mirror, commit)[0] == root
        for _, entry in walk(other, root):
            if entry.digest is not None:
                assert other.has(entry.digest)


def test_a_fetch_that_hangs_is_stopped_with_what_it_started(repo: Path, home: Path, tmp_path: Path) -> None:
    first = commit_all(repo, "first")
    url = f"file://{repo}"
    mirror = gitsnap.fetch(url, first, home / "git")
    second = commit_all(repo, "second")
    pidfile = tmp_path / "upload-pack.pid"
    script = tmp_path / "upload-pack"
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 300\n")
    script.chmod(0o755)
    git(Path(mirror), "config", "remote.origin.uploadpack", str(script))

    with pytest.raises(GitError, match="took more than 1 s and was stopped"):
        gitsnap.fetch(url, second, home / "git", timeout=1)

    pid = int(pidfile.read_text())
    wait_for(lambda: not _alive(pid), timeout=10, what="the hung upload-pack to be killed")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
