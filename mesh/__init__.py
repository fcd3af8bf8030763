"""mesh: a peer-to-peer, content-addressed build mesh.

Public names are re-exported here from the modules that define them.
"""

from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore, Store
from mesh.errors import (
    BlobNotFound,
    CheckoutConflict,
    CodecError,
    DigestMismatch,
    InvalidDigest,
    InvalidTree,
    MeshError,
    PathNotFound,
    SnapshotError,
    StoreError,
    UnsupportedFile,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "BlobNotFound",
    "CheckoutConflict",
    "CodecError",
    "Digest",
    "DigestMismatch",
    "InvalidDigest",
    "InvalidTree",
    "LocalStore",
    "MeshError",
    "PathNotFound",
    "SnapshotError",
    "Store",
    "StoreError",
    "UnsupportedFile",
    "UsageError",
    "__version__",
]
