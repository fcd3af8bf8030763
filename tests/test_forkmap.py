"""mesh.cas.forkmap: work spread over forked processes, results in order, errors kept.

fork_map only forks in a process that runs one thread, and a pytest process may hold
threads left by other tests (trio's thread cache, say), so the tests that need real
workers run their script in a fresh interpreter.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from mesh.cas.forkmap import fork_map
from tests.freshpy import another_thread, run_fresh


def run_script(body: str, tmp_path: Path) -> str:
    return run_fresh(textwrap.dedent(body), tmp_path)


# A helper for the scripts: wait for a condition with a deadline.
WAIT = """
import os, sys, time
def wait_until(test, what):
    deadline = time.monotonic() + 30
    while not test():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.005)
"""


def test_items_are_spread_over_processes_and_results_keep_their_order(tmp_path: Path) -> None:
    out = run_script(
        WAIT
        + """
from mesh.cas.forkmap import can_fork, fork_map
marks = sys.argv[1] + "/marks"
os.mkdir(marks)
def square(i):
    # Every worker's first item waits until the other worker has taken one too.
    open(f"{marks}/{os.getpid()}", "w").close()
    wait_until(lambda: len(os.listdir(marks)) >= 2, "a second worker")
    return i * i, os.getpid()
assert can_fork()
results = fork_map(square, list(range(300)), 2)
assert [r[0] for r in results] == [i * i for i in range(300)], results
print(len({r[1] for r in results}), os.getpid() in {r[1] for r in results})
""",
        tmp_path,
    )
    assert out.split() == ["2", "True"]


def test_the_first_failing_item_in_order_is_raised_after_all_workers_stop(tmp_path: Path) -> None:
    out = run_script(
        """
import os
from mesh.cas.forkmap import fork_map
def check(i):
    if i in (40, 90):
        raise ValueError(f"item {i} is bad")
    return i
try:
    fork_map(check, list(range(200)), 3)
except ValueError as exc:
    print(exc)
try:
    os.wait()
except ChildProcessError:
    print("no children left")
""",
        tmp_path,
    )
    assert out.split("\n")[0] == "item 40 is bad"
    assert "no children left" in out


def test_a_worker_that_dies_is_an_error_not_a_short_result(tmp_path: Path) -> None:
    out = run_script(
        WAIT
        + """
from mesh.cas.forkmap import fork_map
parent = os.getpid()
started = sys.argv[1] + "/child-started"
def work(i):
    if os.getpid() != parent:
        open(started, "w").close()
        os._exit(3)  # dies holding an item
    wait_until(lambda: os.path.exists(started), "the child")
    return i
try:
    fork_map(work, list(range(50)), 2)
except RuntimeError as exc:
    print(exc)
""",
        tmp_path,
    )
    assert "died" in out


def test_hashing_in_workers_after_the_parent_used_blake3_threads(tmp_path: Path) -> None:
    """BLAKE3's thread pool does not survive a fork; child_init keeps workers off it."""
    out = run_script(
        """
import os, sys
import blake3
from mesh.cas.hasher import MMAP_THRESHOLD, hash_bytes, hash_tree
root = sys.argv[1] + "/tree"
big = os.urandom(4 * MMAP_THRESHOLD)
hash_bytes(big)  # starts the thread pool in the parent
for d in range(6):
    os.makedirs(f"{root}/d{d}")
    for f in range(40):
        with open(f"{root}/d{d}/f{f}", "wb") as out:
            out.write(big[: (d * 40 + f) * 997] if f % 9 else big)
forked = list(hash_tree(root, workers=3))
serial = list(hash_tree(root, workers=1))
assert forked == serial, "forked and serial hashing differ"
assert len(forked) == 240
name, digest = forked[0]
with open(root.encode() + b"/" + name, "rb") as f:
    assert digest.hash == blake3.blake3(f.read()).digest()
print("ok")
""",
        tmp_path,
    )
    assert out.strip() == "ok"


def test_runs_in_process_while_other_threads_exist() -> None:
    with another_thread():
        pids = fork_map(lambda _: os.getpid(), list(range(20)), 4)
    assert set(pids) == {os.getpid()}


def test_an_error_in_process_propagates() -> None:
    def fail(i: int) -> int:
        raise OSError(5, "bad disk")

    with pytest.raises(OSError, match="bad disk"):
        fork_map(fail, [1], 4)
