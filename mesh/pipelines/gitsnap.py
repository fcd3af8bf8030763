"""A commit of a git repository, fetched into the node's cache and snapshotted from git's objects.

A push (or a re-run) builds one commit. :func:`fetch` brings it into a bare mirror of the
repository, one per URL under ``$MESH_HOME/git/`` (a directory named by a hash of the URL
and a readable suffix: ``3f9c0a1b2c3d4e5f-widgets``), and :func:`snapshot_commit` turns its
tree into a snapshot straight from git's objects: ``git ls-tree -r -t -z --full-tree`` lists
it and ``git cat-file --batch`` streams the blobs into the store. There is no working copy
to make, walk and delete. :func:`read_file` reads one file (``.mesh.yml``) of a commit, so
the caller can parse the pipeline before anything is stored.

What a snapshot holds. It is, byte for byte, the snapshot ``mesh snapshot`` makes of a
clean checkout of the commit (the tests compare the two): mode 100644 is a file, 100755 an
executable, 120000 a symlink (the blob is its target), 040000 a directory. The commit's own
``.meshignore`` files leave paths out exactly as :func:`mesh.ignore.tree_rules` does for a
working tree (one set of rules, whether a build starts from ``mesh run`` in a checkout or
from a push). A submodule (160000, a gitlink) becomes an empty directory, as in a checkout
that did not run ``git submodule update``: the commit it names is in another repository
that this module does not fetch, and refusing would leave any repository with a
submodule unbuildable. Files are the blobs as committed: ``.gitattributes`` conversions and
filters (``eol``, ``export-subst``, a Git LFS smudge: LFS files stay pointers) are not applied,
so the equality holds for a checkout without them (git's default on Linux). A git tree has no
mtimes, so there is no times manifest: the action then sees
:data:`mesh.cas.times.FIXED_MTIME_NS` on every entry.

Cost. Each blob's store digest is remembered in the mirror (``mesh-digests.sqlite``: git's
blob id to the digest of the same bytes, checked against the store before use), so a later
commit reads from git only the blobs that changed. Measured on a commit of 2,261 files (55 MB,
a copy of CPython's stdlib) on 2 loaded cores, median of 5: the first snapshot of it 830 ms
(git's output is read in 250 ms; the rest is storing 2,206 blobs on two threads), the same
commit or a commit changing a few files again 30 ms; ``git archive | tar -x`` alone 340 ms,
and with ``mesh snapshot`` of the result 560 ms cold (its forked workers store faster than
these threads) and 560 ms warm. A working copy would also need a directory per build and its
removal; this needs neither.

Hostile input. Only the transports https, http, ssh (also ``user@host:path``), git and
file (also a plain path) are taken; ``ext::`` (which runs a command) and every other
``transport::address`` form are refused (:class:`InvalidGitUrl`), and git itself is told
the same (``protocol.allow=never`` but for those five), which covers redirects too. A
commit id must be 40 (SHA-1) or 64 (SHA-256) hex digits (:class:`InvalidCommit`). git
never prompts (``GIT_TERMINAL_PROMPT=0``, ssh in batch mode), uses no credential helper and
no system or user configuration, and is killed (with what it started) after a timeout.
Every failure of git is a :class:`GitError` that ends with the tail of git's stderr.

Fetches of one repository are serialized by an exclusive ``flock`` on a lock file next to
its mirror, across threads and processes (a webhook's build and a re-run may fetch at
once). Everything here blocks: the node calls it from a worker thread
(``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

from mesh.cas.digest import Digest
from mesh.cas.hasher import hash_bytes
from mesh.cas.snapshot import DEFAULT_WORKERS
from mesh.cas.store import LocalStore
from mesh.cas.tree import MAX_LINK_TARGET, Entry, Kind, check_name, encode_node
from mesh.errors import CommitNotFound, GitError, InvalidCommit, InvalidDigest, InvalidGitUrl, InvalidTree
from mesh.ignore import FILE_NAME, MAX_FILE_BYTES, IgnoreRules

#: Transports taken, by URL scheme (``user@host:path`` is ssh, a plain path is file).
SCHEMES = ("https", "http", "ssh", "git", "file")
#: Seconds a fetch may take before git (and its ssh or https helper) is killed.
FETCH_TIMEOUT = 600.0
#: Seconds any other git command (reading the mirror) may take.
READ_TIMEOUT = 300.0
#: Bytes of git's stderr kept in an error's message.
STDERR_TAIL = 2000
#: Blobs at least this large are streamed into the store in chunks, not held whole.
STREAM_THRESHOLD = 8 << 20
#: Bytes of blobs read from git and not yet stored, at most (memory held by a snapshot).
IN_FLIGHT = 64 << 20
_CHUNK = 1 << 20

_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP = re.compile(r"[^/:]+:")  # host:path or user@host:path, without a scheme
_SUFFIX = re.compile(r"[^A-Za-z0-9._-]+")

_GIT_CONFIG = [
    "-c",
    "protocol.allow=never",
    *(arg for scheme in SCHEMES for arg in ("-c", f"protocol.{scheme}.allow=always")),
    "-c",
    "credential.helper=",
    "-c",
    "core.askPass=",
    "-c",
    "gc.auto=0",
]

_MODES = {b"100644": Kind.FILE, b"100755": Kind.EXECUTABLE, b"100664": Kind.FILE, b"120000": Kind.SYMLINK}


def check_url(url: str) -> str:
    """``url`` if its transport is one of :data:`SCHEMES`; else InvalidGitUrl saying why."""
    if not url or url.startswith("-") or any(c in url for c in "\0\n\r"):
        raise InvalidGitUrl(f"{url!r} is not a git repository URL")
    if "::" in url.split("/", 1)[0] or url.startswith("ext::"):
        raise InvalidGitUrl(f"{url!r}: git's transport::address form is refused; use one of {', '.join(SCHEMES)}")
    m = _SCHEME.match(url)
    if m is not None:
        if m.group(1).lower() not in SCHEMES:
            raise InvalidGitUrl(f"{url!r}: transport {m.group(1)!r} is refused; use one of {', '.join(SCHEMES)}")
    return url


def check_commit(commit: str) -> str:
    """``commit`` if it is a full commit id (40 or 64 lowercase hex digits); else InvalidCommit."""
    if not isinstance(commit, str) or _COMMIT_ID.fullmatch(commit) is None:
        raise InvalidCommit(f"{commit!r} is not a commit id (40 or 64 hex digits)")
    return commit


def mirror_path(url: str, cache_dir: str | os.PathLike[str]) -> str:
    """Where the mirror of ``url`` lives in ``cache_dir``: a hash of the URL and a readable suffix."""
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    tail = tail.removesuffix(".git")
    suffix = _SUFFIX.sub("_", tail)[:40].strip("._") or "repo"
    return os.path.join(os.fspath(cache_dir), f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{suffix}")


def fetch(
    url: str,
    commit: str,
    cache_dir: str | os.PathLike[str],
    *,
    ref: str | None = None,
    timeout: float = FETCH_TIMEOUT,
) -> str:
    """Bring ``commit`` of the repository at ``url`` into its mirror in ``cache_dir``; return the mirror's path.

    A commit the mirror holds already is not fetched again (a commit never changes). Else
    the commit is fetched by id, and, where the server does not hand out commits by id,
    ``ref`` (the pushed ref) or else every branch. The commit is then kept by a ref of its
    own (``refs/mesh/<id>``), so that a re-run finds it. Each ``git fetch`` is stopped, with
    what it started (ssh, a remote helper), after ``timeout`` seconds. Raises InvalidGitUrl, InvalidCommit,
    CommitNotFound (the repository does not have it), GitError (git failed: its stderr's tail).
    """
    check_url(url)
    check_commit(commit)
    if ref is not None and (ref.startswith("-") or not ref.startswith("refs/") or any(c in ref for c in " \0\n:")):
        raise GitError(f"{ref!r} is not a ref name (refs/...)")
    os.makedirs(cache_dir, exist_ok=True)
    mirror = mirror_path(url, cache_dir)
    with _locked(mirror + ".lock"):
        if not os.path.isdir(mirror):
            _create(url, mirror)
        if _has_commit(mirror, commit):
            return mirror
        attempts = [[f"+{commit}:refs/mesh/{commit}"]]
        attempts.append([f"+{ref}:refs/mesh/ref"] if ref is not None else ["+refs/heads/*:refs/heads/*"])
        for refspecs in attempts:
            try:
                _git(mirror, ["fetch", "--no-tags", "--no-write-fetch-head", "origin", *refspecs], timeout)
            except GitError as exc:
                if not _is_missing_object(str(exc)):
                    raise  # unreachable, refused, too slow: another refspec would fare no better
                continue
            if _has_commit(mirror, commit):
                _git(mirror, ["update-ref", f"refs/mesh/{commit}", commit], READ_TIMEOUT)
                return mirror
        raise CommitNotFound(f"{url} has no commit {commit}" + (f" (fetched {ref})" if ref else ""))


def read_file(mirror: str, commit: str, path: str) -> bytes | None:
    """The bytes of file ``path`` of ``commit`` (``.mesh.yml``, say), or None if the commit has no file there.

    A symlink, directory or submodule at ``path`` counts as no file. Raises InvalidCommit,
    CommitNotFound, GitError.
    """
    check_commit(commit)
    _require_commit(mirror, commit)
    out = _git(mirror, ["ls-tree", "-z", "--full-tree", commit, "--", path.strip("/")], READ_TIMEOUT)
    if not out:
        return None
    meta, _, _name = out.rstrip(b"\0").partition(b"\t")
    mode, kind, oid = meta.split(b" ")
    if kind != b"blob" or mode not in (b"100644", b"100755", b"100664"):
        return None
    return _git(mirror, ["cat-file", "blob", oid.decode()], READ_TIMEOUT)


def snapshot_commit(store: LocalStore, mirror: str, commit: str) -> tuple[Digest, Digest | None]:
    """Store the tree of ``commit`` (which the mirror must hold) and return ``(snapshot id, None)``.

    The second item is the times manifest's digest: None, as a git tree has no mtimes (see
    the module's docstring). Raises InvalidCommit, CommitNotFound, GitError, and
    InvalidTree for an entry no snapshot can hold (a name over 255 bytes, an empty link).
    """
    check_commit(commit)
    _require_commit(mirror, commit)
    listing = _git(mirror, ["ls-tree", "-r", "-t", "-z", "--full-tree", commit], READ_TIMEOUT)
    root = _Dir()
    dirs: dict[bytes, _Dir] = {b"": root}
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, _kind, oid = meta.split(b" ")
        parent, _, name = path.rpartition(b"/")
        here = dirs[parent]
        if mode == b"040000" or mode == b"160000":  # a submodule: an empty directory (see above)
            dirs[path] = here.dirs[name] = _Dir()
        elif mode in _MODES:
            here.blobs[name] = (_MODES[mode], oid)
        else:
            raise GitError(
                f"{os.fsdecode(path)} in commit {commit} has mode {mode.decode()}, which mesh cannot snapshot"
            )

    rules = IgnoreRules(_rule_files(mirror, dirs))
    kept: list[tuple[bytes, _Dir]] = []
    _keep(root, b"", rules, kept)
    blobs = [blob for _, d in kept for blob in d.blobs.values()]
    files = {oid for kind, oid in blobs if kind != Kind.SYMLINK}
    known = _known_digests(store, mirror, files)
    contents = _store_blobs(store, mirror, files - known.keys(), {oid for kind, oid in blobs if kind == Kind.SYMLINK})
    _remember_digests(mirror, contents.files)
    contents.files.update(known)
    written_before = store.statistics().blobs_written
    for _rel, d in reversed(kept):  # children before their parents
        entries = [Entry(check_name(name), Kind.DIRECTORY, sub.digest) for name, sub in d.dirs.items()]
        for name, (kind, oid) in d.blobs.items():
            check_name(name)
            if kind == Kind.SYMLINK:
                target = contents.links[oid]
                if not target or len(target) > MAX_LINK_TARGET or b"\0" in target:
                    raise InvalidTree(f"symlink {os.fsdecode(name)!r} of commit {commit} has an invalid target")
                entries.append(Entry(name, kind, None, target))
            else:
                entries.append(Entry(name, kind, contents.files[oid]))
        entries.sort(key=lambda e: e.name)
        data = encode_node(entries)
        d.digest = hash_bytes(data)
        store.put(data)
    if store.statistics().blobs_written != written_before or contents.written:
        store.sync()
    assert root.digest is not None
    return root.digest, None


# -- the tree ------------------------------------------------------------------------


@dataclass(slots=True)
class _Dir:
    """One directory of the commit: its subdirectories and its blobs by name."""

    dirs: dict[bytes, _Dir] = field(default_factory=dict)
    blobs: dict[bytes, tuple[Kind, bytes]] = field(default_factory=dict)
    digest: Digest | None = None


def _rule_files(mirror: str, dirs: dict[bytes, _Dir]) -> dict[bytes, bytes]:
    """The ``.meshignore`` files of the commit (regular files only, as IgnoreRules.load reads them).

    Files inside directories the rules leave out are read too but never consulted: the
    walk of :func:`_keep` does not go below a left-out directory.
    """
    found = {
        rel: d.blobs[FILE_NAME][1]
        for rel, d in dirs.items()
        if d.blobs.get(FILE_NAME, (Kind.SYMLINK,))[0] != Kind.SYMLINK
    }
    if not found:
        return {}
    data = _cat_blobs(mirror, sorted(set(found.values())))
    files = {}
    for rel, oid in found.items():
        if len(data[oid]) > MAX_FILE_BYTES:
            raise GitError(
                f"{os.fsdecode(rel + b'/' if rel else b'')}.meshignore is more than the "
                f"{MAX_FILE_BYTES} bytes a rules file may hold"
            )
        files[rel] = data[oid]
    return files


def _keep(d: _Dir, rel: bytes, rules: IgnoreRules, kept: list[tuple[bytes, _Dir]]) -> None:
    """Drop what the rules leave out of ``d`` and below; list the directories kept, parents first."""
    kept.append((rel, d))
    for name in list(d.blobs):
        if rules.matches(rel + b"/" + name if rel else name, False):
            del d.blobs[name]
    for name, sub in list(d.dirs.items()):
        child = rel + b"/" + name if rel else name
        if rules.matches(child, True):
            del d.dirs[name]
        else:
            _keep(sub, child, rules, kept)


# -- blobs ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Contents:
    files: dict[bytes, Digest] = field(default_factory=dict)
    links: dict[bytes, bytes] = field(default_factory=dict)
    written: bool = False


def _store_blobs(store: LocalStore, mirror: str, files: set[bytes], links: set[bytes]) -> _Contents:
    """Stream the blobs ``files`` (into the store) and ``links`` (symlink targets, kept in
    memory) from one ``git cat-file --batch``.

    The stores run on a thread pool while this thread reads git's output (BLAKE3 and the
    writes release the GIL), with at most :data:`IN_FLIGHT` bytes read and not yet stored.
    """
    out = _Contents()
    before = store.statistics().blobs_written
    pending: deque[tuple[bytes, int, Future[Digest]]] = deque()
    held = 0
    with ThreadPoolExecutor(max_workers=DEFAULT_WORKERS) as pool:
        for oid, size, chunks in _batch(mirror, sorted(files | links)):
            if oid not in files:
                data = b"".join(chunks)
                out.links[oid] = data if size <= MAX_LINK_TARGET else b""
            elif size < STREAM_THRESHOLD:
                data = b"".join(chunks)
                if oid in links:
                    out.links[oid] = data if size <= MAX_LINK_TARGET else b""
                pending.append((oid, size, pool.submit(store.put, data)))
                held += size
                while held > IN_FLIGHT:
                    done, done_size, future = pending.popleft()
                    out.files[done] = future.result()
                    held -= done_size
            else:
                with store.writer() as writer:
                    for chunk in chunks:
                        writer.write(chunk)
                    out.files[oid] = writer.commit()
        for oid, _, future in pending:
            out.files[oid] = future.result()
    out.written = store.statistics().blobs_written != before
    return out


#: The file in a mirror that maps git's blob ids to the store's digests of the same bytes.
DIGESTS_FILE = "mesh-digests.sqlite"


def _digests_db(mirror: str) -> sqlite3.Connection:
    db = sqlite3.connect(os.path.join(mirror, DIGESTS_FILE), timeout=30, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")  # a cache: a map lost in a crash is made again
    db.execute("CREATE TABLE IF NOT EXISTS blobs (oid BLOB PRIMARY KEY, hash BLOB NOT NULL, size INTEGER NOT NULL)")
    return db


def _known_digests(store: LocalStore, mirror: str, oids: set[bytes]) -> dict[bytes, Digest]:
    """The digests of the blobs ``oids`` that an earlier snapshot stored and the store still holds.

    A push changes a few files: the rest need not be read from git and hashed again (measured
    on 2,261 files of 55 MB, in the module's docstring). Any failure to read the map only
    means reading the blobs.
    """
    try:
        with contextlib.closing(_digests_db(mirror)) as db:
            rows = db.execute("SELECT oid, hash, size FROM blobs").fetchall()
    except sqlite3.Error:
        return {}
    known: dict[bytes, Digest] = {}
    for oid, hash_, size in rows:
        if oid in oids:
            with contextlib.suppress(InvalidDigest, TypeError):
                known[oid] = Digest(hash_, size)
    missing = set(store.find_missing(known.values()))
    return {oid: d for oid, d in known.items() if d not in missing}


def _remember_digests(mirror: str, digests: dict[bytes, Digest]) -> None:
    """Add ``digests`` (git blob id to store digest) to the mirror's map (a cache: failures pass)."""
    if not digests:
        return
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_digests_db(mirror)) as db:
        db.execute("BEGIN")  # one transaction: one write, not one per blob (2,261 took 20 s)
        db.executemany(
            "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", [(oid, d.hash, d.size) for oid, d in digests.items()]
        )
        db.execute("COMMIT")


