"""Hypothesis strategies of hostile HTTP requests to a node, and the one place they are signed.

A drawn :class:`Plan` is one request as the fuzzer means it: method, target, headers,
body, how the body is framed, and whether to sign it. It is turned into bytes only
when it is sent (:func:`prepare`), because a signature holds a time and a nonce: an
example drawn once and sent twice must not be refused as a replay the second time.

What is drawn, from the routes of the real app (:func:`app_routes`, so that a new
route is fuzzed without anyone adding it here):

- methods: the route's own, the other usual ones, lowercase, invented tokens, garbage;
- targets: every route with its parameters filled (digests and job ids known to the
  node, random, oversized, malformed), percent-encodings, ``..``, ``%00`` and a raw
  NUL, doubled slashes, overlong paths, raw UTF-8, absolute form, query strings;
- headers: ``Upgrade: h2c`` with ``HTTP2-Settings`` (issue 13 item 1), websocket
  upgrades, ``Expect: 100-continue``, duplicated, conflicting, huge, negative and
  non-numeric ``Content-Length``, ``Transfer-Encoding`` with good and broken chunks,
  overlong values, bytes outside ASCII, and the ``x-mesh-*`` auth headers spoilt one
  at a time after a correct signature (400 digits, negative, non-ASCII: item 5);
- bodies: random bytes, truncated and deeply nested CBOR and JSON, CBOR with tags,
  indefinite lengths and invalid UTF-8, and per route the messages it takes with
  hostile values in the right places: job submissions (random fields, long ``after``
  chains of item 2), blob uploads and record streams, digest lists, gossip (peer URLs
  with bad schemes and ports, item 8), steal requests, action-cache lookups, claims and releases.

Most requests are signed correctly with the node's key: an unsigned one stops at 401,
so only a signed one reaches the code that parses and acts.

Every URL a body names points at loopback (or is malformed): the node under test may
connect to a peer URL it heard in gossip, and test traffic never leaves the machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, cast
from urllib.parse import quote

import cbor2
from hypothesis import strategies as st
from starlette.routing import Route

from mesh.cas.digest import Digest
from mesh.exec.action import LIMIT_NAMES
from mesh.sched.jobs import JOB_STATES, WHEN
from mesh.wire.auth import CONTENT_ADDRESSED, UPLOAD_PATHS, MeshKey, sign
from mesh.wire.formats import RECORD_HEADER
from tests.rawhttp import Framing, RawRequest

Signing = Literal["none", "body", "content-addressed"]

#: Placeholders filled when a plan is sent: the node's port, a job id it knows.
PORT, JOB = b"@PORT@", b"@JOB@"
CBOR, JSON = b"application/cbor", b"application/json"
AUTH_HEADERS = (b"x-mesh-time", b"x-mesh-nonce", b"x-mesh-body", b"x-mesh-signature")


def signed_headers(key: MeshKey, method: str, target: str, body: bytes | str, *, authority: str) -> dict[str, str]:
    """The x-mesh-* headers that sign a request to the node at ``authority`` (host:port).

    The one place the fuzz suite signs: when the signed material changes, only the call
    below changes.
    """
    return sign(key, method, target, body, authority=authority)


@dataclass(frozen=True)
class Plan:
    """One request as drawn; :func:`prepare` makes it bytes (signed, placeholders filled)."""

    route: str  # the method and route template it aims at, "POST /v1/jobs" (statistics, failure grouping)
    request: RawRequest  # unsigned, with placeholders
    signing: Signing = "body"
    spoil: tuple[bytes, bytes] | None = None  # an x-mesh-* header replaced after signing


@dataclass(frozen=True)
class NodeTarget:
    """What :func:`prepare` needs of the node under test: its port and key, jobs it knows."""

    port: int
    key: MeshKey
    jobs: list[str]


def prepare(plan: Plan, node: NodeTarget, rng: random.Random) -> RawRequest:
    """The bytes of ``plan`` for ``node``: placeholders filled, signed as the plan says."""
    job = (rng.choice(node.jobs) if node.jobs else "0123456789abcdef0123").encode()

    def fill(raw: bytes) -> bytes:
        return raw.replace(PORT, str(node.port).encode()).replace(JOB, job)

    request = plan.request
    target = fill(request.target)
    headers = [(name, fill(value)) for name, value in request.headers]
    if plan.signing != "none":
        body: bytes | str = CONTENT_ADDRESSED if plan.signing == "content-addressed" else request.body
        # As the node reads them: the method as sent, the target's bytes as ASCII (others replaced).
        auth = signed_headers(
            node.key,
            request.method.decode("latin-1"),
            target.decode("ascii", "replace"),
            body,
            authority=f"127.0.0.1:{node.port}",
        )
        headers += [(name.encode(), value.encode()) for name, value in auth.items()]
    if plan.spoil is not None:
        name, value = plan.spoil
        headers = [(k, v) for k, v in headers if k != name] + [(name, value)]
    return replace(request, target=target, headers=tuple(headers))


# -- the routes of the app ---------------------------------------------------------------


@dataclass(frozen=True)
class AppRoute:
    method: str
    path: str  # the template, "/v1/jobs/{job_id}"
    params: tuple[str, ...]


def app_routes() -> list[AppRoute]:
    """Every (path, method) the real app serves, HEAD included where Starlette adds it.

    Raises AssertionError for a route kind this walk does not know (a Mount, a
    WebSocketRoute): teach it, rather than let such a route go untested.
    """
    from mesh.api.app import create_app

    found = []
    for route in create_app(cast(Any, None)).routes:
        if type(route) is not Route or route.methods is None:
            raise AssertionError(f"{route!r} is not a plain Route with methods: teach tests/httpfuzz.py about it")
        for method in sorted(route.methods):
            found.append(AppRoute(method, route.path, tuple(route.param_convertors)))
    return found


# -- values ---------------------------------------------------------------------------

_ZERO = "b3:" + "0" * 64
#: Digest texts that are not digests, or name sizes a node must refuse.
BAD_DIGESTS = [
    "",
    "b3:",
    "b3:zz",
    _ZERO,
    _ZERO + ":-1",
    _ZERO + ":01",
    _ZERO + ":" + "9" * 19,
    _ZERO + ":" + "9" * 400,
    _ZERO + f":{2**62}",
    _ZERO.upper() + ":1",
    "sha256:" + "0" * 64 + ":1",
    _ZERO + ":1:1",
    _ZERO + ":1\x00",
    _ZERO + ":１",
]
#: Peer URLs: loopback where nothing listens, or malformed (bad scheme, host, port). Never a
#: host name: the node would look it up (a name outside ASCII was, through IDNA).
URLS = [
    "http://127.0.0.1:1",
    "http://127.0.0.1:9",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:65536",
    "http://127.0.0.1:0",
    "http://127.0.0.1:-1",
    "http://127.0.0.1:１",
    "http://127.0.0.1:1/some/path?q=1#f",
    "http://user:pw@127.0.0.1:1",
    "http://[::1]:1",
    "http://[::1",
    "http://127.0.0.1:1" + "0" * 400,
    "ftp://127.0.0.1:1",
    "file:///etc/passwd",
    "unix:///run/x.sock",
    "http://",
    "http:",
    "",
    "127.0.0.1:1",
    "http://127.0.0.1:1\x00",
    "http://127.0.0.1:1\r\nx-injected: 1",
    "http://127.0.0.1:1 /",
]
_INTS = st.one_of(
    st.integers(-(2**64) + 1, 2**64 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**53 + 1, 2**63, 2**64 - 1, -(2**63)]),
)
_BIG_INTS = st.sampled_from([2**64, 2**70, 10**30, 10**400, -(10**400)])  # JSON only: CBOR makes them tags
_FLOATS = st.floats() | st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e300, float("inf"), float("nan")])


def _strings(json_only: bool) -> st.SearchStrategy[str]:
    """Text, with lone surrogates where the encoding can carry them (JSON's \\ud800)."""
    chars = st.characters(exclude_categories=()) if json_only else st.characters(exclude_categories=["Cs"])
    odd = st.sampled_from(["", ".", "..", "../x", "/etc", "a\x00b", "a/b", " ", "x" * 600])
    return st.text(chars, max_size=24) | odd


def _scalars(json_only: bool) -> st.SearchStrategy[Any]:
    big = _BIG_INTS if json_only else st.nothing()
    return st.none() | st.booleans() | _INTS | big | _FLOATS | _strings(json_only) | st.binary(max_size=16)


def _anything(json_only: bool) -> st.SearchStrategy[Any]:
    keys = _strings(json_only) if json_only else _strings(False) | _INTS
    return st.recursive(
        _scalars(json_only),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=10,
    )


@st.composite
def _spoilt(
    draw: st.DrawFn,
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]],
    hostile: dict[str, st.SearchStrategy[Any]],
    json_only: bool,
    spoils: tuple[int, ...] = (0, 0, 1, 1, 1, 2),
) -> dict[str, Any]:
    """A valid message with a few fields (``spoils``: how many) made hostile (an edge value,
    a value of the wrong type, or the field left out): most of it must pass validation, or
    the parser refuses it at the first field and nothing deeper is ever reached."""
    value = draw(st.fixed_dictionaries(required, optional=optional))
    for _ in range(draw(st.sampled_from(spoils))):
        key = draw(st.sampled_from(sorted(hostile)))
        kind = draw(st.integers(0, 9))
        if kind == 0:
            value.pop(key, None)
        else:
            value[key] = draw(_anything(json_only) if kind == 1 else hostile[key])
    return value


