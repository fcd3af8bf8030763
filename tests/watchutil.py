"""Real ``mesh watch`` processes for end-to-end tests, and what a node's ``/files`` lists."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.wire.auth import load_key
from mesh.wire.client import NodeClient
from tests.nodeutil import MESH, NodeProcess, node_env, stop_process, wait_for

#: Short settings for tests: settle 0.1 s after a change; the polling-only variant rescans every 0.3 s.
FAST = ["--debounce", "0.1"]


@dataclass
class WatchProcess:
    """One ``mesh watch`` process; its stdout and stderr go to files next to the watched directory."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    @classmethod
    def start(
        cls,
        node: NodeProcess,
        directory: Path,
        *args: str,
        url: str | None = None,
        home: str | None = None,
        env: dict[str, str] | None = None,
        launcher: Sequence[str] = (),
    ) -> WatchProcess:
        """``mesh watch DIR --node URL ARGS`` (the node's own home and key unless ``home``),
        run by ``launcher`` if given (a command that ends by running its arguments)."""
        out, err = Path(f"{directory}.watch.out"), Path(f"{directory}.watch.err")
        with open(out, "ab") as o, open(err, "ab") as e:
            process = subprocess.Popen(
                [*launcher, *MESH, "watch", str(directory), "--node", url or node.url, *args],
                env=node_env(home or node.home, **(env or {})),
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
            )
        return cls(process, out, err)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def said(self, text: str, *, timeout: float = 30.0) -> None:
        """Wait until the watcher wrote ``text`` on stderr (AssertionError if it exits first)."""

        def seen() -> bool:
            if text in self.stderr():
                return True
            assert self.process.poll() is None, f"mesh watch exited {self.process.returncode}:\n{self.stderr()}"
            return False

        wait_for(seen, timeout=timeout, what=f"mesh watch to say {text!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        return stop_process(self.process, sig, timeout, what="mesh watch", log=f":\n{self.stderr()}")


def files_of(url: str, home: str) -> list[dict[str, object]]:
    """What the node at ``url`` lists at /files (signed with the mesh key in ``home``), every page."""
    rows: list[dict[str, object]] = []
    start: int | None = 0
    with NodeClient(url, key=load_key(home)) as client:
        while start is not None:
            answer = client.request("GET", "/files", params={"from": start})
            rows.extend(answer["files"])
            start = answer["next"]
    return rows


def listed(node: NodeProcess, directory: Path | str) -> dict[str, str]:
    """path -> digest (or link target) of ``directory``'s files as /files on ``node`` lists them."""
    return {
        str(r["path"]): str(r.get("digest") or r.get("target"))
        for r in files_of(node.url, node.home)
        if r["directory"] == os.path.realpath(directory)
    }


def wait_listed(
    node: NodeProcess, directory: Path | str, paths: Sequence[str], *, timeout: float, what: str = ""
) -> None:
    """Wait until /files on ``node`` lists exactly ``paths`` for ``directory``."""
    wanted = sorted(paths)
    wait_for(
        lambda: sorted(listed(node, directory)) == wanted,
        timeout=timeout,
        what=what or f"/files to list {wanted} of {directory}",
    )
