"""A real node against hostile and malformed requests.

Every bad request gets a 4xx with ``{"error": message}`` as CBOR (or JSON when the
client asks for it) that says what was wrong, never a 500 and never a traceback;
after each one the node still answers /health and still runs a small job.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.wire.auth import load_key
from mesh.wire.client import MeshAuth, NodeClient
from mesh.wire.formats import RECORD_HEADER
from tests.nodeutil import NodeProcess

CBOR = "application/cbor"
JSON = "application/json"
JOB_LIMIT = 16 << 20  # mesh.api.app.MAX_JOB_BODY
MISSING_LIMIT = 2 << 20  # the body limit of /v1/blobs:missing


# -- plumbing -------------------------------------------------------------------------


@pytest.fixture
def snapshot(home: Path, tmp_path: Path) -> str:
    """A small input snapshot in the node's store."""
    src = tmp_path / "input"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    with LocalStore(home / "cas") as store:
        return str(ingest(store, src))


def _http(node: NodeProcess) -> httpx.Client:
    """A plain-HTTP client signing with the node's mesh key (verify=False: no TLS context to build)."""
    key = load_key(node.home)
    assert key is not None
    return httpx.Client(base_url=node.url, timeout=60, trust_env=False, verify=False, auth=MeshAuth(key))


def _client(node: NodeProcess) -> NodeClient:
    return NodeClient(node.url, timeout=60, transport=httpx.HTTPTransport(verify=False))


