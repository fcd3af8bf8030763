"""Webhook deliveries (mesh.pipelines.hooks) and the log of those taken (mesh.pipelines.deliveries).

GitHub's payloads are the real ones of the ``@octokit/webhooks-examples`` npm package,
which ``make test-deps`` installs under ``tests/.npm``: every push and ping example of
api.github.com and of the GitHub Enterprise Server versions it holds. Gitea's and
GitLab's push bodies in ``tests/data/hooks`` follow those forges' documented examples.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import glob
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import HookTooLarge, HookUnauthorized, InvalidHook, MeshError
from mesh.pipelines.deliveries import DEFAULT_LIMIT, DeliveryLog, StoredDeliveries
from mesh.pipelines.hooks import (
    MAX_BODY,
    Ignored,
    Ping,
    Push,
    branch_matches,
    parse,
    signature,
    within_branches,
)
from mesh.sched.statedb import StateDB

ROOT = Path(__file__).resolve().parent.parent
OCTOKIT = ROOT / "tests" / ".npm" / "node_modules" / "@octokit" / "webhooks-examples"
DATA = ROOT / "tests" / "data" / "hooks"
SECRET = b"a webhook secret, not the mesh key"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
ZERO = "0" * 40


def _octokit(event: str) -> list[Any]:
    """Every example of ``event`` in the package, as pytest params named by file and index;
    one param None when the package is missing, which the test turns into a failure."""
    files = sorted(OCTOKIT.glob("*/index.json"))
    if not files:
        return [pytest.param(None, id="missing")]
    params = []
    for file in files:
        for entry in json.loads(file.read_text()):
            if entry["name"] == event:
                params += [pytest.param(x, id=f"{file.parent.name}-{i}") for i, x in enumerate(entry["examples"])]
    return params


def _present(example: dict[str, Any] | None) -> dict[str, Any]:
    if example is None:
        pytest.fail(f"{OCTOKIT} is missing: `make test-deps` installs @octokit/webhooks-examples there with npm")
    return example


def _github(event: str, payload: object, secret: bytes = SECRET) -> tuple[dict[str, str], bytes]:
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": DELIVERY,
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json",
    }
    return headers, body


def _gitea(payload: object, *, forge: str = "Gitea", event: str = "push") -> tuple[dict[str, str], bytes]:
    body = json.dumps(payload).encode()
    digest = signature(SECRET, body)
    headers = {
        # What Gitea and Forgejo send: their own headers, then GitHub's and Gogs' copies.
        f"X-{forge}-Event": event,
        f"X-{forge}-Delivery": DELIVERY,
        f"X-{forge}-Signature": digest,
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": DELIVERY,
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-Gogs-Event": event,
    }
    if forge == "Forgejo":
        headers |= {"X-Gitea-Event": event, "X-Gitea-Delivery": DELIVERY, "X-Gitea-Signature": digest}
    return headers, body


def _gitlab(payload: object, *, event: str = "Push Hook", token: str | None = None) -> tuple[dict[str, str], bytes]:
    headers = {"X-Gitlab-Event": event, "X-Gitlab-Event-UUID": DELIVERY, "X-Gitlab-Instance": "https://gitlab.com"}
    headers["X-Gitlab-Token"] = SECRET.decode() if token is None else token
    return headers, json.dumps(payload).encode()


def _data(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((DATA / name).read_text())
    return value


def _github_push(**changes: Any) -> dict[str, Any]:
    """The branch push of the octokit examples (the first one to refs/heads/), changed."""
    pushes = [_present(p.values[0]) for p in _octokit("push")]
    payload = copy.deepcopy(next(p for p in pushes if p["ref"].startswith("refs/heads/")))
    payload.update(changes)
    return payload


@pytest.mark.parametrize("example", _octokit("push"))
def test_every_github_push_example_parses_to_its_branch_and_commit_or_says_why_not(
    example: dict[str, Any] | None,
) -> None:
    example = _present(example)
    event = parse(*_github("push", example), SECRET)
    ref, after = example["ref"], example["after"]
    if ref.startswith("refs/tags/"):
        assert isinstance(event, Ignored) and "is a tag" in event.reason, event
    elif after == ZERO:
        assert isinstance(event, Ignored) and "deletes branch" in event.reason, event
    else:
        assert isinstance(event, Push), event
        assert event.branch == ref.removeprefix("refs/heads/")
        assert event.after == after
        assert event.clone_urls[0] == example["repository"]["clone_url"]
        assert example["repository"]["ssh_url"] in event.clone_urls
        assert event.message == example["head_commit"]["message"]
        assert event.pusher == example["pusher"]["name"]
        assert event.repository == example["repository"]["full_name"]
        assert (event.forge, event.delivery) == ("github", DELIVERY)


def test_the_octokit_examples_hold_branch_pushes_and_pings() -> None:
    """The parametrized tests above are not vacuous: the package holds pushes to branches."""
    pushes = [_present(p.values[0]) for p in _octokit("push")]
    assert sum(p["ref"].startswith("refs/heads/") and p["after"] != ZERO for p in pushes) >= 2
    assert len(_octokit("ping")) >= 4


@pytest.mark.parametrize("example", _octokit("ping"))
def test_every_github_ping_example_is_a_ping(example: dict[str, Any] | None) -> None:
    example = _present(example)
    event = parse(*_github("ping", example), SECRET)
    assert event == Ping(forge="github", delivery=DELIVERY, zen=example["zen"])


# GitHub's documented test vector ("Validating webhook deliveries").
VECTOR_SECRET = b"It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def _vector_headers(signature_header: str) -> dict[str, str]:
    return {"X-GitHub-Event": "ping", "X-Hub-Signature-256": signature_header}


def test_githubs_documented_signature_test_vector_passes() -> None:
    assert "sha256=" + signature(VECTOR_SECRET, VECTOR_BODY) == VECTOR_SIGNATURE
    # The signature is right, so parse goes on to read the body, which is not JSON.
    with pytest.raises(InvalidHook, match="not JSON"):
        parse(_vector_headers(VECTOR_SIGNATURE), VECTOR_BODY, VECTOR_SECRET)


@given(bit=st.integers(0, len(VECTOR_BODY) * 8 - 1))
def test_one_bit_changed_in_the_body_fails_the_signature(bit: int) -> None:
    body = bytearray(VECTOR_BODY)
    body[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HookUnauthorized, match="does not match its body"):
        parse(_vector_headers(VECTOR_SIGNATURE), bytes(body), VECTOR_SECRET)


@given(bit=st.integers(0, 256 - 1))
def test_one_bit_changed_in_the_signature_fails_it(bit: int) -> None:
    digest = bytearray(bytes.fromhex(VECTOR_SIGNATURE.removeprefix("sha256=")))
    digest[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HookUnauthorized, match="does not match its body"):
        parse(_vector_headers("sha256=" + digest.hex()), VECTOR_BODY, VECTOR_SECRET)


@given(bit=st.integers(0, len(VECTOR_SECRET) * 8 - 1))
def test_one_bit_changed_in_the_secret_fails_the_signature(bit: int) -> None:
    secret = bytearray(VECTOR_SECRET)
    secret[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HookUnauthorized):
        parse(_vector_headers(VECTOR_SIGNATURE), VECTOR_BODY, bytes(secret))


def test_a_github_delivery_without_a_signature_is_unauthorized() -> None:
    headers, body = _github("push", _github_push())
    del headers["X-Hub-Signature-256"]
    with pytest.raises(HookUnauthorized, match="no X-Hub-Signature-256 header"):
        parse(headers, body, SECRET)


def test_a_github_delivery_signed_with_another_secret_is_unauthorized() -> None:
    with pytest.raises(HookUnauthorized, match="secret set on GitHub differs"):
        parse(*_github("push", _github_push(), secret=b"another secret"), SECRET)


def test_a_signature_without_its_sha256_prefix_is_unauthorized() -> None:
    headers, body = _github("push", _github_push())
    headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"].removeprefix("sha256=")
    with pytest.raises(HookUnauthorized):
        parse(headers, body, SECRET)


def test_a_project_without_a_secret_takes_no_delivery() -> None:
    with pytest.raises(HookUnauthorized, match="no webhook secret"):
        parse(*_github("push", _github_push(), secret=b""), b"")


def test_header_names_are_compared_without_case() -> None:
    headers, body = _github("push", _github_push())
    event = parse({name.lower(): value for name, value in headers.items()}, body, SECRET)
    assert isinstance(event, Push)
    assert isinstance(parse({name.upper(): value for name, value in headers.items()}, body, SECRET), Push)


def test_a_tag_push_is_ignored() -> None:
    event = parse(*_github("push", _github_push(ref="refs/tags/v1.0")), SECRET)
    assert event == Ignored(
        forge="github", delivery=DELIVERY, reason="refs/tags/v1.0 is a tag: only pushes to branches build"
    )


def test_a_push_to_a_ref_that_is_not_a_branch_is_ignored() -> None:
    event = parse(*_github("push", _github_push(ref="refs/notes/commits")), SECRET)
    assert isinstance(event, Ignored) and "not a branch" in event.reason


def test_a_branch_deletion_is_ignored() -> None:
    event = parse(*_github("push", _github_push(after=ZERO, deleted=True, head_commit=None)), SECRET)
    assert isinstance(event, Ignored)
    assert event.reason == "the push deletes branch 'master': nothing to build"


@pytest.mark.parametrize("marker", ["[skip ci]", "[ci skip]", "[Skip CI]"])
def test_a_head_commit_asking_to_skip_ci_is_ignored(marker: str) -> None:
    payload = _github_push()
    payload["head_commit"]["message"] = f"Fix the docs {marker}\n\nOnly words."
    event = parse(*_github("push", payload), SECRET)
    assert isinstance(event, Ignored)
    assert event.reason == f"the head commit's message says {marker.lower()}"


def test_skip_ci_in_an_earlier_commit_of_the_push_builds() -> None:
    payload = _github_push()
    payload["commits"] = [dict(payload["head_commit"], id="1" * 40, message="wip [skip ci]"), payload["head_commit"]]
    assert isinstance(parse(*_github("push", payload), SECRET), Push)


@pytest.mark.parametrize("event", ["issues", "pull_request", "create", "delete", "workflow_run"])
def test_an_event_that_is_not_a_push_is_ignored_naming_it(event: str) -> None:
    result = parse(*_github(event, {"action": "opened"}), SECRET)
    assert result == Ignored(
        forge="github", delivery=DELIVERY, reason=f"a GitHub {event!r} event is not a push: only pushes build"
    )


def test_an_event_that_is_not_a_push_still_needs_its_signature() -> None:
    headers, body = _github("issues", {"action": "opened"}, secret=b"wrong")
    with pytest.raises(HookUnauthorized):
        parse(headers, body, SECRET)


def test_a_request_naming_no_forges_event_is_invalid() -> None:
    with pytest.raises(InvalidHook, match="names no webhook event"):
        parse({"Content-Type": "application/json"}, b"{}", SECRET)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"ref": "refs/heads/main",', "not JSON: Expecting property name enclosed in double quotes at line 1"),
        (b"", "not JSON: Expecting value at line 1 column 1"),
        (b"payload=%7B%7D", r"set the webhook's content type to application/json"),
        (b'{"ref": "\xff"}', "not UTF-8 \\(at byte 9\\)"),
        (b'{"ref": "a", "ref": "b"}', "the key 'ref' twice"),
        (b'{"after": NaN}', "holds NaN, which is not JSON"),
        (b"[1, 2]", "not an object \\(it is an array\\)"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deep"),
        (b'{"ref": "refs/heads/x", "after": "x", "repository": {}}', "'after' is not a commit id"),
        (b'{"ref": 1, "after": "' + b"a" * 40 + b'", "repository": {}}', "'ref' is a number, not a string"),
        (b'{"ref": "refs/heads/x", "after": "' + b"a" * 40 + b'", "repository": []}', "'repository' is an array, not"),
        (b'{"ref": "refs/heads/x", "after": "' + b"a" * 40 + b'"}', "'repository' is missing, not an object"),
    ],
    ids=[
        "truncated",
        "empty",
        "form",
        "latin-1",
        "duplicate",
        "nan",
        "list",
        "deep",
        "bad-after",
        "ref-number",
        "repository-list",
        "no-repository",
    ],
)
def test_a_signed_body_that_is_not_a_push_object_is_invalid_and_says_why(body: bytes, message: str) -> None:
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + signature(SECRET, body)}
    with pytest.raises(InvalidHook, match=message):
        parse(headers, body, SECRET)


def test_an_oversized_body_is_refused_before_its_signature_is_computed() -> None:
    body = b" " * (MAX_BODY + 1)
    with pytest.raises(HookTooLarge, match="over the limit of 25.0 MiB") as caught:
        parse({"X-GitHub-Event": "push"}, body, SECRET)  # no signature: the size is checked first
    assert (caught.value.size, caught.value.limit) == (MAX_BODY + 1, MAX_BODY)
    assert isinstance(caught.value, InvalidHook)
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + signature(SECRET, body[:-1])}
    with pytest.raises(InvalidHook, match="not JSON"):  # a body of MAX_BODY bytes is read
        parse(headers, body[:-1], SECRET)


_GITEA_PUSH = Push(
    forge="gitea",
    delivery=DELIVERY,
    repository="gitea/webhooks",
    clone_urls=("https://gitea.example.com/gitea/webhooks.git", "git@gitea.example.com:gitea/webhooks.git"),
    ref="refs/heads/develop",
    branch="develop",
    after="bffeb74224043ba2feb48d137756c8a9331c449a",
    message="Webhooks Yay!\n",
    pusher="gitea",
)
_GITLAB_PUSH = Push(
    forge="gitlab",
    delivery=DELIVERY,
    repository="mike/diaspora",
    clone_urls=("http://example.com/mike/diaspora.git", "git@example.com:mike/diaspora.git"),
    ref="refs/heads/master",
    branch="master",
    after="da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    message="fixed readme",
    pusher="jsmith",
)


@pytest.mark.parametrize(
    ("delivery", "expected"),
    [
        (lambda: _gitea(_data("gitea-push.json")), _GITEA_PUSH),
        (lambda: _gitea(_data("gitea-push.json"), forge="Forgejo"), dataclasses.replace(_GITEA_PUSH, forge="forgejo")),
        (lambda: _gitlab(_data("gitlab-push.json")), _GITLAB_PUSH),
    ],
    ids=["gitea", "forgejo", "gitlab"],
)
def test_a_gitea_forgejo_or_gitlab_push_parses(
    delivery: Callable[[], tuple[dict[str, str], bytes]], expected: Push
) -> None:
    assert parse(*delivery(), SECRET) == expected


@pytest.mark.parametrize("kept", ["X-Gitea-Signature", "X-Hub-Signature-256"])
def test_a_gitea_push_with_either_signature_header_alone_is_checked_with_it(kept: str) -> None:
    headers, body = _gitea(_data("gitea-push.json"))
    del headers[({"X-Gitea-Signature", "X-Hub-Signature-256"} - {kept}).pop()]
    assert isinstance(parse(headers, body, SECRET), Push)
    headers[kept] = headers[kept].replace("a", "b").replace("1", "2")
    with pytest.raises(HookUnauthorized, match=f"delivery's {kept} does not match"):
        parse(headers, body, SECRET)


def test_a_gitea_push_with_one_wrong_signature_of_two_is_unauthorized() -> None:
    headers, body = _gitea(_data("gitea-push.json"))
    headers["X-Gitea-Signature"] = signature(b"another secret", body)
    with pytest.raises(HookUnauthorized, match="X-Gitea-Signature does not match"):
        parse(headers, body, SECRET)


def test_a_gitea_push_without_a_signature_is_unauthorized() -> None:
    headers, body = _gitea(_data("gitea-push.json"))
    del headers["X-Gitea-Signature"], headers["X-Hub-Signature-256"]
    with pytest.raises(HookUnauthorized, match="no X-Gitea-Signature or X-Hub-Signature-256 header"):
        parse(headers, body, SECRET)


def test_an_old_gitea_push_without_head_commit_takes_the_message_of_the_pushed_commit() -> None:
    payload = _data("gitea-push.json")
    del payload["head_commit"]
    payload["commits"][1]["message"] = "Build this [ci skip]"
    event = parse(*_gitea(payload), SECRET)
    assert isinstance(event, Ignored) and event.reason == "the head commit's message says [ci skip]"


def test_a_gitea_event_that_is_not_a_push_is_ignored() -> None:
    event = parse(*_gitea({"action": "opened"}, event="pull_request"), SECRET)
    assert isinstance(event, Ignored) and "a Gitea 'pull_request' event is not a push" in event.reason


def test_gitlabs_idempotency_key_is_the_delivery_id_when_sent() -> None:
    headers, body = _gitlab(_data("gitlab-push.json"))
    headers["Idempotency-Key"] = "a4f1c1a2-0d4b-4a5e-9d0e-3f0e6b2c9d11"
    event = parse(headers, body, SECRET)
    assert isinstance(event, Push) and event.delivery == "a4f1c1a2-0d4b-4a5e-9d0e-3f0e6b2c9d11"
    del headers["Idempotency-Key"], headers["X-Gitlab-Event-UUID"]
    event = parse(headers, body, SECRET)
    assert isinstance(event, Push) and event.delivery is None


def test_a_gitlab_push_with_a_wrong_or_missing_token_is_unauthorized() -> None:
    with pytest.raises(HookUnauthorized, match="X-Gitlab-Token is not the project's webhook secret"):
        parse(*_gitlab(_data("gitlab-push.json"), token="a wrong token"), SECRET)
    headers, body = _gitlab(_data("gitlab-push.json"))
    del headers["X-Gitlab-Token"]
    with pytest.raises(HookUnauthorized, match="no X-Gitlab-Token header"):
        parse(headers, body, SECRET)
    with pytest.raises(HookUnauthorized):  # GitLab sends the secret, not a signature of the body
        parse(*_gitlab(_data("gitlab-push.json"), token=signature(SECRET, body)), SECRET)


def test_a_gitlab_tag_push_and_a_branch_deletion_are_ignored() -> None:
    tag = dict(_data("gitlab-push.json"), object_kind="tag_push", ref="refs/tags/v1.0.0")
    event = parse(*_gitlab(tag, event="Tag Push Hook"), SECRET)
    assert isinstance(event, Ignored) and event.reason == "a GitLab 'Tag Push Hook' is not a push: only pushes build"
    deletion = dict(_data("gitlab-push.json"), after=ZERO, checkout_sha=None, commits=[], total_commits_count=0)
    event = parse(*_gitlab(deletion), SECRET)
    assert isinstance(event, Ignored) and "deletes branch 'master'" in event.reason


@pytest.mark.parametrize(
    ("glob", "branch", "matches"),
    [
        (None, "anything/at/all", True),
        ("main", "main", True),
        ("main", "Main", False),  # git's branch names are case-sensitive
        ("main", "main2", False),
        ("release/*", "release/1.2", True),
        ("release/*", "release/1/hotfix", True),  # fnmatch's * crosses /
        ("release/*", "releases/1", False),
        ("feature-?", "feature-a", True),
        ("feature-?", "feature-ab", False),
        ("[!w]*", "main", True),
        ("[!w]*", "wip", False),
        ("v[0-9]*", "v2-stable", True),
    ],
)
def test_branch_globs_follow_fnmatch(glob: str | None, branch: str, matches: bool) -> None:
    assert branch_matches(glob, branch) is matches


@given(branch=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1))
def test_an_escaped_branch_name_matches_itself_and_a_star_matches_every_branch(branch: str) -> None:
    assert branch_matches(glob.escape(branch), branch)
    assert branch_matches("*", branch)


def test_a_push_outside_the_projects_branches_is_ignored() -> None:
    push = parse(*_github("push", _github_push()), SECRET)
    assert within_branches(push, "ma*") is push
    ignored = within_branches(push, "release/*")
    assert ignored == Ignored(
        forge="github", delivery=DELIVERY, reason="branch 'master' does not match the project's --branch 'release/*'"
    )
    ping = Ping(forge="github", delivery=None, zen="")
    assert within_branches(ping, "release/*") is ping


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_PUSH_KEYS = ["ref", "after", "repository", "head_commit", "pusher", "commits", "project", "user_username"]


@given(
    forge=st.sampled_from(["github", "gitea", "gitlab"]),
    changes=st.dictionaries(st.sampled_from(_PUSH_KEYS), _json, max_size=4),
)
def test_any_signed_push_body_gives_an_event_or_an_invalid_hook_error(forge: str, changes: dict[str, Any]) -> None:
    """Whatever shape a push's fields take, parse answers with an event or a clear InvalidHook."""
    if forge == "github":
        headers, body = _github("push", _github_push(**changes))
    elif forge == "gitea":
        headers, body = _gitea(_data("gitea-push.json") | changes)
    else:
        headers, body = _gitlab(_data("gitlab-push.json") | changes)
    try:
        event = parse(headers, body, SECRET)
    except InvalidHook as error:
        assert str(error).startswith("the "), error
    else:
        assert isinstance(event, Push | Ignored)


