"""The mesh key: request signing by clients and peers, and checking by nodes.

Every node and client of one mesh holds the same 32-byte key. A request that can
cause work or write data carries four headers:

- ``x-mesh-time``: seconds since the epoch (an integer) when it was signed;
- ``x-mesh-nonce``: 16 random bytes in hex, never reused;
- ``x-mesh-body``: the BLAKE3 hex of the body, or ``content-addressed`` for
  blob uploads, whose every byte is verified against the digests they are sent
  under anyway (so a streamed body needs no second pass);
- ``x-mesh-signature``: BLAKE3 in keyed mode, with the mesh key, over
  ``method \n authority \n path?query \n time \n nonce \n body`` (hex), where
  ``authority`` is the ``Host`` the request is sent with, in the normal form of
  :func:`mesh.urls.authority`.

A node refuses (401), before any work, a request whose headers are missing,
malformed or given twice (:func:`signed_headers`, :meth:`Verifier.admit`); that is
addressed to another host than this node's own (mesh.api.authorities: every node
of a mesh holds the key, so a request captured on its way to one node must not be
accepted by another); whose time is more than :data:`MAX_SKEW` seconds away from
its own clock; whose body digest or signature is wrong; or whose nonce it has
already seen within that window, before or after a restart (mesh.wire.nonces). The
mesh id, a fingerprint of the key that is safe to publish (mDNS TXT records carry
it), lets nodes of different meshes on one LAN ignore each other.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import blake3

from mesh.errors import ConfigError, MeshError, UsageError
from mesh.urls import address
from mesh.urls import authority as normal_authority
from mesh.wire.nonces import NonceLog

KEY_BYTES = 32
#: Seconds a signed request stays valid either side of the node's clock.
MAX_SKEW = 60
#: The body marker of uploads whose bytes are checked against their digests.
CONTENT_ADDRESSED = "content-addressed"
#: Paths (prefixes) whose PUT/POST bodies are signed as content-addressed.
UPLOAD_PATHS = ("/v1/blobs/", "/v1/blobs:upload")
HEADERS = ("x-mesh-time", "x-mesh-nonce", "x-mesh-body", "x-mesh-signature")
#: The form of every ``x-mesh-*`` header a request may carry (``x-mesh-peer``: mesh.wire.formats),
#: checked before anything else: a 400-digit time once overflowed a float into a 500.
FORMS = {
    "x-mesh-time": (re.compile(r"[0-9]{1,12}"), "whole seconds since the epoch (at most 12 digits)"),
    "x-mesh-nonce": (re.compile(r"[0-9a-f]{32}"), "32 lower-case hex digits"),
    "x-mesh-body": (re.compile(r"[0-9a-f]{64}|content-addressed"), "64 lower-case hex digits or content-addressed"),
    "x-mesh-signature": (re.compile(r"[0-9a-f]{64}"), "64 lower-case hex digits"),
    "x-mesh-peer": (re.compile(r"1"), "1"),
}
#: Seconds a nonce is remembered past the end of its signature's validity (clock steps).
NONCE_MARGIN = 5
_ID_CONTEXT = b"mesh id v1"


class AuthError(MeshError):
    """A request is not signed with this mesh's key, or is stale or replayed (HTTP 401)."""


class NotForThisNode(AuthError):
    """A signed request is addressed to another host than this node (mesh.api.authorities)."""


