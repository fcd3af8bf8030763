"""Projects and their builds, stored in the node's state database (mesh.sched.statedb).

A project is a name, a git URL, a branch glob and a webhook secret; a build is one run of a
project's pipeline: its number, the job that runs it, the commit, what started it (``run``,
``hook``, ``rerun``) and when it was made and finished. Three tables of their own, made by
:class:`ProjectStore` through :meth:`StateDB.execute`, so that a full disk or a damaged file
is the same StateError (StateFull: HTTP 507) as for the scheduler's tables:

- ``projects``: one row per project. The webhook secret is kept here and never leaves
  the node through the API (listings say only whether there is one).
- ``project_numbers``: the last build number given per project name. It is **kept when a
  project is removed**: a project added again under the same name goes on from the last
  number, so that a number (in a chat message, a link, a badge's history) never names two
  builds. Its builds are removed with it.
- ``builds``: ``(project, number)`` is the key; ``finished_at`` is filled when the build's
  job ends (mesh.pipelines.builds watches it), with ``notified``, the notifications that
  finally failed; ``notify`` holds the pipeline's ``notify`` entries (their wire form, CBOR)
  and ``branch`` the branch built, for the notifications of its end. A build's job is
  never forgotten (mesh.sched.retention deletes old finished jobs, never one a build
  refers to: its page and ``mesh rerun NAME N`` need it); once its project is removed
  with its builds, the job is old history like any other.

A number is given and its build recorded in one transaction (:meth:`ProjectStore.record`):
monotonic per project, never reused, kept across restarts (it is in the database before the
API answers with it). Projects are per node for now: the node that holds a project gives its
numbers, and another node does not know the project at all (its API answers 404, "no project
NAME on this node"); sharing projects over the mesh is later work.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from mesh import codec
from mesh.errors import ProjectExists, ProjectNotFound, ProjectRefused
from mesh.sched.statedb import StateDB

Trigger = Literal["run", "hook", "rerun"]
TRIGGERS: tuple[Trigger, ...] = ("run", "hook", "rerun")
#: A project's name: it is a path segment of the API and a label of /metrics, so a safe identifier.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A branch glob's longest form, and a git URL's.
MAX_BRANCH, MAX_URL = 200, 2000
#: The longest webhook secret taken (GitHub's own limit is far below).
MAX_SECRET = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    branch TEXT NOT NULL,
    secret BLOB,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS project_numbers (
    name TEXT PRIMARY KEY,
    last INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS builds (
    project TEXT NOT NULL,
    number INTEGER NOT NULL,
    job TEXT NOT NULL,
    commit_id TEXT,
    trigger TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    branch TEXT,
    notify BLOB NOT NULL,
    notified BLOB,
    rerun_of INTEGER,
    PRIMARY KEY (project, number)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS builds_job ON builds (job);
"""
#: Columns added to ``builds`` after it was first made, with their types: added on open.
_ADDED = {"rerun_of": "INTEGER"}


def check_name(name: str) -> str:
    """``name`` if it is a project's name (ProjectRefused otherwise, naming the rule)."""
    if not NAME.fullmatch(name):
        raise ProjectRefused(
            f"{name[:80]!r} is not a project name: 1 to 64 letters, digits, '.', '_' or '-', beginning"
            " with a letter or digit"
        )
    return name


@dataclass(frozen=True, kw_only=True)
class Project:
    """A project as the node keeps it (the secret stays inside the node)."""

    name: str
    url: str
    branch: str
    secret: bytes | None
    created_at: float

    def to_wire(self) -> dict[str, Any]:
        """What the API shows: everything but the secret, of which only whether there is one."""
        return {
            "name": self.name,
            "url": self.url,
            "branch": self.branch,
            "webhook_secret": self.secret is not None,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, kw_only=True)
class Build:
    """One build's row."""

    project: str
    number: int
    job: str
    commit: str | None
    trigger: Trigger
    created_at: float
    finished_at: float | None
    branch: str | None = None
    notify: list[dict[str, Any]] = field(default_factory=list)  # the pipeline's notify entries (wire form)
    notified: list[dict[str, Any]] = field(default_factory=list)  # the notifications that finally failed
    rerun_of: int | None = None  # the build this one re-runs (trigger ``rerun``)

    def to_wire(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "branch": self.branch,
            "notification_failures": self.notified,
            "number": self.number,
            "job": self.job,
            "commit": self.commit,
            "trigger": self.trigger,
            "rerun_of": self.rerun_of,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "path": build_path(self.project, self.number),
            "page": build_page(self.project, self.number),
        }


def build_path(project: str, number: int) -> str:
    """The URL path of a build's API resource (``GET``: its state and steps)."""
    return f"/v1/projects/{project}/builds/{number}"


def build_page(project: str, number: int) -> str:
    """The URL path of a build's page in the node's web UI (mesh.api.ui): the one to give people."""
    return f"/ui/builds/{project}/{number}"


