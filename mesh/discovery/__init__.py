"""Finding peers: mDNS/zeroconf on a LAN (:mod:`mesh.discovery.mdns`), static seeds elsewhere."""
