"""The floor of a Python compiler wrapper's warm rebuild, against ccache's, in one run.

A warm ``mesh cc`` rebuild (every compile a cache hit) still starts the wrapper once per
compile, which asks the node over a unix socket and writes the object. However fast the
node answers, the build cannot be faster than those starts and round trips. This measures
that floor under ``make -j2`` on the 35 C files of brotli 1.2.1 (bench/cc.py's project),
round-robin with the references, best and median of ``--rounds``:

- ``ccache warm``: ccache 4's warm rebuild after ``make clean`` (direct mode: no
  preprocessor, one hash of the source and its headers; ccache is C);
- ``floor: start``: ``CC`` a ``python -I -S`` script that exits at once (the start alone);
- ``floor: start + ask``: the script connects to a unix socket served by this process
  and reads a small answer (the issue's floor: 35 starts that ask and are answered);
- ``floor: start + ask + write``: the answer is the object and dependency file of the
  reference build, which the script writes where make wants them (a warm hit's whole
  work outside the node, with a server that costs nothing);
- ``floor: start + gcc -E -fdirectives-only``: the start and the preprocessing ``mesh cc``
  runs for every compile (output dropped): what a direct mode would save;
- ``mesh cc warm``: ``mesh cc`` (the fast scripts of ``mesh cc --links``) through one node
  on loopback whose cache holds every compile (a cold build first, untimed).

The objects of the ``write`` floor and of ``mesh cc`` are compared with the reference
build's. Needs gcc, make and ccache; no root.

Usage: python bench/ccfloor.py [--rounds N] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common as c

c.use_repo()

from tests.nodeutil import MESH, NodeProcess, node_env  # noqa: E402
from tests.test_cc_netns import SDIST, outputs, unpack  # noqa: E402

CFLAGS = "-O2"

#: The floor wrapper: ``python -I -S``, as ``mesh cc --links`` writes it; MODE is start,
#: ask or write. It takes the object's path from ``-o`` as the wrapper would.
FLOOR = """#!{python} -IS
import sys
mode = {mode!r}
if mode == "cpp":
    import os
    argv = [a for a in sys.argv[1:] if a not in ("-MMD", "-MP", "-c")]
    at = argv.index("-o")
    argv[at + 1] = "/dev/null"
    pid = os.posix_spawn("/usr/bin/gcc", ["gcc", *argv, "-E", "-fdirectives-only"], os.environ)
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
if mode in ("ask", "write"):
    import _socket
    argv = sys.argv
    out = argv[argv.index("-o") + 1]
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.connect({path!r})
    s.sendall(out.encode())
    s.shutdown(_socket.SHUT_WR)
    parts = []
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        parts.append(chunk)
    s.close()
    data = b"".join(parts)
    if mode == "write":
        n = int.from_bytes(data[:4], "big")
        with open(out, "wb") as f:
            f.write(data[4 : 4 + n])
        with open(out[:-2] + ".d", "wb") as f:
            f.write(data[4 + n :])
"""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Answers(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers each connection with ``len(obj) obj dep`` of the object it names (``write``),
    or with ``ok``."""

    daemon_threads = True

    def __init__(self, path: str, reference: dict[str, bytes]) -> None:
        self.reference = reference
        super().__init__(path, Handler)


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        name = b""
        while chunk := sock.recv(4096):
            name += chunk
        server = self.server
        assert isinstance(server, Answers)
        obj = server.reference.get(name.decode())
        if obj is None:
            sock.sendall(b"ok")
            return
        dep = server.reference.get(name.decode()[:-2] + ".d", b"")
        sock.sendall(len(obj).to_bytes(4, "big") + obj + dep)


def build(root: Path, cc: str, env: dict[str, str], cflags: str = CFLAGS) -> float:
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    began = time.perf_counter()
    done = subprocess.run(
        ["make", "-s", "-j2", f"CC={cc}", f"CFLAGS={cflags}"], cwd=root, env=env, capture_output=True, text=True
    )
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"make with CC={cc} failed:\n{done.stderr[-3000:]}")
    return took


def identical(root: Path, reference: dict[str, bytes]) -> str:
    built = outputs(root)
    objects = [k for k in reference if k.endswith(".o")]
    return f"{sum(built.get(k) == reference[k] for k in objects)}/{len(objects)} .o"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", default="/var/tmp/mesh-bench-ccfloor")
    args = parser.parse_args()
    for tool in ("gcc", "make", "ccache"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install gcc make ccache")
    if not SDIST.exists():
        subprocess.run(["make", "-C", str(c.REPO_ROOT), "cc-deps"], check=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root = unpack(work)
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "CCACHE_"))}
    local = build(root, "gcc", plain)
    reference = outputs(root)
    log(f"local make -j2: {local:.2f} s")
    # (tests/test_cc_netns.py's Makefile names objects build/...; the server is given those keys)
    sock_path = tempfile.mktemp(prefix="ccfloor", suffix=".sock", dir="/tmp")
    server = Answers(sock_path, {str(root / k): v for k, v in reference.items()} | dict(reference))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scripts = {}
    for mode in ("start", "ask", "write", "cpp"):
        script = work / f"floor-{mode}"
        script.write_text(FLOOR.format(python=sys.executable, mode=mode, path=sock_path))
        script.chmod(0o755)
        scripts[mode] = str(script)
    cache = work / "ccache"
    ccache_env = dict(plain, CCACHE_DIR=str(cache))
    build(root, "ccache gcc", ccache_env)  # cold, untimed
    home = work / "node"
    node = NodeProcess(str(home), slots=2).start()
    try:
        links = work / "links"
        subprocess.run([*MESH, "cc", "--links", str(links)], check=True, stdout=subprocess.DEVNULL)
        mesh_env = node_env(str(home), PATH=os.environ["PATH"], MESH_CC_FALLBACK="0")
        gcc = str(links / "gcc")
        build(root, gcc, mesh_env)  # cold, untimed
        contestants = {
            "ccache warm (reference)": ("ccache gcc", ccache_env),
            "floor: start": (scripts["start"], plain),
            "floor: start + ask": (scripts["ask"], plain),
            "floor: start + ask + write": (scripts["write"], plain),
            "floor: start + gcc -E -fdirectives-only": (scripts["cpp"], plain),
            "mesh cc warm, one node": (gcc, mesh_env),
        }
        times: dict[str, list[float]] = {name: [] for name in contestants}
        same: dict[str, str] = {}
        for round_ in range(args.rounds):
            for name, (cc, env) in contestants.items():
                times[name].append(build(root, cc, env))
                if name in ("ccache warm (reference)", "floor: start + ask + write", "mesh cc warm, one node"):
                    same[name] = identical(root, reference)
            log(f"round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.3f}" for n, t in times.items()))
    finally:
        node.stop()
        server.shutdown()
        os.unlink(sock_path)
    ref = min(times["ccache warm (reference)"])
    print(f"make -j2, 35 files of brotli 1.2.1, {args.rounds} rounds round-robin; local gcc build {local:.2f} s")
    print()
    print("| build | best s | median s | best / ccache warm best | objects |")
    print("| --- | --- | --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {min(t):.3f} | {statistics.median(t):.3f} | {min(t) / ref:.2f}x | {same.get(name, '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
