"""Hints for a task that failed because of where it ran: no network, a program it cannot see.

**No network.** A sandboxed task has no network unless its action asks for it (``mesh exec
--network``). Tools that need one fail with their own words, which do not say that the
sandbox is why. When such a task exits non-zero and the tail of its stderr holds one of
the well-known messages of a failed name resolution or connection (:data:`_NO_NETWORK`:
glibc's getaddrinfo and connect errors as Python, curl, git, wget, pip, npm and Go print
them), its result carries :data:`NETWORK_HINT`. Only for a task without network, so a
task that has one never gets it. How it is told, and why so: the stderr tail is looked at
once, when the task has failed: the last :data:`TAIL_BYTES`, lowered and searched, cost
0.2 ms when they hold none of the messages (measured here: 16 KiB of compiler warnings;
5 us for pip's retries, which hold one early; with ``re.IGNORECASE`` instead of lowering,
1.7 ms), against ~12 ms for bwrap to start the sandbox; keeping the tail costs a slice
per stderr chunk (0.1 us for 4 KiB). The other way considered, the sandbox's network
namespace counters (``/proc/PID/net/snmp``: TCP connects refused by the loopback, UDP sent
to nowhere), needs the namespace alive when the task ends, which it is not: it goes with
the sandbox's first process, which ends with the command. And a failed resolution against
a nameserver the namespace cannot route to never reaches a counter of TCP.

**Hidden programs.** A command the sandbox cannot start because its program lies where the
sandbox hides things (its private /tmp, the node's home, another task's directory, a
directory the task's uid cannot search, such as another user's home) gets a message that
says so rather than only "not found" (:func:`hidden_program`, :func:`unsearchable`). Only the
sandbox needs the second: measured, a process task of a root node starts a program in a
0700 directory of root all the same (setpriv's exec still holds the capabilities it keeps
across the uid switch; the sandbox's bwrap dropped them before).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence

#: Bytes of a task's stderr kept to look for the signs of a missing network.
TAIL_BYTES = 16 << 10
#: What tools print when a name does not resolve or a connection cannot be made.
_NO_NETWORK = re.compile(
    rb"temporary failure in name resolution|name or service not known|no address associated with hostname"
    rb"|could not resolve host|could not resolve proxy|unable to resolve host|getaddrinfo|name resolution"
    rb"|connection refused|network is unreachable|no route to host|failed to establish a new connection"
    rb"|\[errno (?:-2|-3|-5|101|111|113)\]|econnrefused|enotfound|eai_again"
)
NETWORK_HINT = (
    "the task has no network (the sandbox gives it none, so names do not resolve and connections "
    "are refused): `mesh exec --network` gives it the network"
)


class StderrTail:
    """Passes output on, keeping the last :data:`TAIL_BYTES` of stderr."""

    def __init__(self, on_output: Callable[[str, bytes], bool]) -> None:
        self.on_output = on_output
        self.tail = b""

    def __call__(self, stream: str, chunk: bytes) -> bool:
        if stream == "stderr":
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]
        return self.on_output(stream, chunk)

    def network_hint(self, exit_code: int) -> str | None:
        """:data:`NETWORK_HINT` if a task without network failed and said why in network words."""
        if exit_code == 0 or _NO_NETWORK.search(self.tail.lower()) is None:
            return None
        return NETWORK_HINT


def find_program(program: str, env: Mapping[str, str], cwd: str) -> list[str]:
    """The files ``program`` may name, as the node sees them: itself when it has a ``/`` (relative
    to ``cwd``), else each file of that name in a directory of the task's PATH."""
    if "/" in program:
        return [os.path.join(cwd, program)]
    found = []
    for directory in env.get("PATH", "").split(":"):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate):
            found.append(candidate)
    return found


def hidden_program(
    candidates: Sequence[str], places: Sequence[tuple[str, str]], unsearchable: str | None
) -> str | None:
    """Why the sandbox cannot see the program, if it is in a hidden place: the first of
    ``candidates`` under one of ``places`` (path, why it is hidden), said in a sentence, or the
    ``unsearchable`` sentence (a directory the task's uid cannot search). None otherwise."""
    for candidate in candidates:
        real = os.path.realpath(candidate)
        for place, why in places:
            if real == place or real.startswith(place.rstrip("/") + "/"):
                return f"{candidate} is under {place}, which the sandbox hides ({why})"
    return unsearchable


def unsearchable(candidates: Sequence[str], uid: int, gid: int) -> str | None:
    """A sentence naming the first directory on the way to one of ``candidates`` that ``uid``
    (with ``gid``, no other group) cannot search, as another user's home; None if there is none."""
    for candidate in candidates:
        path = "/"
        for part in os.path.dirname(os.path.abspath(candidate)).strip("/").split("/"):
            path = os.path.join(path, part)
            try:
                st = os.stat(path)
            except OSError:
                break
            if stat.S_ISDIR(st.st_mode) and not searchable(st, uid, gid):
                return (
                    f"{candidate} is in {path}, which the task's uid {uid} cannot search "
                    f"(mode {stat.S_IMODE(st.st_mode):o}, owner uid {st.st_uid}: another user's directory?)"
                )
    return None


def searchable(st: os.stat_result, uid: int, gid: int) -> bool:
    """Whether a directory with ``st`` may be searched by ``uid``/``gid`` (no groups, no caps), by its mode."""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)
