"""Watched directories on the node's side (``mesh watch``): the registry of a node's watchers
and their health (registry), the mesh-wide ``/files`` list (files), and the service the API
calls (service). The watcher itself, a client process, is mesh.watcher."""
