"""``mesh watch DIR``: the watcher, a client process that keeps a node's live snapshot of a
directory (mesh.watcher.loop), woken by OS notifications and periodic rescans
(mesh.watcher.changes), registered with the node and beating (mesh.watcher.link), running
the directory's pipeline on each settled change with ``--run`` (mesh.watcher.runs).

Unlike the other client commands it runs on trio, as ``mesh up`` does: it waits on
notifications, timers and the node at once for as long as it runs, and its start-up
cost (~0.3 s) is paid once. The node's side is mesh.watch.
"""