# -- messages ------------------------------------------------------------------------

_NAMES = ["a", "b", "c", "t", "t1"]
_SAFE_ARGV = [
    ["true"],
    ["false"],
    ["sh", "-c", "exit 3"],
    ["sh", "-c", "echo out; echo err >&2"],
    ["cat", "hello.txt"],
    ["sleep", "0.05"],
    ["sh", "-c", "head -c 200000 /dev/zero"],
    ["sh", "-c", "mkdir -p out && echo x > out/f"],
]


def _argv(json_only: bool) -> st.SearchStrategy[Any]:
    """Harmless commands with random arguments, and commands that cannot exist (a random
    argv[0] could name a real program: it is put under a directory that does not exist)."""
    text = _strings(json_only)
    return st.one_of(
        st.lists(text, max_size=5).map(lambda rest: ["echo", *rest]),
        st.lists(text, min_size=1, max_size=3).map(lambda a: ["/nonexistent/" + a[0].replace("/", "_"), *a[1:]]),
        st.sampled_from([[], [""], ["echo", "a\x00b"], ["true", "x" * 300_000], ["x" * (1 << 20)]]),
    )


def _task(snapshot: str, json_only: bool) -> st.SearchStrategy[dict[str, Any]]:
    text = _strings(json_only)
    names = st.sampled_from(_NAMES)
    printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
    big = _BIG_INTS if json_only else st.nothing()
    paths = st.sampled_from(["", ".", "sub", "hello.txt", "out", "../x", "a/../../x", "/etc", "/", "a\x00b"]) | text
    absent = st.binary(min_size=32, max_size=32).map(lambda h: f"b3:{h.hex()}:{len(h) + 100}")
    required = {"argv": st.sampled_from(_SAFE_ARGV), "input": st.just(snapshot)}
    optional = {
        "name": names,
        "env": st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True), printable, max_size=3),
        "cwd": st.sampled_from(["", ".", "sub"]),
        "outputs": st.none() | st.lists(st.sampled_from(["out", "hello.txt", "sub"]), max_size=2),
        "timeout": st.floats(0.01, 30) | st.integers(1, 600),
        "executor": st.sampled_from(["process", "sandbox"]),
        "network": st.booleans(),
        "requirements": st.dictionaries(st.sampled_from(["arch", "os"]), st.sampled_from(["x86_64", "linux"])),
    }
    hostile = {
        "argv": _argv(json_only),
        "input": st.sampled_from([str(Digest.of(b"")), *BAD_DIGESTS]) | absent,
        "name": text | st.sampled_from(["-a", "a" * 129, "a/b", ""]),
        "env": st.dictionaries(text, text, max_size=3) | st.sampled_from([{"A=B": "1"}, {"": "1"}, {"PATH": ""}]),
        "cwd": paths,
        "outputs": st.lists(paths, max_size=3),
        "timeout": _FLOATS | _INTS | big | st.sampled_from([0, -1, 604800, 604801, 10**9, 1e-300, 5e-324]),
        "executor": st.sampled_from(["docker", "", "bogus", "PROCESS"]),
        "image": st.sampled_from(["busybox", "localhost/none:tag", ""]) | text,
        "network": _INTS,
        "requirements": st.dictionaries(text, text, max_size=3),
        "limits": st.dictionaries(st.sampled_from(LIMIT_NAMES) | text, _INTS | big, max_size=3),
        "after": st.lists(text | names, max_size=3),
        "when": st.sampled_from(["never", "", "Success"]) | text,
        "input_task": names | text,
        "bogus_field": _anything(json_only),
    }
    # One task in five has something wrong with it; the job's graph is added by _dag.
    return _spoilt(required, optional, hostile, json_only, spoils=(0, 0, 0, 0, 1))


