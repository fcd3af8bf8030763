"""How the CLI writes times and JSON (mesh.cli_node, mesh.project_cli): one form for all commands."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any


def when(timestamp: float | None) -> str:
    """A time in local time to the second, or ``-`` for none."""
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def print_json(value: Any) -> None:
    """``value`` as indented JSON with sorted keys on stdout."""
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
