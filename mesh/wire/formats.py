"""Wire formats shared by the API server and its clients.

- Messages are canonical CBOR (``application/cbor``); a client may ask for JSON
  with ``Accept: application/json`` (or send JSON with that content type).
- Errors are a map ``{"error": message}`` with a 4xx/5xx status.
- Event streams (``/v1/jobs/{id}/events``, ``POST /v1/jobs?follow=1``) are a
  sequence of frames, each a 4-byte big-endian length then one CBOR event map;
  as JSON, one event per line.
- Batched blob uploads (``POST /v1/blobs:upload``) and the answers to batched
  downloads (``POST /v1/blobs:download``) are a sequence of records, each a
  2-byte big-endian length, the digest's text form, then exactly the digest's
  size in raw bytes (mesh.wire.records).
"""

from __future__ import annotations

import json
import struct
from typing import Any

CBOR = "application/cbor"
JSON = "application/json"
EVENTS_CBOR = "application/x-mesh-events+cbor"
NDJSON = "application/x-ndjson"

#: Set on every request a node makes to a peer: such requests never fan out to further peers.
PEER_HEADER = "x-mesh-peer"
FRAME_HEADER = struct.Struct(">I")
RECORD_HEADER = struct.Struct(">H")
#: Largest event frame a client accepts.
MAX_FRAME = 16 << 20


def to_json(value: Any) -> bytes:
    """JSON for a message that may hold bytes (output chunks become text, invalid UTF-8 replaced)."""
    return json.dumps(value, default=_bytes_as_text, separators=(",", ":")).encode()


def _bytes_as_text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload)) + payload
