"""Where mesh keeps its data and how big it may grow.

Each setting comes from, in order of precedence: a command-line flag, an
environment variable (``MESH_*``), ``$MESH_HOME/mesh.toml``, the default. The
node's own settings join this module with the node.

=================  ===================  ==============================  ==========================
setting            environment          mesh.toml                       default
=================  ===================  ==============================  ==========================
home               MESH_HOME            (n/a: it locates the file)      $XDG_DATA_HOME/mesh or
                                                                        ~/.local/share/mesh
store_max_bytes    MESH_STORE_MAX       store_max = "50G"               no cap
listen             MESH_LISTEN          listen = "0.0.0.0:7474"         0.0.0.0:7474 (requests are signed)
advertise          MESH_ADVERTISE       advertise = "http://h:7474"     this host's first LAN address
peers (seeds)      MESH_PEERS (a,b)     peers = ["host:7474"]           none
labels             (--label k=v)        labels = {gpu = "1"}            none
mdns               MESH_MDNS=0 turns    mdns = false                    on
                   it off
slots              MESH_SLOTS           slots = 8                       the number of cores
executors          MESH_EXECUTORS       executors = ["process"]         every one that works here:
                   (process,sandbox)                                    process (as task uids; not
                                                                        root: only when named);
                                                                        sandbox where bubblewrap
                                                                        works; docker while
                                                                        DOCKER_HOST answers
task_uids          MESH_TASK_UIDS       task_uids = "FIRST-LAST"        2100000000-2100009999 (a root node's
                   (--task-uids)                                        process tasks: one uid per slot)
sandbox_inputs     MESH_SANDBOX_INPUTS  sandbox_inputs = "link"         copy: a root node's sandbox checks
                   (--sandbox-inputs)                                   inputs out as copies of its task uid
node (client)      MESH_NODE            node = "http://host:7474"       http://127.0.0.1:7474
background (cl.)   MESH_BACKGROUND=0    (n/a)                           on: mesh exec starts a node in the
                   turns it off                                         background when none answers
                                                                        (mesh.background)
background idle    MESH_BACKGROUND_IDLE (n/a)                           1800 s (0: never stops by itself)
mesh key           MESH_KEY (hex)       (--key-file FILE)               $MESH_HOME/mesh.key
watch_timeout      MESH_WATCH_TIMEOUT   watch_timeout = 15              15 s: a watcher silent this long is
                                                                        unhealthy and dropped (mesh.watch)
smtp_host          MESH_SMTP_HOST       smtp_host = "mail.example"      none: email notifications fail
                                                                        (recorded on the build)
smtp_port          MESH_SMTP_PORT       smtp_port = 587                 587 with STARTTLS, else 25
smtp_from          MESH_SMTP_FROM       smtp_from = "ci@example.com"    mesh@<this host's name>
smtp_starttls      MESH_SMTP_STARTTLS=1 smtp_starttls = true            off
smtp_user          MESH_SMTP_USER       smtp_user = "ci"                none: no login
smtp_password      MESH_SMTP_PASSWORD   smtp_password = "..."           none (required with smtp_user)
hook_wait          MESH_HOOK_WAIT       hook_wait = 4                   4 s: a webhook's build that is not
                                                                        started by then is answered 202
keep_jobs          MESH_KEEP_JOBS       keep_jobs = 10000               10,000: finished jobs kept in the state
                                                                        database beyond a build's (mesh.sched.retention)
=================  ===================  ==============================  ==========================

Executors: a node that is not root offers ``process`` only when the operator names it
(its tasks would run as the node's user, who can read the key), and says so in its log;
the others where they work. ``executors_named`` records whether they were named.

Task uids (``task_uids``): a root node runs each task of the ``process`` executor as an
unprivileged uid of its own, taken from this range (one per slot, shared with the other
nodes of the machine; see :mod:`mesh.exec.taskusers`). The default range,
:data:`DEFAULT_TASK_UIDS`, keeps clear of what else hands out uids: regular and system
accounts (below 60000), systemd's dynamic users (61184-65519) and container ranges
(524288-1879048191), Debian's subordinate uids (100000 + 65536 per user), SSSD's default
mapping of directory users (200000-2000200000), Nix's automatic build users (from
872415232) and systemd's "foreign" range (from 2147352576); it stays below 2^31, which
some tools mishandle. A node refuses to start, in one line, when a uid it would take has
an account or a group, or runs processes that no node holds it for.

SMTP (``smtp_*``): the server a node sends a pipeline's email notifications through
(:mod:`mesh.pipelines.notify`). Without ``smtp_host`` a node sends none, and each email
notification due is recorded on its build as failed, with the setting to add. STARTTLS
checks the server's certificate against the system's CAs. A login without STARTTLS sends
the password in the clear: use one only with a server on loopback or a trusted network.

Sandbox inputs (``sandbox_inputs``, ``copy`` or ``link``): how a root node's sandbox
checks a task's input out (:mod:`mesh.exec.sandbox`). ``copy``, the default, gives the
task copies of its own, which it may change as a local command may; ``link`` hardlinks
the store's read-only files, faster and free of space for large inputs, but a task then
cannot write, append to, chmod or ``touch`` an input file (GNU ``ar`` on an existing
archive fails). A node that is not root always copies (its sandboxed tasks run as its
own uid, which owns the store) and says in its log that it ignores ``link``.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from mesh.errors import ConfigError, InvalidUrl, UsageError
from mesh.seeds import seeds
from mesh.urls import netloc, peer_url

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse a byte count like ``500M``, ``10G``, ``1.5T`` or ``4096`` (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if m is None:
        raise UsageError(f"not a size: {text!r} (use a number of bytes, or e.g. 500M, 10G, 2T)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def default_home() -> str:
    """``$XDG_DATA_HOME/mesh``, or ``~/.local/share/mesh``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "mesh")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Resolved settings of one mesh process. See the module docstring for their sources."""

    home: str
    store_max_bytes: int | None = None

    @property
    def store_dir(self) -> str:
        return os.path.join(self.home, "cas")

    @classmethod
    def load(cls, *, home: str | None = None, store_max: str | None = None) -> Settings:
        """Resolve the settings from flags (the arguments), environment, file and defaults."""
        resolved_home = os.path.abspath(home or os.environ.get("MESH_HOME") or default_home())
        file = _read_toml(os.path.join(resolved_home, "mesh.toml"))
        max_text = store_max or os.environ.get("MESH_STORE_MAX") or file.get("store_max")
        if max_text is not None and not isinstance(max_text, str | int):
            raise UsageError(f'store_max in {resolved_home}/mesh.toml must be a size like "50G"')
        return cls(home=resolved_home, store_max_bytes=parse_size(str(max_text)) if max_text is not None else None)


def _read_toml(path: str) -> dict[str, Any]:
    """The settings in ``path`` ({} when there is no such file); ConfigError if it cannot be read or parsed."""
    fix = "fix or remove it (every setting has a default)"
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; {fix}") from None
    import tomllib  # only when there is a file: the CLI's start-up time matters

    with f:
        try:
            return tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}; {fix}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML ({exc}); {fix}") from None


#: The task uids of a root node's process tasks, first and last (see the module docstring).
DEFAULT_TASK_UIDS = (2_100_000_000, 2_100_009_999)

#: The port a node listens on unless told otherwise, and where clients look for one.
DEFAULT_PORT = 7474
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
DEFAULT_NODE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
#: Seconds a webhook delivery waits for its build to start before it is answered 202 (the
#: build goes on): below the shortest wait of a forge (Gitea's and Forgejo's 5 s; GitHub and
#: GitLab wait 10 s).
DEFAULT_HOOK_WAIT = 4.0
#: Seconds without a beat after which a node drops a watcher (mesh.watch.registry).
DEFAULT_WATCH_TIMEOUT = 15.0
#: Finished jobs a node keeps in its state database (mesh.sched.retention says why this many).
DEFAULT_KEEP_JOBS = 10_000


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` too; ``:PORT`` means all interfaces)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"listen address {text!r} must look like HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


@dataclass(frozen=True, kw_only=True)
class SmtpSettings:
    """The SMTP server a node sends email notifications through (see the module docstring)."""

    host: str
    port: int = 25
    sender: str  # the From address (smtp_from)
    starttls: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log or a record

    @classmethod
    def load(cls, file: dict[str, Any]) -> SmtpSettings | None:
        """From ``MESH_SMTP_*`` and ``smtp_*`` in mesh.toml (the environment first); None without a host."""

        def get(name: str) -> Any:
            env = os.environ.get(f"MESH_SMTP_{name.upper()}")
            return env if env is not None and env != "" else file.get(f"smtp_{name}")

        host = get("host")
        if host is None:
            return None
        if not isinstance(host, str) or not host.strip():
            raise UsageError(
                f'smtp_host must be the name or address of an SMTP server, like "mail.example", not {host!r}'
            )
        starttls = _flag("smtp_starttls", get("starttls"))
        port_value = get("port")
        try:
            port = int(port_value) if port_value is not None else (587 if starttls else 25)
        except (TypeError, ValueError):
            port = -1
        if not 1 <= port <= 65535:
            raise UsageError(
                f"smtp_port must be a port number (587 for STARTTLS, 25 for plain SMTP), not {port_value!r}"
            )
        sender = get("from") or f"mesh@{socket.gethostname()}"
        if not isinstance(sender, str) or "@" not in sender:
            raise UsageError(f'smtp_from must be an email address like "ci@example.com", not {sender!r}')
        user, password = get("user"), get("password")
        if (user is None) != (password is None):
            raise UsageError(
                "smtp_user and smtp_password go together: set both (MESH_SMTP_USER, MESH_SMTP_PASSWORD) or neither"
            )
        return cls(
            host=host.strip(),
            port=port,
            sender=sender,
            starttls=starttls,
            user=None if user is None else str(user),
            password=None if password is None else str(password),
        )


def _flag(name: str, value: Any) -> bool:
    """A boolean setting: true/false in mesh.toml, or 1/0, yes/no, on/off, true/false as text."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name} must be true or false (1 or 0), not {value!r}")


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """Settings of a node (``mesh up``): where it keeps things, where it listens, how much it runs."""

    home: str
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)
    slots: int = 1
    store_max_bytes: int | None = None
    key_file: str | None = None  # None: MESH_KEY, else $MESH_HOME/mesh.key (made on first start)
    seeds: tuple[str, ...] = ()  # peer URLs to gossip with until they are known members
    labels: tuple[tuple[str, str], ...] = ()
    mdns: bool = True
    advertise: str | None = None  # the URL peers reach this node at (None: derived from listen)
    executors: tuple[str, ...] = ("process", "sandbox", "docker")  # offered where they work here
    executors_named: bool = False  # named by the operator (flag, MESH_EXECUTORS, mesh.toml): see above
    own_user: bool = False  # the submitter is the node's user (mesh exec's in-process node)
    task_uids: tuple[int, int] = DEFAULT_TASK_UIDS
    sandbox_inputs: Literal["copy", "link"] = "copy"  # how a root node's sandbox checks inputs out
    smtp: SmtpSettings | None = None  # where email notifications go (None: no server, none are sent)
    hook_wait: float = DEFAULT_HOOK_WAIT  # seconds a webhook delivery waits for its build to start
    watch_timeout: float = (
        DEFAULT_WATCH_TIMEOUT  # seconds after which a silent watcher is dropped (mesh.watch.registry)
    )
    keep_jobs: int = DEFAULT_KEEP_JOBS  # finished jobs kept in the state database (mesh.sched.retention)

    @property
    def docker(self) -> bool:
        return "docker" in self.executors

    @property
    def store_dir(self) -> str:
        return os.path.join(self.home, "cas")

    @classmethod
    def load(
        cls,
        *,
        home: str | None = None,
        listen: str | None = None,
        slots: int | None = None,
        store_max: str | None = None,
        key_file: str | None = None,
        peers: list[str] | None = None,
        labels: list[str] | None = None,
        mdns: bool | None = None,
        advertise: str | None = None,
        executors: list[str] | None = None,
        task_uids: str | None = None,
        sandbox_inputs: str | None = None,
    ) -> NodeConfig:
        """Resolve from flags (the arguments), environment, ``mesh.toml`` and defaults."""
        base = Settings.load(home=home, store_max=store_max)
        file = _read_toml(os.path.join(base.home, "mesh.toml"))
        listen_text = listen or os.environ.get("MESH_LISTEN") or file.get("listen") or DEFAULT_LISTEN
        slots_value: Any = slots or os.environ.get("MESH_SLOTS") or file.get("slots") or os.cpu_count() or 1
        try:
            slot_count = int(slots_value)
        except (TypeError, ValueError):
            raise UsageError(f"slots must be a whole number, not {slots_value!r}") from None
        if slot_count < 1:
            raise UsageError(f"slots must be at least 1, not {slot_count}")
        return cls(
            home=base.home,
            listen=parse_listen(str(listen_text)),
            slots=slot_count,
            store_max_bytes=base.store_max_bytes,
            key_file=key_file,
            seeds=seeds(peers, file.get("peers")),
            labels=tuple(sorted(_labels(labels, file).items())),
            mdns=_mdns(mdns, file),
            advertise=_advertise(advertise or os.environ.get("MESH_ADVERTISE") or file.get("advertise")),
            executors=_executors(executors, file),
            executors_named=executors is not None or bool(os.environ.get("MESH_EXECUTORS")) or "executors" in file,
            task_uids=parse_uid_range(task_uids or os.environ.get("MESH_TASK_UIDS") or file.get("task_uids")),
            sandbox_inputs=parse_sandbox_inputs(
                sandbox_inputs or os.environ.get("MESH_SANDBOX_INPUTS") or file.get("sandbox_inputs")
            ),
            smtp=SmtpSettings.load(file),
            hook_wait=parse_seconds(
                "hook_wait", os.environ.get("MESH_HOOK_WAIT") or file.get("hook_wait"), default=DEFAULT_HOOK_WAIT
            ),
            watch_timeout=parse_seconds(
                "watch_timeout",
                os.environ.get("MESH_WATCH_TIMEOUT") or file.get("watch_timeout"),
                default=DEFAULT_WATCH_TIMEOUT,
                maximum=300,
                positive=True,
            ),
            keep_jobs=parse_keep_jobs(os.environ.get("MESH_KEEP_JOBS") or file.get("keep_jobs")),
        )


