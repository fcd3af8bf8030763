"""The exception tree of mesh.

Every error that mesh raises on purpose derives from :class:`MeshError`, so callers
(the CLI, the HTTP API) can translate them in one place into an exit code or a
status with a message a person can act on. Errors from the OS or from libraries are
translated at the boundary of the module that meets them. Where trio's nurseries wrap
errors in exception groups, :func:`unwrap` finds the error again at that boundary.
A background loop of the node that meets an unexpected error handling one item (a task,
a peer, a message) ends that item only, and logs it in one line (:func:`describe`).
Every MeshError's message, and every :func:`describe`, is text that CBOR, JSON and SQLite
take (mesh.text): a file name in it that is not UTF-8 is written with escapes.

::

    MeshError
    ├── UsageError                 bad arguments from a person (CLI exit code 2)
    │   └── PipelineError          a .mesh.yml that breaks the pipeline rules (names its line; HTTP 422)
    ├── ConfigError                mesh.toml or the mesh key is unreadable or malformed (CLI exit code 1)
    ├── InvalidDigest (ValueError) a digest's text or fields are malformed
    ├── InvalidUrl (ValueError)    a node's URL or a request's host is malformed (mesh.urls)
    ├── CodecError (ValueError)    bytes that are not valid canonical CBOR of the schema
    │   ├── InvalidTree            a directory node that breaks the snapshot rules
    │   └── InvalidTimes           a times manifest (mesh.cas.times) that breaks its rules
    ├── DiskFull                   a filesystem mesh writes to is full (ENOSPC, EDQUOT); HTTP 507
    │   ├── StoreFull              ... the store's (also a StoreError)
    │   │   └── StoreCapReached    ... or the store is at its cap and eviction cannot make room
    │   └── StateFull              ... the state database's (also a StateError)
    ├── StoreError                 the content-addressed store failed
    │   ├── BlobNotFound           the store does not hold the blob (decorators branch on it)
    │   │   └── BlobDamaged        ... because its file was damaged on disk: now in quarantine
    │   │                          (also a DigestMismatch)
    │   ├── DigestMismatch         bytes do not hash to the digest they claim
    │   └── StoreFull              (above, with StoreCapReached)
    ├── StateError                 the node's state database failed, or holds what this version
    │   │                          cannot read (mesh.sched.statedb translates SQLite's errors)
    │   └── StateFull              (above)
    ├── SnapshotError              a tree could not be ingested or checked out
    │   ├── UnsupportedFile        ingest met FIFOs, sockets or devices (named all at once)
    │   ├── CheckoutConflict       checkout found something in the way (never written through)
    │   ├── PathNotFound           a path does not exist inside a snapshot
    │   ├── TreeChanged            a file changed between hashing and uploading (snapshot again)
    │   └── OverlayConflict        two layers of a snapshot overlay write the same path (mesh.cas.overlay)
    ├── InvalidJob (ValueError)    a job submission breaks the job rules (names, graph, fields)
    │   ├── InputMissing           its input snapshot (or stdin) is on neither this node nor a live peer
    │   └── RerunRefused           a re-run that cannot be made: an unknown task, or one whose inputs
    │                              are not there (mesh.sched.rerun; HTTP 409)
    ├── JobNotFound                no job has the id asked for (never here, or finished and forgotten:
    │                              mesh.sched.retention)
    ├── InvalidCompile (ValueError) a mesh cc request the node's compile service cannot take
    │                              (mesh.cc.service; the wrapper then compiles locally)
    ├── HookError                  a forge's webhook delivery cannot be taken (mesh.pipelines.hooks)
    │   ├── HookUnauthorized       its signature or token is missing or wrong, or the project has no
    │   │                          webhook secret (HTTP 401)
    │   └── InvalidHook (ValueError) it names no event, or its body is not the JSON it should be (HTTP 400)
    │       └── HookTooLarge       its body is over the size limit (HTTP 413)
    ├── GitError                   git failed to fetch or read a repository (mesh.pipelines.gitsnap;
    │   │                          the message ends with git's stderr; HTTP 502 at the hook)
    │   ├── InvalidGitUrl (ValueError) a repository URL of a refused transport (ext::, ...)
    │   ├── InvalidCommit (ValueError) a commit id that is not 40 or 64 hex digits
    │   └── CommitNotFound         the repository (or the node's mirror of it) has no such commit (HTTP 422)
    ├── ProjectError               a project or build request cannot be done (mesh.pipelines.projects)
    │   ├── ProjectRefused (ValueError) a bad name, URL, branch glob, secret or trigger (HTTP 400)
    │   ├── ProjectNotFound        no such project on this node, or no such build of it (HTTP 404)
    │   └── ProjectExists          a project of that name exists already (HTTP 409)
    ├── WatchError                 a watcher's request cannot be done (mesh.watch.registry)
    │   ├── WatchConflict          another live watcher claims that directory on the node (HTTP 409)
    │   └── WatchNotFound          the node holds no such watcher (it timed out or the node
    │                              restarted: the watcher registers again; HTTP 404)
    ├── NoFreeSlot                 a peer offered a task and this node has no free slot (HTTP 409)
    ├── NodeBusy                   another node already runs on this $MESH_HOME
    ├── BackgroundNodeError        the background node of mesh exec could not start or stop
    ├── NotificationFailed         one attempt at a build's notification failed (retried, then
    │                              recorded on the build: mesh.pipelines.notify never raises it)
    ├── NodeError                  a node answered a client's request with an error
    │   ├── NodeUnreachable        no node answers at the address (connection refused, timeout)
    │   ├── NodeLost               the connection broke while the node answered (restart, network)
    │   └── PeerDeclined           a peer has no room for an offered task (offer it elsewhere)
    └── ExecError                  this node could not run a task (not the task's own failure)
        ├── UnknownExecutor        the action asks for an executor this node does not have
        ├── SpawnFailed            the command could not be started (not found, not executable)
        ├── ToolMissing            a tool the action declares (--tool) is not a file on this node
        └── DockerError            the Docker engine is unreachable or failed a request
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh.text import encodable


class MeshError(Exception):
    """Base of every error mesh raises on purpose.

    Its message is text that every encoder takes (:func:`mesh.text.encodable`): it is sent as
    CBOR or JSON and stored as a task's reason, and a file name in it need not be UTF-8 (a
    FIFO named b"\\xff" that a task left in its workdir), which Python holds as a lone
    surrogate that neither takes. Such a byte is written as an escape (``\\xff``).

    Errors cross process boundaries (the workers of mesh.cas.forkmap send theirs back
    pickled), so each one pickles as its message and attributes, whatever arguments
    its own ``__init__`` takes.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(encodable(arg) if isinstance(arg, str) else arg for arg in args))

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls: type[MeshError], message: str, state: dict[str, object]) -> MeshError:
    """Unpickle a MeshError without calling its class's ``__init__`` (see MeshError)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class UsageError(MeshError):
    """A person gave arguments that cannot work; the CLI exits with status 2."""


class PipelineError(UsageError):
    """A pipeline file (``.mesh.yml``, mesh.pipelines) that is not valid YAML or breaks the
    pipeline schema: the message names the file, the line and the key. A usage error (exit
    2): the file is the person's input to ``mesh run``, and nothing was submitted."""


