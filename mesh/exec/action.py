"""Action and ActionResult: what to run, what came of it, and the action-cache key.

An :class:`Action` names everything that determines a task's outcome: argv, the
environment it adds to the base environment, the working directory inside the
input snapshot, the input snapshot itself and its entries' modification times
(a times manifest, mesh.cas.times), the blob it reads as stdin (if any), which outputs
to capture, the timeout, and the executor (with its image and whether it may use the
network).
Its :meth:`Action.digest` over canonical CBOR names it, so two actions that would
do the same thing share one cached result; the action-cache key
(:meth:`Action.cache_key`) adds the toolchain identity of the node that runs it
(mesh.exec.toolchain: the image's ID, or the node's software and the ``tools`` the
action declares). Requirements on the node (``arch=x86_64``) steer placement, and
are part of the key when given. :meth:`Action.shape` is the action without its
input: what the cache remembers to say why a run was not a hit.

An :class:`ActionResult` is what running it produced: the exit code, stdout and
stderr as blobs, the output snapshot, timings, the node that ran it and whether
it was answered from the cache.

Both have one wire form (a CBOR map with digests in their text form), used by
the API, the job database and the action cache alike.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, replace
from typing import Any

from mesh import codec
from mesh.cas.digest import Digest
from mesh.errors import CodecError, InvalidDigest

EXECUTORS = ("process", "sandbox", "docker")

#: The environment every task starts from; an action's ``env`` is laid over it.
#: ``HOME`` and ``TMPDIR`` are set by the runner to directories of the task's own.
BASE_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "SOURCE_DATE_EPOCH": "0",
}

#: Default timeout of an action, in seconds.
DEFAULT_TIMEOUT = 3600.0
#: Hard ceiling on any action's timeout, in seconds (one week).
MAX_TIMEOUT = 7 * 24 * 3600.0
#: Largest argv / env a task may carry, in bytes (the kernel's own limit is near 2 MiB).
MAX_ARGS_BYTES = 1 << 20
#: Resource limits an action may set for itself (the sandbox executor's rlimits: address
#: space and file size in bytes, processes, open files), each at most what the node allows.
LIMIT_NAMES = ("address_space", "processes", "file_size", "open_files")
#: Most tools (``mesh exec --tool``) an action may declare.
MAX_TOOLS = 256
#: Largest stdin an action may name, in bytes (``mesh exec`` reads it whole into a blob before
#: the job is submitted; larger data belongs in a file of the input).
MAX_STDIN = 1 << 30
#: The version of the action-cache key's form: keys of other versions are never served.
#: 3: an action may name its stdin (before, every task's stdin was empty), and tasks see
#: their input's mtimes (``times``) or a fixed one, no longer the store's.
CACHE_KEY_VERSION = 3


@dataclass(frozen=True, kw_only=True)
class Action:
    """What to run. Immutable; build a changed copy with :func:`dataclasses.replace`."""

    argv: tuple[str, ...]
    input: Digest
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    outputs: tuple[str, ...] | None = None
    timeout: float = DEFAULT_TIMEOUT
    executor: str = "process"
    image: str | None = None
    network: bool = False
    requirements: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, int], ...] = ()
    tools: tuple[str, ...] = ()
    #: The blob the task reads as its stdin (None: an empty stdin, /dev/null).
    stdin: Digest | None = None
    #: The times manifest of the input (mesh.cas.times): the mtimes the task sees on its input's
    #: entries, part of the key (a touched file is another action, as make would rebuild).
    #: None: every entry gets mesh.cas.times.FIXED_MTIME_NS.
    times: Digest | None = None

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0]:
            raise CodecError("an action needs a non-empty argv")
        if sum(len(a) + 1 for a in self.argv) + sum(len(k) + len(v) + 2 for k, v in self.env) > MAX_ARGS_BYTES:
            raise CodecError(f"argv and env of an action exceed {MAX_ARGS_BYTES} bytes")
        for arg in self.argv:
            if "\0" in arg:
                raise CodecError("argv items must not contain NUL")
        for key, value in self.env:
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise CodecError(f"invalid environment variable name {key!r}")
        if list(self.env) != sorted(dict(self.env).items()):
            object.__setattr__(self, "env", tuple(sorted(dict(self.env).items())))
        object.__setattr__(self, "requirements", tuple(sorted(dict(self.requirements).items())))
        object.__setattr__(self, "cwd", check_relative(self.cwd, "cwd", allow_root=True))
        if self.outputs is not None:
            object.__setattr__(self, "outputs", tuple(sorted({check_relative(p, "output path") for p in self.outputs})))
        if not 0 < self.timeout <= MAX_TIMEOUT:
            raise CodecError(f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {self.timeout}")
        if self.executor not in EXECUTORS:
            raise CodecError(f"unknown executor {self.executor!r}; choose one of {', '.join(EXECUTORS)}")
        if self.executor == "docker" and not self.image:
            raise CodecError("the docker executor needs an image")
        if self.executor != "docker" and self.image is not None:
            raise CodecError(f"an image is only meaningful with the docker executor, not {self.executor!r}")
        for name, amount in self.limits:
            if name not in LIMIT_NAMES:
                raise CodecError(f"unknown limit {name!r}; choose from {', '.join(LIMIT_NAMES)}")
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
                raise CodecError(f"limit {name!r} must be a whole number of at least 1, not {amount!r}")
        if self.limits and self.executor != "sandbox":
            raise CodecError(f"limits apply to the sandbox executor, not {self.executor!r}")
        object.__setattr__(self, "limits", tuple(sorted(dict(self.limits).items())))
        object.__setattr__(self, "tools", check_tools(self.tools, self.executor))
        if self.stdin is not None and self.stdin.size > MAX_STDIN:
            raise CodecError(
                f"stdin is {self.stdin.size} bytes, more than the {MAX_STDIN} an action may have; "
                "put the data in a file of the input and redirect it in the command"
            )

    def to_wire(self, *, with_requirements: bool = True) -> dict[str, Any]:
        """The CBOR/JSON map of this action (digests in text form)."""
        wire: dict[str, Any] = {
            "argv": list(self.argv),
            "input": str(self.input),
            "env": dict(self.env),
            "cwd": self.cwd,
            "outputs": None if self.outputs is None else list(self.outputs),
            "timeout": self.timeout,
            "executor": self.executor,
            "image": self.image,
            "network": self.network,
        }
        if with_requirements:
            wire["requirements"] = dict(self.requirements)
        if self.limits:  # only when set, so that the keys of actions without limits stay as they were
            wire["limits"] = dict(self.limits)
        if self.tools:  # the same
            wire["tools"] = list(self.tools)
        if self.stdin is not None:  # the same
            wire["stdin"] = str(self.stdin)
        if self.times is not None:
            wire["times"] = str(self.times)
        return wire

    def digest(self) -> Digest:
        """The action-cache key: BLAKE3 of the canonical CBOR of the action.

        Requirements are part of it when there are any (as Bazel keys on the platform):
        a result made on any node must not answer an action that asked for a GPU node.
        """
        return self._digest_of("_digest", with_input=True)

    def cache_key(self, identity: Digest) -> Digest:
        """The action-cache key: the action's digest with the digest of the toolchain identity
        it runs with on the node that computes it (mesh.exec.toolchain.Identity)."""
        return Digest.of(
            codec.encode({"action": str(self.digest()), "toolchain": str(identity), "v": CACHE_KEY_VERSION})
        )

    def shape(self) -> Digest:
        """The digest of the action without its input (nor the input's times): runs of one
        command on changing inputs share it (the cache remembers the last input and identity
        of each shape)."""
        return self._digest_of("_shape", with_input=False)

    def _digest_of(self, name: str, *, with_input: bool) -> Digest:
        known: Digest | None = self.__dict__.get(name)
        if known is None:
            key = self.to_wire(with_requirements=bool(self.requirements))
            if not with_input:
                del key["input"]
                key.pop("times", None)
            key["timeout"] = float(self.timeout)
            key["v"] = 1
            known = Digest.of(codec.encode(key))
            object.__setattr__(self, name, known)  # an Action never changes: computed once
        return known

    @classmethod
    def from_wire(cls, value: Any, what: str = "action") -> Action:
        """Parse and validate an action map; raises CodecError naming the bad field."""
        fields = codec.Fields(value, what)
        action = cls.from_fields(fields)
        fields.done()
        return action

    @classmethod
    def from_fields(cls, fields: codec.Fields, *, input: Digest | None = None) -> Action:
        """Build an action from the fields of a larger map (a job's task), leaving others alone.

        ``input`` supplies the input snapshot when the map does not (a task whose
        input is another task's output gets it only when that task has finished).
        """
        argv = fields.texts("argv")
        if input is None:
            input = parse_digest(fields.text("input"), f"field 'input' of {fields.what}")
        outputs = fields.texts("outputs", None)
        stdin = fields.text("stdin", None)
        times = fields.text("times", None)
        return cls(
            argv=tuple(argv),
            input=input,
            env=tuple(fields.text_map("env", {}).items()),
            cwd=fields.text("cwd", ""),
            outputs=None if outputs is None else tuple(outputs),
            timeout=float(fields.number("timeout", DEFAULT_TIMEOUT)),
            executor=fields.text("executor", "process"),
            image=fields.text("image", None),
            network=fields.flag("network", False),
            requirements=tuple(fields.text_map("requirements", {}).items()),
            limits=tuple(fields.mapping("limits", {}).items()),
            tools=tuple(fields.texts("tools", [])),
            stdin=None if stdin is None else parse_digest(stdin, f"field 'stdin' of {fields.what}"),
            times=None if times is None else parse_digest(times, f"field 'times' of {fields.what}"),
        )

    def input_key(self) -> str:
        """The input snapshot and its times manifest, as text (what a shape's runs differ by)."""
        return str(self.input) if self.times is None else f"{self.input} times {self.times}"

    def with_input(self, input: Digest) -> Action:
        return replace(self, input=input)


@dataclass(frozen=True, kw_only=True)
class ActionResult:
    """What running an action produced.

    ``exit_code`` follows the shell: the process's status, or 128 + N when signal N
    killed it (137 for SIGKILL). ``timed_out`` says the runner killed it at the
    timeout; ``error`` says why the runner itself failed the task (an output over
    its limit, a cwd that is not a directory ...), in words a person can act on.
    ``output`` is the output snapshot, ``None`` when capture did not happen.
    """

    exit_code: int
    stdout: Digest
    stderr: Digest
    output: Digest | None
    started_at: float
    finished_at: float
    node: str
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None
    cached: bool = False
    #: The action-cache key the result was made under (on the node that ran it): None when it
    #: has none (its node could not make its toolchain identity) or was not made to be cached.
    cache_key: Digest | None = None
    #: What the action cache said of it, for ``mesh exec -v``: where a hit came from, or why
    #: the task was not one (first run, inputs changed, toolchain changed ...).
    cache_note: str | None = None
    #: Why a failed task may have failed, for the person, when its executor can tell (the
    #: sandbox: a task without network that failed on a name or a connection; mesh.exec.hints).
    hint: str | None = None

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "error": self.error,
            "stdout": str(self.stdout),
            "stderr": str(self.stderr),
            "output": None if self.output is None else str(self.output),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "node": self.node,
            "cached": self.cached,
        }
        if self.cache_key is not None:  # only when set: results recorded before have neither
            wire["cache_key"] = str(self.cache_key)
        if self.cache_note is not None:
            wire["cache_note"] = self.cache_note
        if self.hint is not None:
            wire["hint"] = self.hint
        return wire

    @classmethod
    def from_wire(cls, value: Any, what: str = "action result") -> ActionResult:
        fields = codec.Fields(value, what)
        output = fields.text("output", None)
        cache_key = fields.text("cache_key", None)
        result = cls(
            exit_code=fields.integer("exit_code"),
            signal=fields.integer("signal", None),
            timed_out=fields.flag("timed_out", False),
            error=fields.text("error", None),
            stdout=parse_digest(fields.text("stdout"), f"stdout of {what}"),
            stderr=parse_digest(fields.text("stderr"), f"stderr of {what}"),
            output=None if output is None else parse_digest(output, f"output of {what}"),
            started_at=float(fields.number("started_at")),
            finished_at=float(fields.number("finished_at")),
            node=fields.text("node"),
            cached=fields.flag("cached", False),
            cache_key=None if cache_key is None else parse_digest(cache_key, f"cache key of {what}"),
            cache_note=fields.text("cache_note", None),
            hint=fields.text("hint", None),
        )
        fields.done()
        return result


def parse_digest(text: str, what: str) -> Digest:
    """Digest.parse with the field named in the error, as a CodecError for the API."""
    try:
        return Digest.parse(text)
    except InvalidDigest as exc:
        raise CodecError(f"{what}: {exc}") from None


def check_tools(tools: tuple[str, ...], executor: str) -> tuple[str, ...]:
    """The tools an action declares, normalised and sorted: absolute paths of files on the
    executing node (their content joins the toolchain identity); not for docker, whose tasks
    see the image and not the node."""
    if not tools:
        return ()
    if executor == "docker":
        raise CodecError(
            "tools name files of the node, which a docker task does not see (its image's ID is in the key)"
        )
    if len(tools) > MAX_TOOLS:
        raise CodecError(f"an action may declare at most {MAX_TOOLS} tools, not {len(tools)}")
    normal = set()
    for tool in tools:
        if not isinstance(tool, str) or not tool.startswith("/") or "\0" in tool:
            raise CodecError(f"a tool must be an absolute path on the node, not {tool!r}")
        normal.add(posixpath.normpath(tool).replace("//", "/"))
    return tuple(sorted(normal))


def check_relative(path: str, what: str, *, allow_root: bool = False) -> str:
    """Normalise a relative path inside a snapshot; refuse absolute paths and ``..``.

    Returns the path without ``.`` parts or doubled slashes ("" for the root).
    """
    if "\0" in path:
        raise CodecError(f"{what} {path!r} contains NUL")
    if path.startswith("/"):
        raise CodecError(f"{what} {path!r} must be relative to the snapshot's root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CodecError(f"{what} {path!r} must not contain '..'")
    normal = posixpath.join(*parts) if parts else ""
    if not normal and not allow_root:
        raise CodecError(f"{what} must name a path inside the snapshot, not its root")
    return normal
