"""mesh.pipelines.notify: which notifications a build's end sends, and sending them for real.

The decision is checked against the table of events written out here a second time; the
sending against a real HTTP receiver (http.server in a thread on loopback) and a real SMTP
server (aiosmtpd's Controller on loopback), with the retry delays made tiny through the
policy. Every send is awaited to its end (send_all returns when all are done), so what
the receivers got is known when it returns: nothing waits on a clock.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, Session
from hypothesis import given
from hypothesis import strategies as st

from mesh.config import SmtpSettings
from mesh.pipelines.notify import (
    EVENTS,
    BuildEnd,
    Email,
    Event,
    Notifier,
    NotifyFailure,
    RetryPolicy,
    Status,
    Target,
    Webhook,
    describe_target,
    due,
    duration_text,
    email_message,
    events,
    payload,
    text,
)
from tests.nodeutil import free_port

STATUSES: tuple[Status, ...] = ("succeeded", "failed", "cancelled")

#: The events of every (previous status, status), written out: the module's table, a second time.
TABLE: dict[tuple[Status | None, Status], set[str]] = {
    (None, "succeeded"): {"always", "success"},
    ("succeeded", "succeeded"): {"always", "success"},
    ("failed", "succeeded"): {"always", "success", "fixed"},
    ("cancelled", "succeeded"): {"always", "success"},
    (None, "failed"): {"always", "failure"},
    ("succeeded", "failed"): {"always", "failure", "broken"},
    ("failed", "failed"): {"always", "failure"},
    ("cancelled", "failed"): {"always", "failure"},
    (None, "cancelled"): {"always"},
    ("succeeded", "cancelled"): {"always"},
    ("failed", "cancelled"): {"always"},
    ("cancelled", "cancelled"): {"always"},
}

#: Retries without waiting: 3 attempts, a millisecond apart, each bounded by 5 s.
FAST = RetryPolicy(attempts=3, first_delay=0.001, factor=2, timeout=5)


def end(status: Status = "failed", previous: Status | None = "succeeded", **changes: Any) -> BuildEnd:
    fields: dict[str, Any] = {
        "project": "web",
        "number": 12,
        "status": status,
        "previous": previous,
        "commit": "abc1234def5678abc1234def5678abc1234def56",
        "branch": "main",
        "duration": 182.4,
        "url": "http://127.0.0.1:7474/projects/web/builds/12",
    }
    return BuildEnd(**(fields | changes))


ALWAYS: frozenset[Event] = frozenset({"always"})

# -- which ---------------------------------------------------------------------------------


@given(
    status=st.sampled_from(STATUSES),
    previous=st.sampled_from((None, *STATUSES)),
    wants=st.lists(st.frozensets(st.sampled_from(EVENTS)), max_size=6),
)
def test_a_target_is_due_exactly_when_it_wants_an_event_of_the_table(
    status: Status, previous: Status | None, wants: list[frozenset[Event]]
) -> None:
    build = end(status, previous)
    targets = [Webhook(url=f"http://h/{i}", on=on) for i, on in enumerate(wants)]
    assert set(events(build)) == TABLE[(previous, status)]
    assert due(build, targets) == [t for t in targets if t.on & TABLE[(previous, status)]]


def test_webhooks_and_emails_are_chosen_alike_and_keep_their_order() -> None:
    mail = Email(address="team@example.com", on=frozenset({"fixed"}))
    hook = Webhook(url="http://h/x", on=frozenset({"success", "failure"}))
    quiet = Webhook(url="http://h/y", on=frozenset({"broken"}))
    assert due(end("succeeded", "failed"), [mail, hook, quiet]) == [mail, hook]
    assert due(end("cancelled", "succeeded"), [mail, hook, quiet]) == []


# -- what ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (0.4, "0s"), (59.4, "59s"), (60, "1m 0s"), (182.4, "3m 2s"), (3599, "59m 59s"), (3725, "1h 2m")],
)
def test_a_duration_reads_as_people_write_it(seconds: float, shown: str) -> None:
    assert duration_text(seconds) == shown


def test_the_text_line_has_status_project_number_commit_branch_duration_and_url() -> None:
    assert text(end("succeeded", "succeeded")) == (
        "✅ web #12 succeeded (abc1234 on main, 3m 2s) http://127.0.0.1:7474/projects/web/builds/12"
    )
    assert text(end("succeeded", "failed")).startswith("✅ web #12 succeeded, fixed (abc1234")
    assert text(end("failed", "succeeded")).startswith("❌ web #12 failed, broken (abc1234")
    assert text(end("cancelled", None)).startswith("🚫 web #12 cancelled (abc1234")


def test_the_email_has_the_headline_as_subject_and_every_field_in_its_body() -> None:
    message = email_message(end(), sender="ci@example.com", to="team@example.com")
    assert message["Subject"] == "❌ web #12 failed, broken (abc1234 on main, 3m 2s)"
    assert (message["From"], message["To"]) == ("ci@example.com", "team@example.com")
    body = message.get_content()
    for line in ("build:    #12", "status:   failed (previous build: succeeded)", "branch:   main"):
        assert line in body
    assert "abc1234def5678abc1234def5678abc1234def56" in body and end().url in body


def test_a_failures_target_never_shows_a_password_from_the_url() -> None:
    hook = Webhook(url="https://bot:s3cret@chat.example/hooks/abc", on=ALWAYS)
    assert describe_target(hook) == "webhook https://chat.example/hooks/abc"
    assert describe_target(Email(address="a@b.example", on=ALWAYS)) == "email a@b.example"


# -- sending: webhooks ---------------------------------------------------------------------


class Receiver:
    """An HTTP server on loopback answering each POST with the next of ``statuses`` (the last one
    repeats); ``hang`` holds every request unanswered until the test ends."""

    def __init__(self, statuses: list[int], *, hang: bool = False) -> None:
        self.statuses = statuses
        self.bodies: list[dict[str, Any]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.bodies.append(json.loads(body) | {"_content_type": self.headers["content-type"]})
                if hang:
                    receiver.release.wait(30)
                    return
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                answer = b"no_text" if status >= 400 else b"ok"
                self.send_response(status)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def receiver(made: list[Receiver], statuses: list[int], *, hang: bool = False) -> Receiver:
    made.append(Receiver(statuses, hang=hang))
    return made[-1]


async def test_a_webhook_gets_the_builds_json_with_a_text_line_for_chats(receivers: list[Receiver]) -> None:
    hook = receiver(receivers, [200])
    build = end("failed", "succeeded")
    failures = await Notifier(smtp=None, policy=FAST).send_all(build, [Webhook(url=hook.url, on=ALWAYS)])
    assert failures == []
    [got] = hook.bodies
    assert got.pop("_content_type") == "application/json"
    assert got == payload(build)
    assert (got["project"], got["number"], got["status"], got["branch"]) == ("web", 12, "failed", "main")
    assert (got["commit"], got["duration"], got["url"]) == (build.commit, 182.4, build.url)
    assert got["text"] == f"❌ web #12 failed, broken (abc1234 on main, 3m 2s) {build.url}"


async def test_only_the_webhooks_that_want_the_builds_events_are_posted(receivers: list[Receiver]) -> None:
    on_failure, on_success = receiver(receivers, [200]), receiver(receivers, [200])
    targets = [
        Webhook(url=on_failure.url, on=frozenset({"failure"})),
        Webhook(url=on_success.url, on=frozenset({"success", "fixed"})),
    ]
    assert await Notifier(smtp=None, policy=FAST).send_all(end("succeeded", "failed"), targets) == []
    assert (len(on_failure.bodies), len(on_success.bodies)) == (0, 1)


async def test_a_first_answer_of_500_is_retried_and_the_second_attempt_delivers(receivers: list[Receiver]) -> None:
    hook = receiver(receivers, [500, 200])
    failures = await Notifier(smtp=None, policy=FAST).send_all(end(), [Webhook(url=hook.url, on=ALWAYS)])
    assert failures == []
    assert len(hook.bodies) == 2 and hook.bodies[0] == hook.bodies[1]


async def test_a_receiver_that_never_answers_2xx_is_a_recorded_failure_after_every_attempt(
    receivers: list[Receiver],
) -> None:
    hook = receiver(receivers, [503])
    failures = await Notifier(smtp=None, policy=FAST).send_all(end(), [Webhook(url=hook.url, on=ALWAYS)])
    assert failures == [
        NotifyFailure(target=f"webhook {hook.url}", attempts=3, error="HTTP 503 Service Unavailable: no_text")
    ]
    assert len(hook.bodies) == 3


async def test_an_answer_that_another_attempt_cannot_change_is_not_retried(receivers: list[Receiver]) -> None:
    hook = receiver(receivers, [404])
    [failure] = await Notifier(smtp=None, policy=FAST).send_all(end(), [Webhook(url=hook.url, on=ALWAYS)])
    assert (failure.attempts, failure.error) == (1, "HTTP 404 Not Found: no_text")
    assert len(hook.bodies) == 1


async def test_a_receiver_that_does_not_answer_is_given_up_on_after_the_timeout_of_each_attempt(
    receivers: list[Receiver],
) -> None:
    hook = receiver(receivers, [200], hang=True)
    policy = RetryPolicy(attempts=2, first_delay=0.001, timeout=0.3)
    started = trio.current_time()
    [failure] = await Notifier(smtp=None, policy=policy).send_all(end(), [Webhook(url=hook.url, on=ALWAYS)])
    assert (failure.attempts, len(hook.bodies)) == (2, 2)
    assert "0.3 s" in failure.error or "timed out" in failure.error
    assert trio.current_time() - started < 5


async def test_a_webhook_nobody_listens_at_is_a_failure_that_says_so() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    [failure] = await Notifier(smtp=None, policy=FAST).send_all(end(), [Webhook(url=url, on=ALWAYS)])
    assert failure.attempts == 3 and failure.error.startswith("cannot reach 127.0.0.1:")


async def test_a_url_that_is_not_http_is_not_retried() -> None:
    [failure] = await Notifier(smtp=None, policy=FAST).send_all(end(), [Webhook(url="ftp://h/x", on=ALWAYS)])
    assert failure.attempts == 1 and "not a URL mesh can POST to" in failure.error


# -- sending: email ------------------------------------------------------------------------


class Mailbox:
    """What an aiosmtpd server received; it refuses recipients at ``nobody@`` with a 550."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, EmailMessage]] = []
        self.logins: list[tuple[str, bytes]] = []

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((envelope, message))
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        self.logins.append((data.login.decode(), data.password))
        return AuthResult(success=data.password == b"s3cret", handled=False)  # False: aiosmtpd answers 535


