"""The node's log: one line per event, with a timestamp and a level, and no routine chatter.

``mesh up`` (in the foreground or as a background node) logs to its stderr through the
standard logging module, one line each::

    2026-12-04 20:13:06.481 INFO    mesh.node: the store holds 1 blobs, 0 bytes ...
    2026-12-04 20:13:07.002 WARNING mesh.http: closed the connection from ... after an error: ...

What a quiet node did, measured before this module (two nodes, a minute): 141 of its
144 lines were httpx's ``HTTP Request: POST .../v1/gossip`` lines, one per gossip round,
which httpx logs at INFO for every request the node sends its peers. Such per-request
lines are debug: they are logged at DEBUG (re-levelled by :class:`_PerRequestAtDebug`)
and shown only with ``mesh up -v`` (``verbose``), as are the node's own debug lines.
Warnings and errors are always shown. httpcore's debug lines (every connection step of
every request) stay off even then: they would drown the rest.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

#: One line per record: local time to the millisecond, the level, the logger, the message.
FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

#: Libraries whose INFO lines are one per request (httpx: each request a node sends).
_PER_REQUEST = ("httpx",)
#: Libraries whose DEBUG lines are far too many to be useful even with -v.
_NOISY = ("httpcore", "hpack")


class _PerRequestAtDebug(logging.Filter):
    """Logs a per-request line of :data:`_PER_REQUEST` at DEBUG, which is what it is; drops it
    unless the node is verbose."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.name.split(".")[0] in _PER_REQUEST:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.verbose
        return True


def configure(*, verbose: bool = False, stream: TextIO | None = None) -> None:
    """Send every log record of this process to ``stream`` (default stderr) in :data:`FORMAT`;
    per-request and debug lines only when ``verbose``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_PerRequestAtDebug(verbose))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("mesh").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _PER_REQUEST:  # their INFO lines are made only when shown
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
