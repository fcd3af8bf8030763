"""mesh: a peer-to-peer, content-addressed build mesh.

Public names are re-exported here from the modules that define them, loaded on
first use (PEP 562) so that ``import mesh.cli`` stays cheap: the CLI imports only
what the command it runs needs.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Digest": "mesh.cas.digest",
    "LocalStore": "mesh.cas.store",
    "Store": "mesh.cas.store",
    "BlobDamaged": "mesh.errors",
    "BlobNotFound": "mesh.errors",
    "CheckoutConflict": "mesh.errors",
    "CodecError": "mesh.errors",
    "DigestMismatch": "mesh.errors",
    "DiskFull": "mesh.errors",
    "InvalidDigest": "mesh.errors",
    "InvalidTree": "mesh.errors",
    "MeshError": "mesh.errors",
    "PathNotFound": "mesh.errors",
    "SnapshotError": "mesh.errors",
    "StateError": "mesh.errors",
    "StateFull": "mesh.errors",
    "StoreCapReached": "mesh.errors",
    "StoreError": "mesh.errors",
    "StoreFull": "mesh.errors",
    "UnsupportedFile": "mesh.errors",
    "UsageError": "mesh.errors",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> object:  # not typing.Any: importing typing costs mesh cc ~2-9 ms
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
