"""Live events of a job, for whoever follows it (``mesh exec``, ``/v1/jobs/{id}/events``).

Each job that the node runs has a :class:`JobEvents` log: task started, output
chunks, task finished, job finished, numbered from 0. A follower reads from any
sequence number and then waits for more, so one that connects late still sees
everything the log holds. Output is bounded: past :data:`MAX_RETAINED_OUTPUT`
bytes per job the oldest chunks' data is dropped (the event stays, marked
``dropped``); a follower that meets one fetches the rest from the stdout/stderr
blob when the task finishes, which holds every byte.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

import trio

from mesh.sched.jobevents import JobEvent, JobFinished, Output

#: Output bytes a job's log keeps for late followers before dropping the oldest.
MAX_RETAINED_OUTPUT = 32 << 20
#: Finished jobs whose logs are kept in memory for late followers, at most; fewer when their
#: events or output pass the bounds below (a 10,000-task job logs ~20,000 events, ~10 MB).
#: A follower of a job whose log is gone gets a summary from the database.
RETAINED_FINISHED_JOBS = 64
#: Events the logs of finished jobs may hold together.
RETAINED_FINISHED_EVENTS = 50_000
#: Output bytes the logs of finished jobs may hold together.
RETAINED_FINISHED_OUTPUT = 64 << 20
#: Seconds a follower lets pass between two batches while events come fast (see follow).
PACE = 0.01


class JobEvents:
    """The append-only event log of one job, with waiting followers."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self.closed = False
        self._grew = trio.Event()
        self._closing = trio.Event()
        self._output_bytes = 0
        self._oldest_output = 0

    def emit(self, event: JobEvent) -> None:
        """Append an event, numbered and timed here, and wake followers."""
        if self.closed:
            return
        event = dataclasses.replace(event, seq=len(self.events), time=time.time())
        self.events.append(event)
        if isinstance(event, Output):
            self._output_bytes += len(event.data)
            self._shed()
        if isinstance(event, JobFinished):
            self.closed = True
            self._closing.set()
        self._grew.set()
        self._grew = trio.Event()

    @property
    def output_bytes(self) -> int:
        """Output bytes the log holds (at most MAX_RETAINED_OUTPUT)."""
        return self._output_bytes

    def _shed(self) -> None:
        while self._output_bytes > MAX_RETAINED_OUTPUT and self._oldest_output < len(self.events):
            event = self.events[self._oldest_output]
            if isinstance(event, Output) and not event.dropped:
                self._output_bytes -= len(event.data)
                self.events[self._oldest_output] = dataclasses.replace(event, data=b"", dropped=True)
            self._oldest_output += 1

    async def follow(self, start: int = 0, *, pace: float = 0.0) -> AsyncIterator[list[JobEvent]]:
        """Yield the events from ``start`` on, in batches of those already there, waiting for
        new ones until the job finishes. (Batches let a follower send them in one write.)

        ``pace`` > 0 gathers events that come fast: a batch comes at once when the last one
        is ``pace`` seconds old or more, else when it is that old, or when the job finishes.
        A busy job's stream then costs a write per ``pace`` rather than one per event (a
        write to a socket costs 0.1-0.25 ms on the machines measured), and a quiet one
        loses no time; the end of a job is never held back.
        """
        seq = max(0, start)
        last = -math.inf
        while True:
            if seq < len(self.events):
                hold = last + pace - trio.current_time()
                if hold > 0 and not self.closed:
                    with trio.move_on_after(hold):
                        await self._closing.wait()
                batch = self.events[seq:]
                seq += len(batch)
                last = trio.current_time()
                yield batch
            if self.closed and seq >= len(self.events):
                return
            if seq >= len(self.events):
                await self._grew.wait()


class EventLogs:
    """The logs of running jobs and of the last few finished ones."""

    def __init__(self) -> None:
        self._live: dict[str, JobEvents] = {}
        self._finished: OrderedDict[str, JobEvents] = OrderedDict()
        self._finished_events = 0  # events of the logs in _finished
        self._finished_output = 0  # their output bytes

    def open(self, job_id: str) -> JobEvents:
        log = self._live.get(job_id)
        if log is None:
            log = self._live[job_id] = JobEvents()
        return log

    def get(self, job_id: str) -> JobEvents | None:
        return self._live.get(job_id) or self._finished.get(job_id)

    def forget(self, job_id: str) -> None:
        """Drop a job's log, live or finished (a job whose submission was rolled back)."""
        self._live.pop(job_id, None)
        self._drop_finished(job_id)

    def finish(self, job_id: str) -> None:
        """Move a job's log to the finished ones, forgetting the oldest beyond the bounds (the
        newest is kept whatever its size)."""
        log = self._live.pop(job_id, None)
        if log is None:
            return
        self._finished[job_id] = log
        self._finished_events += len(log.events)
        self._finished_output += log.output_bytes
        while len(self._finished) > 1 and (
            len(self._finished) > RETAINED_FINISHED_JOBS
            or self._finished_events > RETAINED_FINISHED_EVENTS
            or self._finished_output > RETAINED_FINISHED_OUTPUT
        ):
            self._drop_finished(next(iter(self._finished)))

    def _drop_finished(self, job_id: str) -> None:
        log = self._finished.pop(job_id, None)
        if log is not None:
            self._finished_events -= len(log.events)
            self._finished_output -= log.output_bytes
