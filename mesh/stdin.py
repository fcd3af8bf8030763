"""``mesh exec``'s stdin: read to its end and stored as a blob that the task's action names.

When stdin is not a terminal (a pipe, a file: ``echo hi | mesh exec -- cat``), the task gets
what it holds: it is read to its end before the job is submitted, in pieces of 1 MiB that
go straight into the node's store when the node shares this machine's (hashed as they are
written), else into a temporary file that is then uploaded if the node lacks it. So a large
stdin never sits in memory. Its digest is part of the action, and so of the action-cache
key: another stdin is another action. An empty stdin is no stdin (the task reads
``/dev/null``, as before), so that commands run from scripts whose stdin is empty keep
their cache hits. A terminal stdin, or ``--no-stdin``, gives the task an empty one.

At most :data:`mesh.exec.action.MAX_STDIN` bytes (1 GiB); more is a usage error that says
to put the data in a file of the tree. Since stdin is read before the command runs, a
stdin that never ends (a pipe some other process keeps open) keeps ``mesh exec`` waiting:
``--no-stdin`` (or ``</dev/null``) is for that.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from mesh.cas.digest import Digest
from mesh.cas.hasher import StreamHasher
from mesh.config import Settings
from mesh.errors import UsageError, size_text
from mesh.exec.action import MAX_STDIN
from mesh.wire.client import NodeClient

#: Bytes read from stdin at a time.
READ_CHUNK = 1 << 20


def stdin_blob(client: NodeClient, settings: Settings, *, fd: int = 0) -> Digest | None:
    """The digest of what ``fd`` holds, stored on the node; None when it is a terminal, closed
    or empty. Raises UsageError past MAX_STDIN (nothing is stored then)."""
    try:
        if os.isatty(fd):
            return None
        first = os.read(fd, READ_CHUNK)
    except OSError:  # no stdin at all (closed), or one that cannot be read
        return None
    if not first:  # empty: nothing is opened or stored (the common case in scripts)
        return None
    from mesh.cas.store import LocalStore

    with LocalStore(settings.store_dir) as store:
        if store.shared_with(client.health(cached=True).get("store")):
            with store.writer() as writer:
                _copy(fd, writer.write, first)
                return writer.commit()
    return _upload(client, fd, first)


def _upload(client: NodeClient, fd: int, first: bytes) -> Digest:
    """Spool ``fd`` to a temporary file, hashing it, and upload it if the node lacks it."""
    from mesh.cas.plan import FileSource, Plan
    from mesh.wire.upload import upload

    with tempfile.NamedTemporaryFile(prefix="mesh-stdin-") as spool:
        hasher = StreamHasher()

        def write(data: bytes) -> None:
            hasher.update(data)
            spool.write(data)

        _copy(fd, write, first)
        spool.flush()
        digest = hasher.digest()
        files = {digest: FileSource(os.fsencode(spool.name), False)}
        upload(client.http, Plan(root=digest, nodes={}, files=files))
    return digest


def _copy(fd: int, write: Callable[[bytes], object], first: bytes = b"") -> int:
    """Pass ``first`` and then what ``fd`` holds to ``write`` until its end; returns how many bytes."""
    total = 0
    chunk = first or os.read(fd, READ_CHUNK)
    while chunk:
        total += len(chunk)
        if total > MAX_STDIN:
            raise UsageError(
                f"stdin holds more than {size_text(MAX_STDIN)}, the most a task may read: put the data in a "
                "file of the tree and redirect it in the command (mesh exec -- sh -c 'CMD < FILE'), "
                "or give --no-stdin"
            )
        write(chunk)
        chunk = os.read(fd, READ_CHUNK)
    return total
