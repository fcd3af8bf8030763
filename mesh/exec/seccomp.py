"""The sandbox's seccomp filter: the system calls that sandboxes commonly deny fail with EPERM.

The list follows Docker's default profile (what it refuses to a container without
capabilities), written as a deny list over an allow-all default, so that builds keep
every ordinary call:

* the kernel's keyrings (``add_key``, ``keyctl``, ``request_key``): they are per uid,
  not per sandbox, and outlive the task;
* ``bpf``, ``perf_event_open``, ``userfaultfd`` and ``io_uring_*``: large kernel
  surfaces that builds do not need and that most kernel exploits of recent years went
  through;
* loading, replacing and rebooting kernels (``*_module``, ``kexec_*``, ``reboot``),
  swap, quotas, process accounting, the clock, the kernel log;
* the mount family (``mount``, ``umount2``, ``pivot_root`` and the new mount API),
  ``setns``, and ``unshare`` or ``clone`` with any namespace flag: no new namespace
  of any kind, so no user namespace either, which is what gives an unprivileged
  process capabilities over its own mounts and network. ``clone3`` passes its flags
  in memory a filter cannot read, so it answers ENOSYS, on which glibc and others
  fall back to ``clone`` (Docker does the same);
* ``open_by_handle_at`` and ``name_to_handle_at`` (the "shocker" way out of a chroot).

``ptrace`` and ``process_vm_*`` stay allowed: the sandbox's pid namespace holds
only the task's own processes. 32-bit x86 calls go through the same rules; calls of
an architecture the filter does not know kill the process.

The program is compiled once per process by libseccomp (through pyseccomp, a ctypes
binding; Debian's libseccomp2) and handed to each sandbox through a pipe
(``bwrap --seccomp FD``), which bwrap loads just before it starts the command.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
from typing import Any

__all__ = ["DENIED", "seccomp_unavailable", "filter_pipe", "sandbox_filter"]

#: System calls refused with EPERM whatever their arguments.
DENIED = (
    "add_key",
    "keyctl",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "syslog",
    "vhangup",
    "lookup_dcookie",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "iopl",
    "ioperm",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
)
#: The CLONE_NEW* flags: ``unshare`` and ``clone`` with any of them are refused.
NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


def seccomp_unavailable() -> str | None:
    """Why the filter cannot be made here (libseccomp missing, say), or None."""
    try:
        sandbox_filter()
    except (ImportError, RuntimeError, OSError) as exc:
        return f"the seccomp filter cannot be made: {exc} (install Debian's libseccomp2 and pyseccomp)"
    return None


@functools.cache
def sandbox_filter() -> bytes:
    """The filter as a BPF program (what ``bwrap --seccomp`` reads); compiled on the first call.

    Raises ImportError or RuntimeError when libseccomp or pyseccomp is missing.
    """
    import pyseccomp as sc  # loads libseccomp: only when a sandbox is made

    rules: Any = sc.SyscallFilter(sc.ALLOW)
    rules.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    if platform.machine() == "x86_64":
        rules.add_arch(sc.Arch.X86)  # 32-bit programs: the same rules, by their own numbers
    refuse = sc.ERRNO(errno.EPERM)
    for name in DENIED:  # libseccomp leaves out, per architecture, the calls it does not have
        rules.add_rule(refuse, name)
    for flag in NAMESPACE_FLAGS:  # the flags are the first argument of both (x86, arm)
        for name in ("unshare", "clone"):
            rules.add_rule(refuse, name, sc.Arg(0, sc.MASKED_EQ, flag, flag))
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    read, write = os.pipe2(os.O_CLOEXEC)
    try:
        with os.fdopen(write, "wb") as out:
            write = -1
            rules.export_bpf(out)
        program = b""
        while chunk := os.read(read, 1 << 16):
            program += chunk
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    return program


def filter_pipe() -> int:
    """A pipe's read end holding the filter, for one ``bwrap --seccomp`` (the caller closes it).

    The program (a few hundred bytes) fits in the pipe, so the write never blocks.
    """
    program = sandbox_filter()
    read, write = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(write, program)
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)
    return read