def _labels(flags: list[str] | None, file: dict[str, Any]) -> dict[str, str]:
    labels = {}
    table = file.get("labels", {})
    if not isinstance(table, dict):
        raise UsageError('labels in mesh.toml must be a table like {gpu = "1"}')
    labels.update({str(k): str(v) for k, v in table.items()})
    for item in flags or []:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise UsageError(f"--label wants KEY=VALUE (letters, digits, _ . - in KEY), not {item!r}")
        labels[key] = value
    return labels


EXECUTORS = ("process", "sandbox", "docker")


def _executors(flags: list[str] | None, file: dict[str, Any]) -> tuple[str, ...]:
    """The executors a node may offer: ``--executors``, MESH_EXECUTORS (a,b), ``executors``, else all.

    Names are stripped and empty ones dropped, so ``"process, sandbox"`` and ``"process,"`` work.
    """
    value: Any = flags
    if value is None:
        env = os.environ.get("MESH_EXECUTORS")
        value = env.split(",") if env else file.get("executors", list(EXECUTORS))
    if isinstance(value, list) and all(isinstance(e, str) for e in value):
        value = [e.strip() for e in value if e.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(e, str) for e in value):
        raise UsageError('executors must be a non-empty list like ["process", "sandbox"]')
    unknown = sorted(set(value) - set(EXECUTORS))
    if unknown:
        raise UsageError(f"unknown executor(s) {', '.join(unknown)}: choose from {', '.join(EXECUTORS)}")
    return tuple(e for e in EXECUTORS if e in value)


