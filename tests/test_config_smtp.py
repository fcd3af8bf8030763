"""The node's SMTP settings (mesh.config.SmtpSettings): from MESH_SMTP_*, mesh.toml, defaults."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mesh.config import NodeConfig, SmtpSettings
from mesh.errors import UsageError

NAMES = ("HOST", "PORT", "FROM", "STARTTLS", "USER", "PASSWORD")


@pytest.fixture(autouse=True)
def no_smtp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(f"MESH_SMTP_{name}", raising=False)


def write_toml(home: Path, text: str) -> None:
    (home / "mesh.toml").write_text(text)


def test_a_node_without_smtp_host_has_no_smtp_server(home: Path) -> None:
    assert NodeConfig.load(home=str(home)).smtp is None


def test_the_smtp_settings_come_from_mesh_toml(home: Path) -> None:
    write_toml(
        home,
        'smtp_host = "mail.example"\nsmtp_from = "ci@example.com"\nsmtp_starttls = true\n'
        'smtp_user = "ci"\nsmtp_password = "s3cret"\n',
    )
    smtp = NodeConfig.load(home=str(home)).smtp
    assert smtp == SmtpSettings(
        host="mail.example", port=587, sender="ci@example.com", starttls=True, user="ci", password="s3cret"
    )
    assert "s3cret" not in repr(smtp)


def test_the_environment_wins_over_mesh_toml_and_the_defaults_fill_the_rest(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(home, 'smtp_host = "mail.example"\nsmtp_port = 2525\n')
    monkeypatch.setenv("MESH_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("MESH_SMTP_STARTTLS", "0")
    smtp = NodeConfig.load(home=str(home)).smtp
    assert smtp == SmtpSettings(host="127.0.0.1", port=2525, sender=f"mesh@{socket.gethostname()}")


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('smtp_host = "h"\nsmtp_port = "nope"\n', "smtp_port must be a port number"),
        ('smtp_host = "h"\nsmtp_port = 70000\n', "smtp_port must be a port number"),
        ('smtp_host = "h"\nsmtp_from = "nobody"\n', "smtp_from must be an email address"),
        ('smtp_host = "h"\nsmtp_starttls = "maybe"\n', "smtp_starttls must be true or false"),
        ('smtp_host = "h"\nsmtp_user = "ci"\n', "smtp_user and smtp_password go together"),
        ("smtp_host = 3\n", "smtp_host must be the name or address of an SMTP server"),
    ],
)
def test_a_malformed_smtp_setting_is_a_usage_error_that_names_it(home: Path, toml: str, says: str) -> None:
    write_toml(home, toml)
    with pytest.raises(UsageError, match=says):
        NodeConfig.load(home=str(home))