@given(body=st.binary(max_size=200) | _json.map(lambda value: json.dumps(value).encode()))
def test_any_signed_body_gives_an_event_or_an_invalid_hook_error(body: bytes) -> None:
    for event in ("push", "ping"):
        headers = {"X-GitHub-Event": event, "X-Hub-Signature-256": "sha256=" + signature(SECRET, body)}
        try:
            parse(headers, body, SECRET)
        except InvalidHook:
            pass


def test_hook_errors_are_meshs_own() -> None:
    assert issubclass(HookUnauthorized, MeshError) and issubclass(InvalidHook, MeshError)
    assert issubclass(InvalidHook, ValueError) and issubclass(HookTooLarge, InvalidHook)
    assert not issubclass(HookUnauthorized, InvalidHook)


@contextlib.contextmanager
def _delivery_log(limit: int = DEFAULT_LIMIT) -> Iterator[StoredDeliveries]:
    """A delivery log in a state database of its own."""
    with tempfile.TemporaryDirectory() as home:
        db = StateDB(os.path.join(home, "state.db"))
        try:
            yield StoredDeliveries(db, limit=limit)
        finally:
            db.close()


def test_a_delivery_is_taken_once_per_project_and_again_once_forgotten() -> None:
    log: DeliveryLog
    with _delivery_log() as log:
        assert log.remember("app", DELIVERY)
        assert not log.remember("app", DELIVERY)
        assert log.remember("docs", DELIVERY)  # one organisation webhook, two projects
        log.forget("app", DELIVERY)
        assert log.remember("app", DELIVERY)
        log.forget("app", "never seen")


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.sampled_from("abcdefgh"), max_size=60), limit=st.integers(1, 5))
def test_the_delivery_log_keeps_the_most_recently_seen_up_to_its_limit(keys: list[str], limit: int) -> None:
    with _delivery_log(limit) as log:
        model: list[str] = []  # least recently seen first
        for key in keys:
            assert log.remember("p", key) is (key not in model)
            if key in model:
                model.remove(key)
            model = (model + [key])[-limit:]
            assert len(log) == len(model) <= limit


def test_the_nodes_delivery_log_outlives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    db = StateDB(path)
    StoredDeliveries(db).remember("app", DELIVERY)
    db.close()
    db = StateDB(path)  # the node again
    try:
        log = StoredDeliveries(db)
        assert not log.remember("app", DELIVERY)
        assert repr(log) == "StoredDeliveries(limit=10000, held=1)"
    finally:
        db.close()


def test_a_delivery_log_keeps_at_least_one(tmp_path: Path) -> None:
    db = StateDB(str(tmp_path / "state.db"))
    try:
        with pytest.raises(ValueError, match="at least one"):
            StoredDeliveries(db, limit=0)
    finally:
        db.close()


def test_the_readme_states_the_body_limit() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"A body is at most {MAX_BODY // 2**20} MiB" in readme
