"""The path maps a compile on another node needs so that its paths come out as here.

A task compiles the text at its own workdir (``/run/mesh/work``, ``/work``); gcc writes
paths into the object (``DW_AT_comp_dir``, the source's name, ``__BASE_FILE__``), so the
compile service (mesh.cc.service) adds maps of the task's prefixes to the paths they stand
for here, and so that a command's own maps (reproducible builds' ``-ffile-prefix-map=$PWD=.``)
still apply, repeats those after them, translated (:func:`prefix_maps`). Measured on gcc
12 with every arrangement in tests/test_cc_e2e.py: objects identical to local compiles.
"""

from __future__ import annotations

#: The flag that maps the paths of debug information, and the command's flags that add to
#: the same list (gcc keeps all three ``-f*-prefix-map`` out of ``DW_AT_producer``).
DEBUG_MAPS = ("-fdebug-prefix-map=", ("-fdebug-prefix-map=", "-ffile-prefix-map="))
#: The same for the paths ``__FILE__`` and ``__BASE_FILE__`` expand to (``__FILE__`` follows
#: the line markers of the text, which name the files as here; ``__BASE_FILE__`` is the name
#: the command gives the source, which is the task's for one outside the directory).
MACRO_MAPS = ("-fmacro-prefix-map=", ("-fmacro-prefix-map=", "-ffile-prefix-map="))


def prefix_maps(bases: list[tuple[str, str]], args: list[str], kind: tuple[str, tuple[str, ...]]) -> list[str]:
    """The flags of ``kind`` (:data:`DEBUG_MAPS`, :data:`MACRO_MAPS`), after the command's
    own, that make the task's paths (each base: a prefix there, and the path it stands for
    here) come out as a local compile's do.

    gcc rewrites a path by the **last** map whose old prefix it starts with (a string
    prefix, not a directory: measured, both orders). The task's paths under a base's prefix
    are rewritten by the base's map, after the command's maps, so a command's own map for a
    local directory (``-ffile-prefix-map=$PWD=.``, for reproducible builds) would never
    apply there: each of them that would have rewritten the base's local path is repeated
    for its prefix in the task, in the command's order, after the base (a map of a prefix
    of the local path: the whole base; one of a path below it: that part of the base).
    Paths elsewhere (system headers, named as here) are rewritten by the command's maps.
    """
    flag, flags = kind
    own = []
    for arg in args:
        for given in flags:
            if arg.startswith(given) and "=" in arg[len(given) :]:
                old, new = arg[len(given) :].split("=", 1)
                own.append((old, new))
    maps = []
    for there, here in bases:
        maps.append(f"{flag}{there}={here}")
        for old, new in own:
            if here.startswith(old):  # the whole base, as the command's map would have it
                maps.append(f"{flag}{there}={new}{here[len(old) :]}")
            elif old.startswith(here):  # a part of it below
                maps.append(f"{flag}{there}{old[len(here) :]}={new}")
    return maps


__all__ = ["DEBUG_MAPS", "MACRO_MAPS", "prefix_maps"]
