"""The ``mesh cc`` wrapper: one compile, sent to the local node or run here.

``mesh cc [-v] COMPILER ARGS...`` (or ``mesh-cc COMPILER ARGS...``, or a script named
after a compiler in a directory made by ``mesh cc --links DIR``) classifies the command
(:mod:`mesh.cc.args`). A compile to distribute is preprocessed here, with the real
working directory and the user's flags (which also writes the dependency file), and the
preprocessed text goes to the node's compile service over the unix socket
``$MESH_HOME/cc.sock`` (``MESH_CC_SOCKET`` names another). A compile the mesh did silently
gives its object, written to the ``-o`` path (through a temporary file in the same
directory, renamed); one that says anything is compiled here (see :func:`distribute`). A
compile that must run here to give the local object (``-g`` with optimisation:
mesh.cc.args) is preprocessed all the same and looked up in the mesh's cache; on a miss the
wrapper compiles it and the node keeps its object (:func:`compile_kept`). Anything else
runs the compiler itself, by ``exec``: no process stays between make and the compiler.

When the socket does not answer or the node says the mesh could not compile it (no
node with this compiler, a node lost, a task that failed for the mesh's reasons rather
than the code's), the wrapper compiles here and the build goes on;
``MESH_CC_FALLBACK=0`` makes that an error instead, to debug the mesh. ``-v`` (or
``MESH_CC_VERBOSE=1``) prints on stderr, per compile, where it ran and why, and every call
is counted by what became of it (:mod:`mesh.cc.stats`; ``mesh cc --stats``).

Start-up is the overhead a compile pays: this module imports the standard library's
``os``, ``sys``, ``time`` and ``_socket`` (no trio, httpx, cbor2 or json, nor the rest of mesh),
and ``mesh`` runs it before importing anything of its own command line (mesh.launch).
"""

from __future__ import annotations

import _socket
import os
import stat
import sys
import time

from mesh.cc import frames, stats
from mesh.cc.args import READS_MORE, Plan, classify

#: ``typing`` costs ~7 ms to import: the wrapper names it for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

#: The names ``mesh cc --links`` makes: compilers build systems call by name.
LINK_NAMES = ("cc", "c++", "gcc", "g++", "clang", "clang++")
#: The environment that joins the key of a compile kept in the cache (mesh.cc.keptcompiles):
#: the locale, which the input character set follows.
KEY_ENVIRONMENT = ("LANG", "LC_ALL", "LC_CTYPE")
#: Seconds the wrapper waits for the node's answer (a compile may take long).
ANSWER_TIMEOUT = 3600.0
USAGE = """usage: mesh cc [-v] COMPILER ARGS...   compile on the mesh (make CC="mesh cc gcc")
       mesh cc --links DIR              make DIR/gcc, DIR/cc, ... that run mesh cc (PATH=DIR:$PATH)
       mesh cc --stats | -s             what became of the calls: the mesh's, here, and why
       mesh cc --zero-stats | -z        count from zero again
"""
HELP = (
    USAGE
    + """
A compile of one C or C++ source to an object (-c) is preprocessed here and compiled
on a node of the mesh with the same compiler, or taken from the mesh-wide cache; its
object, dependency file, diagnostics and exit status are those of a local compile.
Everything else runs here: linking, -E, several sources, flags mesh cc does not know.
-g with optimisation, -g3, clang's -g and gcc's -fsanitize=address (or thread with -g)
run here too (their objects would differ), but are looked up and kept in the mesh's
cache. A compile that prints anything is compiled here again, so its warnings are the
compiler's own.

When no node answers, or the mesh fails for its own reasons, the compile runs here and
the build goes on.

  -v, --verbose    say on stderr, for each call, where it ran and why

Environment:
  MESH_HOME            the node's home, whose compile socket (cc.sock) mesh cc uses
  MESH_CC_SOCKET       another socket than $MESH_HOME/cc.sock
  MESH_CC_VERBOSE=1    as -v
  MESH_CC_FALLBACK=0   fail a compile the mesh could not do, instead of compiling it here

The counts of --stats are kept in cc-stats beside the socket.
"""
)


