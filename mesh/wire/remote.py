"""NodeBackedStore: the local store with a node's store behind it, for reading a node's snapshots.

When to use it: where the CLI reads snapshots that a node holds and this machine may
not (``mesh ls``/``cat``/``checkout --node``, ``mesh exec --out``): a blob the local
store lacks is fetched from the node over the signed API (``GET /v1/blobs/ID``),
verified as it streams into the local store (a wrong byte, a short answer or a node
that lacks it stores nothing), and then read from there like any other. Only what is
read is fetched: ``mesh ls ID PATH`` costs the directory nodes on the path, ``mesh
cat`` those and the one file, not the whole tree. It is a BlobAccess decorator
(mesh.cas.access), so mesh.cas.snapshot's readers take it as they take the store.
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh.cas.access import BlobAccess
from mesh.cas.blobio import BlobReader, BlobWriter
from mesh.cas.digest import Digest
from mesh.cas.snapshot import missing_levels
from mesh.errors import BlobNotFound, NodeError
from mesh.wire.client import NodeClient


class NodeBackedStore:
    """``local`` first; a blob it lacks is copied in from the node ``client`` talks to.

    Raises BlobNotFound when neither holds the blob, and NodeError when the node's
    answer is refused (its bytes do not match the digest, it was cut short) or the
    node cannot be reached. The caller owns ``local`` and ``client``.
    """

    def __init__(self, local: BlobAccess, client: NodeClient) -> None:
        self.local = local
        self.client = client
        self.fetched = 0  # blobs copied in from the node

    def __repr__(self) -> str:
        return f"NodeBackedStore({self.client.url})"

    def fetch(self, digest: Digest) -> None:
        """Copy ``digest`` in from the node unless the local store holds it already."""
        if self.local.has(digest):
            return
        try:
            with self.local.writer(expected=digest) as writer:
                for chunk in self.client.stream_blob(digest):  # the writer verifies too
                    writer.write(chunk)
                writer.commit()
        except NodeError as exc:
            if exc.status == 404:
                raise BlobNotFound(digest, where=f"in the local store, nor at {self.client.url}") from None
            raise NodeError(
                f"{digest} could not be read from {self.client.url}, and none of it was kept: {exc}"
            ) from None
        self.fetched += 1

    def fetch_snapshot(self, root: Digest) -> None:
        """Copy in whatever the local store lacks of snapshot ``root``, a level of the tree at a time."""
        self.fetch(root)
        for missing in missing_levels(self.local, root):
            for digest in missing:
                self.fetch(digest)

    # -- BlobAccess ----------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        return self.local.has(digest)

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        return self.local.find_missing(digests)

    def open(self, digest: Digest, *, check_first: bool = False) -> BlobReader:
        self.fetch(digest)
        return self.local.open(digest, check_first=check_first)

    def get(self, digest: Digest) -> bytes:
        self.fetch(digest)
        return self.local.get(digest)

    def put(self, data: bytes | bytearray | memoryview) -> Digest:
        return self.local.put(data)

    def writer(self, expected: Digest | None = None) -> BlobWriter:
        return self.local.writer(expected)
