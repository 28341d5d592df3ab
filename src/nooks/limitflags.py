"""The command-line flags that set a domain's limits (``nooks mount`` and ``nooks serve``).

Defaults are the safe ones of ``nooks.domain.spec.Limits``: 2 GiB of address
space, 1024 descriptors, 256 tasks, capabilities and syscalls that reach
beyond the domain refused, a minimal environment, the host's user.
"""

from __future__ import annotations

import argparse
import os
import sys

from nooks import argcheck
from nooks.domain.harden import DENIED_SYSCALLS
from nooks.domain.spec import Limits

SECCOMP_PROFILES = ("default", "strict", "none")
# what a file-system driver typically needs once built, beyond the runtime's own
STRICT_SYSCALLS = (
    "openat", "open", "creat", "stat", "lstat", "statx", "newfstatat", "fstatfs", "statfs",
    "getdents64", "pread64", "pwrite64", "preadv", "pwritev", "ftruncate", "truncate",
    "fsync", "fdatasync", "sync_file_range", "fallocate", "unlink", "unlinkat", "mkdir",
    "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat", "symlink",
    "symlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "chown", "fchown",
    "fchownat", "lchown", "utimensat", "access", "faccessat", "faccessat2", "mknod",
    "mknodat", "setxattr", "lsetxattr", "fsetxattr", "getxattr", "lgetxattr", "fgetxattr",
    "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    "fcntl", "flock", "dup2", "dup3", "pipe2", "copy_file_range", "sendfile", "umask",
)


def add(parser: argparse.ArgumentParser) -> None:
    """Add the domain-limit flags to a command's parser."""
    g = parser.add_argument_group("the driver's domain (defaults are the safe ones)")
    g.add_argument("--user", type=argcheck.user, metavar="USER",
                   help="run the driver as this user (name or uid; default: the host's)")
    g.add_argument("--memory", type=argcheck.size(64 << 20, 1 << 40), default=2 << 30,
                   metavar="SIZE", help="address space the driver may map (default: 2G)")
    g.add_argument("--max-fds", type=argcheck.count(16, 1 << 20), default=1024, metavar="N",
                   help="descriptors the driver may hold (default: %(default)s)")
    g.add_argument("--max-tasks", type=argcheck.count(8, 1 << 16), default=256, metavar="N",
                   help="processes and threads the driver may have at once, counting all it "
                   "starts (default: %(default)s); everything it starts dies with it")
    g.add_argument("--seccomp", choices=SECCOMP_PROFILES, default="default",
                   help="default: the driver cannot ptrace, reach other processes' memory, "
                   "mount, load modules, change clocks, signal its host, and drops the "
                   "capabilities it has no use for; strict: besides, once built it may make "
                   "only common file and memory syscalls (anything else kills it); none: "
                   "no filter, all of the host's privileges (default: %(default)s)")
    g.add_argument("--env", type=argcheck.env, action="append", default=[],
                   metavar="NAME[=VALUE]",
                   help="pass this variable to the driver (repeatable); drivers get a "
                   "minimal environment otherwise (default: none)")


def limits(args: argparse.Namespace) -> Limits:
    """The Limits the parsed flags ask for; ValueError if the domain could not run as
    the user asked for (it could not even start its interpreter)."""
    harden = args.seccomp != "none"
    if args.user is not None:
        group = _primary_group(args.user)
        blocked = unreachable(sys.executable, args.user, group)
        if blocked is not None:
            raise ValueError(f"--user {args.user}: the domain's interpreter "
                             f"{sys.executable} is out of its reach ({blocked})")
    return Limits(
        address_space=args.memory, open_files=args.max_fds, tasks=args.max_tasks,
        harden=harden,
        seccomp=tuple(s for s in STRICT_SYSCALLS if s not in DENIED_SYSCALLS)
        if args.seccomp == "strict" else None,
        user=args.user,
        group=_primary_group(args.user) if args.user is not None else None,
        env=tuple(args.env),
    )


def unreachable(path: str, uid: int, gid: int | None) -> str | None:
    """Why user ``uid`` (group ``gid``) cannot run the program at ``path``, or None:
    every directory on the way must let it search, the program let it read and run."""
    if uid == 0:
        return None
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(1, len(parts) + 1):
        at = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(at)
        except OSError as e:
            return f"{at}: {e.strerror}"
        need = 0o5 if i == len(parts) else 0o1
        if st.st_uid == uid:
            bits = st.st_mode >> 6
        elif gid is not None and st.st_gid == gid:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        if bits & need != need:
            return f"{at} is mode {st.st_mode & 0o777:o}, owned by uid {st.st_uid}"
    return None


def _primary_group(uid: int) -> int:
    """The user's primary group; for a uid with no entry, the group of the same number
    (never the host's own groups)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid
