"""``mesh watch --run``: the directory's pipeline on each settled change, the stale run cancelled.

Each snapshot the watcher sends the node is offered here; the newest waits while a run
is under way. A run still going when a newer snapshot comes is made stale by it: its
job is cancelled on the node (``POST /v1/jobs/{id}/cancel``, the run ends ``cancelled``)
and the newest snapshot runs next; snapshots between the two never run. A run is
``mesh run``'s (mesh.pipeline_run.run_on): the same job, the same prefixed output and
the same table at its end, kept in the node's history like any job. The pipeline file
is read again for every run, so an edit of ``.mesh.yml`` is a change like any other; a
malformed one is reported and the watcher goes on.
"""

from __future__ import annotations

import sys
import threading

import trio

from mesh import pipeline_run
from mesh.cas.digest import Digest
from mesh.errors import MeshError
from mesh.follow import JobFollower
from mesh.wire.client import NodeClient

#: Seconds a run waits for a node that went away before it gives up (mesh.follow).
RUN_WINDOW = 30.0


class PipelineRuns:
    """Runs the pipeline of ``request.directory`` on the newest snapshot offered."""

    def __init__(self, url: str, request: pipeline_run.RunRequest) -> None:
        self.url = url
        self.request = request
        self._newest: tuple[Digest, Digest | None] | None = None
        self._offered = trio.Event()
        self._follower: JobFollower | None = None
        self._lock = threading.Lock()

    def offer(self, snapshot: Digest, times: Digest | None) -> None:
        """A new snapshot of the directory: it runs next, and makes the run under way stale."""
        self._newest = (snapshot, times)
        self._offered.set()

    async def run(self) -> None:
        """Run offered snapshots, newest first, until cancelled."""
        while True:
            await self._offered.wait()
            self._offered = trio.Event()
            assert self._newest is not None
            snapshot, times = self._newest
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cancel_when_stale, nursery.cancel_scope)
                status = await trio.to_thread.run_sync(self._run, snapshot, times, abandon_on_cancel=True)
                nursery.cancel_scope.cancel()
            if status is not None:
                say(f"run on {snapshot} ended with exit status {status}")

    def _run(self, snapshot: Digest, times: Digest | None) -> int | None:
        """One run, on a worker thread; its exit status (None: it could not start)."""
        say(f"running the pipeline of {self.request.directory} on {snapshot}")
        try:
            pipeline = pipeline_run.read_pipeline(self.request.directory)
            with NodeClient(self.url) as client:
                return pipeline_run.run_on(
                    client, self.request, pipeline, snapshot, times, window=RUN_WINDOW, on_follow=self._following
                )
        except pipeline_run.Stopped as stopped:
            return stopped.status
        except MeshError as exc:
            say(f"the run on {snapshot} could not go on: {exc}")
            return None
        finally:
            self._following(None)

    def _following(self, follower: JobFollower | None) -> None:
        with self._lock:
            self._follower = follower

    async def _cancel_when_stale(self, scope: trio.CancelScope) -> None:
        """When a newer snapshot is offered, cancel the job under way (once it has an id)."""
        await self._offered.wait()
        while True:
            with self._lock:
                job_id = self._follower.job_id if self._follower is not None else ""
            if job_id:
                break
            await trio.sleep(0.05)  # submitted, not yet taken: its id comes with its first event
        say(f"a newer change made job {job_id} stale: cancelling it")
        await self._cancel_job(job_id)

    async def stop(self) -> None:
        """The watcher stops: cancel the run under way, if its job has an id (as ``mesh run``
        cancels its job on SIGINT); a cancel that fails is reported and the job runs on."""
        with self._lock:
            job_id = self._follower.job_id if self._follower is not None else ""
        if not job_id:
            return
        say(f"cancelling job {job_id}, the run under way")
        await self._cancel_job(job_id)

    async def _cancel_job(self, job_id: str) -> None:
        try:
            await trio.to_thread.run_sync(self._cancel, job_id)
        except MeshError as exc:
            say(f"job {job_id} could not be cancelled ({exc}); it runs on")

    def _cancel(self, job_id: str) -> None:
        with NodeClient(self.url) as client:
            client.cancel(job_id)


def say(line: str) -> None:
    print(f"mesh watch: {line}", file=sys.stderr, flush=True)
