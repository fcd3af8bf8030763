"""The mesh key and request signing: good requests pass; forged, stale, replayed (after a restart
too), unsigned, malformed and other nodes' requests fail."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.api.authorities import REFRESH, NodeAuthorities
from mesh.errors import ConfigError
from mesh.wire.auth import (
    CONTENT_ADDRESSED,
    FORMS,
    MAX_SKEW,
    NONCE_MARGIN,
    AuthError,
    MeshKey,
    NotForThisNode,
    Verifier,
    load_key,
    sign,
    signed_headers,
)
from mesh.wire.nonces import RECORD, RETRY

KEY = MeshKey(bytes(range(32)))
HOST = "127.0.0.1:7474"


def verifier(now: float, key: MeshKey = KEY, nonces: str | None = None) -> Verifier:
    """A verifier of the node at HOST whose clock says ``now``."""
    return Verifier(key, authorities=NodeAuthorities("127.0.0.1", 7474), nonces_path=nonces, clock=Clock(now))


def signed(method: str, target: str, body: bytes | str, now: float, host: str = HOST) -> dict[str, str]:
    """The headers of a request signed for ``host``, with its Host header."""
    return {"host": host, **sign(KEY, method, target, body, authority=host, now=now)}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_signed_request_passes_once() -> None:
    checker = verifier(1_000_000)
    headers = signed("POST", "/v1/jobs", b"body", 1_000_000)
    checker.check("POST", "/v1/jobs", headers, b"body", content_addressed=False)
    with pytest.raises(AuthError, match="replayed"):
        checker.check("POST", "/v1/jobs", headers, b"body", content_addressed=False)


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
    headers = signed("POST", "/v1/jobs", b"body", 1_000_000)
    assert callable(change)
    change(headers)
    with pytest.raises(AuthError, match=message):
        verifier(1_000_000).check("POST", "/v1/jobs", headers, b"body", content_addressed=False)


def test_another_path_method_body_or_key_is_refused() -> None:
    headers = signed("POST", "/v1/jobs", b"body", 1_000_000)
    for method, target, body in (("PUT", "/v1/jobs", b"body"), ("POST", "/v1/jobs?x=1", b"body")):
        with pytest.raises(AuthError, match="bad signature"):
            verifier(1_000_000).check(method, target, headers, body, content_addressed=False)
    with pytest.raises(AuthError, match="body digest"):
        verifier(1_000_000).check("POST", "/v1/jobs", headers, b"other", content_addressed=False)
    other = MeshKey(bytes(32))
    with pytest.raises(AuthError, match="bad signature"):
        verifier(1_000_000, other).check("POST", "/v1/jobs", headers, b"body", content_addressed=False)


def test_stale_requests_are_refused_both_ways() -> None:
    headers = signed("GET", "/x", b"", 1_000_000)
    for now in (1_000_000 + 61, 1_000_000 - 61):
        with pytest.raises(AuthError, match="stale"):
            verifier(now).check("GET", "/x", headers, b"", content_addressed=False)
    verifier(1_000_000 + 59).check("GET", "/x", headers, b"", content_addressed=False)


def test_content_addressed_uploads_sign_the_marker() -> None:
    headers = signed("PUT", "/v1/blobs/b3:00", CONTENT_ADDRESSED, 1_000_000)
    verifier(1_000_000).check("PUT", "/v1/blobs/b3:00", headers, None, content_addressed=True)
    with pytest.raises(AuthError, match="body digest"):
        verifier(1_000_000).check("PUT", "/v1/blobs/b3:00", headers, b"", content_addressed=False)


def test_nonces_are_forgotten_after_the_window() -> None:
    checker = verifier(1_000_000)
    clock = checker._clock
    assert isinstance(clock, Clock)
    for i in range(100):
        clock.now = 1_000_000 + i * 10
        checker.check("GET", "/x", signed("GET", "/x", b"", clock.now), b"", content_addressed=False)
    assert len(checker.nonces) <= 7  # only those whose signatures are still valid (60 s, 5 s margin)


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


def test_a_request_signed_for_one_node_is_refused_by_another() -> None:
    for_other = {**signed("GET", "/x", b"", 1_000_000, host="127.0.0.1:7475")}
    with pytest.raises(NotForThisNode, match=r"addressed to 127.0.0.1:7475, which is not this node.*--advertise"):
        verifier(1_000_000).check("GET", "/x", for_other, b"", content_addressed=False)
    moved = {**for_other, "host": HOST}  # the Host changed on the way: the signature does not cover it
    with pytest.raises(AuthError, match="bad signature"):
        verifier(1_000_000).check("GET", "/x", moved, b"", content_addressed=False)
    same = {**signed("GET", "/x", b"", 1_000_000), "host": "LOCALHOST:7474"}  # the signed form is the normal one
    with pytest.raises(AuthError, match="bad signature"):
        verifier(1_000_000).check("GET", "/x", same, b"", content_addressed=False)
    verifier(1_000_000).check(
        "GET", "/x", signed("GET", "/x", b"", 1_000_000, "LocalHost:7474"), b"", content_addressed=False
    )


def test_the_hosts_a_node_answers_to() -> None:
    def node(listen: str, **kwargs: Any) -> NodeAuthorities:
        return NodeAuthorities(listen, 7474, hostname="buildbox", interfaces=lambda: {"10.1.2.3", "fd00::2"}, **kwargs)

    everywhere = node("0.0.0.0", advertised="http://ci.example.com:8080")
    for good in (
        "10.1.2.3:7474",
        "[fd00::2]:7474",
        "127.0.0.1:7474",
        "127.0.0.2:7474",
        "[::1]:7474",
        "localhost:7474",
        "buildbox:7474",
        "BuildBox.lan:7474",
        "buildbox.example.com:7474",
        "ci.example.com:8080",
    ):
        everywhere.check(good)
    bad_hosts = ("10.1.2.4:7474", "10.1.2.3:7475", "otherbox:7474", "ci.example.com:7474", "ci.example.com")
    for bad in (*bad_hosts, "10.1.2.3", "a b:1", "x:0"):
        with pytest.raises(NotForThisNode):
            everywhere.check(bad)
    loopback = node("127.0.0.1")
    loopback.check("localhost:7474")
    with pytest.raises(NotForThisNode) as refused:
        loopback.check("10.1.2.3:7474")
    assert "buildbox" not in str(refused.value)  # the names it answers to are nobody's business before the key
    gateway = node("0.0.0.0", advertised="http://gw:8443")
    with pytest.raises(NotForThisNode):  # without a port, Host names 80 or 443, not the advertised 8443
        gateway.check("gw")
    node("0.0.0.0", advertised="https://gw").check("gw")
    lan = node("10.1.2.3")
    with pytest.raises(NotForThisNode):
        lan.check("localhost:7474")  # loopback does not reach a node listening on one LAN address


def test_a_new_interface_address_is_found(tmp_path: Path) -> None:
    addresses = {"10.1.2.3"}
    now = [0.0]
    authorities = NodeAuthorities(
        "0.0.0.0", 7474, hostname="h", interfaces=lambda: set(addresses), clock=lambda: now[0]
    )
    addresses.add("10.9.9.9")
    with pytest.raises(NotForThisNode):
        authorities.check("10.9.9.9:7474")  # looked at just now
    now[0] = REFRESH
    authorities.check("10.9.9.9:7474")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-mesh-time", "9" * 400),
        ("x-mesh-time", "1e9"),
        ("x-mesh-time", "-1"),
        ("x-mesh-time", "\u0661\u0662"),
        ("x-mesh-nonce", "AB" * 16),
        ("x-mesh-nonce", "ab" * 15),
        ("x-mesh-nonce", "ab" * 5000),
        ("x-mesh-body", "x"),
        ("x-mesh-signature", "zz" * 32),
        ("x-mesh-peer", "2"),
        ("host", "127.0.0.1:99999"),
        ("host", ""),
    ],
)
def test_malformed_headers_are_refused_before_any_work(name: str, value: str) -> None:
    headers = {**signed("GET", "/x", b"", 1_000_000), name: value}
    with pytest.raises(AuthError):
        verifier(1_000_000).admit(headers)


def test_headers_given_twice_or_unknown_are_refused() -> None:
    pairs = [("Host", HOST), ("X-Mesh-Time", "1"), ("x-mesh-time", "2"), ("accept", "*/*")]
    with pytest.raises(AuthError, match="x-mesh-time is given twice"):
        signed_headers(pairs)
    with pytest.raises(AuthError, match="unknown header x-mesh-bogus"):
        signed_headers([("x-mesh-bogus", "1")])
    assert signed_headers([("Host", HOST), ("Accept", "x"), ("X-Mesh-Peer", "1")]) == {"host": HOST, "x-mesh-peer": "1"}


@given(st.dictionaries(st.sampled_from([*FORMS, "host"]), st.text(max_size=500), max_size=7))
def test_any_headers_pass_or_are_refused_as_auth_errors(changes: dict[str, str]) -> None:
    headers = {**signed("GET", "/x", b"", 1_000_000), **changes}
    try:
        verifier(1_000_000).check("GET", "/x", headers, b"", content_addressed=False)
    except AuthError:
        pass


def test_nonces_outlive_a_restart_and_a_torn_record(tmp_path: Path) -> None:
    path = str(tmp_path / "nonces")
    first = verifier(1_000_000, nonces=path)
    headers = [signed("GET", "/x", b"", 1_000_000) for _ in range(3)]
    for h in headers:
        first.check("GET", "/x", h, b"", content_addressed=False)
    first.close()  # a kill leaves the file the same (records are written before the request acts)
    with open(path, "ab") as f:
        f.write(b"torn")
    second = verifier(1_000_010, nonces=path)
    for h in headers:
        with pytest.raises(AuthError, match="replayed"):
            second.check("GET", "/x", h, b"", content_addressed=False)
    second.check("GET", "/x", signed("GET", "/x", b"", 1_000_010), b"", content_addressed=False)
    second.close()
    assert len(verifier(1_000_010 + MAX_SKEW + NONCE_MARGIN + 1, nonces=path).nonces) == 0  # all expired


def test_the_nonce_file_rotates_and_keeps_what_is_still_needed(tmp_path: Path) -> None:
    path = str(tmp_path / "nonces")
    checker = verifier(1_000_000, nonces=path)
    clock = checker._clock
    assert isinstance(clock, Clock)
    rotate = checker.nonces.rotate
    late = signed("GET", "/x", b"", 1_000_000 + rotate - 1)
    for step in range(4 * int(rotate)):
        clock.now = 1_000_000 + step
        checker.check("GET", "/x", signed("GET", "/x", b"", clock.now), b"", content_addressed=False)
        if clock.now == 1_000_000 + rotate - 1:
            checker.check("GET", "/x", late, b"", content_addressed=False)
    checker.close()
    size = os.path.getsize(path) + os.path.getsize(path + ".old")
    assert size <= 2 * (rotate + 1) * RECORD.size  # two rotations' worth at most, however long the node runs
    again = verifier(1_000_000 + 4 * rotate - 1, nonces=path)
    assert len(again.nonces) == MAX_SKEW + NONCE_MARGIN + 1


def test_a_copy_whose_body_is_held_back_past_the_window_is_refused() -> None:
    """The time is checked before the body is read and again after: a nonce is remembered only
    until its signature expires, so a replay whose body came in later would find it forgotten."""
    checker = verifier(1_000_000)
    clock = checker._clock
    assert isinstance(clock, Clock)
    headers = signed("POST", "/v1/jobs", b"body", 1_000_000)
    checker.check("POST", "/v1/jobs", headers, b"body", content_addressed=False)
    clock.now = 1_000_000 + 30
    admitted = checker.admit(headers)  # a copy within the window: its headers pass ...
    clock.now = 1_000_000 + MAX_SKEW + NONCE_MARGIN + 10  # ... and its last byte comes much later
    with pytest.raises(AuthError, match="stale request: its body arrived"):
        checker.verify(admitted, "POST", "/v1/jobs", b"body", content_addressed=False)


def test_a_nonce_file_that_cannot_be_made_refuses_nothing_and_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at a rotation answered 500 (an assertion on the missing file); now the request
    passes, replays are still refused in memory, and the file is made again once it can be."""
    path = str(tmp_path / "nonces")
    checker = verifier(1_000_000, nonces=path)
    clock = checker._clock
    assert isinstance(clock, Clock)
    real_open = os.open

    def full(*args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "open", full)
    clock.now += checker.nonces.rotate
    headers = signed("GET", "/x", b"", clock.now)
    checker.check("GET", "/x", headers, b"", content_addressed=False)
    with pytest.raises(AuthError, match="replayed"):
        checker.check("GET", "/x", headers, b"", content_addressed=False)
    monkeypatch.setattr(os, "open", real_open)
    clock.now += RETRY
    checker.check("GET", "/x", signed("GET", "/x", b"", clock.now), b"", content_addressed=False)
    checker.close()
    assert len(verifier(clock.now, nonces=path).nonces) == 2  # both, written again from memory