class MeshUnavailable(Exception):
    """The mesh did not compile it: the reason, for -v and for MESH_CC_FALLBACK=0."""


def run(argv: list[str] | None = None) -> NoReturn:
    """The wrapper as a whole process (``mesh cc``, ``mesh-cc``, the links of ``--links``):
    :func:`main`, then :func:`finish`."""
    finish(main(argv))


def finish(status: int) -> NoReturn:
    """Flush what was written and leave the process at once, without the interpreter's
    teardown: it has nothing to close or write, and the teardown cost 5.5 ms a compile
    (``python -I -S`` importing this module and exiting: 15.4 ms with ``sys.exit``, 9.9 ms
    with ``os._exit``, medians of 60, measured on this project's 2-core machine)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 1  # stdout closed or full: the status says something went wrong
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    """The wrapper's entry point: ``argv`` without the program name (``mesh cc``'s words
    after ``cc``). A link named after a compiler (``--links``) calls it with that name first.
    Interrupted (make stopped by Ctrl-C), it exits 130 without a traceback."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return 130


def _main(args: list[str]) -> int:
    verbose = os.environ.get("MESH_CC_VERBOSE", "") not in ("", "0")
    while args and args[0] in ("-v", "--verbose"):
        verbose = True
        args.pop(0)
    if not args or args[0] in ("-h", "--help"):
        (sys.stdout if args else sys.stderr).write(HELP if args else USAGE)
        return 0 if args else 2
    if args[0] in ("-s", "--stats", "-z", "--zero-stats"):
        if len(args) != 1:
            sys.stderr.write(USAGE)
            return 2
        return show_stats(zero=args[0] in ("-z", "--zero-stats"))
    if args[0] == "--links":
        if len(args) != 2:
            sys.stderr.write(USAGE)
            return 2
        return make_links(args[1])
    name, rest = args[0], args[1:]
    compiler = find_compiler(name)
    if compiler is None:
        sys.stderr.write(f"mesh cc: error: no compiler {name!r} on PATH\n")
        return 127
    plan = classify(driver_name(name, compiler), rest, os.environ)
    if isinstance(plan, str):
        tell(verbose, "here", plan, f"here: {plan}")
        return run_here(compiler, rest)
    return distribute(compiler, rest, plan, verbose)


def tell(verbose: bool, category: str, detail: str, message: str) -> None:
    """Count what became of this call (mesh.cc.stats: ``detail`` without file names) and,
    with -v, say ``message``."""
    stats.count(stats.path_beside(socket_path()), category, stats.general(detail))
    if verbose:
        sys.stderr.write(f"mesh cc: {message}\n")


def show_stats(*, zero: bool) -> int:
    """``--stats``: the counts of the calls through this socket's node; ``--zero-stats``: none."""
    path = stats.path_beside(socket_path())
    try:
        if zero:
            stats.reset(path)
            sys.stdout.write(f"mesh cc: statistics zeroed ({path})\n")
        else:
            sys.stdout.write(stats.render(path, *stats.read(path)))
    except OSError as exc:
        sys.stderr.write(f"mesh cc: error: {path}: {exc.strerror or exc}\n")
        return 1
    return 0


def driver_name(name: str, compiler: str) -> str:
    """The name that says which driver runs (gcc or clang, C or C++): the one the command
    gives, unless it names neither (``cc``, ``c++``: Debian's alternatives), then that of
    the file it resolves to (``x86_64-linux-gnu-gcc-12``, ``clang++-14``)."""
    if any(word in os.path.basename(name) for word in ("gcc", "g++", "clang")):
        return name
    return os.path.realpath(compiler)