@dataclass(frozen=True)
class MeshKey:
    """The shared secret of one mesh. Its repr never shows the secret."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise UsageError(f"a mesh key is {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits), not {len(self.secret)}")

    def __repr__(self) -> str:
        return f"MeshKey(id={self.mesh_id})"

    @property
    def mesh_id(self) -> str:
        """A public fingerprint of the key (16 hex digits)."""
        return blake3.blake3(_ID_CONTEXT, key=self.secret).hexdigest()[:16]

    def text(self) -> str:
        return self.secret.hex()

    @classmethod
    def parse(cls, text: str) -> MeshKey:
        cleaned = text.strip()
        try:
            secret = bytes.fromhex(cleaned)
        except ValueError:
            raise UsageError(f"a mesh key is {2 * KEY_BYTES} hex digits; this is not hex") from None
        return cls(secret)

    @classmethod
    def generate(cls) -> MeshKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    def mac(self, message: bytes) -> str:
        return blake3.blake3(message, key=self.secret).hexdigest()


def key_path(home: str) -> str:
    return os.path.join(home, "mesh.key")


def load_key(home: str, *, key_file: str | None = None, create: bool = False) -> MeshKey | None:
    """The mesh key: ``MESH_KEY``, else ``key_file``, else ``$MESH_HOME/mesh.key``.

    With ``create`` (``mesh up``), a missing key file is made (0600) with a new key.
    Returns None when there is no key and ``create`` is false. ConfigError, naming where
    the key came from, if it cannot be read or is not a key, or if ``key_file`` is absent.
    """
    env = os.environ.get("MESH_KEY")
    if env:
        return _parse_key(env, "MESH_KEY", "set it to")
    path = key_file or key_path(home)
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return _parse_key(f.read(), f"the mesh key file {path}", "put in it")
    except FileNotFoundError:
        if key_file is not None:
            raise ConfigError(
                f"--key-file {key_file} does not exist; give the file that holds your mesh's key,"
                " or leave --key-file out to use $MESH_HOME/mesh.key"
            ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the mesh key file {path}: {exc.strerror}; make it a readable file") from None
    if not create:
        return None
    key = MeshKey.generate()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.text() + "\n")
    try:
        os.link(tmp, path)  # never replace a key another process just made
    except FileExistsError:
        os.unlink(tmp)
        return load_key(home, key_file=key_file)
    os.unlink(tmp)
    return key


def _parse_key(text: str, source: str, fix: str) -> MeshKey:
    """The key in ``text`` read from ``source``; ConfigError saying where it came from if it is none."""
    try:
        return MeshKey.parse(text)
    except UsageError as exc:
        raise ConfigError(
            f"{source} holds no mesh key ({exc}); {fix} your mesh's key (`mesh key show` on one of its nodes prints it)"
        ) from None


def _message(method: str, authority: str, target: str, timestamp: str, nonce: str, body: str) -> bytes:
    return "\n".join((method.upper(), authority, target, timestamp, nonce, body)).encode()


def body_digest(body: bytes) -> str:
    return blake3.blake3(body).hexdigest()


def sign(
    key: MeshKey, method: str, target: str, body: bytes | str, *, authority: str, now: float | None = None
) -> dict[str, str]:
    """The headers that sign a request. ``target`` is the path with its query string; ``body``
    the bytes, or :data:`CONTENT_ADDRESSED` for blob uploads; ``authority`` the ``Host`` header
    the request is sent with (``host:port``): only the node addressed so accepts it.
    Raises InvalidUrl for a malformed ``authority``."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    digest = body if isinstance(body, str) else body_digest(body)
    message = _message(method, normal_authority(authority), target, timestamp, nonce, digest)
    return {
        "x-mesh-time": timestamp,
        "x-mesh-nonce": nonce,
        "x-mesh-body": digest,
        "x-mesh-signature": key.mac(message),
    }


def signed_request(
    key: MeshKey, method: str, base_url: str, target: str, body: bytes | str, headers: list[tuple[str, str]]
) -> tuple[str, int, str, list[tuple[str, str]]]:
    """A request of the lean h11 clients (mesh.cluster.blobget, mesh.cluster.offerpost) to the node at
    ``base_url``: where to connect (host, port), the request target (the base URL's path, then
    ``target``) and its headers: ``Host``, ``headers``, then the signature for that Host.
    Raises InvalidUrl for a malformed ``base_url``."""
    host, port, authority = address(base_url)
    path = urlsplit(base_url).path.rstrip("/") + target
    signature = sign(key, method, path, body, authority=authority)
    return host, port, path, [("host", authority), *headers, *signature.items()]


