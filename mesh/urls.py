"""Peer URLs and request authorities: the one place that says what a valid one is.

A URL naming a node enters a node from outside in five places: gossip (every
member names its URL), mDNS records, ``--peer`` seeds (and ``--advertise``), a
steal request's ``thief`` and a task offer's ``source``. Each passes through
:func:`peer_url`, which either returns the URL in one normal form or raises
:class:`~mesh.errors.InvalidUrl` saying what is wrong; each caller decides what a
refusal means there (a gossip member dropped with a log line, a usage error, a
400). A URL that got in unchecked once (a signed gossip advertising port 99999)
made every later blob miss answer 500, since the socket layer raises
OverflowError, not OSError, for such a port.

:func:`authority` is the same for the ``Host`` of a request (``host[:port]``): the
signer and the verifier of mesh.wire.auth both sign and check its normal form.
"""

from __future__ import annotations

import ipaddress
import re

from mesh.errors import InvalidUrl

#: Longest peer URL accepted, in characters.
MAX_URL = 1024
_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A DNS name: labels of letters, digits, '-' and '_' (some LANs use it), 1-63 characters,
# not starting or ending with '-'; 253 characters in all.
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_PATH = re.compile(r"[A-Za-z0-9._~/%-]*")
_AUTHORITY = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\[\]:]+))(?::(?P<port>[0-9]{1,5}))?")


def host_name(text: str) -> str:
    """A host in normal form: an IP address as ``ipaddress`` writes it (IPv6 without brackets),
    or a DNS name in lower case without a trailing dot. Raises InvalidUrl."""
    if not text:
        raise InvalidUrl("the host is empty")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower().removesuffix(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidUrl(f"host {text[:80]!r} is neither an IP address nor a DNS name (letters, digits, '-' and '.')")
    return name


def _port(text: str | None, default: int) -> int:
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) <= 65535:
        raise InvalidUrl(f"port {text[:20]!r} is not a number from 1 to 65535")
    return int(text)


def netloc(host: str, port: int | None) -> str:
    """``host:port`` (``[v6]:port``; the host alone when ``port`` is None): how URLs and ``Host`` name a node."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def peer_url(text: str) -> str:
    """``text`` as the URL of a node: ``http(s)://host[:port][/path]``, in normal form (scheme and
    host in lower case, IP addresses as ``ipaddress`` writes them, no trailing ``/``).

    Refused (InvalidUrl, saying why): another scheme, a user or password, an empty host,
    a host that is neither an IP address nor a DNS name, a port outside 1-65535, a query
    or fragment, white space or control characters, more than MAX_URL characters.
    """
    if not isinstance(text, str):
        raise InvalidUrl("a URL must be text")
    if len(text) > MAX_URL:
        raise InvalidUrl(f"a URL may have at most {MAX_URL} characters, not {len(text)}")
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise InvalidUrl(f"{text[:80]!r} holds white space, control or non-ASCII characters")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise InvalidUrl(f"{text[:80]!r} is not an http:// or https:// URL")
    scheme = scheme.lower()
    location, slash, path = rest.partition("/")
    if "?" in rest or "#" in rest:
        raise InvalidUrl(f"{text[:80]!r} has a query or fragment; a node's URL has neither")
    if "@" in location:
        raise InvalidUrl(f"{text[:80]!r} holds a user name or password; a node's URL has none")
    host, port = split_authority(location)
    if not _PATH.fullmatch(path):
        raise InvalidUrl(f"the path of {text[:80]!r} holds characters a node's URL does not use")
    path = (slash + path).rstrip("/")
    return f"{scheme}://{netloc(host, port)}{path}"


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``text`` is, or None when it is a name."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_port(url: str) -> tuple[str, int]:
    """The host (normal form, IPv6 without brackets) and port (default for the scheme) of a
    URL :func:`peer_url` accepts. Raises InvalidUrl."""
    host, port, _ = address(url)
    return host, port


def address(url: str) -> tuple[str, int, str]:
    """Where to connect for the node at ``url`` and what to name it in ``Host``: (host, port,
    authority), the host without brackets, the port made explicit. Raises InvalidUrl."""
    normal = peer_url(url)
    scheme, _, rest = normal.partition("://")
    location = rest.partition("/")[0]
    host, port = split_authority(location)
    return host, _DEFAULT_PORTS[scheme] if port is None else port, location


def split_authority(text: str) -> tuple[str, int | None]:
    """The host (normal form, IPv6 without brackets) and port (None when absent) of a request's
    ``Host`` (``host[:port]``, ``[v6][:port]``). Raises InvalidUrl."""
    if len(text) > 300:
        raise InvalidUrl(f"a host of {len(text)} characters is too long")
    match = _AUTHORITY.fullmatch(text)
    if match is None:
        raise InvalidUrl(f"{text[:80]!r} does not name a host and port (host, host:port or [v6]:port)")
    v6 = match.group("v6")
    if v6 is not None and not isinstance(ip_of(v6), ipaddress.IPv6Address):
        raise InvalidUrl(f"{v6!r} in brackets is not an IPv6 address")
    host = host_name(v6 if v6 is not None else match.group("host"))
    port_text = match.group("port")
    return host, None if port_text is None else _port(port_text, 0)


def authority(text: str) -> str:
    """The normal form of a request's ``Host``: what signers sign and verifiers check. Raises InvalidUrl."""
    return netloc(*split_authority(text))