@st.composite
def _dag(draw: st.DrawFn, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Name ``tasks`` t0, t1 ... (where they have no name yet) and order some of them after
    earlier ones, with a condition, or take an earlier one's output as input."""
    named: list[dict[str, Any]] = []
    for i, task in enumerate(tasks):
        task = {"name": f"t{i}", **task}
        if i and draw(st.booleans()):
            earlier = [t["name"] for t in named if isinstance(t.get("name"), str)]
            if earlier:
                task["after"] = draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=2, unique=True))
                task["when"] = draw(st.sampled_from(WHEN))
                if draw(st.integers(0, 3)) == 0:
                    task["input_task"] = task.pop("input", None) and draw(st.sampled_from(earlier))
        named.append(task)
    return named


def chain(snapshot: str, length: int, first_fails: bool) -> dict[str, Any]:
    """A job whose tasks run one after the other (issue 13 item 2: the scheduler must not
    recurse along it; 10,000 cached ``true`` tasks answered 500 at submit)."""
    tasks = [{"name": f"t{i}", "argv": ["true"], "input": snapshot, "after": [f"t{i - 1}"]} for i in range(length)]
    del tasks[0]["after"]
    if first_fails:
        tasks[0]["argv"] = ["false"]
    return {"tasks": tasks, "label": f"chain of {length}"}


def _unique_name(task: dict[str, Any]) -> object:
    name = task.get("name")
    return name if isinstance(name, str) else object()  # unnamed tasks get distinct default names


def _jobs(snapshot: str, json_only: bool) -> st.SearchStrategy[Any]:
    tasks = st.lists(_task(snapshot, json_only), min_size=1, max_size=4, unique_by=_unique_name).flatmap(_dag)
    job = _spoilt(
        {"tasks": tasks},
        {"label": st.text(max_size=30), "no_cache": st.booleans(), "pinned": st.booleans()},
        {
            "tasks": st.sampled_from([[], {}, "t"]) | st.lists(_task(snapshot, json_only), max_size=4),
            "label": _strings(json_only) | st.just("L" * 501),
            "no_cache": _INTS,
            "pinned": st.sampled_from([None, 1, "yes"]),
        },
        json_only,
        spoils=(0, 0, 0, 1),
    )
    chains = st.builds(chain, st.just(snapshot), st.sampled_from([2, 600, 10_000]), st.booleans())
    return st.one_of(job, job, job, job, job, chains)


_PEER_URLS = ["http://127.0.0.1:1", "http://127.0.0.1:9", "http://[::1]:1"]


def _member(json_only: bool) -> st.SearchStrategy[dict[str, Any]]:
    text = _strings(json_only)
    load = st.fixed_dictionaries({"slots": st.integers(0, 64), "busy": st.integers(0, 64), "queued": st.integers(0, 9)})
    return _spoilt(
        {
            "node": st.sampled_from(["peer-a", "peer-b"]),
            "url": st.sampled_from(_PEER_URLS),
            "incarnation": st.integers(0, 2**45),
        },
        {"heartbeat": st.integers(0, 2**20), "capabilities": st.just({"os": "linux", "arch": "x86_64"}), "load": load},
        {
            "node": text,
            "url": st.sampled_from(URLS),
            "incarnation": _INTS,
            "heartbeat": _INTS,
            "capabilities": st.dictionaries(text, text, max_size=3),
            "load": st.dictionaries(st.sampled_from(["slots", "busy", "queued"]) | text, _INTS, max_size=3),
        },
        json_only,
    )


def _gossip(json_only: bool) -> st.SearchStrategy[Any]:
    members = st.lists(_member(json_only), max_size=3)
    return _spoilt(
        {"from": st.sampled_from(["peer-a", "peer-b"]), "members": members},
        {},
        {"from": _strings(json_only), "members": st.sampled_from([[1], {}, [None]])},
        json_only,
    )


def _steal(json_only: bool) -> st.SearchStrategy[Any]:
    return _spoilt(
        {"thief": st.sampled_from(_PEER_URLS), "slots": st.integers(1, 8)},
        {},
        {"thief": st.sampled_from(URLS), "slots": _INTS | st.sampled_from([0, 4096, 4097])},
        json_only,
    )


def _digest_lists(known: list[str], json_only: bool) -> st.SearchStrategy[Any]:
    absent = st.binary(min_size=32, max_size=32).map(lambda h: f"b3:{h.hex()}:{len(h)}")
    texts = st.sampled_from(known + BAD_DIGESTS) | absent
    many = st.sampled_from([10_000, 10_001]).map(lambda n: [str(Digest.of(str(i).encode())) for i in range(n)])
    return _spoilt(
        {"digests": st.lists(st.sampled_from(known), max_size=5)},
        {},
        {"digests": st.lists(texts, max_size=5) | many | st.sampled_from([[1], "d", {}])},
        json_only,
    )


def _cache_keys(known: list[str], json_only: bool) -> st.SearchStrategy[Any]:
    """A peer's action-cache lookup (mesh.cluster.actioncache): keys that are digests or not,
    and lists at and past the limit of 1000."""
    absent = st.binary(min_size=32, max_size=32).map(lambda h: f"b3:{h.hex()}:{len(h)}")
    many = st.sampled_from([1000, 1001]).map(lambda n: [str(Digest.of(str(i).encode())) for i in range(n)])
    return _spoilt(
        {"keys": st.lists(st.sampled_from(known) | absent, max_size=5)},
        {},
        {"keys": st.lists(st.sampled_from(BAD_DIGESTS), max_size=3) | many | st.sampled_from([[1], "k", {}])},
        json_only,
    )


def _claims(known: list[str], release: bool, json_only: bool) -> st.SearchStrategy[Any]:
    """A peer's claim (or ``release``) of a cache key (mesh.cluster.inflight): holders that
    are URLs or not, ttls and waits at and past their limits."""
    numbers = _INTS | st.sampled_from([0, -1, 0.5, 5.0, 5.5, 8 * 24 * 3600.0, 1e300])
    required = {"key": st.sampled_from(known), "holder": st.sampled_from(_PEER_URLS)}
    hostile = {"key": st.sampled_from(known + BAD_DIGESTS), "holder": st.sampled_from(URLS)}
    if release:
        return _spoilt({**required, "succeeded": st.booleans()}, {}, {**hostile, "succeeded": _INTS}, json_only)
    optional = {"wait": st.sampled_from([0.0, 0.01])}
    return _spoilt(
        {**required, "ttl": st.floats(1, 100)}, optional, {**hostile, "ttl": numbers, "wait": numbers}, json_only
    )


def _encoded(values: Callable[[bool], st.SearchStrategy[Any]]) -> st.SearchStrategy[tuple[bytes, bytes]]:
    """(body, content type): CBOR (canonical or not) or JSON (with NaN, huge integers, surrogates)."""

    def as_cbor(value: Any) -> tuple[bytes, bytes]:
        return cbor2.dumps(value, canonical=True), CBOR

    def as_json(value: Any) -> tuple[bytes, bytes]:
        return json.dumps(value, default=lambda b: b.decode("latin-1")).encode(), JSON

    return st.one_of(values(False).map(as_cbor), values(False).map(as_cbor), values(True).map(as_json))


def record(digest: str, payload: bytes, length: int | None = None) -> bytes:
    """One record of a batched upload; ``length`` overrides the header's digest length."""
    text = digest.encode()
    return RECORD_HEADER.pack(len(text) if length is None else length) + text + payload