def send(
    node: NodeProcess,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    content_type: str = CBOR,
    accept: str = CBOR,
    params: dict[str, str] | None = None,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """One request on a fresh connection (or on ``client``); no body ever carries a traceback."""
    headers = {"accept": accept}
    if body is not None:
        headers["content-type"] = content_type
    if client is None:
        with _http(node) as fresh:
            response = fresh.request(method, path, content=body, headers=headers, params=params)
    else:
        response = client.request(method, path, content=body, headers=headers, params=params)
    assert b"Traceback" not in response.content and b'File "' not in response.content, response.content[:2000]
    return response


def error_message(response: httpx.Response, accept: str = CBOR) -> str:
    """The ``error`` of an error body, checking it is the format the client asked for."""
    ctype = response.headers.get("content-type", "")
    if accept == JSON:
        assert ctype.startswith(JSON), ctype
        value = json.loads(response.content)
    else:
        assert ctype.startswith(CBOR), ctype
        value = codec.decode(response.content)
    assert isinstance(value, dict) and set(value) == {"error"}, value
    message = value["error"]
    assert isinstance(message, str) and message.strip(), value
    return message


def assert_still_serving(node: NodeProcess, snapshot: str) -> None:
    """The node answers /health and runs a small (uncached) job to success."""
    health = send(node, "GET", "/health")
    assert health.status_code == 200 and health.json()["ok"] is True, health.content
    nonce = secrets.token_hex(4)
    job = {
        "tasks": [
            {
                "name": "ping",
                "argv": ["sh", "-c", 'cat hello.txt; echo "pong $NONCE"'],
                "env": {"NONCE": nonce},
                "input": snapshot,
            }
        ],
        "no_cache": True,
    }
    with _client(node) as client:
        events = list(client.submit_and_follow(job))
        assert events[-1]["type"] == "job_finished" and events[-1]["state"] == "succeeded", (events, node.log())
        [finished] = [e for e in events if e["type"] == "task_finished"]
        stdout = b"".join(client.read_blob(Digest.parse(finished["result"]["stdout"])))
    assert stdout == f"hello\npong {nonce}\n".encode()


@dataclass
class Case:
    """One hostile request: what to send, the status it must get, a distinctive part of the message."""

    what: str
    method: str
    path: str
    status: int
    says: str
    body: bytes | Callable[[str], bytes] | None = None
    content_type: str = CBOR
    params: dict[str, str] = field(default_factory=dict)


def check_refused(node: NodeProcess, snapshot: str, cases: list[Case]) -> None:
    """Send every case twice (CBOR and JSON answers); each must be refused as described."""
    for case in cases:
        body = case.body(snapshot) if callable(case.body) else case.body
        for accept in (CBOR, JSON):
            response = send(
                node,
                case.method,
                case.path,
                body=body,
                content_type=case.content_type,
                accept=accept,
                params=case.params,
            )
            context = f"{case.what}: {case.method} {case.path} -> {response.status_code} {response.content[:500]!r}"
            assert response.status_code == case.status, f"{context}\nnode log:\n{node.log()[-4000:]}"
            message = error_message(response, accept)
            assert case.says in message, f"{context}: message {message!r} lacks {case.says!r}"
        assert_still_serving(node, snapshot)


def task(**fields: Any) -> dict[str, Any]:
    """A valid task (input filled in by :func:`job`) with ``fields`` laid over it; None removes one."""
    base: dict[str, Any] = {"name": "t", "argv": ["true"], "input": "$snapshot"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def job(*tasks: dict[str, Any], encode: Callable[[Any], bytes] = codec.encode, **fields: Any) -> Callable[[str], bytes]:
    """A job body for a snapshot id, encoded as CBOR (or with ``encode``)."""

    def build(snapshot: str) -> bytes:
        filled = [{k: (snapshot if v == "$snapshot" else v) for k, v in t.items()} for t in tasks]
        return encode({"tasks": filled, **fields})

    return build


def job_case(what: str, says: str, *tasks: dict[str, Any], status: int = 400, **fields: Any) -> Case:
    return Case(what, "POST", "/v1/jobs", status, says, body=job(*tasks, **fields))


# -- random and malformed bodies -----------------------------------------------------

_keys = st.text(max_size=8).filter(lambda k: k not in ("tasks", "digests"))
cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64) + 1, 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_valid_job = cbor2.dumps({"tasks": [{"argv": ["true"], "input": str(Digest.of(b""))}]}, canonical=True)
hostile_bodies = st.one_of(
    st.binary(max_size=400),
    cbor_values.map(lambda v: cbor2.dumps(v, canonical=True)),
    # every strict prefix of one valid item is truncated, any suffix is trailing garbage
    st.integers(0, len(_valid_job) - 1).map(lambda n: _valid_job[:n]),
    st.binary(min_size=1, max_size=20).map(lambda tail: _valid_job + tail),
)


def test_random_bodies_are_refused_with_4xx(node: NodeProcess, snapshot: str) -> None:
    """Hypothesis' bodies, each on a fresh connection; then random bytes on one keep-alive connection."""

    @settings(max_examples=60, deadline=None)
    @given(
        body=hostile_bodies,
        path=st.sampled_from(["/v1/jobs", "/v1/blobs:missing", "/v1/jobs/" + "0" * 20 + "/rerun"]),
        content_type=st.sampled_from([CBOR, CBOR, JSON]),
    )
    def post(body: bytes, path: str, content_type: str) -> None:
        response = send(node, "POST", path, body=body, content_type=content_type)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.content, node.log()[-3000:])
        error_message(response)

    post()
    assert_still_serving(node, snapshot)
    rng = random.Random(1234)
    with _http(node) as client:
        for _ in range(200):
            body = rng.randbytes(rng.randrange(1, 300))
            for path in ("/v1/jobs", "/v1/blobs:missing"):
                response = send(node, "POST", path, body=body, client=client)
                assert 400 <= response.status_code < 500, (body, response.content)
                error_message(response)
    assert_still_serving(node, snapshot)


def _header(major: int, length: int) -> bytes:
    """A CBOR head of ``major`` type declaring ``length`` with an 8-byte argument."""
    return bytes([(major << 5) | 27]) + length.to_bytes(8, "big")


