"""A forge's webhook delivery, checked and read: which branch and commit a push asks to build.

:func:`parse` takes a delivery as it arrived (its headers, a case-insensitive mapping, and
its raw body) and the project's webhook secret, and answers with one typed event: a
:class:`Push` to build, a :class:`Ping` to answer, or an :class:`Ignored` with the reason.
It is pure (no I/O, no clock), so the hook endpoint that calls it stays a thin handler.

What is checked, in this order, so that nothing of a body is decoded before its sender is
known to hold the secret:

1. The body's size: at most :data:`MAX_BODY` bytes (GitHub's own cap on a payload is
   25 MB, and it sends nothing larger; a push carries at most 20 commits, and the largest
   push or ping example in ``@octokit/webhooks-examples`` 7.6.1 is 8.3 kB), else
   :class:`~mesh.errors.HookTooLarge`.
2. The forge, from the event header: ``X-Gitlab-Event`` (GitLab), ``X-Forgejo-Event``
   (Forgejo), ``X-Gitea-Event`` (Gitea), ``X-GitHub-Event`` (GitHub), looked for in that
   order because Gitea and Forgejo send GitHub's headers too. None of them:
   :class:`~mesh.errors.InvalidHook`.
3. The sender, with the project's secret (:class:`~mesh.errors.HookUnauthorized` when
   missing or wrong, and always for a project without a secret):

   - GitHub: ``X-Hub-Signature-256``, ``sha256=`` and the hex HMAC-SHA256 of the raw body.
   - Gitea and Forgejo: ``X-Gitea-Signature`` / ``X-Forgejo-Signature`` (the same HMAC,
     bare hex) or the ``X-Hub-Signature-256`` they also send; at least one must be
     there, and every one that is there must be right.
   - GitLab: ``X-Gitlab-Token``, which is the secret itself (GitLab signs nothing).

   Every comparison is :func:`hmac.compare_digest`, whose time does not depend on where
   the bytes differ.
4. The body: UTF-8 JSON, decoded strictly (no duplicate keys, no NaN or Infinity, an
   object at the top), with the fields a push needs of the right types; else
   :class:`~mesh.errors.InvalidHook`, whose message names the field.

What a delivery becomes:

- A push to a branch (``refs/heads/NAME``) becomes a :class:`Push` of its new commit
  (``after``), unless it deletes the branch (``after`` is all zeros) or its head commit's
  message holds ``[skip ci]`` or ``[ci skip]`` (in any case, as GitLab reads them): those
  are :class:`Ignored`, with the reason.
- A push of a tag (``refs/tags/...``), or of any other ref, is :class:`Ignored`: a
  pipeline builds branches, and a project's ``--branch`` glob names branches. (A tag
  usually points to a commit that was built when its branch was pushed.)
- GitHub's ``ping`` (sent when a webhook is made) is a :class:`Ping`. Gitea, Forgejo
  and GitLab have no ping: their "test delivery" buttons send a push.
- Any other event (issues, pull requests, GitLab's "Tag Push Hook" ...) is
  :class:`Ignored`, naming the event.

:func:`branch_matches` and :func:`within_branches` apply a project's ``--branch`` glob;
mesh.pipelines.deliveries remembers delivery ids, so that a replay starts nothing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from mesh.errors import HookTooLarge, HookUnauthorized, InvalidHook

Forge = Literal["github", "gitea", "forgejo", "gitlab"]

MAX_BODY = 25 * 1024 * 1024
"""The largest body :func:`parse` reads: GitHub's cap on a payload (25 MB); GitLab's and
Gitea's pushes, like GitHub's, list at most 20 commits and are far smaller."""

SKIP_MARKERS = ("[skip ci]", "[ci skip]")
"""A head commit whose message holds one of these (in any case) is not built."""

NO_COMMIT = "0" * 40
"""The ``after`` of a push that deletes its ref."""

_NAMES: dict[Forge, str] = {"github": "GitHub", "gitea": "Gitea", "forgejo": "Forgejo", "gitlab": "GitLab"}

# The header that names the event, per forge, in the order they are looked for.
_EVENT_HEADERS: tuple[tuple[str, Forge], ...] = (
    ("x-gitlab-event", "gitlab"),
    ("x-forgejo-event", "forgejo"),
    ("x-gitea-event", "gitea"),
    ("x-github-event", "github"),
)

# The headers that carry the delivery id, per forge, the first one present wins. GitLab's
# Idempotency-Key stays the same when GitLab retries a delivery; X-Gitlab-Event-UUID is
# what older GitLab versions send.
_DELIVERY_HEADERS: dict[Forge, tuple[str, ...]] = {
    "github": ("x-github-delivery",),
    "gitea": ("x-gitea-delivery", "x-github-delivery"),
    "forgejo": ("x-forgejo-delivery", "x-gitea-delivery", "x-github-delivery"),
    "gitlab": ("idempotency-key", "x-gitlab-event-uuid"),
}

# HMAC-SHA256 signature headers, per forge, with the prefix before the hex digest.
_SIGNATURE_HEADERS: dict[Forge, tuple[tuple[str, str], ...]] = {
    "github": (("x-hub-signature-256", "sha256="),),
    "gitea": (("x-gitea-signature", ""), ("x-hub-signature-256", "sha256=")),
    "forgejo": (("x-forgejo-signature", ""), ("x-gitea-signature", ""), ("x-hub-signature-256", "sha256=")),
}

_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1, or SHA-256 repositories


@dataclass(frozen=True, kw_only=True)
class Push:
    """A push to a branch: build ``after``, the commit the branch now points to.

    ``clone_urls`` are the repository's URLs as the forge gives them, HTTP(S) first, then
    SSH; ``repository`` its full name (``owner/name``); ``message`` the head commit's message
    ("" when the forge sent none); ``pusher`` the name of who pushed ("" when unknown);
    ``delivery`` the delivery id (None when the forge sent none: old GitLab versions).
    """

    forge: Forge
    delivery: str | None
    repository: str
    clone_urls: tuple[str, ...]
    ref: str
    branch: str
    after: str
    message: str
    pusher: str


@dataclass(frozen=True, kw_only=True)
class Ping:
    """GitHub's ping, sent when a webhook is made or pinged: answer it, build nothing."""

    forge: Forge
    delivery: str | None
    zen: str