class ConfigError(MeshError):
    """A file mesh reads its settings from (``mesh.toml``, the mesh key) cannot be read or does
    not hold what it should; the CLI exits with status 1, as for other failures to start.

    Distinct from UsageError (status 2): the command was right, the file it reads is not.
    """


class InvalidDigest(MeshError, ValueError):
    """A digest's text form or fields are malformed."""


class InvalidUrl(MeshError, ValueError):
    """A URL naming a node (gossip, mDNS, a seed, a steal or an offer) or a request's host
    is malformed: another scheme, no host, a port outside 1-65535 (mesh.urls says what is valid)."""


class CodecError(MeshError, ValueError):
    """Bytes are not valid canonical CBOR, exceed a limit, or break the message schema."""


class InvalidTree(CodecError):
    """A directory node breaks the snapshot rules (bad name, order, kind or reference)."""


class InvalidTimes(CodecError):
    """A times manifest breaks its rules (a bad path, order, length or encoding), or does
    not list the entries of the snapshot it comes with."""


class StoreError(MeshError):
    """The content-addressed store could not complete an operation."""


class BlobNotFound(StoreError):
    """The store does not hold the requested blob.

    Distinct from other store errors because store decorators branch on it (for
    example, to fetch the blob from a peer instead).
    """

    def __init__(self, digest: object, *, where: str = "in the store") -> None:
        super().__init__(f"blob {digest} is not {where}")
        self.digest = digest