def find_compiler(name: str) -> str | None:
    """The compiler ``name`` runs: a path as given, else the first executable of that name on
    PATH that is not this wrapper (a link made by ``--links`` is skipped)."""
    if "/" in name:
        return os.path.abspath(name) if os.access(name, os.X_OK) else None
    me = _wrapper_files()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and os.path.realpath(candidate) not in me:
            return os.path.abspath(candidate)
    return None


def _wrapper_files() -> set[str]:
    """What runs now: a link of ``--links`` found on PATH is this script, never the compiler."""
    return {os.path.realpath(sys.argv[0])} if sys.argv and sys.argv[0] else set()


#: A link of ``--links``: python without site (``-IS``: ~13 ms less start-up in a virtualenv
#: with an editable install, measured), mesh found where this module is.
LINK_SCRIPT = """#!{python} -IS
import sys
sys.path.insert(0, {root!r})
from mesh.cc.wrapper import run
run([{name!r}, *sys.argv[1:]])
"""


def make_links(directory: str) -> int:
    """``--links DIR``: small scripts named after compilers that run ``mesh cc NAME``."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.makedirs(directory, exist_ok=True)
    for name in LINK_NAMES:
        path = os.path.join(directory, name)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(LINK_SCRIPT.format(python=sys.executable, root=root, name=name))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    sys.stdout.write(f"{directory}: {', '.join(LINK_NAMES)} run mesh cc; put it first on PATH\n")
    return 0


def run_here(compiler: str, args: list[str]) -> int:
    """Replace this process with the compiler (never returns, but for an exec that fails)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(compiler, [compiler, *args])
    except OSError as exc:
        sys.stderr.write(f"mesh cc: error: cannot run {compiler}: {exc.strerror or exc}\n")
        return 127


def distribute(compiler: str, args: list[str], plan: Plan, verbose: bool) -> int:
    """Preprocess here, compile on the mesh, or here: the exit status.

    Only a compile that is silent both here and there is answered by the mesh. One that
    prints anything (a warning, an error, in the preprocessor or in the compiler) is
    compiled here again, so that its diagnostics are a local compile's, byte for byte:
    gcc quotes the source lines it complains about from the files, which only this
    machine has, and prints the preprocessor's and the compiler's diagnostics in source
    order. A clean build pays nothing for it; a build full of warnings compiles here.
    """

    def here(category: str, where: str, why: str) -> int:
        tell(verbose, category, why, f"here: {where}: {why}")
        return run_here(compiler, args)

    if not replaceable(plan.object):
        return here(
            "here",
            plan.object,
            "-o names what gcc's assembler writes into rather than replaces (a device, an empty file)",
        )
    began = time.time_ns()  # a file changed from now on may not be in what is preprocessed
    status, text, said = preprocess(compiler, plan)
    if status != 0 or said:
        return here("said", plan.source, "the preprocessor had something to say")
    start = 0 if plan.rewritten else _after_builtins(text)
    if start < 0:
        return here("here", plan.source, "the preprocessor's output has no command-line part")
    unsent = _not_sent(text, start)
    if unsent is not None:
        return here("here", plan.source, unsent)
    try:
        cwd = gcc_cwd()
    except OSError:  # the working directory was removed: gcc says what that does
        return here("here", plan.source, "the working directory is gone")
    if not all(_utf8(word) for word in [compiler, cwd, *args]):
        return here("here", plan.source, "a path or flag that is not UTF-8 (the mesh's jobs and keys are)")
    if plan.here:
        return compile_kept(compiler, args, plan, text[start:], cwd, began, verbose)
    request = [compiler, plan.language, plan.source, cwd, *plan.compile]
    try:
        answer, (stdout, stderr, obj) = ask(socket_path(), request, [text[start:]])
    except MeshUnavailable as exc:
        off = _fallback_off(plan, exc)
        tell(verbose and not off, "fallback", str(exc), f"here: {plan.source}: {exc}")
        return 1 if off else run_here(compiler, args)
    exit_code, node, note = answer[1:4]
    if exit_code != "0" or stdout or stderr:
        why = "the compile had something to say"
        tell(verbose, "said", why, f"here: {plan.source}: {why} ({note})")
        return run_here(compiler, args)
    try:
        write_object(plan.object, obj)
    except OSError as exc:  # gcc says it in its own words: no directory there, no room ...
        why = f"the object could not be written: {exc.strerror or exc}"
        tell(verbose, "here", why, f"here: {plan.object}: {exc.strerror or exc}")
        return run_here(compiler, args)
    cached = answer[4:] == [frames.CACHED] or (len(answer) == 4 and "from the action cache" in note)
    tell(verbose, "mesh", "from the mesh's cache" if cached else f"compiled on node {node}", f"{plan.source}: {note}")
    return 0


