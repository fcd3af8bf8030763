"""A build's notifications: which are due when it ends, and sending them (webhooks, email).

**Which** (:func:`due`, pure). A pipeline's ``notify`` entries are :class:`Webhook` and
:class:`Email` targets, each with the events it wants (``on``). A build's end has these
events (:func:`events`):

=======  =====================================================================
always   every end: succeeded, failed or cancelled
success  the build succeeded
failure  the build failed (a cancelled build is neither a success nor a failure)
fixed    it succeeded and the project's previous build had failed
broken   it failed and the project's previous build had succeeded
=======  =====================================================================

A target is due when one of its events happened, and is sent once however many match.

**What.** A webhook gets an HTTP POST of JSON (:func:`payload`): ``project``, ``number``,
``status``, ``previous_status`` (None for a project's first build), ``commit``, ``branch``,
``duration`` (seconds), ``url`` (the build's page), and ``text``, the one line that Slack,
Mattermost and the hooks compatible with them display (:func:`text`), e.g.
``✅ web #12 succeeded (abc1234 on main, 3m 2s) http://node:7474/...``. An email
(:func:`email_message`) has that line, without the URL, as its subject, and the fields
one a line as its body; it goes through the node's SMTP server (``smtp_*`` in
mesh.config: without one, every email due is a failure that names the setting).

**Retries** (:class:`RetryPolicy`). Each attempt is bounded by ``timeout`` (10 s); a
failed one is tried again after 2 s, 8 s and 32 s, so four attempts over about 45 s (up
to 85 s when each times out) ride out a receiver's restart without holding a build's
announcements for minutes. An answer that another attempt cannot change is not retried:
an HTTP 4xx other than 408 and 429, a redirect (a POST is not followed to another URL:
the pipeline should name the final one), an SMTP 5xx, a TLS certificate that does not
verify. A notification that finally fails is a :class:`NotifyFailure` (target, attempts,
last error) for the caller to record on the build; the build's status never depends on it.

**How a caller uses it.** ``failures = await Notifier(smtp=config.smtp).send_all(end,
targets)`` sends every due notification at once, each in a task of a nursery of its own,
and returns when all have ended: it never raises (but trio.Cancelled when its caller is
cancelled). The caller runs it as a task of its own nursery, so that a slow hook holds up
nothing else, and records what it returns.

**Why smtplib in a thread.** The node runs on trio; aiosmtplib, the maintained async SMTP
client, runs on asyncio only (under trio it would take trio-asyncio, a second event loop
in the node). smtplib in ``trio.to_thread.run_sync`` costs one thread for the length of an
SMTP session, a few per build at most. Measured here (2 shared cores, median of 30): an
email to a loopback aiosmtpd takes 1.2 ms that way against 1.1 ms calling smtplib directly,
and a thread hop alone 0.04 ms. A thread cannot be interrupted: when an
attempt's deadline passes, trio stops waiting for it (``abandon_on_cancel``) and the thread
ends by itself within smtplib's socket timeout (the same ``timeout``, per operation). If
the server accepted the message just then, the retry may send it twice.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import trio

from mesh.config import SmtpSettings
from mesh.errors import NotificationFailed, describe

log = logging.getLogger("mesh.pipelines.notify")

Status = Literal["succeeded", "failed", "cancelled"]
Event = Literal["always", "success", "failure", "fixed", "broken"]
#: Every event a target may name in ``on``, in the order of the table above.
EVENTS: tuple[Event, ...] = ("always", "success", "failure", "fixed", "broken")


@dataclass(frozen=True, kw_only=True)
class Webhook:
    """``- webhook: URL`` in a pipeline's ``notify``: POST the build's JSON to ``url`` on ``on``."""

    url: str
    on: frozenset[Event]


@dataclass(frozen=True, kw_only=True)
class Email:
    """``- email: ADDRESS`` in a pipeline's ``notify``: mail ``address`` on ``on``."""

    address: str
    on: frozenset[Event]


Target = Webhook | Email


@dataclass(frozen=True, kw_only=True)
class BuildEnd:
    """What the notifications of a build say: the build as it ended, and its predecessor's status."""

    project: str
    number: int
    status: Status
    previous: Status | None  # the status of the project's previous build; None for its first
    commit: str
    branch: str
    duration: float  # seconds
    url: str  # the build's page


