"""The input of a task that overlays other tasks' outputs (mesh.sched.jobs ``overlay``).

When such a task becomes ready, the scheduler (mesh.sched.scheduler) makes sure this node
holds the base snapshot, its times manifest and the output snapshot of each named task that
succeeded (a task run on a peer left its output there: :func:`absent` says what to fetch),
then :func:`overlaid` lays the outputs over the base, in the order the task names them
(mesh.cas.overlay; two of them writing one path fail the task with OverlayConflict), and
gives the task's action that input. A named task that did not succeed (a ``failure`` or
``always`` reaction runs after it) adds nothing: its output, if any, is not what it declared.

Times: with a manifest on the base, the overlay gets one made from it (the base's entries
keep their times, the outputs' get the fixed time: mesh.cas.overlay.overlay_times), stored
here, so that it travels with the input to the node that runs the task like any manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from mesh.cas.digest import Digest
from mesh.cas.overlay import Blobs, overlay_times, overlay_tree
from mesh.cas.times import decode
from mesh.exec.action import Action
from mesh.sched.jobs import TaskRecord


def layers(task: TaskRecord, tasks: Mapping[str, TaskRecord]) -> list[tuple[str, Digest]]:
    """The (name, output snapshot) of each task ``task`` overlays that succeeded with an output
    (a prior output, from the job a re-run came from, is taken as it is)."""
    found = []
    for name in task.spec.overlay:
        if name in task.spec.prior:
            found.append((name, task.spec.prior[name]))
            continue
        upstream = tasks[name]
        if upstream.state == "succeeded" and upstream.result is not None and upstream.result.output is not None:
            found.append((name, upstream.result.output))
    return found


def trees(action: Action, laid: list[tuple[str, Digest]]) -> list[Digest]:
    """The snapshots the overlay reads: the base's and each layer's."""
    return [action.input, *(digest for _, digest in laid)]


def overlaid(store: Blobs, action: Action, laid: list[tuple[str, Digest]]) -> Action:
    """``action`` with ``laid`` overlaid on its input (and its times manifest made to match);
    ``store`` must hold them all (BlobNotFound otherwise)."""
    if not laid:
        return action
    result = overlay_tree(store, action.input, [digest for _, digest in laid], [f"task {name}" for name, _ in laid])
    times = action.times
    if times is not None:
        times = store.put(overlay_times(decode(store.get(times)), result).encode())
    return replace(action, input=result.root, times=times)
