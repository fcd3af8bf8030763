"""BlobAccess: the store as its callers use it, whichever store stands behind it.

When to use it: as the type of any parameter or attribute that reads or writes blobs
and needs nothing of the store's layout (its files, shards, pins, quarantine, space):
the HTTP handlers, the record streams of batched transfers, the peer clients that
copy blobs in, the peer fallback. :class:`mesh.cas.store.LocalStore` is the one
implementation; the interface is small, like Buildbarn's BlobAccess, so that a
decorator (a store with its peers behind it, one that counts) can stand in for it.

Every read is verified: ``open`` gives a stream that checks the blob's hash as the
bytes pass and raises BlobDamaged (quarantining the file) instead of handing out the
bytes that complete a damaged blob; ``get`` checks before it returns. Every write is
verified: a writer with an expected digest refuses bytes that do not hash to it.
An absent blob is BlobNotFound, its own exception, which decorators branch on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from mesh.cas.blobio import BlobReader, BlobWriter
from mesh.cas.digest import Digest


class BlobAccess(Protocol):
    """Find what is missing, read verified, write verified."""

    def has(self, digest: Digest) -> bool:
        """Whether the blob is here (a stat: its bytes are checked when read)."""
        ...

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """Those of ``digests`` that are not here, in their order."""
        ...

    def open(self, digest: Digest, *, check_first: bool = False) -> BlobReader:
        """A stream of the blob's bytes, verified as they pass (BlobNotFound when absent)."""
        ...

    def get(self, digest: Digest) -> bytes:
        """The blob's bytes, verified (BlobNotFound when absent, BlobDamaged when damaged)."""
        ...

    def put(self, data: bytes | bytearray | memoryview) -> Digest:
        """Store ``data``; its digest."""
        ...

    def writer(self, expected: Digest | None = None) -> BlobWriter:
        """A writer that streams a blob in and publishes it on commit, verified against ``expected``."""
        ...
