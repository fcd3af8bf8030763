"""The HTTP protocol every side of mesh speaks: what a node serves and its clients send.

- :mod:`~mesh.wire.auth` (with :mod:`~mesh.wire.nonces`): signing a request with the mesh
  key, and checking a signature (time window, nonce, the authority it was addressed to).
- :mod:`~mesh.wire.formats`: media types, headers and the framing of event streams.
- :mod:`~mesh.wire.records`: the record stream of batched blob uploads and downloads.
- :mod:`~mesh.wire.client`: NodeClient, the CLI's HTTP client of one node.
- :mod:`~mesh.wire.upload`: sending a tree a node misses, straight from the files.

Layer: above :mod:`mesh.cas`, below everything that talks HTTP: the cluster's peer
clients (:mod:`mesh.cluster`), the server (:mod:`mesh.api`) and the CLI.
"""
