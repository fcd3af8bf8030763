"""An in-process node for ``mesh exec`` when no node answers at the default address.

The node runs on its own trio loop in a thread, on the user's own store and
state, listening on an ephemeral loopback port; the CLI talks to it over HTTP
exactly as to any node, so behaviour cannot drift between the two paths.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from mesh.config import NodeConfig
from mesh.errors import MeshError, unwrap

#: Seconds the embedded node waits for its tasks when the CLI is done (they are finished by then).
_GRACE = 2.0


@contextmanager
def embedded_node(config: NodeConfig) -> Iterator[str]:
    """Run a node for the duration of the ``with`` block; yields its URL.

    Raises NodeBusy when a node (on another address) already uses this home.
    """
    import trio

    from mesh.node import Node
    from mesh.wire.client import restore_async_backends

    restore_async_backends()

    # The submitter is the node's own user, running its own command: the process
    # executor is offered even where the node is not root (a root node uses task uids).
    node = Node(replace(config, listen=("127.0.0.1", 0), own_user=True), grace=_GRACE)
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        box["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            box["url"] = await nursery.start(node.run)
            ready.set()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the caller below
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="mesh-embedded-node", daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        thread.join()
        error = unwrap(box["error"])  # type: ignore[arg-type]
        if isinstance(error, MeshError):
            raise error
        raise MeshError(f"the in-process node failed to start: {error}")
    try:
        yield str(box["url"])
    finally:
        token = box["token"]
        trio.from_thread.run_sync(node.stop, trio_token=token)  # type: ignore[arg-type]
        thread.join()