def _advertise(value: Any) -> str | None:
    """The URL peers reach this node at, checked like every URL that names a node (mesh.urls)."""
    if value is None:
        return None
    try:
        return peer_url(str(value))
    except InvalidUrl as exc:
        raise UsageError(
            f"--advertise must be the URL peers reach this node at, like http://host:7474 ({exc})"
        ) from None


def parse_seconds(name: str, value: object, *, default: float, maximum: float = 3600, positive: bool = False) -> float:
    """A number of seconds from the environment or ``mesh.toml``, 0 (above 0 if ``positive``) to
    ``maximum`` (None: ``default``); UsageError naming the setting otherwise."""
    if value is None:
        return default
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = -1.0
    if not (0 < seconds if positive else 0 <= seconds) or not seconds <= maximum:
        low = "above 0" if positive else "from 0"
        raise UsageError(f"{name} is a number of seconds {low} to {maximum:g}, not {value!r}")
    return seconds


#: The most finished jobs ``keep_jobs`` may keep: a billion rows is past what a node's
#: state database should hold (~2.6 KB each, mesh.sched.retention), and bounds the setting.
MAX_KEEP_JOBS = 1_000_000_000


def parse_keep_jobs(value: object) -> int:
    """How many finished jobs a node keeps: a whole number from 1 to MAX_KEEP_JOBS (None is the
    default, DEFAULT_KEEP_JOBS); UsageError naming the setting otherwise. (TOML's true is not 1.)"""
    if value is None:
        return DEFAULT_KEEP_JOBS
    text = str(value).strip().replace("_", "") if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_KEEP_JOBS:
        raise UsageError(
            f"keep_jobs is the number of finished jobs a node keeps, a whole number from 1 to "
            f"{MAX_KEEP_JOBS:,} (default {DEFAULT_KEEP_JOBS:,}), not {value!r}"
        )
    return int(text)