class DigestMismatch(StoreError):
    """Bytes do not hash to the digest they were stored or sent under."""

    def __init__(self, expected: object, actual: object, where: str = "") -> None:
        place = f" ({where})" if where else ""
        super().__init__(f"content does not match its digest{place}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class BlobDamaged(BlobNotFound, DigestMismatch):
    """A stored blob's file no longer hashes to its name: it was changed on disk.

    The store finds out when it reads the blob (every read verifies) and moves
    the file to quarantine at once, as ``mesh fsck`` does, so it no longer holds
    the blob: this is a BlobNotFound (decorators fetch it again from a peer, the
    API answers 404 and a client uploads it again) as well as a DigestMismatch.
    """

    def __init__(self, digest: object, actual: object, store: str) -> None:
        StoreError.__init__(
            self,
            f"blob {digest} in the store at {store} was damaged on disk (its file hashes to {actual}); "
            "it was moved to quarantine: upload or fetch it again",
        )
        self.digest = self.expected = digest
        self.actual = actual


class DiskFull(MeshError):
    """A filesystem mesh writes to has no room (ENOSPC, or EDQUOT: its owner's quota).

    One class for every full disk, so that the API answers each the same way (507,
    Insufficient Storage) and a person reads the same kind of message: what could not
    be written, where, and the space left. Its subclasses say whose disk it is.
    ``free`` is the bytes left to unprivileged writers (None if unknown).
    """

    def __init__(
        self, what: str, free: int | None, *, needed: int | None = None, quota: bool = False, remedy: str
    ) -> None:
        left = "an unknown amount" if free is None else size_text(free)
        if needed is not None:
            why = f"no room for {size_text(needed)}: {left} free on its filesystem"
        elif quota:
            why = f"no room: its owner's disk quota is used up ({left} free on its filesystem)"
        else:
            why = f"no room: its filesystem is full ({left} free)"
        super().__init__(f"{what} has {why}; {remedy}")
        self.free = free


class StoreFull(StoreError, DiskFull):
    """The store's filesystem has no room (ENOSPC, or EDQUOT: the owner's quota).

    Raised by the store where it meets the error, whatever was being written
    (nothing partial is left behind: a blob becomes visible only when complete),
    or before writing, for a blob of ``needed`` bytes that cannot fit. ``free`` is
    the bytes left to unprivileged writers then (None if unknown).
    """

    def __init__(self, store: str, free: int | None, *, needed: int | None = None, quota: bool = False) -> None:
        remedy = "free space there, or run `mesh gc --max-size SIZE` on its node"
        DiskFull.__init__(self, f"the store at {store}", free, needed=needed, quota=quota, remedy=remedy)
        self.store = store


class StoreCapReached(StoreFull):
    """The store is at its cap (MESH_STORE_MAX) and evicting every blob that may go would not
    make room for ``needed`` more bytes: the rest is pinned (the inputs and outputs of live
    jobs, ``mesh pin``) or being written. Raised before anything is written (mesh.cas.space);
    a StoreFull, so answered the same way (HTTP 507, a task failed with it, one CLI line).
    """

    def __init__(self, store: str, *, cap: int, held: int, needed: int, pinned: int, writing: int) -> None:
        MeshError.__init__(
            self,
            f"the store at {store} has no room for {size_text(needed)} under its cap (MESH_STORE_MAX) of "
            f"{size_text(cap)}: it holds {size_text(held)}, of which {size_text(pinned)} are pinned (the inputs and "
            f"outputs of live jobs, and pins) and {size_text(writing)} belong to uploads and tasks still at work "
            "(reserved, or written or used since they began); evicting the rest would not make room. Try again "
            "when jobs have finished, remove pins (mesh unpin), or raise MESH_STORE_MAX",
        )
        self.store = store
        self.free: int | None = None
        self.cap, self.held, self.needed, self.pinned, self.writing = cap, held, needed, pinned, writing


class StateError(MeshError):
    """The node's state database (jobs, tasks, the action cache) failed a read or a write, cannot
    be opened, or holds something this version cannot read.

    mesh.sched.statedb raises it, translating SQLite's errors where it meets them; the
    message names the database file.
    """


class StateFull(StateError, DiskFull):
    """The state database's filesystem has no room: a commit met SQLITE_FULL (ENOSPC).

    Nothing of the commit was written (SQLite rolled it back). A request whose change
    must be recorded before it is answered (a submission, a cancel) is refused with it;
    the scheduler's own writes wait and are retried (mesh.sched.recording).
    """

    def __init__(self, path: str, free: int | None) -> None:
        remedy = "free space on it"
        DiskFull.__init__(self, f"the state database {path}", free, remedy=remedy)
        self.path = path


def size_text(n: int) -> str:
    """``n`` bytes for people: 512 bytes, 3.1 MiB."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


class SnapshotError(MeshError):
    """A directory tree could not be ingested, read or checked out."""


class UnsupportedFile(SnapshotError):
    """Ingest met files that a snapshot cannot hold (FIFOs, sockets, devices): it names them all."""


class CheckoutConflict(SnapshotError):
    """Checkout found an existing path where it had to create one.

    Checkout never writes through or replaces what it finds; it stops instead.
    """


class PathNotFound(SnapshotError):
    """A path named by the user does not exist inside a snapshot."""


class TreeChanged(SnapshotError):
    """A file no longer holds the bytes it was hashed with when it is read to be sent.

    Raised before the changed bytes leave the client, so the node stores nothing
    wrong; the caller re-plans (re-hashes) the tree and uploads again.
    """

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path} changed since the tree was hashed ({why}); snapshot the tree again")
        self.path = path


class OverlayConflict(SnapshotError):
    """Two layers of a snapshot overlay (mesh.cas.overlay) write the same path: the message
    names the path and both layers' producers."""


class InvalidJob(MeshError, ValueError):
    """A job submission breaks the rules of jobs: names, dependencies, a cycle, a field."""


class RerunRefused(InvalidJob):
    """A re-run (mesh.sched.rerun) that cannot be made: the task is not in the job, or a task it
    needs an output of has not finished or left none. HTTP 409: the job's state decides it."""


class InvalidCompile(MeshError, ValueError):
    """A request to the node's compile service (``mesh cc``) that it cannot take: a frame not
    understood, a compiler that is not a file on the node, a user other than the node's."""


class JobNotFound(MeshError):
    """No job has the id asked for: it never was on this node, or it finished and was forgotten,
    being older than the ``kept`` newest finished jobs that the node keeps (mesh.sched.retention)."""

    def __init__(self, job_id: str, *, kept: int | None = None) -> None:
        forgotten = "" if kept is None else f" (finished jobs beyond the newest {kept:,} are forgotten)"
        super().__init__(f"no job {job_id} on this node{forgotten}")
        self.job_id = job_id


class InputMissing(InvalidJob):
    """A job's input snapshot (or the blob a task reads as stdin) is neither on this node nor on
    any live peer."""

    def __init__(self, root: str, what: str = "input snapshot") -> None:
        super().__init__(f"{what} {root} is not on this node; upload its blobs first")
        self.root = root


class GitError(MeshError):
    """git could not fetch or read a repository (mesh.pipelines.gitsnap): the message says what it
    ran and ends with the tail of git's stderr."""


class InvalidGitUrl(GitError, ValueError):
    """A repository URL whose transport mesh refuses (``ext::`` and every ``transport::address``
    form; any scheme but https, http, ssh, git and file)."""


class InvalidCommit(GitError, ValueError):
    """A commit id that is not a full one: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits."""


class CommitNotFound(GitError):
    """The repository, or the node's mirror of it, has no commit of that id."""


class HookError(MeshError):
    """A forge's webhook delivery cannot be taken (mesh.pipelines.hooks says what is checked)."""


class HookUnauthorized(HookError):
    """A webhook delivery does not prove it comes from who holds the project's webhook secret: its
    signature (or GitLab's token) is missing or wrong, or the project has none. The hook
    endpoint answers 401 and starts nothing."""


class InvalidHook(HookError, ValueError):
    """A webhook delivery names no forge's event, or its body is not the JSON it should be
    (malformed, not UTF-8, a push without the fields it needs): the message says where. HTTP 400."""


class HookTooLarge(InvalidHook):
    """A webhook delivery's body is larger than the hooks read (mesh.pipelines.hooks.MAX_BODY). HTTP 413."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the webhook body is {size_text(size)}, over the limit of {size_text(limit)} (GitHub's own cap on a "
            "payload): a push never needs that much"
        )
        self.size = size
        self.limit = limit


class ProjectError(MeshError):
    """A project or build request cannot be done (mesh.pipelines.projects)."""


class ProjectRefused(ProjectError, ValueError):
    """A project's name, git URL, branch glob or webhook secret, or a build's trigger, breaks
    the rules (the message names the rule). HTTP 400."""


class ProjectNotFound(ProjectError):
    """No project of that name on this node (projects are per node), or no such build of it. HTTP 404."""


class ProjectExists(ProjectError):
    """A project of that name exists already. HTTP 409."""


class WatchError(MeshError):
    """A watcher's request cannot be done (mesh.watch.registry)."""


class WatchConflict(WatchError):
    """Another live watcher already claims that directory on the node. HTTP 409."""


class WatchNotFound(WatchError):
    """The node holds no such watcher: it timed out, stopped, or the node restarted. HTTP 404."""


class NoFreeSlot(MeshError):
    """A peer offered a task and this node has no free slot: the offer goes to another node."""


class NodeBusy(MeshError):
    """Another node already runs on this $MESH_HOME (one node per store and state)."""


class BackgroundNodeError(MeshError):
    """The background node that ``mesh exec`` starts on first use (mesh.background) could not
    start, or ``mesh down`` could not stop it; the message names its log."""


class NotificationFailed(MeshError):
    """One attempt to deliver a build's notification (a webhook's POST, an email) failed.

    ``permanent`` says that trying again cannot help (an HTTP 404, an address the SMTP
    server refuses with a 5xx): mesh.pipelines.notify then stops retrying. It catches
    this error itself and records the last one on the build; its caller never sees it.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class ExecError(MeshError):
    """This node could not run a task; distinct from a task that ran and failed."""


class UnknownExecutor(ExecError):
    """An action names an executor (``docker`` ...) that this node does not offer."""


class ToolMissing(ExecError):
    """A tool the action declares (``mesh exec --tool PATH``) is not a regular file on this
    node, so its toolchain identity (mesh.exec.toolchain) cannot be made here."""


class SpawnFailed(ExecError):
    """The command could not be started: not found, not executable, or no such cwd.

    ``exit_code`` is what a shell reports for the same failure (127 for a command
    that is not found, 126 for one that cannot be executed), so the runner can
    record a result that reads like a shell's.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DockerError(ExecError):
    """The Docker engine (or Podman serving its API) cannot be reached or failed a request.

    A failure of this node's engine, not of the task: the runner raises it instead of
    recording a result. What the *task* asked for that cannot work (an image that
    cannot be pulled, a command not in the image) is a SpawnFailed instead.
    ``status`` is the HTTP status of the engine's answer, None when there was none;
    ``reason`` the engine's own words (the message without what mesh asked), for a
    message of the caller's.
    """

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = message if reason is None else reason


class NodeError(MeshError):
    """A node refused or failed a client's request; the message is the node's own."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NodeUnreachable(NodeError):
    """No node answers at the address (refused, timed out, name not found)."""


class NodeLost(NodeError):
    """The connection to a node broke while it answered (it restarted, the network failed):
    what was asked may still be under way there."""


class PeerDeclined(NodeError):
    """A peer declined an offered task: it has no free slot (the coordinator offers it elsewhere)."""


def describe(error: BaseException) -> str:
    """An error in one line for a log or a reason: mesh's own say it all; any other (a bug, or
    a library's error that was not translated) is named by its type too, its text made
    encodable as a MeshError's is (another library's may name a file that is not UTF-8)."""
    return str(error) if isinstance(error, MeshError) else encodable(f"{type(error).__name__}: {error}")


def unwrap(error: BaseException, *, expected: Iterable[type[BaseException]] = (MeshError,)) -> BaseException:
    """The first error inside ``error`` when it is an exception group whose every leaf is one of
    ``expected``; otherwise ``error`` itself.

    trio's nurseries wrap what their tasks raise in an exception group, one level per nursery,
    so a MeshError raised while a node starts reaches the CLI inside several; the boundary that
    translates errors unwraps it once, and a group holding anything unexpected stays whole.
    """
    kinds = tuple(expected)
    if not isinstance(error, BaseExceptionGroup) or error.split(kinds)[1] is not None:
        return error
    leaf: BaseException = error
    while isinstance(leaf, BaseExceptionGroup):
        first: BaseException = leaf.exceptions[0]
        leaf = first
    return leaf