@st.composite
def _records(draw: st.DrawFn) -> bytes:
    """A record stream: good records, and ones that lie about their digest, size or length."""
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.binary(max_size=64))
        digest = str(Digest.of(data))
        kind = draw(st.sampled_from(["good"] * 5 + ["flipped", "short", "long", "bad-digest", "header", "huge"]))
        if kind == "good":
            out += record(digest, data)
        elif kind == "flipped":
            out += record(digest, bytes(b ^ 1 for b in data) or b"x")
        elif kind == "short":
            out += record(digest, data[:-1])
        elif kind == "long":
            out += record(digest, data + b"!")
        elif kind == "bad-digest":
            out += record(draw(st.sampled_from(BAD_DIGESTS)), data)
        elif kind == "header":
            out += RECORD_HEADER.pack(draw(st.integers(0, 0xFFFF))) + digest.encode()[: draw(st.integers(0, 90))]
        else:
            out += record(f"{_ZERO}:{2**62}", data)
    return out


# -- bodies of any route ---------------------------------------------------------------------


def _nested(depth: int, json_text: bool) -> bytes:
    if json_text:
        return b"[" * depth + b"]" * depth
    return b"\x81" * depth + b"\x00"


_VALID_JOB = cbor2.dumps({"tasks": [{"argv": ["true"], "input": str(Digest.of(b""))}]}, canonical=True)
#: Hand-made CBOR a client library would not write.
_ODD_CBOR = [
    b"\x9f\x01\x02\xff",  # an indefinite-length array
    b"\x7f\x61a\xff",  # an indefinite-length text
    b"\xa2\x61a\x01\x61a\x02",  # a duplicate key
    b"\xc1\x1a\x00\x00\x00\x00",  # tag 1 (a datetime)
    b"\xc2\x49" + b"\x01" * 9,  # tag 2 (a bignum)
    b"\xd9\xd9\xf7\xa0",  # the self-describe tag
    b"\xa1\x63\xed\xa0\x80\x01",  # a key of invalid UTF-8 (an encoded surrogate)
    b"\xa1\x65tasks\x81\xa1\x64argv\x81\x62\xff\xfe",  # an argv item of invalid UTF-8
    b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # a byte string claiming 2**64 - 1 bytes
    b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00",  # an array claiming 2**32 items
    b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x01",  # a NaN with a payload
    b"\xf8\x10",  # an unassigned simple value
    b"\x1c",  # a reserved additional-information value
]
_BODIES: st.SearchStrategy[tuple[bytes, bytes]] = st.one_of(
    st.tuples(st.binary(max_size=300), st.sampled_from([CBOR, JSON, b"application/octet-stream", b"text/plain"])),
    st.tuples(st.integers(0, len(_VALID_JOB) - 1).map(lambda n: _VALID_JOB[:n]), st.just(CBOR)),
    st.tuples(st.sampled_from([33, 1_000, 100_000]).map(lambda d: _nested(d, False)), st.just(CBOR)),
    st.tuples(st.sampled_from([33, 1_000, 100_000]).map(lambda d: _nested(d, True)), st.just(JSON)),
    st.tuples(st.sampled_from(_ODD_CBOR), st.just(CBOR)),
    st.tuples(
        st.sampled_from([b"NaN", b"-Infinity", b'{"a":1,"a":2}', b'"\\ud800"', b"1" * 5000, b"{", b"\xff", b"[1,]"]),
        st.just(JSON),
    ),
    _encoded(_anything),
)


# -- headers -----------------------------------------------------------------------------------

_H2C = ((b"upgrade", b"h2c"), (b"connection", b"Upgrade, HTTP2-Settings"), (b"http2-settings", b"AAAA"))
_WEBSOCKET = (
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
)
#: Header sets a hostile client sends, each a unit.
_HEADER_SETS: list[tuple[tuple[bytes, bytes], ...]] = [
    _H2C,
    ((b"upgrade", b"h2c"), (b"connection", b"Upgrade, HTTP2-Settings"), (b"http2-settings", b"")),
    ((b"upgrade", b"h2c"), (b"connection", b"Upgrade, HTTP2-Settings"), (b"http2-settings", b"AAMAAABkAAQAAP__")),
    ((b"upgrade", b"h2c"), (b"connection", b"Upgrade")),
    ((b"upgrade", b"h2c, websocket"), (b"connection", b"Upgrade, HTTP2-Settings"), (b"http2-settings", b"%%%")),
    _WEBSOCKET,
    ((b"upgrade", b"websocket"), (b"connection", b"Upgrade")),
    ((b"upgrade", b"TLS/1.2"), (b"connection", b"Upgrade")),
    ((b"expect", b"100-continue"),),
    ((b"expect", b"nonsense"),),
    ((b"connection", b"close"),),
    ((b"connection", b"keep-alive"),),
    ((b"host", b"127.0.0.1:@PORT@"), (b"host", b"evil.example")),
    ((b"accept", JSON),),
    ((b"accept", b"*/*;q=0," + b"x" * 2000),),
    ((b"x-mesh-peer", b"1"),),
    ((b"content-type", b"application/json; charset=utf-16"),),
    ((b"content-encoding", b"gzip"),),
]
#: HTTP/2 frames after the connection preface: SETTINGS (empty, and with a bad length),
#: a HEADERS frame on stream 1 with garbage HPACK, a GOAWAY, a PING, a WINDOW_UPDATE of 0.
_H2_FRAMES = [
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    b"\x00\x00\x05\x04\x00\x00\x00\x00\x00abcde",
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x05\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff\xff",
    b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02",
    b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingping",
    b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00",
]
_NAME = st.from_regex(rb"[a-z][a-z0-9-]{0,15}", fullmatch=True)
_VALUE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").strip())
_LONG = st.sampled_from([8_000, 17_000, 70_000]).map(lambda n: b"v" * n)
_extra_headers = st.lists(
    st.one_of(
        st.sampled_from(_HEADER_SETS),
        st.tuples(st.tuples(_NAME, _VALUE)),
        st.tuples(st.tuples(_NAME, _LONG)),
        st.tuples(st.tuples(st.just(b"x-mesh-" + b"z" * 3), _VALUE)),
    ),
    min_size=1,
    max_size=3,
).map(lambda sets: tuple(h for s in sets for h in s))

