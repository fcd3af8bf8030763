"""The mesh: what one node knows of the others and how it talks to them.

- :mod:`~mesh.cluster.membership` and :mod:`~mesh.cluster.gossip`: the peer table, spread
  by gossip, with its failure detector (alive, suspect, dead).
- :mod:`~mesh.cluster.mdns`: discovery on a LAN (zeroconf); static seeds are parsed by
  :mod:`mesh.seeds` with the rest of the configuration.
- :mod:`~mesh.cluster.peer`, :mod:`~mesh.cluster.blobget`, :mod:`~mesh.cluster.offerpost`:
  the clients a node uses to call its peers (blobs, task offers, gossip, steals).
- :mod:`~mesh.cluster.peerstore`: blobs fetched from whichever live peer holds them.
- :mod:`~mesh.cluster.peering`: the node's side of the mesh, composing the above for the
  scheduler (candidates for placement, running a task on a peer, stealing) and the API.
- :mod:`~mesh.cluster.actioncache`: the mesh-wide action cache (peers asked on a local
  miss), and :mod:`~mesh.cluster.inflight`: the claims that make identical work in flight
  run once across the mesh.
- :mod:`~mesh.cluster.intake`: taking jobs in (submissions, and tasks peers offer).

Layer: above :mod:`mesh.sched` (it hands the scheduler its peers), below :mod:`mesh.api`.
"""
