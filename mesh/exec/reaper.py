"""Find and kill processes that a task left behind when its node died.

A node killed with SIGKILL cannot take its tasks' processes with it: they keep
running in their own process groups, may still write into their task
directories, and would run alongside the re-run of the same task. Every task
therefore carries ``MESH_TASK_DIR=<its task directory>`` in its environment
(inherited by everything it starts); at the next start the node kills every
process whose environment names a directory under its workroot. The marker is
matched in ``/proc/PID/environ``, so a recycled pid of an unrelated process is
never hit.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("mesh.exec")

#: The environment variable that ties a process to the task directory it belongs to.
MARKER = "MESH_TASK_DIR"
#: Scans of /proc before giving up on processes that keep forking.
_ROUNDS = 20


def _tasks_processes(prefix: bytes) -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, or not ours to read
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                found.append(int(entry))
                break
    return found


def kill_task_processes(workroot: str) -> int:
    """SIGKILL every process that belongs to a task directory under ``workroot``; returns how many."""
    if not os.path.isdir("/proc"):
        return 0
    prefix = f"{MARKER}={os.path.abspath(workroot)}/".encode()
    killed: set[int] = set()
    for _ in range(_ROUNDS):
        pids = _tasks_processes(prefix)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
    if killed:
        log.warning("killed %d process(es) left running by tasks of a previous run", len(killed))
    return len(killed)