def compile_kept(compiler: str, args: list[str], plan: Plan, text: bytes, cwd: str, began: int, verbose: bool) -> int:
    """A compile that runs here (:attr:`Plan.here`), kept in the mesh's cache: the object of
    the same compile done before anywhere in the mesh, else this compile, whose object the
    node keeps when it was silent (mesh.cc.keptcompiles). One that says anything is
    compiled again by ``exec``, so its diagnostics are gcc's own, colours and all."""
    env = [f"{name}={os.environ[name]}" for name in KEY_ENVIRONMENT if name in os.environ]
    request = [frames.LOOKUP, compiler, cwd, str(began), str(len(env)), *env, *args]
    try:
        answer, got = exchange(socket_path(), request, [text])
        if answer[:1] == ["hit"] and len(answer) == 3 and len(got) == 1:
            write_object(plan.object, got[0])
            tell(verbose, "kept", "from the mesh's cache", f"here: {plan.source}: {plan.here}; {answer[2]}")
            return 0
        if answer[:1] != ["miss"] or len(answer) != 2:
            raise MeshUnavailable("the node's answer was not understood")
    except (MeshUnavailable, OSError) as exc:
        why = str(exc) if isinstance(exc, MeshUnavailable) else exc.strerror or str(exc)
        off = isinstance(exc, MeshUnavailable) and _fallback_off(plan, exc)
        tell(verbose and not off, "fallback", why, f"here: {plan.source}: {plan.here}; not cached: {why}")
        return 1 if off else run_here(compiler, args)
    status, said = run_captured(compiler, args)
    if status != 0 or said:
        why = "the compile had something to say"
        tell(verbose, "said", why, f"here: {plan.source}: {why}: compiled again")
        return run_here(compiler, args)
    try:
        with open(plan.object, "rb") as f:
            obj = f.read()
        said_back, _ = exchange(socket_path(), [frames.RECORD, answer[1]], [obj])
        note = said_back[1] if said_back[:1] == ["ok"] and len(said_back) == 2 else "not kept: an answer not understood"
    except (MeshUnavailable, OSError) as exc:
        note = f"not kept: {exc}"
    outcome = "compiled here, kept" if note == frames.KEPT else "compiled here, not kept"
    tell(verbose, "kept", outcome, f"here: {plan.source}: {plan.here}; {note}")
    return 0


def _utf8(text: str) -> bool:
    """Whether ``text`` (from the command line or a path: bytes that are not UTF-8 come as
    surrogates) is UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _fallback_off(plan: Plan, exc: MeshUnavailable) -> bool:
    """Whether ``MESH_CC_FALLBACK=0`` makes the mesh's failure an error (said on stderr)."""
    if os.environ.get("MESH_CC_FALLBACK", "1") != "0":
        return False
    sys.stderr.write(f"mesh cc: error: {plan.source}: {exc} (MESH_CC_FALLBACK=0: not compiled here)\n")
    return True


