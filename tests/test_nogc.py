"""mesh.cas.nogc: the collector is paused inside the block only, and only when it is safe."""

from __future__ import annotations

import gc
import textwrap
from pathlib import Path

from mesh.cas.nogc import gc_paused
from tests.freshpy import another_thread, run_fresh


def test_paused_inside_and_back_on_after_even_on_error(tmp_path: Path) -> None:
    # In a fresh interpreter: this pytest process may hold threads other tests left.
    out = run_fresh(
        textwrap.dedent(
            """
            import gc
            from mesh.cas.nogc import gc_paused
            assert gc.isenabled()
            try:
                with gc_paused():
                    assert not gc.isenabled()
                    with gc_paused():  # nested: still off, and the outer block turns it back on
                        assert not gc.isenabled()
                    assert not gc.isenabled()
                    raise RuntimeError("boom")
            except RuntimeError:
                pass
            print(gc.isenabled())
            """
        ),
        tmp_path,
    )
    assert out.strip() == "True"


def test_left_alone_while_other_threads_run() -> None:
    with another_thread(), gc_paused():
        assert gc.isenabled()
