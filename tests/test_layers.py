"""The code's shape, checked like its behaviour: the layer contracts and mypy --strict.

The layers and the rule against import cycles are written in pyproject.toml
(``[tool.importlinter]``) and checked by import-linter's ``lint-imports``; the type
checking is mypy's, configured (strict) in the same file. Both run here so that
``make test`` fails on an import that points up a layer, a cycle, or a type error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=os.environ | {"NO_COLOR": "1"}
    )


def test_the_layer_contracts_hold() -> None:
    result = _run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout, result.stdout[-3000:]


def test_mypy_strict_finds_no_error() -> None:
    result = _run(sys.executable, "-m", "mypy", "mesh")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Success" in result.stdout, result.stdout