#: Values of one x-mesh-* header put in place of the right one after signing.
_SPOILT_AUTH = st.tuples(
    st.sampled_from(AUTH_HEADERS),
    st.sampled_from(
        [
            b"9" * 400,
            b"-1",
            b"-" + b"9" * 30,
            b"0",
            b"1e9",
            b" 1",
            b"\xb2",  # SUPERSCRIPT TWO in Latin-1: str.isdigit() says yes, int() says no
            "١٧٠٠٠٠٠٠٠٠".encode(),  # Arabic-Indic digits in UTF-8
            b"\xff" * 32,
            "é".encode() * 16,
            b"0" * 32,
            b"g" * 64,
            b"",
            b"x" * 9000,
        ]
    ),
)


@st.composite
def _hostile_framing(draw: st.DrawFn, body: bytes) -> tuple[Framing, tuple[tuple[bytes, bytes], ...], bytes]:
    """A body framed in a way that lies: (framing, headers that go with it, the bytes written)."""
    kind = draw(st.sampled_from(["lying", "broken-chunks", "both"]))
    if kind == "lying":
        n = len(body)
        value = draw(
            st.sampled_from(
                [str(n + 10).encode(), str(max(n - 1, 0)).encode(), b"-1", b"-" + b"9" * 30, b"9" * 30, b"9" * 400]
                + [b"abc", b"+5", b" 5 ", b"0x10", b"5, 6", str(n).encode() + b"," + str(n).encode(), b""]
            )
        )
        headers = [(b"content-length", value)]
        if draw(st.booleans()):
            headers.append((b"content-length", str(n + draw(st.integers(0, 3))).encode()))
        return "none", tuple(headers), body
    if kind == "broken-chunks":
        stream = draw(
            st.sampled_from(
                [
                    b"%x\r\n%s\r\n" % (len(body), body),  # no last chunk
                    b"zz\r\n" + body + b"\r\n0\r\n\r\n",
                    b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) + 5, body),
                    b"ffffffffffffffffffff\r\n" + body,
                    b"-1\r\n\r\n0\r\n\r\n",
                    b'%x;ext=1;q="x"\r\n%s\r\n0\r\nx-trailer: 1\r\n\r\n' % (len(body), body),
                    b"%x\n%s\n0\n\n" % (len(body), body),
                    b"0\r\n\r\n" + body,
                ]
            )
        )
        coding = draw(st.sampled_from([b"chunked", b"Chunked", b"chunked, chunked", b"gzip, chunked", b" chunked"]))
        return "none", ((b"transfer-encoding", coding),), stream
    # A body framed two ways at once (request smuggling's shape), or with a coding h11 lacks.
    coding = draw(st.sampled_from([b"chunked", b"gzip", b"identity", b"chunked, identity"]))
    return "none", ((b"transfer-encoding", coding), (b"content-length", str(len(body)).encode())), body


# -- targets -------------------------------------------------------------------------------------


def _quote_some(draw: st.DrawFn, path: bytes) -> bytes:
    """Percent-encode a few of the path's characters (``/`` and ``:`` included)."""
    out = bytearray()
    for byte in path:
        if draw(st.integers(0, 9)) == 0:
            out += b"%%%02X" % byte
        else:
            out.append(byte)
    return bytes(out)


@st.composite
def _mutated(draw: st.DrawFn, path: bytes) -> bytes:
    kinds = ["quote", "dotdot", "nul", "raw-nul", "slashes", "long", "utf8", "absolute", "star", "rel", "empty"]
    kind = draw(st.sampled_from(kinds))
    if kind == "quote":
        return _quote_some(draw, path)
    if kind == "dotdot":
        return draw(st.sampled_from([b"/..", b"/../..", b"/%2e%2e", b"/.%2E/", b"/./", b"/v1/../"])) + path.lstrip(b"/")
    if kind == "nul":
        return path + draw(st.sampled_from([b"%00", b"%00.json", b"/%00/x"]))
    if kind == "raw-nul":
        return path + b"\x00x"
    if kind == "slashes":
        return b"/" + path.replace(b"/", b"//")
    if kind == "long":
        return path + b"/" + b"a" * draw(st.sampled_from([1_000, 9_000, 20_000, 70_000]))
    if kind == "utf8":
        return path + draw(st.text(min_size=1, max_size=8)).encode("utf-8", "surrogatepass")
    if kind == "absolute":
        return b"http://127.0.0.1:" + PORT + path
    if kind == "star":
        return b"*"
    if kind == "rel":
        return path.lstrip(b"/")
    return b""


