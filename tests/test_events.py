"""A job's event log (mesh.sched.events): followers see every event, in batches when they come fast."""

from __future__ import annotations

import trio
import trio.testing

from mesh.sched.events import JobEvents

PACE = 0.5


async def test_a_paced_follower_gathers_fast_events_and_never_holds_back_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = JobEvents()
    got: list[tuple[float, list[str]]] = []

    async def follow() -> None:
        async for batch in log.follow(0, pace=PACE):
            got.append((trio.current_time(), [e["type"] for e in batch]))

    start = trio.current_time()
    log.emit("a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        log.emit("b")  # right after a batch went out: held until the pace allows the next
        log.emit("c")
        await trio.sleep(PACE / 2)
        log.emit("d")
        await trio.sleep(PACE * 0.6)  # the second batch went out at PACE
        log.emit("e")
        log.emit("job_finished")  # within the pace again, but the end goes out at once
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
            log.emit("x")
            await trio.testing.wait_all_tasks_blocked()
        log.emit("job_finished")
    assert [round(t - start, 3) for t in got] == [PACE * 2, PACE * 4, PACE * 6, PACE * 6]