def parse_uid_range(value: object) -> tuple[int, int]:
    """``FIRST-LAST`` (both whole numbers, 1 <= FIRST <= LAST < 2^32 - 1); None is the default."""
    if value is None:
        return DEFAULT_TASK_UIDS
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value) if isinstance(value, str) else None
    first, last = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
    if not 1 <= first <= last < 2**32 - 1:
        raise UsageError(
            f"task_uids must be a range of uids FIRST-LAST (1 <= FIRST <= LAST), e.g. "
            f"{DEFAULT_TASK_UIDS[0]}-{DEFAULT_TASK_UIDS[1]}, not {value!r}"
        )
    return first, last


def parse_sandbox_inputs(value: object) -> Literal["copy", "link"]:
    """``copy`` or ``link`` (case and surrounding blanks aside); None is the default, ``copy``."""
    if value is None:
        return "copy"
    text = value.strip().lower() if isinstance(value, str) else None
    if text == "copy":
        return "copy"
    if text == "link":
        return "link"
    raise UsageError(
        f"sandbox_inputs must be copy (the task's own copies, the default) or link (the store's "
        f"read-only files: faster for large inputs, but a task cannot change an input file), not {value!r}"
    )


def _mdns(flag: bool | None, file: dict[str, Any]) -> bool:
    if flag is not None:
        return flag
    env = os.environ.get("MESH_MDNS")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(file.get("mdns", True))


def node_url(flag: str | None = None, *, home: str | None = None) -> tuple[str, bool]:
    """The node a client talks to, and whether it was named explicitly.

    Explicit: ``--node``, then ``MESH_NODE``, then ``node`` in mesh.toml. Otherwise the
    default address is where ``mesh up`` with the same settings listens (``MESH_LISTEN``,
    ``listen`` in mesh.toml, else 127.0.0.1:7474), reached over loopback when it
    listens on every interface.
    """
    file = _read_toml(os.path.join(home, "mesh.toml")) if home else {}
    explicit = flag or os.environ.get("MESH_NODE") or file.get("node")
    if explicit:
        url = str(explicit).rstrip("/")
        if "://" not in url:
            url = "http://" + url
        return url, True
    host, port = parse_listen(str(os.environ.get("MESH_LISTEN") or file.get("listen") or DEFAULT_LISTEN))
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{netloc(host, port)}", False