_QUERY_KEYS = ["limit", "before", "state", "from", "follow", "offer", "source", "format", "x"]
_QUERY_VALUES = st.one_of(
    st.sampled_from(["1", "0", "-1", "true", "json", "cbor", *JOB_STATES, "9" * 30, "9" * 5000, "١٢", "%00", ""]),
    st.sampled_from(URLS),
    st.text(max_size=10),
)


@st.composite
def _query(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(st.sampled_from(_QUERY_KEYS), _QUERY_VALUES), max_size=3))
    if not pairs and draw(st.booleans()):
        return b""
    # Values quoted whole, or with the URL's own characters left as they are (raw bytes outside
    # ASCII are a target mutation: hypercorn refuses them before the app sees the request).
    text = "&".join(f"{k}={quote(v, safe='' if draw(st.booleans()) else ':/?=&%')}" for k, v in pairs)
    return b"?" + text.encode() + draw(st.sampled_from([b"", b"&", b"&&=", b"&limit", b"&format=json"]))


_MUTATIONS = ["method", "target", "version", "h2", "headers", "headers", "host", "framing", "framing"]
_MUTATIONS += ["unsigned", "signed-as-body", "spoil", "spoil"]

#: Queries that make a route do more: follow a job's events, take a job as a peer's offer
#: (the node then fetches the input from ``source``: a URL to validate), page through jobs.
_ROUTE_QUERIES: dict[tuple[str, str], list[bytes]] = {
    ("POST", "/v1/jobs"): [b"", b"", b"?follow=1", b"?follow=1&format=json"],
    ("GET", "/v1/jobs"): [b"?limit=1", b"?limit=1000&state=failed", b"?before=1&limit=2", b"?format=json"],
    ("GET", "/v1/jobs/{job_id}/events"): [b"?from=0", b"?from=3&format=json", b"?from=" + b"9" * 30],
}

# -- requests ---------------------------------------------------------------------------------

_METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT", b"PRI"]
_ODD_METHODS = st.one_of(
    st.sampled_from(_METHODS).map(bytes.lower),
    st.sampled_from([b"G ET", b"GET\x00", b"", "GÉT".encode(), b"\xff\xfe", b"M" * 9000, b"PROPFIND", b"BREW"]),
    st.from_regex(rb"[A-Za-z!#$%&'*+.^_`|~-]{1,12}", fullmatch=True),
)


@dataclass(frozen=True)
class Known:
    """What the node holds when the fuzzing starts: an input snapshot, and stored blobs."""

    snapshot: Digest
    blobs: Mapping[Digest, bytes]


