"""``python -m mesh``: the same as the ``mesh`` command."""

from mesh.launch import run

run()
