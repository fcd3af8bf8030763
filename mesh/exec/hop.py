"""One hop to a worker thread for a blocking function that may call back into trio.

:func:`run_sync` is :func:`trio.to_thread.run_sync` cut to what the runner needs,
plus the one thing it lacks: the thread learns *at once* that the awaiting task
was cancelled. The function gets a :class:`Hop`, whose :meth:`~Hop.fileno` (an
eventfd) becomes readable and whose :attr:`~Hop.cancelled` becomes true when a
cancellation reaches the task, so a thread blocked in ``poll`` on its own file
descriptors can add that one and react (kill its process, say) without polling
a flag on a timer. The task keeps waiting until the function returns, as with
``to_thread.run_sync``'s default, and then raises the Cancelled it was given if
the function gave up with :class:`RunCancelled`.

:meth:`Hop.call` runs an async function in the awaiting task (in its context
and cancel scopes, like ``trio.from_thread.run``) and blocks the thread until
it is done: one round trip through the event loop, paid only when called.

The thread comes from trio's thread cache but not through a CapacityLimiter: a
hop may last as long as the command it supervises, and taking the default
limiter's tokens for that would starve every other ``to_thread`` user of the
process. Callers bound their own number of hops (the scheduler's slots).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import outcome
import trio

T = TypeVar("T")


class Cancel(Protocol):
    """Tells an executor's thread that its run was cancelled (:class:`Hop` is one)."""

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled."""
        ...

    def fileno(self) -> int:
        """A descriptor that becomes readable when the run is cancelled."""
        ...


class RunCancelled(Exception):
    """Raised on the worker thread by a function that gave up because its hop was cancelled."""


class Hop:
    """The worker thread's side of one hop: the cancellation signal and calls back into trio."""

    def __init__(self) -> None:
        self._task = trio.lowlevel.current_task()
        self._token = trio.lowlevel.current_trio_token()
        # The trio side owns the eventfd: it is closed only after the thread has finished,
        # so a late cancellation never writes to a closed (or reused) descriptor.
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.cancelled = False
        self._raise_cancel: Callable[[], Any] | None = None
        self._replies: queue.SimpleQueue[outcome.Outcome[object]] | None = None

    def fileno(self) -> int:
        """A descriptor that is readable once the hop was cancelled."""
        return self._fd

    def call(self, afn: Callable[..., Awaitable[object]], *args: object) -> None:
        """On the worker thread: ``await afn(*args)`` in the awaiting task; re-raises what it raises."""
        if self._replies is None:
            self._replies = queue.SimpleQueue()
        self._token.run_sync_soon(trio.lowlevel.reschedule, self._task, outcome.Value(_Call(afn, args, self._replies)))
        self._replies.get().unwrap()

    def _cancel(self, raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
        if not self.cancelled:
            self.cancelled = True
            self._raise_cancel = raise_cancel
            os.eventfd_write(self._fd, 1)
        return trio.lowlevel.Abort.FAILED  # the thread is told; the task waits for it


class _Call:
    """A request from the thread: run ``afn(*args)`` in the task and put its outcome in ``replies``."""

    __slots__ = ("afn", "args", "replies")

    def __init__(
        self,
        afn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        replies: queue.SimpleQueue[outcome.Outcome[object]],
    ) -> None:
        self.afn = afn
        self.args = args
        self.replies = replies


async def run_sync(fn: Callable[[Hop], T], *, name: str | None = None) -> T:
    """``fn(hop)`` on a worker thread; see the module docstring.

    If the task is cancelled meanwhile, ``hop`` says so and this still waits for
    ``fn``; if ``fn`` then raises :class:`RunCancelled`, this raises the Cancelled.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    hop = Hop()
    token, task = hop._token, hop._task

    def deliver(result: outcome.Outcome[T]) -> None:
        try:
            token.run_sync_soon(trio.lowlevel.reschedule, task, outcome.Value(result))
        except trio.RunFinishedError:  # pragma: no cover - the task waits for us, so the run cannot be over
            pass

    try:
        trio.lowlevel.start_thread_soon(lambda: fn(hop), deliver, name)
        while True:
            message = await trio.lowlevel.wait_task_rescheduled(hop._cancel)
            if isinstance(message, _Call):
                message.replies.put(await outcome.acapture(message.afn, *message.args))
                continue
            result: outcome.Outcome[T] = message
            break
    finally:
        os.close(hop._fd)
    if isinstance(result, outcome.Error) and isinstance(result.error, RunCancelled) and hop._raise_cancel is not None:
        hop._raise_cancel()
    return result.unwrap()