def _cat_blobs(mirror: str, oids: list[bytes]) -> dict[bytes, bytes]:
    return {oid: b"".join(chunks) for oid, _, chunks in _batch(mirror, oids)}


def _batch(mirror: str, oids: list[bytes]) -> Iterator[tuple[bytes, int, Iterator[bytes]]]:
    """``(oid, size, chunks)`` of each blob, in order, from one ``git cat-file --batch``.

    The ids go in through a temporary file, not a pipe, so that git never waits on a full
    stdout while this waits to write more ids. Each blob's chunks must be read before
    the next item is asked for.
    """
    if not oids:
        return
    with tempfile.TemporaryFile() as ids:
        ids.write(b"".join(oid + b"\n" for oid in oids))
        ids.seek(0)
        proc = subprocess.Popen(
            ["git", *_GIT_CONFIG, "-C", mirror, "cat-file", "--batch"],
            bufsize=_CHUNK,
            stdin=ids,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            for oid in oids:
                header = proc.stdout.readline()
                parts = header.split()
                if len(parts) != 3 or parts[0] != oid or parts[1] != b"blob":
                    raise GitError(f"git cat-file gave {header[:200]!r} for blob {oid.decode()}")
                size = int(parts[2])
                yield oid, size, _chunks(proc.stdout, size)
                if proc.stdout.read(1) != b"\n":
                    raise GitError(f"git cat-file output broke off after blob {oid.decode()}")
        finally:
            _end(proc)


def _chunks(stream: IO[bytes], size: int) -> Iterator[bytes]:
    read = stream.read
    left = size
    while left:
        chunk = read(min(left, _CHUNK))
        if not chunk:
            raise GitError("git cat-file output broke off inside a blob")
        left -= len(chunk)
        yield chunk


def _end(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# -- running git ---------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_SSH_COMMAND="ssh -o BatchMode=yes",
        GIT_ASKPASS="",
        SSH_ASKPASS="",
        LC_ALL="C",
    )
    return env


def _git(mirror: str, args: list[str], timeout: float) -> bytes:
    """Run ``git -C mirror ARGS``; its stdout, or GitError with the tail of its stderr."""
    proc = subprocess.Popen(
        ["git", *_GIT_CONFIG, "-C", mirror, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end(proc)
        raise GitError(f"git {args[0]} took more than {timeout:g} s and was stopped") from None
    except BaseException:
        _end(proc)
        raise
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip()[-STDERR_TAIL:]
        raise GitError(f"git {args[0]} failed (exit {proc.returncode}): {tail}")
    return out


def _create(url: str, mirror: str) -> None:
    """A new bare mirror of ``url`` at ``mirror``, made aside and renamed into place."""
    temp = tempfile.mkdtemp(prefix=os.path.basename(mirror) + ".new-", dir=os.path.dirname(mirror))
    try:
        _git(temp, ["init", "--quiet", "--bare"], READ_TIMEOUT)
        _git(temp, ["config", "remote.origin.url", url], READ_TIMEOUT)
        os.rename(temp, mirror)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _has_commit(mirror: str, commit: str) -> bool:
    try:
        _git(mirror, ["cat-file", "-e", f"{commit}^{{commit}}"], READ_TIMEOUT)
    except GitError:
        return False
    return True


def _require_commit(mirror: str, commit: str) -> None:
    if not os.path.isdir(mirror):
        raise GitError(f"{mirror} is not a repository mirror (fetch first)")
    if not _has_commit(mirror, commit):
        raise CommitNotFound(f"the mirror {mirror} holds no commit {commit} (fetch it first)")


def _is_missing_object(message: str) -> bool:
    """Whether git's error says the server has no such object (rather than a failure to reach it)."""
    return any(
        s in message
        for s in (
            "not our ref",
            "couldn't find remote ref",
            "no such remote ref",
            "upload-pack: not our",
            "unadvertised object",
        )
    )


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (made if missing): one fetch of a repository at a time."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
