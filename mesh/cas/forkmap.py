"""Run a function over many items on every core, in forked worker processes.

Walking and hashing a large tree spends most of its time in Python's per-file loop,
which holds the GIL: threads cannot spread it over the cores (measured: two threads
hashing the stdlib were 1.4x slower than one), processes can. :func:`fork_map` forks
``workers - 1`` children that, with the calling process, take items one at a time
from a shared queue (a pipe of item indices, so a slow item does not hold up the
rest) and hand back the results in item order.

Forking is only safe in a process that runs one thread: a lock held by another
thread at the moment of the fork stays locked forever in the child. So fork_map
runs everything in the calling process when other Python threads exist (a node's
task threads, say), when the platform cannot fork, or when there is only one item
or worker. The children never run the caller's ``finally`` blocks or ``atexit``
handlers: they leave with ``os._exit``.

Results travel through an anonymous memory file per child (``memfd_create``),
written once at the end, so a child never blocks on a reader who is busy working.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_INDEX = struct.Struct("<I")
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: Indices are put in the queue this many bytes at a time: at most PIPE_BUF, so that
#: each write is atomic and the queue always holds whole indices.
_QUEUE_CHUNK = 4096


def can_fork() -> bool:
    """Whether forking here is safe: the platform forks and only one Python thread runs."""
    return hasattr(os, "fork") and hasattr(os, "memfd_create") and threading.active_count() == 1


def fork_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    *,
    child_init: Callable[[], None] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[R]:
    """``[fn(item) for item in items]``, computed by ``workers`` processes.

    ``fn``, ``items`` and ``child_init`` reach the children by the fork itself (no
    pickling); results and exceptions come back pickled. If any item raised, the
    exception of the first such item (in item order) is raised here, after every
    worker has stopped. ``child_init`` runs first in each child (for example to stop
    a library from using a thread pool that did not survive the fork).
    ``on_done(index)`` is called in this process as items finish (for a progress
    line): workers announce each finished index on a pipe that this process reads
    between items of its own.
    """
    n = len(items)
    workers = min(workers, n)
    if workers <= 1 or not can_fork():
        results = []
        for i, item in enumerate(items):
            results.append(fn(item))
            if on_done is not None:
                on_done(i)
        return results

    import signal  # here, not at import: the CLI's quick paths never fork and need not load it

    queue_r, queue_w = os.pipe()
    queue = _Queue(queue_r, queue_w, n)
    finished = _Finished(on_done)
    children: list[tuple[int, int]] = []
    me = os.getpid()
    try:
        queue.top_up()
        for _ in range(workers - 1):
            out = os.memfd_create("mesh-fork-map", os.MFD_CLOEXEC)
            try:
                pid = os.fork()
            except OSError:
                os.close(out)
                break  # work with the workers we have
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                _child(fn, items, queue, finished, out, child_init, me)
            children.append((pid, out))
        finished.close_writer()
        done: dict[int, tuple[bool, object]] = {}
        _work(fn, items, queue, done, finished.here)
        finished.wait_for_workers()
        while children:
            pid, out = children.pop()
            _wait(pid)
            done.update(_collect(out))
    finally:
        for pid, out in children:  # an error or Ctrl-C in the parent: stop the children
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait(pid)
            os.close(out)
        queue.close()
        finished.close()
    failed = [i for i, (ok, _) in done.items() if not ok]
    if failed:
        error = done[min(failed)][1]
        assert isinstance(error, BaseException)
        raise error
    if len(done) != n:
        raise RuntimeError(f"fork_map: {n - len(done)} of {n} items were lost by a worker that died")
    return [done[i][1] for i in range(n)]  # type: ignore[misc]


class _Pipe:
    """A pipe between the parent and its workers; either end may already be closed (-1)."""

    read_fd = write_fd = -1

    def close_writer(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_writer()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


class _Queue(_Pipe):
    """The shared queue of item indices: a pipe that every worker reads.

    The parent writes the indices bit by bit (without blocking, so a queue larger than
    the pipe needs no reader to make room) and tops it up before taking each item of
    its own; once all are written it closes its end, and an empty read means "done".
    """

    def __init__(self, read_fd: int, write_fd: int, n: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self._pending = memoryview(b"".join(_INDEX.pack(i) for i in range(n)))
        os.set_blocking(write_fd, False)

    def top_up(self) -> None:
        """Write as many indices as the pipe takes; close the write end after the last."""
        while self._pending:
            try:
                os.write(self.write_fd, self._pending[:_QUEUE_CHUNK])
            except BlockingIOError:
                return
            self._pending = self._pending[_QUEUE_CHUNK:]
        self.close_writer()

    def take(self) -> int | None:
        """The next item's index, or None when the queue is empty for good."""
        raw = os.read(self.read_fd, _INDEX.size)
        return _INDEX.unpack(raw)[0] if raw else None

    def drain(self) -> None:
        """Take every index left: after an error the remaining items are not worth computing."""
        self._pending = memoryview(b"")
        self.close_writer()
        while os.read(self.read_fd, 65536):
            pass


