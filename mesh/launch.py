"""The ``mesh`` command's entry point: ``mesh cc`` first, before the command line loads.

``mesh cc`` runs once per compile, so it starts the wrapper (mesh.cc.wrapper) straight
away, with nothing of mesh.cli imported; every other command goes to mesh.cli.
"""

from __future__ import annotations

import sys


def run() -> None:
    """Console-script entry point of ``mesh``."""
    if sys.argv[1:2] == ["cc"]:
        from mesh.cc.wrapper import run as wrapper

        wrapper(sys.argv[2:])
    from mesh.cli import run as cli

    cli()
