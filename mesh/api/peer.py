"""PeerClient: the async httpx client a node uses to talk to other nodes (under trio).

Layers as in httpx: this module builds the requests, :class:`~mesh.api.client.MeshAuth`
signs them, the transport does the I/O. Transport failures and error statuses are
translated here, once, into :class:`~mesh.errors.NodeUnreachable` and
:class:`~mesh.errors.NodeError`.
"""

from __future__ import annotations

from typing import Any

import httpx

from mesh import codec
from mesh.api.auth import MeshKey
from mesh.api.client import MeshAuth, check, decode_response
from mesh.api.wire import CBOR
from mesh.errors import NodeError, NodeUnreachable

#: Seconds a gossip exchange may take before the peer counts as not answering.
GOSSIP_TIMEOUT = 2.0


class PeerClient:
    """Signed requests to any peer, over one pool of kept-alive connections."""

    def __init__(self, key: MeshKey, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.http = httpx.AsyncClient(
            auth=MeshAuth(key),
            headers={"accept": CBOR, "user-agent": "mesh-node"},
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

    async def gossip(self, base_url: str, message: dict[str, Any]) -> Any:
        """Push our table to a peer; its answer is its own table (push-pull)."""
        return await self.request("POST", base_url.rstrip("/") + "/v1/gossip", body=message)