@dataclass(frozen=True, kw_only=True)
class NotifyFailure:
    """A notification given up on: to record on its build."""

    target: str  # "webhook URL" or "email ADDRESS"
    attempts: int  # 0: not tried (no SMTP server on this node)
    error: str  # the last attempt's, in one line


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently a notification is tried (the module docstring says why)."""

    attempts: int = 4
    first_delay: float = 2.0  # seconds between the first attempt's failure and the second
    factor: float = 4.0  # each wait is this many times the one before
    timeout: float = 10.0  # seconds an attempt may take

    def delay(self, failed: int) -> float:
        """Seconds to wait after the ``failed``-th attempt (1-based) failed."""
        return float(self.first_delay * self.factor ** (failed - 1))


def events(end: BuildEnd) -> frozenset[Event]:
    """The events of a build's end (the table in the module docstring)."""
    happened: set[Event] = {"always"}
    if end.status == "succeeded":
        happened.add("success")
        if end.previous == "failed":
            happened.add("fixed")
    elif end.status == "failed":
        happened.add("failure")
        if end.previous == "succeeded":
            happened.add("broken")
    return frozenset(happened)


def due(end: BuildEnd, targets: Iterable[Target]) -> list[Target]:
    """The targets to notify of ``end``, in their order: those that want one of its events."""
    happened = events(end)
    return [target for target in targets if target.on & happened]


_ICONS: dict[Status, str] = {"succeeded": "✅", "failed": "❌", "cancelled": "🚫"}


def duration_text(seconds: float) -> str:
    """``45s``, ``3m 2s``, ``1h 5m``: a build's duration as people read it."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    return f"{whole // 3600}h {whole % 3600 // 60}m"


def headline(end: BuildEnd) -> str:
    """``✅ web #12 succeeded (abc1234 on main, 3m 2s)``, with ``, fixed`` or ``, broken`` after the status."""
    change = ", fixed" if "fixed" in events(end) else ", broken" if "broken" in events(end) else ""
    return (
        f"{_ICONS[end.status]} {end.project} #{end.number} {end.status}{change} "
        f"({end.commit[:7]} on {end.branch}, {duration_text(end.duration)})"
    )


def text(end: BuildEnd) -> str:
    """The line a chat shows for a webhook: the headline and the build's URL."""
    return f"{headline(end)} {end.url}"


def payload(end: BuildEnd) -> dict[str, Any]:
    """The JSON a webhook gets (the module docstring lists its fields)."""
    return {
        "project": end.project,
        "number": end.number,
        "status": end.status,
        "previous_status": end.previous,
        "commit": end.commit,
        "branch": end.branch,
        "duration": round(end.duration, 3),
        "url": end.url,
        "text": text(end),
    }


def email_message(end: BuildEnd, *, sender: str, to: str) -> EmailMessage:
    """The email for ``to``: the headline as its subject, the build's fields as its body."""
    message = EmailMessage()
    message["Subject"] = headline(end)
    message["From"] = sender
    message["To"] = to
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    previous = f" (previous build: {end.previous})" if end.previous else ""
    message.set_content(
        f"{headline(end)}\n\n"
        f"project:  {end.project}\n"
        f"build:    #{end.number}\n"
        f"status:   {end.status}{previous}\n"
        f"commit:   {end.commit}\n"
        f"branch:   {end.branch}\n"
        f"duration: {duration_text(end.duration)} ({end.duration:.1f} s)\n"
        f"page:     {end.url}\n"
    )
    return message


def describe_target(target: Target) -> str:
    """``webhook URL`` (without any user:password in it) or ``email ADDRESS``: a failure's target."""
    if isinstance(target, Email):
        return f"email {target.address}"
    parts = urlsplit(target.url)
    if parts.username is not None or parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        return f"webhook {parts._replace(netloc=host).geturl()}"
    return f"webhook {target.url}"