class ProjectStore:
    """Projects and builds in ``db`` (one owner: the node's trio thread, like the db)."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        with db.batch():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            have = {row[1] for row in db.execute("PRAGMA table_info(builds)")}
            for column, kind in _ADDED.items():
                if column not in have:  # a database of an earlier version
                    db.execute(f"ALTER TABLE builds ADD COLUMN {column} {kind}")
        db.keep_referenced("builds", "job")  # a build's history keeps its job (mesh.sched.retention)

    def add(self, name: str, url: str, branch: str, secret: bytes | None) -> Project:
        """Add a project (ProjectRefused for a bad field, ProjectExists if the name is taken)."""
        check_name(name)
        if not url or len(url) > MAX_URL or any(c.isspace() for c in url):
            raise ProjectRefused(f"a project's git URL is 1 to {MAX_URL} characters without spaces, not {url[:80]!r}")
        if not branch or len(branch) > MAX_BRANCH:
            raise ProjectRefused(f"a project's branch glob is 1 to {MAX_BRANCH} characters")
        if secret is not None and not 1 <= len(secret) <= MAX_SECRET:
            raise ProjectRefused(f"a webhook secret is 1 to {MAX_SECRET} bytes")
        project = Project(name=name, url=url, branch=branch, secret=secret, created_at=time.time())
        with self.db.batch():
            if self.db.execute("SELECT 1 FROM projects WHERE name = ?", (name,)):
                raise ProjectExists(f"project {name} exists already; remove it first (mesh project rm {name})")
            self.db.execute(
                "INSERT INTO projects VALUES (?, ?, ?, ?, ?)", (name, url, branch, secret, project.created_at)
            )
        return project

    def get(self, name: str) -> Project:
        """The project ``name`` (ProjectNotFound)."""
        rows = self.db.execute("SELECT name, url, branch, secret, created_at FROM projects WHERE name = ?", (name,))
        if not rows:
            raise ProjectNotFound(f"no project {name} on this node (projects are kept per node: `mesh project ls`)")
        return Project(name=rows[0][0], url=rows[0][1], branch=rows[0][2], secret=rows[0][3], created_at=rows[0][4])

    def all(self) -> list[Project]:
        rows = self.db.execute("SELECT name FROM projects ORDER BY name")
        return [self.get(row[0]) for row in rows]

    def remove(self, name: str) -> None:
        """Remove a project and its builds; its last number stays (module docstring)."""
        self.get(name)
        with self.db.batch():
            self.db.execute("DELETE FROM builds WHERE project = ?", (name,))
            self.db.execute("DELETE FROM projects WHERE name = ?", (name,))

    def record(
        self,
        name: str,
        job: str,
        commit: str | None,
        trigger: Trigger,
        *,
        branch: str | None = None,
        notify: list[dict[str, Any]] | None = None,
        rerun_of: int | None = None,
    ) -> Build:
        """Give ``name``'s next number to the build that ``job`` runs, in one transaction."""
        self.get(name)
        now = time.time()
        with self.db.batch():
            self.db.execute(
                "INSERT INTO project_numbers VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET last = last + 1", (name,)
            )
            number = int(self.db.execute("SELECT last FROM project_numbers WHERE name = ?", (name,))[0][0])
            self.db.execute(
                f"INSERT INTO builds ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, NULL, ?)",
                (name, number, job, commit, trigger, now, branch, codec.encode(notify or []), rerun_of),
            )
        return Build(
            project=name,
            number=number,
            job=job,
            commit=commit,
            trigger=trigger,
            created_at=now,
            finished_at=None,
            branch=branch,
            notify=notify or [],
            rerun_of=rerun_of,
        )

    def finished(self, name: str, number: int, when: float, failures: list[dict[str, Any]]) -> None:
        """Note when a build's job ended, and the notifications of its end that finally failed."""
        self.db.execute(
            "UPDATE builds SET finished_at = ?, notified = ? WHERE project = ? AND number = ?",
            (when, codec.encode(failures), name, number),
        )

    def build(self, name: str, number: int) -> Build:
        """Build ``number`` of ``name`` (ProjectNotFound for either)."""
        self.get(name)
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM builds WHERE project = ? AND number = ?", (name, number))
        if not rows:
            raise ProjectNotFound(f"project {name} has no build {number}")
        return _build(rows[0])

    def build_of(self, job: str) -> Build | None:
        """The build that job ``job`` runs, if it runs one."""
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM builds WHERE job = ?", (job,))
        return _build(rows[0]) if rows else None

    def builds(self, name: str, *, limit: int, before: int | None = None) -> list[Build]:
        """``name``'s builds, newest first, numbered below ``before`` when given."""
        self.get(name)
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM builds WHERE project = ? AND number < ? ORDER BY number DESC LIMIT ?",
            (name, before if before is not None else 2**62, limit),
        )
        return [_build(row) for row in rows]

    def unfinished(self) -> list[Build]:
        """Builds whose end has not been noted (their jobs run, or ended while the node was down)."""
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM builds WHERE finished_at IS NULL ORDER BY project, number")
        return [_build(row) for row in rows]


_COLUMNS = "project, number, job, commit_id, trigger, created_at, finished_at, branch, notify, notified, rerun_of"


def _build(row: list[Any]) -> Build:
    return Build(
        project=row[0],
        number=row[1],
        job=row[2],
        commit=row[3],
        trigger=row[4],
        created_at=row[5],
        finished_at=row[6],
        branch=row[7],
        notify=codec.decode(row[8]),
        notified=[] if row[9] is None else codec.decode(row[9]),
        rerun_of=row[10],
    )