@contextlib.contextmanager
def smtp_on_loopback(**options: Any) -> Iterator[tuple[Mailbox, int]]:
    """An aiosmtpd server on a free loopback port, with ``options`` for its Controller."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, authenticator=mailbox.authenticate, **options)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    with smtp_on_loopback(auth_require_tls=False) as server:
        yield server


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl (make test installs it)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_starttls_verifies_the_servers_certificate_before_logging_in(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    target = Email(address="t@example.com", on=ALWAYS)
    with smtp_on_loopback(tls_context=server_tls, require_starttls=True) as (mailbox, port):
        smtp = SmtpSettings(
            host="127.0.0.1", port=port, sender="ci@example.com", starttls=True, user="ci", password="s3cret"
        )
        [failure] = await Notifier(smtp=smtp, policy=FAST).send_all(end(), [target])
        assert failure.attempts == 1 and "certificate does not verify" in failure.error
        assert mailbox.logins == [] and mailbox.messages == []
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the system's CAs, as OpenSSL finds them
        assert await Notifier(smtp=smtp, policy=FAST).send_all(end(), [target]) == []
        assert mailbox.logins == [("ci", b"s3cret")] and len(mailbox.messages) == 1


async def test_an_email_reaches_the_smtp_server_with_subject_and_body(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="ci@example.com")
    build = end("succeeded", "failed")
    target = Email(address="team@example.com", on=frozenset({"fixed"}))
    assert await Notifier(smtp=smtp, policy=FAST).send_all(build, [target]) == []
    [(envelope, message)] = mailbox.messages
    assert (envelope.mail_from, envelope.rcpt_tos) == ("ci@example.com", ["team@example.com"])
    assert message["Subject"] == "✅ web #12 succeeded, fixed (abc1234 on main, 3m 2s)"
    body = message.get_content()
    assert "status:   succeeded (previous build: failed)" in body and build.url in body
    assert mailbox.logins == []


async def test_an_email_logs_in_with_the_nodes_smtp_user(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="ci@example.com", user="ci", password="s3cret")
    assert await Notifier(smtp=smtp, policy=FAST).send_all(end(), [Email(address="t@example.com", on=ALWAYS)]) == []
    assert mailbox.logins == [("ci", b"s3cret")] and len(mailbox.messages) == 1


async def test_a_refused_login_is_a_failure_that_is_not_retried(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="ci@example.com", user="ci", password="wrong")
    [failure] = await Notifier(smtp=smtp, policy=FAST).send_all(end(), [Email(address="t@example.com", on=ALWAYS)])
    assert failure.attempts == 1 and " 535 " in failure.error
    assert mailbox.messages == []


async def test_a_recipient_the_server_refuses_is_not_retried(smtp_server: tuple[Mailbox, int]) -> None:
    _, port = smtp_server
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="ci@example.com")
    target = Email(address="nobody@example.com", on=ALWAYS)
    [failure] = await Notifier(smtp=smtp, policy=FAST).send_all(end(), [target])
    assert failure == NotifyFailure(
        target="email nobody@example.com",
        attempts=1,
        error=f"SMTP server 127.0.0.1:{port} refused nobody@example.com: 550 5.1.1 no such user here",
    )


async def test_an_smtp_server_that_is_down_is_a_recorded_failure_after_every_attempt() -> None:
    port = free_port()
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="ci@example.com")
    [failure] = await Notifier(smtp=smtp, policy=FAST).send_all(end(), [Email(address="t@example.com", on=ALWAYS)])
    assert (failure.target, failure.attempts) == ("email t@example.com", 3)
    assert failure.error.startswith(f"SMTP server 127.0.0.1:{port}: ") and "refused" in failure.error


async def test_an_email_without_an_smtp_server_is_a_failure_that_names_the_setting(
    receivers: list[Receiver],
) -> None:
    hook = receiver(receivers, [200])
    targets: list[Target] = [Email(address="t@example.com", on=ALWAYS), Webhook(url=hook.url, on=ALWAYS)]
    [failure] = await Notifier(smtp=None, policy=FAST).send_all(end(), targets)
    assert (failure.target, failure.attempts) == ("email t@example.com", 0)
    assert "smtp_host" in failure.error and "MESH_SMTP_HOST" in failure.error
    assert len(hook.bodies) == 1  # the others are sent all the same


async def test_an_email_that_cannot_be_written_is_a_failure_and_the_others_are_sent(
    smtp_server: tuple[Mailbox, int],
) -> None:
    mailbox, port = smtp_server
    smtp = SmtpSettings(host="127.0.0.1", port=port, sender="ci@example.com")
    targets: list[Target] = [
        Email(address="t@example.com\nBcc: someone@example.com", on=ALWAYS),
        Email(address="t@example.com", on=ALWAYS),
    ]
    [failure] = await Notifier(smtp=smtp, policy=FAST).send_all(end(), targets)
    assert failure.attempts == 0 and "linefeed" in failure.error
    [(envelope, _)] = mailbox.messages
    assert envelope.rcpt_tos == ["t@example.com"]


def test_the_default_policy_waits_2_8_and_32_seconds_between_four_attempts() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.timeout) == (4, 10)
    assert [policy.delay(n) for n in (1, 2, 3)] == [2, 8, 32]