def signed_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The ``host`` and ``x-mesh-*`` headers of a request (names in lower case), refusing
    (AuthError) one given twice or an ``x-mesh-*`` header mesh does not know."""
    found: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        if name != "host" and not name.startswith("x-mesh-"):
            continue
        if name not in FORMS and name != "host":
            raise AuthError(f"unknown header {name[:40]}: mesh sends only {', '.join(FORMS)}")
        if name in found:
            raise AuthError(f"header {name} is given twice")
        found[name] = value
    return found


@dataclass(frozen=True)
class Admitted:
    """The signature headers of a request that passed :meth:`Verifier.admit`."""

    authority: str
    timestamp: str
    nonce: str
    digest: str
    signature: str


class Verifier:
    """Checks signed requests for one node: form, host, freshness, signature, replays.

    ``authorities`` decides which ``Host`` names this node (mesh.api.authorities);
    the nonces seen are kept in ``nonces_path`` too (mesh.wire.nonces; None: in memory
    only). Close it to close that file.
    """

    def __init__(
        self,
        key: MeshKey,
        *,
        authorities: Authorities,
        nonces_path: str | None = None,
        max_skew: int = MAX_SKEW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.authorities = authorities
        self.max_skew = max_skew
        self._clock = clock
        # A record lives at most 2 * max_skew + NONCE_MARGIN after it is written (signed up to
        # max_skew ahead of this clock): a file rotated that often holds none still needed.
        self.nonces = NonceLog(nonces_path, rotate=2 * max_skew + NONCE_MARGIN + 1, now=self._now())

    def close(self) -> None:
        self.nonces.close()

    def check(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None, *, content_addressed: bool
    ) -> None:
        """Raise AuthError unless the request is signed with this mesh's key, for this node, fresh
        and new. ``headers``: its ``host`` and ``x-mesh-*`` headers (see :func:`signed_headers`);
        ``body`` its bytes, or None for a content-addressed upload (then the signed body marker
        must say so)."""
        self.verify(self.admit(headers), method, target, body, content_addressed=content_addressed)

    def admit(self, headers: Mapping[str, str]) -> Admitted:
        """What can be checked before the body is read: every header's form, the host, the time.
        Raises AuthError."""
        missing = [h for h in HEADERS if not headers.get(h)]
        if missing:
            raise AuthError(f"unsigned request (missing {', '.join(missing)}): sign it with the mesh key")
        for name, (form, what) in FORMS.items():
            value = headers.get(name)
            if value is not None and not form.fullmatch(value):
                raise AuthError(f"malformed {name} header: it must be {what}")
        host = headers.get("host")
        if not host:
            raise AuthError("no Host header: a signed request names the node it is for")
        authority = self.authorities.check(host)  # NotForThisNode
        timestamp, nonce, digest, signature = (headers[h] for h in HEADERS)
        now = self._now()
        if abs(now - int(timestamp)) > self.max_skew:
            raise AuthError(
                f"stale request: signed at {timestamp}, {abs(now - int(timestamp)):.0f} s from this node's clock "
                f"(at most {self.max_skew} s); check the clocks"
            )
        return Admitted(authority, timestamp, nonce, digest, signature)

    def verify(
        self, admitted: Admitted, method: str, target: str, body: bytes | None, *, content_addressed: bool
    ) -> None:
        """The rest of :meth:`check`, once the body is read: its digest, the signature, the nonce."""
        expected_digest = CONTENT_ADDRESSED if content_addressed else body_digest(body or b"")
        if not hmac.compare_digest(admitted.digest, expected_digest):
            raise AuthError("the signed body digest does not match the body")
        message = _message(method, admitted.authority, target, admitted.timestamp, admitted.nonce, admitted.digest)
        if not hmac.compare_digest(admitted.signature, self.key.mac(message)):
            raise AuthError(
                "bad signature: this request was not signed with this mesh's key "
                f"(or not for {admitted.authority}: a proxy in between must keep the Host header)"
            )
        # Fresh still, now that its body is in: a nonce is remembered only until its signature
        # expires, so a copy whose body was held back past that would find it forgotten.
        now = self._now()
        signed = int(admitted.timestamp)
        if now - signed > self.max_skew:
            raise AuthError(
                f"stale request: its body arrived {now - signed:.0f} s after it was signed "
                f"(at most {self.max_skew} s); send it again"
            )
        if not self.nonces.add(bytes.fromhex(admitted.nonce), signed + self.max_skew + NONCE_MARGIN, now):
            raise AuthError("replayed request: this nonce was used already")

    def _now(self) -> float:
        return float(self._clock())


class Authorities(Protocol):
    """What a Verifier asks about hosts (mesh.api.authorities.NodeAuthorities is the node's)."""

    def check(self, host: str) -> str:
        """The normal form of ``host`` (a ``Host`` header: mesh.urls.authority) if it names this
        node; else raise NotForThisNode, saying why."""
