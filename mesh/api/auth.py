"""The mesh key: request signing by clients and peers, and checking by nodes.

Every node and client of one mesh holds the same 32-byte key. A request that can
cause work or write data carries four headers:

- ``x-mesh-time``: seconds since the epoch (an integer) when it was signed;
- ``x-mesh-nonce``: 16 random bytes in hex, never reused;
- ``x-mesh-body``: the BLAKE3 hex of the body, or ``content-addressed`` for
  blob uploads, whose every byte is verified against the digests they are sent
  under anyway (so a streamed body needs no second pass);
- ``x-mesh-signature``: BLAKE3 in keyed mode, with the mesh key, over
  ``method \\n path?query \\n time \\n nonce \\n body`` (hex).

A node refuses (401) a request whose signature is missing or wrong, whose time
is more than :data:`MAX_SKEW` seconds away from its own clock, or whose nonce it
has already seen within that window (a replay). The mesh id, a fingerprint of
the key that is safe to publish (mDNS TXT records carry it), lets nodes of
different meshes on one LAN ignore each other.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import blake3

from mesh.errors import ConfigError, MeshError, UsageError

KEY_BYTES = 32
#: Seconds a signed request stays valid either side of the node's clock.
MAX_SKEW = 60
#: The body marker of uploads whose bytes are checked against their digests.
CONTENT_ADDRESSED = "content-addressed"
#: Paths (prefixes) whose PUT/POST bodies are signed as content-addressed.
UPLOAD_PATHS = ("/v1/blobs/", "/v1/blobs:upload")
HEADERS = ("x-mesh-time", "x-mesh-nonce", "x-mesh-body", "x-mesh-signature")
_ID_CONTEXT = b"mesh id v1"


class AuthError(MeshError):
    """A request is not signed with this mesh's key, or is stale or replayed (HTTP 401)."""


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


def _message(method: str, target: str, timestamp: str, nonce: str, body: str) -> bytes:
    return "\n".join((method.upper(), target, timestamp, nonce, body)).encode()


def body_digest(body: bytes) -> str:
    return blake3.blake3(body).hexdigest()


def sign(key: MeshKey, method: str, target: str, body: bytes | str, *, now: float | None = None) -> dict[str, str]:
    """The headers that sign a request. ``target`` is the path with its query string;
    ``body`` the bytes, or :data:`CONTENT_ADDRESSED` for blob uploads."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    digest = body if isinstance(body, str) else body_digest(body)
    return {
        "x-mesh-time": timestamp,
        "x-mesh-nonce": nonce,
        "x-mesh-body": digest,
        "x-mesh-signature": key.mac(_message(method, target, timestamp, nonce, digest)),
    }


class Verifier:
    """Checks signed requests for one node: signature, freshness, and replays (nonces seen)."""

    def __init__(self, key: MeshKey, *, max_skew: int = MAX_SKEW, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.max_skew = max_skew
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None, *, content_addressed: bool
    ) -> None:
        """Raise AuthError unless the request is signed with this mesh's key, fresh and new.

        ``body`` is the request's bytes, or None for a content-addressed upload
        (then the signed body marker must say so).
        """
        missing = [h for h in HEADERS if not headers.get(h)]
        if missing:
            raise AuthError(f"unsigned request (missing {', '.join(missing)}): sign it with the mesh key")
        timestamp, nonce, digest, signature = (headers[h] for h in HEADERS)
        if not timestamp.isdigit() or len(nonce) != 32:
            raise AuthError("malformed signature headers")
        now = self._now()
        if abs(now - int(timestamp)) > self.max_skew:
            raise AuthError(
                f"stale request: signed at {timestamp}, {abs(now - int(timestamp)):.0f} s from this node's clock "
                f"(at most {self.max_skew} s); check the clocks"
            )
        expected_digest = CONTENT_ADDRESSED if content_addressed else body_digest(body or b"")
        if not hmac.compare_digest(digest, expected_digest):
            raise AuthError("the signed body digest does not match the body")
        expected = self.key.mac(_message(method, target, timestamp, nonce, digest))
        if not hmac.compare_digest(signature, expected):
            raise AuthError("bad signature: this request was not signed with this mesh's key")
        self._remember(nonce, now)

    def _now(self) -> float:
        return float(self._clock())

    def _remember(self, nonce: str, now: float) -> None:
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= 2 * self.max_skew:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            raise AuthError("replayed request: this nonce was used already")
        self._seen[nonce] = now
