"""The repository's docs stand alone and say what the code does.

The README and ``docs/`` are read by people who have only the repository: every link
they hold must name a file of the repository (nothing outside it), and the defaults and
figures the README states must be the code's. Each check reads the value from the code,
so changing a default without the README (or the other way round) fails here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from mesh.background import DEFAULT_IDLE
from mesh.cli import build_parser
from mesh.cluster.actioncache import LOOKUP_TIMEOUT
from mesh.cluster.gossip import ROUND
from mesh.cluster.inflight import CLAIM_TIMEOUT
from mesh.cluster.membership import DEAD_AFTER, SUSPECT_AFTER
from mesh.config import DEFAULT_LISTEN, DEFAULT_NODE_URL, DEFAULT_TASK_UIDS, NodeConfig
from mesh.exec.sandbox import DEFAULT_LIMITS
from mesh.exec.workpool import KEEP_BYTES, KEEP_DIRS
from mesh.pipelines.notify import RetryPolicy
from mesh.sched.jobs import MAX_TASKS
from mesh.wire.auth import MAX_SKEW

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_WORDS = {1.0: "a second", 2.0: "two seconds"}


def _links(path: Path) -> list[str]:
    return _LINK.findall(path.read_text())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_names_a_file_of_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text, f"{doc.name} points outside the repository"
    for target in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        resolved = (doc.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name} links {target}, outside the repository"
        assert resolved.exists(), f"{doc.name} links {target}, which the repository does not hold"


def test_the_readme_links_the_architecture() -> None:
    assert "docs/architecture.md" in _links(README)


def _settings() -> dict[str, list[str]]:
    """The README's settings table: its rows by the setting's name, cells without backquotes."""
    text = README.read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    table = {}
    for row in rows[1:]:
        cells = [cell.strip().replace("`", "") for cell in row.strip("|").split("|")]
        table[cells[0]] = cells[1:]
    return table


def _options(parser: argparse.ArgumentParser) -> set[str]:
    found = {option for action in parser._actions for option in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def test_the_settings_table_states_the_codes_defaults() -> None:
    table = _settings()
    assert table["listen address"][3].startswith(DEFAULT_LISTEN)
    assert table["node a client talks to"][3] == DEFAULT_NODE_URL
    assert table["task uids (root node)"][3] == f"{DEFAULT_TASK_UIDS[0]}-{DEFAULT_TASK_UIDS[1]}"
    assert table["data directory"][3] == "$XDG_DATA_HOME/mesh, else ~/.local/share/mesh"
    assert table["its idle stop"][3] == f"{DEFAULT_IDLE:g} s"
    assert table["sandbox inputs (root node)"][3].startswith(f"{NodeConfig.sandbox_inputs}:")
    # The client's default is the loopback address of the node's default port.
    assert DEFAULT_NODE_URL.rsplit(":", 1)[1] == DEFAULT_LISTEN.rsplit(":", 1)[1]


def test_every_flag_the_settings_table_names_exists() -> None:
    options = _options(build_parser())
    for name, cells in _settings().items():
        if not cells[0]:
            continue  # a setting of the environment only
        flag = cells[0].split()[0]
        assert flag in options, f"the README's setting {name!r} names {flag}, which no command takes"


def test_the_readme_states_the_codes_figures() -> None:
    text = " ".join(README.read_text().split())
    limits = DEFAULT_LIMITS
    assert limits.address_space is not None and limits.file_size is not None
    gib = 1 << 30
    retry = RetryPolicy()
    assert retry.attempts == 4  # the sentence below names three waits
    stated = [
        f"a silent peer is suspect after {SUSPECT_AFTER:g} s and dead after {DEAD_AFTER:g} s",
        f"load every {'second' if ROUND == 1.0 else f'{ROUND:g} s'}",
        f"waiting at most {_WORDS[LOOKUP_TIMEOUT]}",
        f"does not answer within {_WORDS[CLAIM_TIMEOUT]}",
        f"up to {KEEP_DIRS} directories",
        f"{KEEP_BYTES >> 20} MiB of files",
        f"A job holds up to {MAX_TASKS:,} tasks",
        f"address space {limits.address_space // gib}G, processes {limits.processes}, "
        f"file size {limits.file_size // gib}G, open files {limits.open_files}",
        f"for about {'a minute' if MAX_SKEW == 60 else f'{MAX_SKEW} s'}",
        f"Each attempt may take {retry.timeout:g} s; a failed one is tried again after "
        f"{retry.delay(1):g} s, {retry.delay(2):g} s and {retry.delay(3):g} s ({retry.attempts} attempts in all)",
    ]
    for sentence in stated:
        assert sentence in text, f"the README should say {sentence!r} (the code's figure)"
