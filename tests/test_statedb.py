"""The state database records whatever a task's end holds, and a batch never leaves its
transaction open: a commit that fails, for any reason, is rolled back and the next one goes in."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from mesh import codec
from mesh.cas.digest import Digest
from mesh.errors import StateError
from mesh.exec.action import ActionResult
from mesh.sched.statedb import StateDB
from tests.test_scheduler import job, t

EMPTY = Digest.of(b"")
#: What ingest said of a FIFO named b"\xff" on cec0609: the name as Python's surrogate escape.
FIFO_ERROR = "cannot capture the outputs: cannot snapshot /w/work/\udcff: it is a FIFO"


def result(**fields: Any) -> ActionResult:
    now = time.time()
    defaults: dict[str, Any] = {"exit_code": 0, "stdout": EMPTY, "stderr": EMPTY, "output": None}
    return ActionResult(**{**defaults, **fields}, started_at=now, finished_at=now, node="n")


def committed(path: Path) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(job, task) -> (state, reason), as a connection of the test's own sees the database: what
    was committed, and nothing else."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT job, name, state, reason FROM tasks")
        return {(job_id, name): (state, reason) for job_id, name, state, reason in rows}


def started(db: StateDB, job_id: str) -> list[Any]:
    spec = job(t("a", ["fail"]), t("b", ["ok"]))
    db.add_job(job_id, spec, {"a": "queued", "b": "queued"})
    return db.tasks(job_id, spec)


def test_a_task_end_naming_a_file_that_is_not_utf8_is_recorded(tmp_path: Path) -> None:
    """The reason and the result's error hold '\\udcff' (byte 0xff of a file name): they are
    recorded with the byte written as an escape, and the commits after them go in too."""
    path = tmp_path / "state.db"
    db = StateDB(str(path))
    a, b = started(db, "1" * 20)
    a.state, a.reason, a.result = "failed", FIFO_ERROR, result(error=FIFO_ERROR)
    b.state = "succeeded"
    db.set_task_states([a, b])
    assert db.failure is None
    shown = FIFO_ERROR.replace("\udcff", "\\xff")
    assert committed(path) == {("1" * 20, "a"): ("failed", shown), ("1" * 20, "b"): ("succeeded", None)}

    started(db, "2" * 20)  # a later job: committed, not joined to a transaction left open
    assert ("2" * 20, "a") in committed(path)
    db.close()
    stored = StateDB(str(path)).tasks("1" * 20, job(t("a", ["fail"]), t("b", ["ok"])))[0]
    assert stored.result is not None and stored.result.error == shown and stored.reason == shown


def test_a_result_that_cannot_be_encoded_is_left_out_and_the_reason_says_so(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = StateDB(str(path))
    a, b = started(db, "1" * 20)
    a.state, a.reason, a.result = "failed", "exit code 1", result(exit_code=object())  # a bug's value
    b.state = "succeeded"
    db.set_task_states([a, b])
    assert committed(path) == {
        ("1" * 20, "a"): ("failed", "exit code 1 (its result could not be recorded)"),
        ("1" * 20, "b"): ("succeeded", None),
    }


@pytest.mark.parametrize("raising", [True, False])
def test_a_commit_that_meets_a_bug_is_rolled_back_and_the_next_goes_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raising: bool
) -> None:
    """Encoding a waiting write raises something unexpected (a bug): the batch's statements are
    undone, the writes wait, the error is a StateError naming the bug, and no transaction is
    left open: the next batch commits them and its own."""
    path = tmp_path / "state.db"
    db = StateDB(str(path))
    [a, _] = started(db, "1" * 20)

    def broken(value: Any) -> bytes:
        raise RuntimeError("a bug")

    a.state, a.result = "succeeded", result()
    with monkeypatch.context() as patch:
        patch.setattr(codec, "encode", broken)
        with contextlib.suppress(StateError) if raising else contextlib.nullcontext():
            with db.batch(raising=raising):
                db.set_task_state(a)
                db.mark_cancelled("1" * 20)  # a statement made directly: undone
            assert not raising, "the batch did not raise"
    assert isinstance(db.failure, StateError) and "RuntimeError: a bug" in str(db.failure)
    assert db.waiting == 1 and committed(path)[("1" * 20, "a")] == ("queued", None)
    assert not db.job("1" * 20).cancelled

    started(db, "2" * 20)
    db.flush()
    assert db.failure is None and db.waiting == 0
    assert committed(path)[("1" * 20, "a")] == ("succeeded", None) and ("2" * 20, "a") in committed(path)


def test_states_that_are_no_state_are_read_as_damage(tmp_path: Path) -> None:
    """Task and job states are a closed set (mesh.sched.jobs.TaskState, JobState): a row
    holding another (a file changed outside mesh) is a StateError naming the job, which
    the scheduler's resume turns into a failed job, not a task in a state nothing handles."""
    path = tmp_path / "state.db"
    db = StateDB(str(path))
    spec = job(t("a", ["ok"]))
    db.add_job("1" * 20, spec, {"a": "queued"})
    db.close()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("UPDATE tasks SET state = 'half-done'")
        raw.commit()
    db = StateDB(str(path))
    with pytest.raises(StateError, match="task 'a' is in state 'half-done'"):
        db.tasks("1" * 20, spec)
    db.close()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("UPDATE jobs SET state = 'paused'")
        raw.commit()
    with pytest.raises(StateError, match="its state is 'paused'"):
        StateDB(str(path)).job("1" * 20)