class Notifier:
    """Sends a build's due notifications, with retries (see the module docstring)."""

    def __init__(self, *, smtp: SmtpSettings | None, policy: RetryPolicy | None = None) -> None:
        self.smtp = smtp
        self.policy = policy or RetryPolicy()

    def __repr__(self) -> str:
        return f"Notifier(smtp={self.smtp!r}, policy={self.policy!r})"

    async def send_all(self, end: BuildEnd, targets: Iterable[Target]) -> list[NotifyFailure]:
        """Notify every due target of ``end`` at once; the ones that finally failed, in their order.

        Never raises but trio.Cancelled: every failure, a bug's included, is a NotifyFailure.
        """
        chosen = due(end, targets)
        results: list[NotifyFailure | None] = [None] * len(chosen)
        if not chosen:
            return []
        async with httpx.AsyncClient(timeout=self.policy.timeout, follow_redirects=False) as http:

            async def deliver(index: int, target: Target) -> None:
                try:
                    results[index] = await self._deliver(http, end, target)
                except Exception as exc:  # what could not even be written (a newline in an address): recorded
                    error = describe(exc)
                    log.warning("%s #%d: %s not sent: %s", end.project, end.number, describe_target(target), error)
                    results[index] = NotifyFailure(target=describe_target(target), attempts=0, error=error)

            async with trio.open_nursery() as nursery:
                for index, target in enumerate(chosen):
                    nursery.start_soon(deliver, index, target)
        return [failure for failure in results if failure is not None]

    async def _deliver(self, http: httpx.AsyncClient, end: BuildEnd, target: Target) -> NotifyFailure | None:
        """Send to one target, retrying as the policy says; its failure, or None once sent."""
        name = describe_target(target)
        attempt: Callable[[], Awaitable[None]]
        if isinstance(target, Webhook):
            attempt = partial(_post, http, target.url, payload(end))
        elif self.smtp is None:
            return NotifyFailure(
                target=name,
                attempts=0,
                error="this node has no SMTP server: set smtp_host in $MESH_HOME/mesh.toml (or MESH_SMTP_HOST)",
            )
        else:
            message = email_message(end, sender=self.smtp.sender, to=target.address)
            attempt = partial(_mail, self.smtp, message, self.policy.timeout)
        tries = 0
        while True:
            tries += 1
            try:
                with trio.fail_after(self.policy.timeout):
                    await attempt()
                return None
            except trio.TooSlowError:
                error, permanent = f"no answer within {self.policy.timeout:g} s", False
            except NotificationFailed as exc:
                error, permanent = str(exc), exc.permanent
            except Exception as exc:  # a bug: recorded, never raised into the build
                error, permanent = describe(exc), True
            if permanent or tries >= self.policy.attempts:
                log.warning("%s #%d: %s failed after %d attempt(s): %s", end.project, end.number, name, tries, error)
                return NotifyFailure(target=name, attempts=tries, error=error)
            delay = self.policy.delay(tries)
            log.info("%s #%d: %s failed (%s); trying again in %g s", end.project, end.number, name, error, delay)
            await trio.sleep(delay)


#: HTTP statuses that another attempt may change: a timeout, a rate limit, any server error.
_RETRY_STATUSES = frozenset({408, 429})


async def _post(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
    """POST ``body`` as JSON; NotificationFailed unless the answer is a 2xx."""
    try:
        response = await http.post(url, json=body, headers={"user-agent": "mesh-notify"})
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise NotificationFailed(f"not a URL mesh can POST to ({exc})", permanent=True) from None
    except httpx.TimeoutException:
        raise NotificationFailed(f"timed out talking to {urlsplit(url).netloc}") from None
    except httpx.HTTPError as exc:
        raise NotificationFailed(f"cannot reach {urlsplit(url).netloc}: {str(exc) or type(exc).__name__}") from None
    if response.is_success:
        return
    said = " ".join(response.text[:200].split())
    detail = f"HTTP {response.status_code} {response.reason_phrase}" + (f": {said}" if said else "")
    if response.is_redirect:
        where = response.headers.get("location", "?")
        raise NotificationFailed(f"{detail} (a redirect to {where}: name that URL in the pipeline)", permanent=True)
    retry = response.status_code >= 500 or response.status_code in _RETRY_STATUSES
    raise NotificationFailed(detail, permanent=not retry)


async def _mail(settings: SmtpSettings, message: EmailMessage, timeout: float) -> None:
    """Send ``message`` through the SMTP server, smtplib in a worker thread (see the module docstring)."""
    await trio.to_thread.run_sync(_smtp_send, settings, message, timeout, abandon_on_cancel=True)


def _smtp_send(settings: SmtpSettings, message: EmailMessage, timeout: float) -> None:
    """One SMTP session (in a worker thread); smtplib's and the socket's errors as NotificationFailed."""
    server = f"SMTP server {settings.host}:{settings.port}"
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=timeout) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.user is not None:
                smtp.login(settings.user, settings.password or "")
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        said = "; ".join(f"{to}: {code} {_said(reply)}" for to, (code, reply) in exc.recipients.items())
        raise NotificationFailed(f"{server} refused {said}", permanent=min(codes) >= 500) from None
    except smtplib.SMTPResponseException as exc:
        said = f"{exc.smtp_code} {_said(exc.smtp_error)}"
        raise NotificationFailed(f"{server} answered {said}", permanent=exc.smtp_code >= 500) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise NotificationFailed(f"{server}: {exc} (check smtp_starttls and smtp_user)", permanent=True) from None
    except ssl.SSLCertVerificationError as exc:
        raise NotificationFailed(
            f"{server}: its certificate does not verify ({exc.verify_message})", permanent=True
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise NotificationFailed(f"{server}: {str(exc) or type(exc).__name__}") from None


def _said(reply: bytes | str) -> str:
    """An SMTP server's reply text in one line."""
    words = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(words.split())