def run_captured(compiler: str, args: list[str]) -> tuple[int, bool]:
    """Run the compile here with its stdout and stderr in unnamed files: (exit status, whether
    it wrote anything). 127 when it cannot be started."""
    streams = [_unnamed_file(), _unnamed_file()]
    try:
        out, err = streams
        if out is None or err is None:
            return 127, True
        actions = [(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)]
        try:
            pid = os.posix_spawn(compiler, [compiler, *args], os.environ, file_actions=actions)
        except OSError:
            return 127, True
        return _exit_status(pid), os.fstat(out).st_size + os.fstat(err).st_size > 0
    finally:
        for fd in streams:
            if fd is not None:
                os.close(fd)


def _exit_status(pid: int) -> int:
    """Wait for ``pid``: its exit status as a shell gives it (128 + N for signal N)."""
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return 128 - code if code < 0 else code


def gcc_cwd() -> str:
    """The working directory as gcc names it in debug information (libiberty's ``getpwd``):
    ``$PWD`` when it is absolute and is this directory (a shell keeps the path it was
    reached by there, symlinks and all), else the physical path. A build in a directory
    reached through a symlink writes the path through the link; so must the mesh's."""
    logical = os.environ.get("PWD", "")
    if logical.startswith("/"):
        try:
            there, here = os.stat(logical), os.stat(".")
        except OSError:
            pass
        else:
            if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
                return logical
    return os.getcwd()


def _after_builtins(text: bytes) -> int:
    """Where the command line's part of ``gcc -E -fdirectives-only``'s output starts (the
    built-in macros before it are dropped), or -1."""
    for marker in (b'# 0 "<command-line>"', b'# 1 "<command-line>"'):
        if text.startswith(marker):
            return 0
        at = text.find(b"\n" + marker)
        if at >= 0:
            return at + 1
    return -1


#: Macros gcc expands to the time of the compile (``__TIMESTAMP__``: the source's mtime).
CLOCK_MACROS = ("__DATE__", "__TIME__", "__TIMESTAMP__")


def _not_sent(text: bytes, start: int) -> str | None:
    """Why the text (from ``start``) must be compiled here, uncached, or None: it names a
    macro of the moment, or its compile reads a file the text does not hold (READS_MORE).

    Macros of the moment: ``-fdirectives-only`` leaves macros unexpanded, so the key of such a compile would not
    change with the time: a hit would carry the time of whichever compile ran first, and a
    compile elsewhere the time (and ``SOURCE_DATE_EPOCH``) of that node, where a compile
    here gives now. So it is compiled here. A name in a comment or a string counts too:
    compiled here, which is never wrong. (ccache leaves such sources out of its direct mode
    for the same reason.) glibc's headers name ``__TIMESIZE`` and ``__TIME_T_TYPE``, never
    these. The three searches take ~0.6 ms over the 450 KB of brotli's largest text."""
    for name in CLOCK_MACROS:
        if text.find(name.encode(), start) >= 0:
            return f"{name} is the time of the compile that expands it"
    for sign, why in READS_MORE.items():
        if text.find(sign, start) >= 0:
            return why
    return None


def _unnamed_file() -> int | None:
    """An unnamed file (O_TMPFILE) in TMPDIR, else /tmp or /dev/shm; None where none can be made."""
    for where in (os.environ.get("TMPDIR"), "/tmp", "/dev/shm"):
        if where:
            try:
                return os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError:
                continue
    return None


def preprocess(compiler: str, plan: Plan) -> tuple[int, bytes, bool]:
    """Run ``COMPILER PREPROCESS-FLAGS -fdirectives-only -E SOURCE`` here: (exit status, preprocessed text,
    whether it wrote to stderr). Its stderr goes to an unnamed file, dropped: a compile
    whose preprocessing says anything is compiled here, which says it again."""
    errors = _unnamed_file()
    if errors is None:
        return 127, b"", True  # nowhere to put its stderr: compiled here
    read, write = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, write, 1), (os.POSIX_SPAWN_DUP2, errors, 2), (os.POSIX_SPAWN_CLOSE, read)]
    try:
        pid = os.posix_spawn(compiler, [compiler, *plan.preprocess], os.environ, file_actions=actions)
    except OSError:
        os.close(read)
        os.close(write)
        os.close(errors)
        return 127, b"", True
    os.close(write)
    chunks = []
    with os.fdopen(read, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 20):
            chunks.append(chunk)
    status = _exit_status(pid)
    said = os.fstat(errors).st_size > 0
    os.close(errors)
    return status, b"".join(chunks), said