@dataclass(frozen=True, kw_only=True)
class Ignored:
    """A delivery that builds nothing; ``reason`` says why, for the answer (HTTP 202) and the log."""

    forge: Forge
    delivery: str | None
    reason: str


HookEvent = Push | Ping | Ignored


def parse(headers: Mapping[str, str], body: bytes, secret: bytes) -> HookEvent:
    """Check a webhook delivery with the project's ``secret`` and read what it asks.

    ``headers`` may be any mapping (Starlette's Headers, a dict): names are compared
    without case. Raises HookTooLarge (a body over MAX_BODY bytes), HookUnauthorized
    (a signature or token missing or wrong, or no secret) and InvalidHook (no forge's
    event header, a body that is not a JSON object, a push without the fields it needs).
    """
    if len(body) > MAX_BODY:
        raise HookTooLarge(len(body), MAX_BODY)
    lowered = {name.lower(): value for name, value in headers.items()}
    forge, event = _forge(lowered)
    delivery = next((lowered[name] for name in _DELIVERY_HEADERS[forge] if lowered.get(name)), None)
    verify(forge, lowered, body, secret)
    if forge == "gitlab":
        if event != "Push Hook":
            return Ignored(
                forge=forge, delivery=delivery, reason=f"a GitLab {event!r} is not a push: only pushes build"
            )
        return _gitlab_push(decode(body), delivery)
    if forge == "github" and event == "ping":
        zen = decode(body).get("zen")
        return Ping(forge=forge, delivery=delivery, zen=zen if isinstance(zen, str) else "")
    if event != "push":
        name = _NAMES[forge]
        return Ignored(
            forge=forge, delivery=delivery, reason=f"a {name} {event!r} event is not a push: only pushes build"
        )
    return _github_or_gitea_push(forge, decode(body), delivery)