def test_bodies_the_decoder_refuses(node: NodeProcess, snapshot: str) -> None:
    deep_arrays = b"\x81" * 10_000 + b"\x00"
    deep_maps = b"\xa1\x61k" * 10_000 + b"\x00"
    check_refused(
        node,
        snapshot,
        [
            Case("10,000 nested arrays", "POST", "/v1/jobs", 400, "nesting depth", body=deep_arrays),
            Case("10,000 nested maps", "POST", "/v1/jobs", 400, "nesting depth", body=deep_maps),
            Case("nested arrays to find-missing", "POST", "/v1/blobs:missing", 400, "nesting depth", body=deep_arrays),
            Case(
                "10,000 nested JSON arrays",
                "POST",
                "/v1/jobs",
                400,
                "malformed JSON",
                body=b"[" * 10_000 + b"]" * 10_000,
                content_type=JSON,
            ),
            Case(
                "byte string claiming 2**60 bytes",
                "POST",
                "/v1/jobs",
                400,
                "premature end",
                body=_header(2, 2**60) + b"abc",
            ),
            Case(
                "text string claiming 2**60 bytes",
                "POST",
                "/v1/jobs",
                400,
                "malformed CBOR",
                body=_header(3, 2**60) + b"abc",
            ),
            Case("array claiming 2**60 items", "POST", "/v1/jobs", 400, "malformed CBOR", body=_header(4, 2**60)),
            Case(
                "map claiming 2**60 pairs", "POST", "/v1/blobs:missing", 400, "malformed CBOR", body=_header(5, 2**60)
            ),
            Case("empty body", "POST", "/v1/jobs", 400, "empty message", body=b""),
            Case(
                "trailing bytes",
                "POST",
                "/v1/jobs",
                400,
                "follow the message",
                body=lambda snap: job(task())(snap) + b"\x00",
            ),
            Case("indefinite-length array", "POST", "/v1/jobs", 400, "indefinite", body=b"\x9f\x01\xff"),
            Case("a tag (datetime)", "POST", "/v1/jobs", 400, "tags are refused", body=b"\xc1\x1a\x00\x00\x00\x00"),
            Case(
                "duplicate map keys", "POST", "/v1/jobs", 400, "malformed CBOR", body=b"\xa2\x65tasks\x80\x65tasks\x80"
            ),
            Case("top level not a map", "POST", "/v1/jobs", 400, "job must be a map", body=codec.encode([1, 2])),
            Case("integer map keys", "POST", "/v1/jobs", 400, "keys must be strings", body=codec.encode({1: 2})),
            Case("malformed JSON", "POST", "/v1/jobs", 400, "malformed JSON", body=b"{tasks: [", content_type=JSON),
            Case(
                "JSON that is not UTF-8",
                "POST",
                "/v1/jobs",
                400,
                "malformed JSON",
                body=b"\xff\xfe{}",
                content_type=JSON,
            ),
        ],
    )