def _offer(snapshot: str, json_only: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A peer's offer of one task: a pinned job of one task whose input the node may lack."""
    absent = st.binary(min_size=32, max_size=32).map(lambda h: f"b3:{h.hex()}:{len(h) + 100}")
    inputs = st.sampled_from([snapshot, str(Digest.of(b""))]) | absent
    task = st.fixed_dictionaries({"name": st.just("t"), "argv": st.just(["true"]), "input": inputs})
    return st.fixed_dictionaries({"tasks": st.lists(task, min_size=1, max_size=1), "pinned": st.just(True)})


def _route_request(route: AppRoute, known: Known) -> st.SearchStrategy[tuple[bytes, bytes, bytes, bytes, Signing]]:
    """(path, query, body, content type, signing) for one route, with its parameters filled."""
    snap = str(known.snapshot)
    texts = [str(d) for d in known.blobs] + [snap]
    path = route.path.encode()
    empty = st.just((b"", CBOR))
    upload = route.method in ("PUT", "POST") and route.path.startswith(UPLOAD_PATHS)
    signing: Signing = "content-addressed" if upload else "body"
    bodies: st.SearchStrategy[tuple[bytes, bytes]]
    if route.method not in ("POST", "PUT"):
        bodies = st.one_of(empty, empty, empty, _BODIES)
    elif route.path == "/v1/jobs":
        bodies = _encoded(lambda j: _jobs(snap, j))
    elif route.path == "/v1/gossip":
        bodies = _encoded(_gossip)
    elif route.path == "/v1/steal":
        bodies = _encoded(_steal)
    elif route.path == "/v1/cache:lookup":
        bodies = _encoded(lambda j: _cache_keys(texts, j))
    elif route.path in ("/v1/cache:claim", "/v1/cache:release"):
        bodies = _encoded(lambda j: _claims(texts, route.path.endswith("release"), j))
    elif route.path in ("/v1/blobs:missing", "/v1/blobs:download"):
        bodies = _encoded(lambda j: _digest_lists(texts, j))
    elif route.path == "/v1/blobs:upload":
        bodies = st.tuples(_records(), st.just(b"application/octet-stream"))
    else:
        bodies = _BODIES
    bodies = st.one_of(bodies, bodies, bodies, _BODIES)
    queries = _ROUTE_QUERIES.get((route.method, route.path))
    offers = _encoded(lambda j: _offer(snap, j))

    @st.composite
    def fill(draw: st.DrawFn) -> tuple[bytes, bytes, bytes, bytes, Signing]:
        query = draw(_query() if queries is None else st.sampled_from(queries) | _query())
        if (route.method, route.path) == ("POST", "/v1/jobs") and draw(st.integers(0, 4)) == 0:
            body, ctype = draw(offers)
            query = b"?offer=1&source=" + quote(draw(st.sampled_from(URLS)), safe=":/").encode()
        else:
            body, ctype = draw(bodies)
        filled = path
        for name in route.params:
            value: bytes
            if name == "digest":
                if route.method == "PUT" and draw(st.booleans()):
                    value = str(Digest.of(body)).encode()  # the body's own digest: stored if signed
                else:
                    value = draw(st.sampled_from(texts + BAD_DIGESTS)).encode("utf-8")
            elif name == "job_id":
                value = draw(st.sampled_from([JOB, JOB, b"0123456789abcdef0123", b"0123456789ABCDEF0123", b"x"]))
            else:
                value = draw(st.binary(min_size=1, max_size=12))
            filled = filled.replace(b"{" + name.encode() + b"}", value)
        return filled, query, body, ctype, signing

    return fill()


def requests(known: Known) -> st.SearchStrategy[Plan]:
    """Hostile requests to a node that holds ``known``."""
    # Routes that take a body carry the messages worth signing: drawn five times as often.
    routes = [r for r in app_routes() for _ in range(5 if r.method in ("POST", "PUT") else 1)]

    @st.composite
    def plan(draw: st.DrawFn) -> Plan:
        route = draw(st.sampled_from(routes))
        aim = f"{route.method} {route.path}"
        path, query, body, ctype, sign_as = draw(_route_request(route, known))
        method, version, spoil = route.method.encode(), b"HTTP/1.1", None
        headers: tuple[tuple[bytes, bytes], ...] = ((b"host", b"127.0.0.1:" + PORT), (b"content-type", ctype))
        if draw(st.integers(0, 3)) == 0:
            headers += ((b"accept", JSON),)
        framing: Framing = draw(st.sampled_from(["length", "length", "length", "chunked"]))
        if not body and draw(st.booleans()):
            framing = "none"  # no body, and no header that says so: hypercorn upgrades only then
        wire_body = body
        # Hostile HTTP around the message, for about half the requests: the others must reach
        # the handlers, where the message itself is what is hostile.
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
            kind = draw(st.sampled_from(_MUTATIONS))
            if kind == "method":
                method = draw(st.sampled_from(_METHODS) | _ODD_METHODS)
            elif kind == "target":
                path = draw(_mutated(path))
            elif kind == "version":
                version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"http/1.1", b""]))
            elif kind == "h2":  # HTTP/2 with prior knowledge: the preface, then frames (or anything)
                frames = draw(st.sampled_from(_H2_FRAMES) | st.binary(max_size=64))
                preface = RawRequest(b"PRI", b"*", (), b"SM\r\n\r\n" + frames, "none", b"HTTP/2.0")
                return Plan(aim, preface, "none")
            elif kind == "headers":
                headers += draw(_extra_headers)
            elif kind == "host":
                headers = headers[1:] + draw(
                    st.sampled_from([(), ((b"host", b""),), ((b"host", b"a"), (b"host", b"b"))])
                )
            elif kind == "framing":
                framing, framing_headers, wire_body = draw(_hostile_framing(body))
                headers += framing_headers
            elif kind == "unsigned":
                sign_as = "none"
            elif kind == "signed-as-body":  # an upload signed by its body's digest, not as content-addressed
                sign_as = "body"
            else:
                spoil = draw(_SPOILT_AUTH)
        target = path + query if path[:1] == b"/" else path
        return Plan(aim, RawRequest(method, target, headers, wire_body, framing, version), sign_as, spoil)

    return plan()


def known_bad(known: Known) -> list[Plan]:
    """The requests that ended a node or answered 500 on the commit the fuzz suite was written
    on (cec0609; issue 13 items 1, 2, 5, 8): every run sends them first, whatever it draws."""
    snap = str(known.snapshot)
    host, cbor = ((b"host", b"127.0.0.1:" + PORT),), ((b"content-type", CBOR),)
    job = cbor2.dumps(chain(snap, 600, True), canonical=True)
    gossip = cbor2.dumps(
        {"from": "p", "members": [{"node": "peer-x", "url": "http://127.0.0.1:99999", "incarnation": 1}]},
        canonical=True,
    )
    return [
        Plan("GET /health", RawRequest(b"GET", b"/health", host + _H2C, framing="none"), "none"),  # item 1
        # ... and its sibling: a websocket upgrade that carries a body (hypercorn's 400 for it
        # raised h11's LocalProtocolError out of the server's nursery).
        Plan("GET /health", RawRequest(b"GET", b"/health", host + _WEBSOCKET, b"x"), "none"),
        Plan("GET /v1/jobs", RawRequest(b"GET", b"/v1/jobs", host), spoil=(b"x-mesh-time", b"9" * 400)),  # item 5
        Plan("POST /v1/gossip", RawRequest(b"POST", b"/v1/gossip", host + cbor, gossip)),  # item 8 ...
        Plan("GET /v1/blobs/{digest}", RawRequest(b"GET", f"/v1/blobs/{_ZERO}:5".encode(), host)),  # ... then a miss
        Plan("POST /v1/jobs", RawRequest(b"POST", b"/v1/jobs", host + cbor, job)),  # item 2
    ]
