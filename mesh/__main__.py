"""``python -m mesh``: the same as the ``mesh`` command."""

from mesh.cli import run

run()