def test_bodies_over_the_size_limit_get_413(node: NodeProcess, snapshot: str) -> None:
    check_refused(
        node,
        snapshot,
        [
            Case(
                "job body one byte over the limit",
                "POST",
                "/v1/jobs",
                413,
                "exceeds the limit",
                body=b"\xa0" * (JOB_LIMIT + 1),
            ),
            Case(
                "find-missing body over its limit",
                "POST",
                "/v1/blobs:missing",
                413,
                "exceeds the limit",
                body=b"\xa0" * (MISSING_LIMIT + 1),
            ),
        ],
    )

    def chunks(total: int) -> Any:
        for _ in range(total // (1 << 16)):
            yield b"\x00" * (1 << 16)

    # No content-length (chunked): the node counts as it reads and stops at the limit.
    with _http(node) as client:
        response = client.post("/v1/jobs", content=chunks(JOB_LIMIT + (1 << 16)), headers={"content-type": CBOR})
    assert response.status_code == 413, response.content
    assert "exceeds the limit" in error_message(response)
    # Too many digests in one find-missing query (a body within the byte limit).
    digests = [str(Digest.of(str(i).encode())) for i in range(10_001)]
    response = send(node, "POST", "/v1/blobs:missing", body=codec.encode({"digests": digests}))
    assert response.status_code == 413 and "at most 10000 digests" in error_message(response)
    assert_still_serving(node, snapshot)


def test_a_refused_body_does_not_break_the_next_request_on_the_connection(node: NodeProcess) -> None:
    """After a refusal that leaves the body unread, a keep-alive client's next request still gets an answer
    (the refusal says ``connection: close``, so the client does not reuse a connection the node drops)."""
    refusals = [
        ("POST", "/v1/blobs:missing", MISSING_LIMIT + 1, 413),
        ("POST", "/v1/nothing", 1 << 20, 404),
        ("PUT", "/v1/blobs/garbage", 1 << 20, 400),
    ]
    for method, path, size, status in refusals:
        body = b"\xa0" * size
        for attempt in range(10):
            with _http(node) as client:
                response = send(node, method, path, body=body, client=client)
                assert response.status_code == status, response.content
                try:
                    health = client.get("/health")
                except httpx.HTTPError as exc:
                    raise AssertionError(
                        f"{method} {path}, attempt {attempt}: the request after a {status} on the same "
                        f"connection failed: {exc!r}; headers of the {status}: {dict(response.headers)}"
                    ) from None
                assert health.status_code == 200


# -- job submissions the schema refuses ---------------------------------------------


def test_jobs_with_wrong_types(node: NodeProcess, snapshot: str) -> None:
    check_refused(
        node,
        snapshot,
        [
            job_case("argv not a list", "field 'argv' of task 't' must be a list", task(argv="echo hi")),
            job_case("argv holding an integer", "must be a list of strings", task(argv=["echo", 1])),
            job_case("timeout a string", "field 'timeout' of task 't' must be a number", task(timeout="10")),
            job_case("env values ints", "field 'env' of task 't' must map strings to strings", task(env={"A": 1})),
            job_case("env a list", "field 'env' of task 't' must be a map", task(env=["A=1"])),
            Case(
                "tasks not a list",
                "POST",
                "/v1/jobs",
                400,
                "field 'tasks' of job must be a list",
                body=codec.encode({"tasks": "all of them"}),
            ),
            job_case("name an integer", "field 'name' of task #1 must be a string", task(name=5)),
            job_case("network a string", "field 'network' of task 't' must be true or false", task(network="yes")),
            job_case("no_cache an integer", "field 'no_cache' of job must be true or false", task(), no_cache=1),
            job_case("negative timeout", "must be a number of at least", task(timeout=-1)),
            job_case("NaN timeout", "must be a number of at least", task(timeout=float("nan"))),
            job_case("infinite timeout", "timeout must be more than 0", task(timeout=float("inf"))),
            job_case("empty argv", "non-empty argv", task(argv=[])),
            job_case("NUL in argv", "must not contain NUL", task(argv=["echo", "a\0b"])),
            job_case("bad env name", "invalid environment variable name", task(env={"A=B": "1"})),
            job_case("unknown executor", "unknown executor", task(executor="teleport")),
            job_case("bad 'when'", "'when' of task 't' must be one of", task(when="never")),
            job_case("invalid task name", "is not valid", task(name="-rf")),
            job_case("label too long", "label may be at most", task(), label="x" * 501),
            Case(
                "wrong types as JSON",
                "POST",
                "/v1/jobs",
                400,
                "field 'timeout' of task 't' must be a number",
                body=job(task(timeout="10"), encode=lambda v: json.dumps(v).encode()),
                content_type=JSON,
            ),
        ],
    )


def test_unknown_fields(node: NodeProcess, snapshot: str) -> None:
    check_refused(
        node,
        snapshot,
        [
            job_case("unknown field in the job", "job has unknown field(s): 'priority'", task(), priority=9),
            job_case("unknown field in a task", "task 't' has unknown field(s): 'colour'", task(colour="blue")),
            job_case("misspelt field in a task", "'timout'", task(timout=5)),
            Case(
                "unknown field in find-missing",
                "POST",
                "/v1/blobs:missing",
                400,
                "find-missing request has unknown field(s): 'x'",
                body=codec.encode({"digests": [], "x": 1}),
            ),
        ],
    )


def test_bad_steal_requests(node: NodeProcess, snapshot: str) -> None:
    check_refused(
        node,
        snapshot,
        [
            Case(
                "slots a string",
                "POST",
                "/v1/steal",
                400,
                "field 'slots' of a steal request must be an integer",
                body=codec.encode({"thief": "http://127.0.0.1:1", "slots": "all"}),
            ),
            Case("no thief", "POST", "/v1/steal", 400, "'thief'", body=codec.encode({"slots": 1})),
            Case(
                "zero slots",
                "POST",
                "/v1/steal",
                400,
                "'slots' must be between 1 and 4096",
                body=codec.encode({"thief": "http://127.0.0.1:1", "slots": 0}),
            ),
            Case(
                "unknown field",
                "POST",
                "/v1/steal",
                400,
                "unknown field(s): 'greedy'",
                body=codec.encode({"thief": "http://127.0.0.1:1", "slots": 1, "greedy": True}),
            ),
            *(
                Case(f"thief {url}", "POST", "/v1/steal", 400, says, body=codec.encode({"thief": url, "slots": 1}))
                for url, says in BAD_URLS
            ),
        ],
    )


#: URLs no node could have, and what the refusal says (mesh.urls).
BAD_URLS = [
    ("http://127.0.0.1:99999", "port '99999' is not a number from 1 to 65535"),
    ("ftp://127.0.0.1:7474", "is not an http:// or https:// URL"),
    ("http://:7474", "does not name a host"),
    ("http://bad host:7474", "white space"),
]


def test_offers_naming_a_bad_source(node: NodeProcess, snapshot: str) -> None:
    offer = job(task(), pinned=True)
    cases = [
        Case(f"source {url}", "POST", "/v1/jobs", 400, says, body=offer, params={"offer": "1", "source": url})
        for url, says in BAD_URLS
    ]
    check_refused(node, snapshot, cases)


def test_an_offer_with_a_malformed_source_is_refused(node: NodeProcess, snapshot: str) -> None:
    """A peer's offer names its own URL in ``source``, where the node fetches the task's input;
    a port out of range or a malformed URL answered 500 (a ValueError of urlsplit) before."""
    absent = str(Digest.of(b"an input this node lacks"))
    offer = job(task(input=absent), pinned=True)
    sources = ["http://127.0.0.1:99999", "http://[::1", "http://127.0.0.1:1\x00", "http://127.0.0.1:-1", "http://"]
    sources += ["http://127.0.0.1:1 /", "ftp://127.0.0.1:1", "http://127.0.0.1:1/\u00e9"]
    check_refused(
        node,
        snapshot,
        [
            Case(
                f"source {source!r}",
                "POST",
                "/v1/jobs",
                400,
                "an offer names the offering node's URL in 'source'",
                body=offer,
                params={"offer": "1", "source": source},
            )
            for source in sources
        ],
    )


def test_bad_task_graphs(node: NodeProcess, snapshot: str) -> None:
    check_refused(
        node,
        snapshot,
        [
            job_case(
                "two-task cycle",
                "the task graph has a cycle: a -> b -> a",
                task(name="a", after=["b"]),
                task(name="b", after=["a"]),
            ),
            job_case(
                "cycle through input_task",
                "the task graph has a cycle",
                task(name="a", after=["c"]),
                task(name="b", input=None, input_task="a"),
                task(name="c", after=["b"]),
            ),
            job_case("self dependency", "depends on itself", task(name="a", after=["a"])),
            job_case(
                "unknown task in after",
                "task 'a' depends on 'ghost', which is not a task of this job",
                task(name="a", after=["ghost"]),
            ),
            job_case(
                "unknown input_task",
                "task 'b' depends on 'ghost', which is not a task of this job",
                task(name="a"),
                task(name="b", input=None, input_task="ghost"),
            ),
            job_case("duplicate task names", "task names must be unique; repeated: a", task(name="a"), task(name="a")),
            job_case("empty task list", "a job needs at least one task"),
            job_case(
                "both input and input_task",
                "needs exactly one of 'input'",
                task(name="a"),
                task(name="b", input_task="a"),
            ),
            job_case("neither input nor input_task", "needs exactly one of 'input'", task(input=None)),
            job_case("reaction without dependencies", "depends on no task", task(when="failure")),
            Case(
                "bad job with ?follow=1",
                "POST",
                "/v1/jobs",
                400,
                "the task graph has a cycle",
                body=job(task(name="a", after=["b"]), task(name="b", after=["a"])),
                params={"follow": "1"},
            ),
        ],
    )


def test_re_runs_refuse_what_they_cannot_do(node: NodeProcess, snapshot: str) -> None:
    """The re-run routes (mesh.sched.rerun) and the ``prior`` of a task they submit."""
    none = "/v1/jobs/" + "0" * 20 + "/rerun"
    digest = str(Digest.of(b"out"))
    check_refused(
        node,
        snapshot,
        [
            Case("no such job", "POST", none, 404, "no job 00000000000000000000", body=codec.encode({})),
            Case("an empty body is the whole job", "POST", none, 404, "no job", body=b""),
            Case("not a job id", "POST", "/v1/jobs/nope/rerun", 400, "is not a job id", body=b""),
            Case("a task that is not text", "POST", none, 400, "task", body=codec.encode({"task": 5})),
            Case("an unknown field", "POST", none, 400, "bogus", body=codec.encode({"bogus": True})),
            Case("malformed JSON", "POST", none, 400, "malformed JSON", body=b"{", content_type=JSON),
            Case("a body that is not a map", "POST", none, 400, "a re-run", body=codec.encode([1])),
            Case("no such project", "POST", "/v1/projects/nope/builds/1/rerun", 404, "no project nope", body=b""),
            Case("not a build number", "POST", "/v1/projects/nope/builds/x/rerun", 400, "a build number", body=b""),
            job_case(
                "a prior output no overlay names",
                "which 'overlay' does not name",
                task(name="a", prior={"gone": digest}),
            ),
            job_case(
                "a prior output that is no text",
                "maps task names to snapshot ids",
                task(overlay=["gone"], prior={"gone": 1}),
            ),
            job_case(
                "a prior output that is no digest", "prior output 'gone'", task(overlay=["gone"], prior={"gone": "b3"})
            ),
            job_case(
                "a prior output of a task it runs after",
                "both runs after a and has a prior output of it",
                task(name="a"),
                task(name="b", after=["a"], overlay=["a"], prior={"a": digest}),
            ),
        ],
    )


def test_hostile_paths(node: NodeProcess, snapshot: str) -> None:
    check_refused(
        node,
        snapshot,
        [
            job_case("cwd ../x", "cwd '../x' must not contain '..'", task(cwd="../x")),
            job_case("cwd climbing out through a subdir", "must not contain '..'", task(cwd="a/../../x")),
            job_case("cwd /etc", "cwd '/etc' must be relative to the snapshot's root", task(cwd="/etc")),
            job_case("cwd with NUL", "contains NUL", task(cwd="a\0b")),
            job_case("output ../x", "output path '../x' must not contain '..'", task(outputs=["../x"])),
            job_case(
                "output /etc", "output path '/etc' must be relative to the snapshot's root", task(outputs=["/etc"])
            ),
            job_case("output the root", "not its root", task(outputs=["."])),
            job_case("outputs not a list", "field 'outputs' of task 't' must be a list", task(outputs="out")),
        ],
    )


def test_bad_digests(node: NodeProcess, snapshot: str) -> None:
    zero = "b3:" + "0" * 64
    check_refused(
        node,
        snapshot,
        [
            job_case("input not a digest", "field 'input' of task 't': not a digest", task(input="b3:zz")),
            job_case("input in another hash", "not a digest", task(input="sha256:" + "0" * 64)),
            job_case("input with a negative size", "not a digest", task(input=zero + ":-1")),
            Case(
                "find-missing with a bad digest",
                "POST",
                "/v1/blobs:missing",
                400,
                "not a digest",
                body=codec.encode({"digests": ["b3:zz"]}),
            ),
            Case("GET a bad digest", "GET", "/v1/blobs/b3:nothex", 400, "not a digest"),
            Case("PUT a bad digest", "PUT", "/v1/blobs/garbage", 400, "not a digest", body=b"x"),
            Case(
                "PUT a size over the node's limit",
                "PUT",
                f"/v1/blobs/{zero}:{2**62}",
                413,
                "exceeds the node's limit",
                body=b"x",
            ),
        ],
    )


# -- blob uploads that do not match ------------------------------------------------


def _blob_absent(node: NodeProcess, digest: Digest) -> None:
    response = send(node, "GET", f"/v1/blobs/{digest}")
    assert response.status_code == 404, response.content
    assert "not in the store" in error_message(response)
    with _client(node) as client:
        assert client.find_missing([digest]) == [digest]


def test_put_blob_that_does_not_match_its_digest(node: NodeProcess, snapshot: str) -> None:
    data = secrets.token_bytes(1000)
    digest = Digest.of(data)
    check_refused(
        node,
        snapshot,
        [
            Case(
                "same size, other bytes",
                "PUT",
                f"/v1/blobs/{digest}",
                400,
                "does not match its digest",
                body=bytes([data[0] ^ 1]) + data[1:],
            ),
            Case("too short", "PUT", f"/v1/blobs/{digest}", 400, "does not match its digest", body=data[:-1]),
            Case("too long", "PUT", f"/v1/blobs/{digest}", 400, "does not match its digest", body=data + b"!"),
            Case("empty", "PUT", f"/v1/blobs/{digest}", 400, "does not match its digest", body=b""),
        ],
    )
    _blob_absent(node, digest)
    # The right bytes are then accepted, and read back intact.
    response = send(node, "PUT", f"/v1/blobs/{digest}", body=data)
    assert response.status_code == 201, response.content
    with _client(node) as client:
        assert b"".join(client.read_blob(digest)) == data


def _record(text: str, payload: bytes) -> bytes:
    raw = text.encode()
    return RECORD_HEADER.pack(len(raw)) + raw + payload


def test_batched_upload_with_a_bad_record(node: NodeProcess, snapshot: str) -> None:
    good, bad = secrets.token_bytes(300), secrets.token_bytes(300)
    good_digest, bad_digest = Digest.of(good), Digest.of(bad)
    wrong = bytes([bad[0] ^ 0xFF]) + bad[1:]
    check_refused(
        node,
        snapshot,
        [
            Case(
                "a record whose bytes do not match",
                "POST",
                "/v1/blobs:upload",
                400,
                "does not match its digest",
                body=_record(str(good_digest), good) + _record(str(bad_digest), wrong),
            ),
            Case(
                "a record with a bad digest",
                "POST",
                "/v1/blobs:upload",
                400,
                "not a digest",
                body=_record("b3:garbage", b""),
            ),
            Case(
                "a record header too long to be a digest",
                "POST",
                "/v1/blobs:upload",
                400,
                "is not a digest",
                body=b"\xff\xff" + b"x" * 1000,
            ),
            Case(
                "a record cut short",
                "POST",
                "/v1/blobs:upload",
                400,
                "upload ended inside the blob",
                body=_record(str(bad_digest), bad[:100]),
            ),
            Case(
                "stray bytes after the last record",
                "POST",
                "/v1/blobs:upload",
                400,
                "upload ended inside a record header",
                body=_record(str(good_digest), good) + b"\x00",
            ),
            Case(
                "a record claiming 2**62 bytes",
                "POST",
                "/v1/blobs:upload",
                413,
                "exceeds the node's limit",
                body=_record(f"b3:{'0' * 64}:{2**62}", b"x"),
            ),
        ],
    )
    _blob_absent(node, bad_digest)
    # A whole, valid batch still works.
    response = send(node, "POST", "/v1/blobs:upload", body=_record(str(bad_digest), bad))
    assert response.status_code == 200 and codec.decode(response.content)["stored"] == 1, response.content


# -- ids, routes, parameters -----------------------------------------------------------


def test_job_ids(node: NodeProcess, snapshot: str) -> None:
    unknown = "0123456789abcdef0123"
    cases = []
    for method, suffix in (("GET", ""), ("POST", "/cancel"), ("GET", "/events")):
        cases += [
            Case(f"unknown job id {suffix}", method, f"/v1/jobs/{unknown}{suffix}", 404, f"no job {unknown}"),
            Case(
                f"malformed job id {suffix}", method, f"/v1/jobs/not-a-job{suffix}", 400, "'not-a-job' is not a job id"
            ),
            Case(f"upper-case job id {suffix}", method, f"/v1/jobs/{unknown.upper()}{suffix}", 400, "is not a job id"),
            Case(f"job id too long {suffix}", method, f"/v1/jobs/{unknown}0{suffix}", 400, "is not a job id"),
        ]
    check_refused(node, snapshot, cases)


def test_unknown_endpoints_and_wrong_methods(node: NodeProcess, snapshot: str) -> None:
    check_refused(
        node,
        snapshot,
        [
            Case("unknown endpoint", "GET", "/v1/nothing", 404, "no such endpoint: GET /v1/nothing"),
            Case("unknown version", "POST", "/v2/jobs", 404, "no such endpoint", body=b"\xa0"),
            Case("DELETE a collection", "DELETE", "/v1/jobs", 405, "DELETE is not allowed on /v1/jobs"),
            Case("POST /health", "POST", "/health", 405, "POST is not allowed on /health", body=b"\xa0"),
            Case("GET the upload endpoint", "GET", "/v1/blobs:upload", 405, "GET is not allowed"),
            Case("PUT a job", "PUT", "/v1/jobs/0123456789abcdef0123", 405, "PUT is not allowed", body=b"\xa0"),
        ],
    )


def test_bad_query_parameters(node: NodeProcess, snapshot: str) -> None:
    unknown = "0123456789abcdef0123"
    check_refused(
        node,
        snapshot,
        [
            Case(
                "limit=abc",
                "GET",
                "/v1/jobs",
                400,
                "query parameter 'limit' must be an integer, not 'abc'",
                params={"limit": "abc"},
            ),
            Case("limit=0", "GET", "/v1/jobs", 400, "'limit' must be between 1 and", params={"limit": "0"}),
            Case(
                "limit too large",
                "GET",
                "/v1/jobs",
                400,
                "'limit' must be between 1 and",
                params={"limit": "100000000"},
            ),
            Case("before=x", "GET", "/v1/jobs", 400, "'before' must be an integer", params={"before": "x"}),
            Case("before huge", "GET", "/v1/jobs", 400, "'before' must be between", params={"before": str(2**80)}),
            Case("state=bogus", "GET", "/v1/jobs", 400, "state must be one of", params={"state": "bogus"}),
            Case(
                "events from=-1",
                "GET",
                f"/v1/jobs/{unknown}/events",
                400,
                "'from' must be between",
                params={"from": "-1"},
            ),
            Case(
                "events from=x",
                "GET",
                f"/v1/jobs/{unknown}/events",
                400,
                "'from' must be an integer",
                params={"from": "x"},
            ),
        ],
    )


# -- a 500 says so, without a traceback ---------------------------------------------


def test_an_internal_error_is_a_500_without_a_traceback(node: NodeProcess, snapshot: str, home: Path) -> None:
    """Damage a finished job's stored spec behind the node's back: reading it is a 500 that says
    the node logged the details, carries no traceback, and leaves the node working."""
    with _client(node) as client:
        events = list(client.submit_and_follow({"tasks": [task(input=snapshot)], "no_cache": True}))
    job_id = events[-1]["job"]
    assert node.stop() == 0  # a restarted node has to read the job from the database
    with sqlite3.connect(home / "state.db", timeout=30) as db:
        db.execute("UPDATE jobs SET spec = ? WHERE id = ?", (b"\xff\x00", job_id))
    db.close()
    node.start()
    for accept in (CBOR, JSON):
        response = send(node, "GET", f"/v1/jobs/{job_id}", accept=accept)
        assert response.status_code == 500, response.content
        message = error_message(response, accept)
        assert "internal error" in message and "the node logged the details" in message
    assert "Traceback" in node.log()  # ... which is where the details belong
    assert_still_serving(node, snapshot)


def test_a_node_whose_store_vanished_says_so_on_health(node: NodeProcess, home: Path) -> None:
    """Its home moved away under it: /health answers 503 naming the store, not a 500, and the
    node keeps answering; with the home back, it is healthy again."""
    assert httpx.get(node.url + "/health", trust_env=False).json()["ok"] is True
    aside = home.parent / "moved-away"
    (home / "cas").rename(aside)
    try:
        response = httpx.get(node.url + "/health", trust_env=False)
        assert response.status_code == 503, response.text
        answer = response.json()
        assert answer["ok"] is False and "store" in answer["error"] and "cannot be read" in answer["error"]
        assert httpx.get(node.url + "/status", trust_env=False).status_code == 200
    finally:
        aside.rename(home / "cas")
    assert httpx.get(node.url + "/health", trust_env=False).status_code == 200