class _Finished(_Pipe):
    """The pipe on which workers announce each item they finish (only with ``on_done``)."""

    def __init__(self, on_done: Callable[[int], None] | None) -> None:
        self.on_done = on_done
        if on_done is not None:
            self.read_fd, self.write_fd = os.pipe()
            os.set_blocking(self.read_fd, False)

    def here(self, i: int) -> None:
        """In the parent: item ``i`` is done here; report it, and what workers finished meanwhile."""
        if self.on_done is not None:
            self.on_done(i)
            self._read()

    def there(self, i: int) -> None:
        """In a worker: announce item ``i`` (four bytes: one atomic write)."""
        if self.write_fd >= 0:
            os.write(self.write_fd, _INDEX.pack(i))

    def wait_for_workers(self) -> None:
        """In the parent: report announcements until every worker has closed the pipe (exited)."""
        if self.read_fd >= 0:
            os.set_blocking(self.read_fd, True)
            while self._read():
                pass

    def _read(self) -> bool:
        try:
            data = os.read(self.read_fd, 4096)
        except BlockingIOError:
            return True
        assert self.on_done is not None
        for (i,) in _INDEX.iter_unpack(data):
            self.on_done(i)
        return bool(data)


def _work(
    fn: Callable[[T], R],
    items: Sequence[T],
    queue: _Queue,
    done: dict[int, tuple[bool, object]],
    report: Callable[[int], None],
) -> None:
    """Take indices from the queue until it is empty; record each result or exception.

    Each read asks for exactly one index; reads of a pipe are serialised by the
    kernel, so no two workers ever get the same item.
    """
    while True:
        queue.top_up()  # a no-op in the children, whose write end is closed
        i = queue.take()
        if i is None:
            return
        try:
            done[i] = (True, fn(items[i]))
        except Exception as exc:  # noqa: BLE001 - handed back to the caller, who raises it
            done[i] = (False, exc)
            queue.drain()
            return
        report(i)


def _child(
    fn: Callable[[T], R],
    items: Sequence[T],
    queue: _Queue,
    finished: _Finished,
    out: int,
    child_init: Callable[[], None] | None,
    parent: int,
) -> None:  # pragma: no cover - covered through fork_map, in the child
    import pickle
    import signal

    code = 0
    try:
        _die_with_parent(parent)
        queue.close_writer()  # only the parent writes; its close must be the queue's end
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent handles Ctrl-C and kills us
        done: dict[int, tuple[bool, object]] = {}
        try:
            if child_init is not None:
                child_init()
            _work(fn, items, queue, done, finished.there)
        except BaseException as exc:  # noqa: BLE001 - reported as the error of the items not done
            done[-1] = (False, exc)
        try:
            data = pickle.dumps(done, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
            data = pickle.dumps({-1: (False, RuntimeError(f"fork_map: a worker's result cannot be sent back: {exc}"))})
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """Have the kernel SIGKILL this worker if its parent dies (PR_SET_PDEATHSIG).

    A killed ingest must not leave workers writing into the store behind it. Checked
    once more afterwards: the parent may have died before the request was made.
    """
    import ctypes  # here, not at import: only workers pay for it
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _collect(out: int) -> dict[int, tuple[bool, object]]:
    """Read back what a child wrote to its memory file."""
    import pickle  # here, not at import, like signal in fork_map

    try:
        size = os.fstat(out).st_size
        data = os.pread(out, size, 0) if size else b""
    finally:
        os.close(out)
    if not data:
        raise RuntimeError("fork_map: a worker process died without handing back its results")
    try:
        done: dict[int, tuple[bool, object]] = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - say what failed, not pickle's internals
        raise RuntimeError(f"fork_map: a worker's results could not be read back: {exc}") from None
    failed = done.pop(-1, None)
    if failed is not None:
        assert isinstance(failed[1], BaseException)
        raise failed[1]
    return done


def _wait(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:  # pragma: no cover - PEP 475 retries these
            continue
