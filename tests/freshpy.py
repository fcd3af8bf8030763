"""Control over how many threads a test runs beside: a fresh interpreter, or one more thread.

Code that forks (mesh.cas.forkmap) or pauses the collector (mesh.cas.nogc) only does
so in a process running one thread, and a pytest process may hold threads other tests
left (trio's thread cache, say): tests of those paths run their script in a new
interpreter, and tests of the fallback run with one more thread alive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def another_thread() -> Iterator[None]:
    """Run the block while a second thread of this process is alive (so nothing may fork)."""
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        yield
    finally:
        release.set()
        other.join()
