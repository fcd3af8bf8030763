"""Which ``Host`` a signed request may name at this node: the addresses and names of this node.

Every node of a mesh holds the same key, so a signature alone cannot tell node A
from node B: a request captured on its way to A would be accepted by B. Signers
therefore sign the authority they address (the ``Host`` header, mesh.wire.auth), and
a node accepts only requests addressed to itself, which :class:`NodeAuthorities` decides:

- its advertised URL's host and port exactly (``--advertise``: what peers use, and the
  way to name a DNS name, a forwarded port or a proxy in front of the node);
- on the port it listens on: the address it listens on, or, listening on every
  interface, every address of this machine's interfaces (looked at again, at most
  every :data:`REFRESH` seconds, when a request names an address not seen yet: DHCP
  may change them), the loopback network, and the unspecified address;
- ``localhost`` and its usual aliases, when loopback reaches the node;
- this machine's host name, with or without a domain (``buildbox``, ``buildbox.lan``,
  ``buildbox.example.com``: any name whose first label is the host name), so that
  ``--node http://buildbox:7474`` works without naming every DNS form of it. Two
  nodes whose machines share a host name and a port are then told apart only by
  address (network namespaces on one machine share a host name: address them by IP).

A host that is none of these is refused with a message that says how to make the node
accept another name (``--advertise``); it does not list the names the node answers to,
since whoever sent the request has not yet shown the key.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable

import ifaddr

from mesh.errors import InvalidUrl
from mesh.urls import authority, host_port, ip_of, split_authority
from mesh.wire.auth import NotForThisNode

#: Seconds between two looks at the interfaces' addresses prompted by an unknown address.
REFRESH = 5.0
#: Most distinct accepted ``Host`` values remembered (then forgotten all at once).
MAX_REMEMBERED = 256
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_WILDCARD = frozenset({"0.0.0.0", "::", ""})
#: The ports a URL without one means (http, https).
DEFAULT_PORTS = frozenset({80, 443})


def interface_addresses() -> set[str]:
    """The IPv4 and IPv6 addresses of this machine's interfaces (IPv6 without a scope)."""
    found = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                found.add(str(ipaddress.ip_address(text.split("%", 1)[0])))
            except ValueError:
                continue
    return found


class NodeAuthorities:
    """The ``host[:port]`` forms a signed request may be addressed to at this node (see the module
    docstring). ``port``: the port it listens on (0 until :meth:`listen_on` says which)."""

    def __init__(
        self,
        listen_host: str,
        port: int,
        *,
        advertised: str | None = None,
        hostname: str | None = None,
        interfaces: Callable[[], set[str]] = interface_addresses,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listen_host = listen_host
        self.wildcard = listen_host in _WILDCARD
        self.port = port
        self.advertised: tuple[str, int] | None = None
        self.hostname = (hostname if hostname is not None else socket.gethostname()).lower().split(".", 1)[0]
        self._interfaces = interfaces
        self._clock = clock
        self._addresses: set[str] = set()
        self._accepted: dict[str, str] = {}  # Host header -> its normal form, for hosts that name this node
        self._looked_at = -float("inf")
        listen_ip = ip_of(listen_host)
        self.loopback_reaches = self.wildcard or listen_host in LOCAL_NAMES or bool(listen_ip and listen_ip.is_loopback)
        self._names = set(LOCAL_NAMES) if self.loopback_reaches else set()
        if listen_ip is not None and not self.wildcard:
            self._addresses.add(str(listen_ip))
        elif not self.wildcard:  # a name (hypercorn binds what it resolves to, once, as here)
            self._names.add(listen_host.lower())
            self._addresses |= _resolve(listen_host)
        self.listen_on(port, advertised)

    def listen_on(self, port: int, advertised: str | None = None) -> None:
        """The port the node is bound to, and the URL it advertises (once it is bound)."""
        self._accepted.clear()
        self.port = port
        self.advertised = host_port(advertised) if advertised else None
        if self.wildcard:
            self._refresh()

    def _refresh(self) -> None:
        self._looked_at = self._clock()
        self._addresses = self._interfaces()

    def check(self, host: str) -> str:
        """The normal form of ``host`` (a request's ``Host``: mesh.urls.authority) if it names this
        node; else raise NotForThisNode saying why. Hosts accepted once are remembered (a node
        sees few): a signed request checks its host with one dict lookup, not 10 us of parsing."""
        known = self._accepted.get(host)
        if known is not None:
            return known
        if len(self._accepted) >= MAX_REMEMBERED:
            self._accepted.clear()
        self._accepted[host] = self._check(host)
        return self._accepted[host]

    def _check(self, host: str) -> str:
        try:
            name, port = split_authority(host)
        except InvalidUrl as exc:
            raise NotForThisNode(f"malformed Host header: {exc}") from None
        if self.advertised is not None and name == self.advertised[0]:
            # A Host without a port names the default port of the scheme the client used, which
            # a Host does not say: it names the advertised URL only if that has a default port.
            if port == self.advertised[1] or (port is None and self.advertised[1] in DEFAULT_PORTS):
                return authority(host)
        if (port or 80) == self.port and self._is_this_host(name):
            return authority(host)
        # The names this node does answer to are not listed: the request is not yet known to
        # be signed with the key, and they (a VPN's address, say) are not everyone's to learn.
        raise NotForThisNode(
            f"this request is addressed to {host[:100]}, which is not this node: a signature made for "
            f"another node is not accepted here. If {host[:100]} does reach this node (a DNS name, a "
            f"forwarded port, a proxy), start the node with --advertise http://{host[:100]}"
        )

    def _is_this_host(self, name: str) -> bool:
        ip = ip_of(name)
        if ip is None:
            return name.split(".", 1)[0] == self.hostname or name in self._names
        if name in self._addresses:
            return True
        if not self.wildcard:
            return False
        if ip.is_loopback or ip.is_unspecified:
            return True
        if self._clock() - self._looked_at >= REFRESH:  # an address this machine may have gained
            self._refresh()
        return name in self._addresses


def _resolve(name: str) -> set[str]:
    try:
        return {str(ipaddress.ip_address(info[4][0])) for info in socket.getaddrinfo(name, None)}
    except (OSError, ValueError):
        return set()