def socket_path() -> str:
    """Where the node's compile service listens: MESH_CC_SOCKET, else ``cc.sock`` in the
    node's home (MESH_HOME, else mesh's default home, as mesh.config.default_home says)."""
    explicit = os.environ.get("MESH_CC_SOCKET")
    if explicit:
        return explicit
    home = os.environ.get("MESH_HOME")
    if not home:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        home = os.path.join(base, "mesh")
    return os.path.join(home, "cc.sock")


def ask(path: str, texts: list[str], blobs: list[bytes]) -> tuple[list[str], list[bytes]]:
    """One compile request to the compile service and its answer (``["ok", EXIT, NODE, NOTE,
    HOW]``, or without HOW from an older node, and stdout, stderr, object); MeshUnavailable
    as :func:`exchange` says, or when the answer is not one."""
    answer, got = exchange(path, texts, blobs)
    if answer[:1] != ["ok"] or len(answer) not in (4, 5) or not answer[1].lstrip("-").isdigit() or len(got) != 3:
        raise MeshUnavailable("the node's answer was not understood")
    return answer, got


def exchange(path: str, texts: list[str], blobs: list[bytes]) -> tuple[list[str], list[bytes]]:
    """One request to the compile service and its answer; MeshUnavailable when there is none
    (no socket, a node that went away, a frame not understood) or it is ``["error", WHY]``."""
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(ANSWER_TIMEOUT)
            sock.connect(path)
            sock.sendall(b"".join(frames.pack(texts, blobs)))
            sock.shutdown(_socket.SHUT_WR)
            answer, got = frames.unpack(_Reader(sock).read)
        finally:
            sock.close()
    except FileNotFoundError:
        raise MeshUnavailable(f"no node's compile service at {path} (is a node running? mesh up)") from None
    except OSError as exc:
        raise MeshUnavailable(f"the node's compile service at {path}: {exc.strerror or exc}") from None
    except frames.FrameError as exc:
        raise MeshUnavailable(f"the node's answer was not understood: {exc}") from None
    if answer[:1] == ["error"] and len(answer) == 2:
        raise MeshUnavailable(answer[1])
    return answer, got


class _Reader:
    """Exact reads from a socket (``_socket``'s, which has no makefile)."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock

    def read(self, n: int) -> bytes:
        parts, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)


def replaceable(path: str) -> bool:
    """Whether a new file renamed onto ``path`` leaves what gcc's assembler leaves there.

    The assembler (binutils' BFD, ``bfd_open_file``) unlinks what is at the path when it
    is a regular file or a symlink and the file it names is not empty, then creates a new
    file: that is a rename's outcome, and so is a path where nothing is. Otherwise it
    opens what is there and writes into it: an empty file keeps its mode and its other
    hard links, a symlink to one or a dangling one is written through, and a device
    stays a device (a root build's ``-o /dev/null`` must never put a file in its place).
    Those compiles run here."""
    try:
        there = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # gcc says what is wrong with it
    if stat.S_ISLNK(there.st_mode):
        try:
            there = os.stat(path)  # what it names
        except OSError:
            return False  # dangling: the assembler makes the file it names
    return stat.S_ISREG(there.st_mode) and there.st_size != 0


def write_object(path: str, data: bytes) -> None:
    """Write the object through a temporary file beside it, renamed (only where
    :func:`replaceable` says that is what gcc leaves): make never sees half of it. A file
    that could not be written whole (a full disk) is removed again."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.mesh-cc.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        _remove(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
