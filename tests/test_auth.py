"""The mesh key and request signing: good requests pass; forged, stale, replayed, unsigned fail."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mesh.api.auth import CONTENT_ADDRESSED, AuthError, MeshKey, Verifier, load_key, sign
from mesh.errors import ConfigError

KEY = MeshKey(bytes(range(32)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_signed_request_passes_once() -> None:
    verifier = Verifier(KEY, clock=Clock(1_000_000))
    headers = sign(KEY, "POST", "/v1/jobs", b"body", now=1_000_000)
    verifier.check("POST", "/v1/jobs", headers, b"body", content_addressed=False)
    with pytest.raises(AuthError, match="replayed"):
        verifier.check("POST", "/v1/jobs", headers, b"body", content_addressed=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h.pop("x-mesh-signature"), "unsigned"),
        (lambda h: h.update({"x-mesh-signature": "0" * 64}), "bad signature"),
        (lambda h: h.update({"x-mesh-time": str(int(h["x-mesh-time"]) + 1)}), "bad signature"),
        (lambda h: h.update({"x-mesh-nonce": "ab" * 16}), "bad signature"),
        (lambda h: h.update({"x-mesh-body": "cd" * 32}), "body digest"),
        (lambda h: h.update({"x-mesh-time": "soon"}), "malformed"),
    ],
)
def test_tampering_is_refused(change: object, message: str) -> None:
    headers = sign(KEY, "POST", "/v1/jobs", b"body", now=1_000_000)
    assert callable(change)
    change(headers)
    with pytest.raises(AuthError, match=message):
        Verifier(KEY, clock=Clock(1_000_000)).check("POST", "/v1/jobs", headers, b"body", content_addressed=False)


def test_another_path_method_body_or_key_is_refused() -> None:
    headers = sign(KEY, "POST", "/v1/jobs", b"body", now=1_000_000)
    for method, target, body in (("PUT", "/v1/jobs", b"body"), ("POST", "/v1/jobs?x=1", b"body")):
        with pytest.raises(AuthError, match="bad signature"):
            Verifier(KEY, clock=Clock(1_000_000)).check(method, target, headers, body, content_addressed=False)
    with pytest.raises(AuthError, match="body digest"):
        Verifier(KEY, clock=Clock(1_000_000)).check("POST", "/v1/jobs", headers, b"other", content_addressed=False)
    other = MeshKey(bytes(32))
    with pytest.raises(AuthError, match="bad signature"):
        Verifier(other, clock=Clock(1_000_000)).check("POST", "/v1/jobs", headers, b"body", content_addressed=False)


def test_stale_requests_are_refused_both_ways() -> None:
    headers = sign(KEY, "GET", "/x", b"", now=1_000_000)
    for now in (1_000_000 + 61, 1_000_000 - 61):
        with pytest.raises(AuthError, match="stale"):
            Verifier(KEY, clock=Clock(now)).check("GET", "/x", headers, b"", content_addressed=False)
    Verifier(KEY, clock=Clock(1_000_000 + 59)).check("GET", "/x", headers, b"", content_addressed=False)


def test_content_addressed_uploads_sign_the_marker() -> None:
    headers = sign(KEY, "PUT", "/v1/blobs/b3:00", CONTENT_ADDRESSED, now=1_000_000)
    Verifier(KEY, clock=Clock(1_000_000)).check("PUT", "/v1/blobs/b3:00", headers, None, content_addressed=True)
    with pytest.raises(AuthError, match="body digest"):
        Verifier(KEY, clock=Clock(1_000_000)).check("PUT", "/v1/blobs/b3:00", headers, b"", content_addressed=False)


def test_nonces_are_forgotten_after_the_window() -> None:
    clock = Clock(1_000_000)
    verifier = Verifier(KEY, clock=clock)
    for i in range(100):
        clock.now = 1_000_000 + i * 10
        verifier.check("GET", "/x", sign(KEY, "GET", "/x", b"", now=clock.now), b"", content_addressed=False)
    assert len(verifier._seen) <= 13  # only those within twice the skew


def test_key_file_is_made_once_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_KEY", raising=False)
    home = str(tmp_path / "home")
    assert load_key(home) is None
    made = load_key(home, create=True)
    assert made is not None
    assert stat.S_IMODE(os.stat(os.path.join(home, "mesh.key")).st_mode) == 0o600
    assert load_key(home, create=True) == made
    assert made.secret.hex() not in repr(made) and made.mesh_id in repr(made)
    monkeypatch.setenv("MESH_KEY", KEY.text())
    assert load_key(home) == KEY
    monkeypatch.setenv("MESH_KEY", "zz")
    with pytest.raises(ConfigError, match="MESH_KEY holds no mesh key .*not hex"):
        load_key(home)


def test_mesh_ids_differ_per_key() -> None:
    assert KEY.mesh_id != MeshKey(bytes(32)).mesh_id
    assert len(KEY.mesh_id) == 16
