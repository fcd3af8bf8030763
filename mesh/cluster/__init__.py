"""The cluster: what a node does with its peers. So far the mesh-wide action cache
(``actioncache``) and the claims that make identical work in flight run once (``inflight``).

Membership, gossip, discovery and the peer clients join this package later (today in
mesh.peering, mesh.peerstore, mesh.sched.gossip, mesh.sched.membership, mesh.discovery).
Its layer is beside mesh.sched: it may import cas, exec and sched, never api, node or cli;
what it needs of the network it is handed as a narrow interface (mesh.peering serves it).
"""