def signature(secret: bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` under ``secret``, as the forges sign a delivery."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(forge: Forge, headers: Mapping[str, str], body: bytes, secret: bytes) -> None:
    """Raise HookUnauthorized unless the delivery carries ``forge``'s proof of ``secret``.

    ``headers``' names are lower-case here. The module's docstring lists what each forge sends.
    """
    name = _NAMES[forge]
    if not secret:
        raise HookUnauthorized(
            "this project has no webhook secret, so no delivery can be checked: give it one and set the same "
            f"secret on the {name} webhook"
        )
    if forge == "gitlab":
        token = headers.get("x-gitlab-token")
        if token is None:
            raise HookUnauthorized(
                "the GitLab delivery has no X-Gitlab-Token header: set the webhook's secret token on GitLab to the "
                "project's webhook secret"
            )
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), secret):
            raise HookUnauthorized(
                "the GitLab delivery's X-Gitlab-Token is not the project's webhook secret: set the same secret token "
                "on GitLab"
            )
        return
    expected = signature(secret, body).encode("ascii")
    present = [(header, prefix) for header, prefix in _SIGNATURE_HEADERS[forge] if header in headers]
    if not present:
        wanted = " or ".join(_title(header) for header, _ in _SIGNATURE_HEADERS[forge])
        raise HookUnauthorized(
            f"the {name} delivery has no {wanted} header: set the webhook's secret on {name} to the project's "
            "webhook secret"
        )
    for header, prefix in present:
        given = headers[header].strip()
        if prefix and given[: len(prefix)].lower() == prefix:
            given = given[len(prefix) :]
        elif prefix:
            given = ""  # no sha256= prefix: not a signature this module can check
        if not hmac.compare_digest(given.lower().encode("utf-8", "surrogateescape"), expected):
            raise HookUnauthorized(
                f"the {name} delivery's {_title(header)} does not match its body under the project's webhook "
                f"secret: the secret set on {name} differs from the project's, or the body was changed on the way"
            )


def decode(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, decoded strictly: UTF-8, no duplicate keys, no NaN or
    Infinity (which are not JSON), an object at the top. Raises InvalidHook saying where."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidHook(f"the webhook body is not UTF-8 (at byte {error.start}): send it as JSON") from None
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_constant)
    except json.JSONDecodeError as error:
        hint = " (set the webhook's content type to application/json)" if text.startswith("payload=") else ""
        raise InvalidHook(
            f"the webhook body is not JSON{hint}: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise InvalidHook("the webhook body's JSON nests too deep to read") from None
    if not isinstance(value, dict):
        raise InvalidHook(f"the webhook body is JSON but not an object (it is {_json_type(value)})")
    return value


def branch_matches(glob: str | None, branch: str) -> bool:
    """Whether ``branch`` (a name without ``refs/heads/``) matches a project's ``--branch`` glob.

    fnmatch's rules, case-sensitive as git's branch names are: ``*`` matches any run of
    characters, ``/`` included (``release/*`` matches ``release/1.2`` and
    ``release/1/hotfix``), ``?`` one character, ``[abc]`` and ``[!abc]`` one of or none of
    a set. No glob (None) matches every branch.
    """
    return glob is None or fnmatch.fnmatchcase(branch, glob)


def within_branches(event: HookEvent, glob: str | None) -> HookEvent:
    """``event``, or an Ignored saying why when it is a push to a branch outside ``glob``."""
    if isinstance(event, Push) and not branch_matches(glob, event.branch):
        reason = f"branch {event.branch!r} does not match the project's --branch {glob!r}"
        return Ignored(forge=event.forge, delivery=event.delivery, reason=reason)
    return event


def _forge(headers: Mapping[str, str]) -> tuple[Forge, str]:
    for header, forge in _EVENT_HEADERS:
        if header in headers:
            return forge, headers[header].strip()
    raise InvalidHook(
        "the request names no webhook event (no X-GitHub-Event, X-Gitea-Event, X-Forgejo-Event or X-Gitlab-Event "
        "header): point a GitHub, Gitea, Forgejo or GitLab webhook here"
    )


def _github_or_gitea_push(forge: Forge, payload: dict[str, Any], delivery: str | None) -> HookEvent:
    """GitHub's push, which Gitea and Forgejo copy (Gitea's pusher has a ``login``, not a ``name``)."""
    repository = _field(payload, "repository", dict, forge)
    urls = (
        _optional(repository, "clone_url", forge, "repository."),
        _optional(repository, "ssh_url", forge, "repository."),
    )
    head = _optional_object(payload, "head_commit", forge)
    after = _field(payload, "after", str, forge)
    if head is None and forge != "github":
        head = _commit_of(payload, after, forge)  # Gitea before 1.13 sent no head_commit
    pusher = _optional_object(payload, "pusher", forge) or {}
    who = next(
        (name for key in ("name", "login", "username") if (name := _optional(pusher, key, forge, "pusher."))), ""
    )
    return _push(
        forge,
        delivery,
        repository=_optional(repository, "full_name", forge, "repository."),
        clone_urls=tuple(url for url in urls if url),
        ref=_field(payload, "ref", str, forge),
        after=after,
        message=_optional(head, "message", forge, "head_commit.") if head is not None else "",
        pusher=who,
    )


def _gitlab_push(payload: dict[str, Any], delivery: str | None) -> HookEvent:
    """GitLab's push: the project's URLs under ``project`` (``repository`` in old versions),
    the head commit found by its id among ``commits``."""
    project = _optional_object(payload, "project", "gitlab") or _field(payload, "repository", dict, "gitlab")
    urls = (
        _optional(project, "git_http_url", "gitlab", "project."),
        _optional(project, "git_ssh_url", "gitlab", "project."),
    )
    after = _field(payload, "after", str, "gitlab")
    head = _commit_of(payload, after, "gitlab")
    who = _optional(payload, "user_username", "gitlab") or _optional(payload, "user_name", "gitlab")
    return _push(
        "gitlab",
        delivery,
        repository=_optional(project, "path_with_namespace", "gitlab", "project."),
        clone_urls=tuple(url for url in urls if url),
        ref=_field(payload, "ref", str, "gitlab"),
        after=after,
        message=_optional(head, "message", "gitlab", "commits[].") if head is not None else "",
        pusher=who,
    )


def _push(
    forge: Forge,
    delivery: str | None,
    *,
    repository: str,
    clone_urls: tuple[str, ...],
    ref: str,
    after: str,
    message: str,
    pusher: str,
) -> HookEvent:
    """The Push, or why it is Ignored: the rules that are the same for every forge."""
    if not _COMMIT.fullmatch(after):
        _invalid(forge, f"'after' is not a commit id (40 or 64 lower-case hex digits): {after[:80]!r}")
    if ref.startswith("refs/tags/"):
        reason = f"{ref} is a tag: only pushes to branches build"
    elif not ref.startswith("refs/heads/") or ref == "refs/heads/":
        reason = f"{ref} is not a branch (refs/heads/NAME): only pushes to branches build"
    elif set(after) == {"0"}:
        reason = f"the push deletes branch {ref.removeprefix('refs/heads/')!r}: nothing to build"
    elif marker := next((m for m in SKIP_MARKERS if m in message.lower()), None):
        reason = f"the head commit's message says {marker}"
    else:
        if not clone_urls:
            _invalid(forge, "the repository has no clone URL")
        branch = ref.removeprefix("refs/heads/")
        return Push(
            forge=forge,
            delivery=delivery,
            repository=repository,
            clone_urls=clone_urls,
            ref=ref,
            branch=branch,
            after=after,
            message=message,
            pusher=pusher,
        )
    return Ignored(forge=forge, delivery=delivery, reason=reason)


def _commit_of(payload: dict[str, Any], commit: str, forge: Forge) -> dict[str, Any] | None:
    """The entry of ``payload``'s ``commits`` whose id is ``commit``, or None."""
    commits = payload.get("commits") or []
    if not isinstance(commits, list):
        _invalid(forge, f"'commits' is {_json_type(commits)}, not an array")
    for entry in commits:
        if isinstance(entry, dict) and entry.get("id") == commit:
            return entry
    return None


def _field(payload: dict[str, Any], key: str, kind: type[Any], forge: Forge) -> Any:
    value = payload.get(key)
    if not isinstance(value, kind):
        what = "missing" if value is None else _json_type(value)
        _invalid(forge, f"{key!r} is {what}, not {'a string' if kind is str else 'an object'}")
    return value


def _optional(payload: dict[str, Any], key: str, forge: Forge, where: str = "") -> str:
    """A string field, or "" when it is missing or null."""
    value = payload.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        _invalid(forge, f"'{where}{key}' is {_json_type(value)}, not a string")
    return value


def _optional_object(payload: dict[str, Any], key: str, forge: Forge) -> dict[str, Any] | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, dict):
        _invalid(forge, f"{key!r} is {_json_type(value)}, not an object")
    return value


def _json_type(value: object) -> str:
    """What JSON calls the type of a decoded value, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else "null"


def _invalid(forge: Forge, what: str) -> NoReturn:
    raise InvalidHook(f"the {_NAMES[forge]} push cannot be read: {what}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidHook(f"the webhook body's JSON has the key {key[:80]!r} twice in one object")
        result[key] = value
    return result


def _constant(name: str) -> NoReturn:
    raise InvalidHook(f"the webhook body's JSON holds {name}, which is not JSON")


def _title(header: str) -> str:
    """A header's name as the forges' documentation writes it."""
    special = {"x-github-event": "X-GitHub-Event", "x-hub-signature-256": "X-Hub-Signature-256"}
    return special.get(header, "-".join(part.capitalize() for part in header.split("-")))
