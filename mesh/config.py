"""Where mesh keeps its data and how big it may grow.

Each setting comes from, in order of precedence: a command-line flag, an
environment variable (``MESH_*``), ``$MESH_HOME/mesh.toml``, the default. The
node's own settings join this module with the node.

=================  ===================  ==============================  ==========================
setting            environment          mesh.toml                       default
=================  ===================  ==============================  ==========================
home               MESH_HOME            (n/a: it locates the file)      $XDG_DATA_HOME/mesh or
                                                                        ~/.local/share/mesh
store_max_bytes    MESH_STORE_MAX       store_max = "50G"               no cap
=================  ===================  ==============================  ==========================
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from mesh.errors import UsageError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse a byte count like ``500M``, ``10G``, ``1.5T`` or ``4096`` (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if m is None:
        raise UsageError(f"not a size: {text!r} (use a number of bytes, or e.g. 500M, 10G, 2T)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def default_home() -> str:
    """``$XDG_DATA_HOME/mesh``, or ``~/.local/share/mesh``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "mesh")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Resolved settings of one mesh process. See the module docstring for their sources."""

    home: str
    store_max_bytes: int | None = None

    @property
    def store_dir(self) -> str:
        return os.path.join(self.home, "cas")

    @classmethod
    def load(cls, *, home: str | None = None, store_max: str | None = None) -> Settings:
        """Resolve the settings from flags (the arguments), environment, file and defaults."""
        resolved_home = os.path.abspath(home or os.environ.get("MESH_HOME") or default_home())
        file = _read_toml(os.path.join(resolved_home, "mesh.toml"))
        max_text = store_max or os.environ.get("MESH_STORE_MAX") or file.get("store_max")
        if max_text is not None and not isinstance(max_text, str | int):
            raise UsageError(f'store_max in {resolved_home}/mesh.toml must be a size like "50G"')
        return cls(home=resolved_home, store_max_bytes=parse_size(str(max_text)) if max_text is not None else None)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
