"""PeerClient: the async httpx client a node uses to talk to other nodes (under trio).

Layers as in httpx: this module builds the requests, :class:`~mesh.wire.client.MeshAuth`
signs them, the transport does the I/O. Transport failures and error statuses are
translated here, once, into :class:`~mesh.errors.NodeUnreachable` and
:class:`~mesh.errors.NodeError`. The two hot paths between nodes skip httpx for a
lean h11 client with the same signing: task offers (mesh.cluster.offerpost) and blob
fetches (mesh.cluster.blobget).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import trio

from mesh import codec
from mesh.cas.access import BlobAccess
from mesh.cas.digest import Digest
from mesh.cluster.blobget import get_blob, get_blobs
from mesh.cluster.offerpost import OfferConnections
from mesh.errors import CodecError, ExecError, NodeError, NodeUnreachable
from mesh.exec.action import Action, ActionResult
from mesh.sched.jobevents import JobEvent, JobFinished, JobSubmitted, Output, TaskFinished, from_wire
from mesh.wire.auth import MeshKey
from mesh.wire.client import FrameSplitter, MeshAuth, check, decode_response
from mesh.wire.formats import CBOR, PEER_HEADER

log = logging.getLogger("mesh.cluster.peer")

#: Seconds a gossip exchange may take before the peer counts as not answering.
GOSSIP_TIMEOUT = 2.0
#: Seconds a peer gets to take the cancel of a task this node offered it.
CANCEL_TIMEOUT = 5.0


class PeerClient:
    """Signed requests to any peer, over one pool of kept-alive connections."""

    def __init__(self, key: MeshKey, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.http = httpx.AsyncClient(
            auth=MeshAuth(key),
            headers={"accept": CBOR, "user-agent": "mesh-node", PEER_HEADER: "1"},
            timeout=httpx.Timeout(GOSSIP_TIMEOUT),
            trust_env=False,
            verify=False,  # peers speak plain http on the LAN; requests are signed instead
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, url: str, *, body: Any = None, timeout: float | None = None) -> Any:
        """One signed request with a CBOR body; returns the decoded answer."""
        content = None if body is None else codec.encode(body)
        headers = {"content-type": CBOR} if content is not None else None
        try:
            response = await self.http.request(
                method, url, content=content, headers=headers, timeout=timeout or GOSSIP_TIMEOUT
            )
        except httpx.HTTPError as exc:
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.ReadTimeout):
                raise NodeUnreachable(f"peer {url} does not answer ({type(exc).__name__})") from None
            raise NodeError(f"talking to peer {url} failed: {exc}") from None
        check(response)
        return decode_response(response)

    async def events(self, base_url: str, job_id: str) -> AsyncIterator[JobEvent]:
        """The events of the peer's job ``job_id``, live until it finishes (NodeError when the
        peer cannot be asked, or sends what is not an event)."""
        splitter = FrameSplitter(f"peer {base_url}")
        try:
            async with self.http.stream(
                "GET", f"{base_url}/v1/jobs/{job_id}/events", timeout=httpx.Timeout(None, connect=GOSSIP_TIMEOUT)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    check(response)
                async for chunk in response.aiter_raw():
                    for wire in splitter.feed(chunk):
                        try:
                            event = from_wire(wire)
                        except CodecError as exc:
                            raise NodeError(f"peer {base_url} sent a malformed job event: {exc}") from None
                        if event is not None:
                            yield event
        except httpx.HTTPError as exc:
            raise NodeError(f"following job {job_id} on peer {base_url} failed: {exc}") from None

    async def gossip(self, base_url: str, message: dict[str, Any]) -> Any:
        """Push our table to a peer; its answer is its own table (push-pull)."""
        return await self.request("POST", base_url.rstrip("/") + "/v1/gossip", body=message)


class TaskOffers:
    """Running a task on a peer: offer it as a pinned one-task job and follow its events.

    A task that runs without the action cache (its job's ``no_cache``, or its own: a
    pipeline step's ``cache: false``) is offered as a ``no_cache`` job: the peer neither
    answers it from its cache nor records its result there, as this node would not.

    The peer fetches the input's missing blobs from ``source`` (this node) before it
    accepts; it answers 409 when it has no free slot (PeerDeclined). A stream that
    ends before the job does means the peer was lost (NodeError): the coordinator
    places the task again. A run cancelled here (its job was cancelled) cancels the
    peer's job too, which kills the task there, and hands ``on_cancel`` what the task
    wrote there until then.
    """

    def __init__(self, client: PeerClient, source: Callable[[], str]) -> None:
        self.client = client
        self.source = source
        self.connections = OfferConnections()

    async def aclose(self) -> None:
        """Close the connections kept for offers."""
        await self.connections.aclose()

    async def run(
        self,
        url: str,
        task_key: str,
        action: Action,
        on_output: Callable[[str, bytes], Awaitable[None]],
        on_cancel: Callable[[ActionResult], None] | None = None,
        *,
        no_cache: bool = False,
    ) -> ActionResult:
        job = {
            "tasks": [{"name": "offered", **action.to_wire()}],
            "label": f"offered {task_key}",
            "pinned": True,
            "no_cache": no_cache,
        }
        target = f"/v1/jobs?follow=1&offer=1&source={quote(self.source(), safe=':/')}"
        result: ActionResult | None = None
        reason: str | None = None
        peer_job: str | None = None
        try:
            async with contextlib.aclosing(
                self.connections.post(self._key(), url, target, codec.encode(job))
            ) as events:
                async for wire in events:
                    try:
                        event = from_wire(wire)
                    except CodecError as exc:
                        raise NodeError(f"peer {url} sent a malformed job event: {exc}") from None
                    if isinstance(event, JobSubmitted):
                        peer_job = event.job
                    elif isinstance(event, Output):
                        await on_output(event.stream, event.data)
                    elif isinstance(event, TaskFinished):
                        result, reason = event.result, event.reason
                    elif isinstance(event, JobFinished):
                        if result is None:
                            raise ExecError(f"on peer {url}: {reason or 'the task did not run'}")
                        return result
        except trio.Cancelled:
            if peer_job is not None:
                killed = await self._cancel(url, peer_job)
                if killed is not None and on_cancel is not None:
                    on_cancel(killed)
            raise
        raise NodeError(f"peer {url} ended the task's event stream before the task finished")

    async def _cancel(self, url: str, job_id: str) -> ActionResult | None:
        """Cancel the job of a task this node offered and no longer follows (its own job was
        cancelled), and return what the task wrote there until the kill (the peer's result of
        the cancelled task; its blobs stay there, fetched like any a peer holds). Shielded, for
        at most CANCEL_TIMEOUT seconds; a peer that cannot be told is logged, and its task
        runs to its end there."""
        result: ActionResult | None = None
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_TIMEOUT):
            try:
                await self.client.request("POST", f"{url}/v1/jobs/{job_id}/cancel", timeout=CANCEL_TIMEOUT)
                async for event in self.client.events(url, job_id):
                    if isinstance(event, TaskFinished):
                        result = event.result
                    elif isinstance(event, JobFinished):
                        break
            except NodeError as exc:
                log.warning("job %s on peer %s could not be cancelled: %s", job_id, url, exc)
        return result

    async def fetch(self, url: str, digest: Digest, store: BlobAccess) -> bool:
        """Copy one blob from the peer at ``url`` into ``store``, verified. False if it lacks it."""
        return await get_blob(self._key(), url, digest, store)

    async def fetch_many(self, url: str, digests: list[Digest], store: BlobAccess) -> list[Digest]:
        """Copy many blobs from the peer at ``url`` in one request; returns those that arrived."""
        return await get_blobs(self._key(), url, digests, store)

    def _key(self) -> MeshKey:
        auth = self.client.http.auth
        assert isinstance(auth, MeshAuth)
        return auth.key
