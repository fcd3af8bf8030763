"""A job's event log (mesh.sched.events): followers see every event, in batches when they come fast."""

from __future__ import annotations

import trio
import trio.testing

from mesh.sched.events import JobEvents
from mesh.sched.jobevents import JobEvent, JobFinished, TaskRequeued

PACE = 0.5


def event(label: str) -> JobEvent:
    """A job's end for "job_finished", else an event that carries ``label`` (as its task)."""
    if label == "job_finished":
        return JobFinished(job="j", state="succeeded")
    return TaskRequeued(task=label, reason="a test")


def label(event: JobEvent) -> str:
    return event.task if isinstance(event, TaskRequeued) else event.KIND


async def test_a_paced_follower_gathers_fast_events_and_never_holds_back_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = JobEvents()
    got: list[tuple[float, list[str]]] = []

    async def follow() -> None:
        async for batch in log.follow(0, pace=PACE):
            got.append((trio.current_time(), [label(e) for e in batch]))

    start = trio.current_time()
    log.emit(event("a"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        log.emit(event("b"))  # right after a batch went out: held until the pace allows the next
        log.emit(event("c"))
        await trio.sleep(PACE / 2)
        log.emit(event("d"))
        await trio.sleep(PACE * 0.6)  # the second batch went out at PACE
        log.emit(event("e"))
        log.emit(event("job_finished"))  # within the pace again, but the end goes out at once
    assert [(round(t - start, 3), kinds) for t, kinds in got] == [
        (0.0, ["a"]),
        (PACE, ["b", "c", "d"]),
        (round(PACE * 1.1, 3), ["e", "job_finished"]),
    ]


async def test_a_quiet_stream_loses_no_time(autojump_clock: trio.testing.MockClock) -> None:
    log = JobEvents()
    got: list[float] = []

    async def follow() -> None:
        async for _ in log.follow(0, pace=PACE):
            got.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        for _ in range(3):
            await trio.sleep(PACE * 2)
            log.emit(event("x"))
            await trio.testing.wait_all_tasks_blocked()
        log.emit(event("job_finished"))
    assert [round(t - start, 3) for t in got] == [PACE * 2, PACE * 4, PACE * 6, PACE * 6]
