"""Run a test script in a fresh interpreter.

Code that forks (mesh.cas.forkmap) only does so in a process running one thread,
and a pytest process may hold threads other tests left (trio's thread cache, say);
tests of the forking paths therefore run their script in a new interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_fresh(source: str, tmp_path: Path) -> str:
    """Run ``source`` with ``tmp_path`` as its argv[1]; assert it succeeds and return its stdout."""
    script = tmp_path / "script.py"
    script.write_text(source)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
