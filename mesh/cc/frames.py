"""The wrapper's messages to the node's compile service and back: one frame each way.

A frame is ``MCC1``, then a list of texts and a list of byte strings, each list a
4-byte big-endian count followed by its items, each item a 4-byte big-endian length
followed by its bytes (texts in UTF-8, with surrogateescape: a file name need not be
UTF-8). Not CBOR nor even JSON, because the wrapper pays for every import once per
compile: cbor2 brought ``typing`` along (~8 ms of start-up measured with ``python -X
importtime`` on the test machine) and ``json`` brings ``re`` (~3 ms); this costs none.

A request: the texts ``[COMPILER, LANGUAGE, SOURCE, CWD, FLAG...]`` (``c`` or ``c++``;
the source as the command names it, and the wrapper's working directory) and one byte
string, the source as ``gcc -E -fdirectives-only`` gives it, from its command-line part on
(mesh.cc.args). An answer: ``["ok", EXIT, NODE, NOTE, HOW]`` (HOW: :data:`CACHED` or
:data:`RAN`; nodes before it was added answer without it) and three byte strings
(stdout, stderr, the object, empty when the compile failed), or ``["error", WHY]`` and
none, when the mesh could not compile it (the wrapper then compiles locally).

A compile the wrapper runs itself (mesh.cc.keptcompiles) takes two requests: ``["lookup",
COMPILER, CWD, BEGAN_NS, N, NAME=VALUE * N, ARG...]`` with the text, answered ``["hit",
NODE, NOTE]`` with the object or ``["miss", TOKEN]``; then, after a silent compile,
``["record", TOKEN]`` with the object, answered ``["ok", NOTE]`` (NOTE is :data:`KEPT` when
the node kept it, else why not).
"""

from __future__ import annotations

from _collections_abc import Callable  # collections.abc's own source: collections costs ~0.7 ms more

MAGIC = b"MCC1"
#: The first text of a lookup of a compile the wrapper runs itself, and of its record
#: (mesh.cc.keptcompiles); a compile to run names its compiler there, an absolute path.
LOOKUP, RECORD = "lookup", "record"
#: How the mesh answered a compile: from the action cache, or by running it on a node.
CACHED, RAN = "cached", "ran"
#: The note of a record the node kept in the mesh's cache.
KEPT = "kept in the mesh's cache"
#: Most items one list may hold.
MAX_ITEMS = 1 << 16
#: Most bytes a frame may hold (a preprocessed source, an object).
MAX_FRAME = 1 << 30


class FrameError(ValueError):
    """A frame that is not one: the message says what is wrong."""


def pack(texts: list[str], blobs: list[bytes]) -> list[bytes]:
    """The frame of ``texts`` and ``blobs``, as the pieces to write in order."""
    pieces = [MAGIC]
    for items in ([t.encode("utf-8", "surrogateescape") for t in texts], blobs):
        pieces.append(len(items).to_bytes(4, "big"))
        for item in items:
            pieces += [len(item).to_bytes(4, "big"), item]
    return pieces


def unpack(take: Callable[[int], bytes]) -> tuple[list[str], list[bytes]]:
    """Read one frame with ``take(n)``, a function that returns exactly ``n`` bytes (fewer
    only at the end of the stream): its texts and byte strings."""
    if take(4) != MAGIC:
        raise FrameError("not a mesh cc frame (it does not start with MCC1)")
    total = 4
    lists: list[list[bytes]] = []
    for _ in range(2):
        count = _number(take(4))
        if count > MAX_ITEMS:
            raise FrameError(f"a frame of {count} items is more than {MAX_ITEMS}")
        items = []
        for _ in range(count):
            size = _number(take(4))
            total += size + 4
            if total > MAX_FRAME:
                raise FrameError(f"a frame of more than {MAX_FRAME} bytes")
            item = take(size)
            if len(item) != size:
                raise FrameError("the frame ended early")
            items.append(item)
        lists.append(items)
    texts = [t.decode("utf-8", "surrogateescape") for t in lists[0]]
    return texts, lists[1]


def _number(raw: bytes) -> int:
    if len(raw) != 4:
        raise FrameError("the frame ended early")
    return int.from_bytes(raw, "big")
