"""Run untrusted (model-generated) Python programs in a sandboxed subprocess.

Every program gets a fresh interpreter (``sys.executable -I -B``) in a fresh temporary working directory, with
stdin closed, a minimal environment (``PATH``, ``HOME``/``TMPDIR`` pointing at that directory, ``LANG``; none of
the parent's variables, so no API key), resource limits, and a wall-clock timeout at which the whole process group
is killed. Output is read with a cap; a program that exceeds it is killed (reason ``"output_limit"``), so a program
printing 1 GB never makes the parent buffer 1 GB.

Layers
------
Which layers are active is detected once per process (:func:`sandbox_isolation`), cached and logged.

``"namespace"`` (preferred; needs util-linux ``unshare`` and a kernel that lets us use namespaces)
    * As root: ``unshare --mount --pid --net --ipc --uts --fork --kill-child --mount-proc`` (no user namespace is
      needed). Inside, a small init process (PID 1 of the new PID namespace) makes every mount read-only except a
      read-write bind of the working directory, hides directories the unprivileged user could not traverse anyway
      behind a tmpfs (e.g. ``/root``) while bind-mounting back only the interpreter's prefixes, then forks the
      program, which drops to ``nobody`` (so ``RLIMIT_NPROC`` applies: it is ignored for root) with an empty
      capability bounding set and ``no_new_privs``.
    * Not root: the same inside ``unshare --user --map-root-user`` (a user namespace); the program keeps the
      caller's uid on the host, its capabilities are dropped, and the mounts it inherited are locked read-only.
      ``RLIMIT_NPROC`` counts per user namespace here, so it limits this program alone.

    The caller's home directory (where credential files live) is hidden behind an empty tmpfs too, except the
    interpreter paths inside it. The new network namespace has only a down loopback device: nothing, including
    ``127.0.0.1`` of the host, can be reached. The working directory is the only writable place. When PID 1 exits
    (the program ended or was killed) the kernel kills every process left in the namespace, so a fork bomb or a
    daemonised child cannot outlive it.

``"basic"`` (fallback where namespaces are unavailable; also forced with ``isolation="basic"``)
    The same rlimits, environment and process-group kill, a drop to ``nobody`` when running as root and the
    interpreter is readable by ``nobody``, plus a :func:`sys.addaudithook` hook installed before the program runs
    that refuses: socket ``connect``/``bind``/``sendto``/``sendmsg``; opening for writing, creating, removing,
    renaming or changing any path outside the working directory (``/dev/null`` excepted); reading another process's
    ``/proc/PID`` entries (their environment) or anything in the caller's home directory outside the
    interpreter's paths (credential files); starting or signalling processes (``fork``, ``exec*``,
    ``posix_spawn``, ``system``, ``subprocess``, ``kill``); and foreign calls through :mod:`ctypes` (``dlsym``,
    ``call_function``), which would bypass the hook. An audit hook is a best-effort barrier, not a security
    boundary against code written to defeat CPython; use a machine with namespaces for untrusted code at scale.

In both layers the hook refuses the socket events above (defence in depth), and the rlimits are: ``RLIMIT_CPU``
(``cpu_s``; soft limit then ``SIGKILL`` one second later), ``RLIMIT_AS`` (``memory_mb``: a large allocation raises
``MemoryError``, reported as ``"memory"``), ``RLIMIT_FSIZE`` (``file_mb``), ``RLIMIT_NPROC`` (``max_procs``) and
``RLIMIT_CORE`` = 0.

Reasons
-------
``"passed"`` (exit 0 within every limit), ``"failed"`` (non-zero exit), ``"timeout"`` (wall clock), ``"cpu"``
(CPU time), ``"memory"`` (``MemoryError``), ``"output_limit"`` (stdout or stderr beyond ``output_bytes``),
``"killed"`` (ended by a signal) and ``"error"`` (the sandbox itself could not be set up; logged as a warning).

Notes
-----
Reading stays allowed wherever the program's uid may read (the interpreter and its packages must be readable);
only the caller's home directory is hidden. When running as root, ``RLIMIT_NPROC`` counts every process of
``nobody`` on the host, so concurrent sandboxes share that budget. In the basic layer without a uid drop,
``RLIMIT_NPROC`` counts every process of the caller's user (the hook refuses ``fork`` there anyway). ``-I``
ignores ``PYTHONHASHSEED``, so string hashing is randomised per program as in a plain ``python`` run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from equal._threads import available_cores
from equal.errors import ConfigError

__all__ = [
    "Isolation",
    "SandboxLimits",
    "SandboxResult",
    "run_program",
    "run_programs",
    "sandbox_isolation",
]

logger = logging.getLogger(__name__)

Isolation = Literal["auto", "namespace", "basic"]

_NOBODY = 65534
_SETUP_FAILED = 125  # exit code of the bootstrap when it could not build the sandbox
_SETUP_MARK = "equal-sandbox: setup failed:"
_READ_CHUNK = 1 << 16
_DRAIN_S = 1.0  # how long to keep reading pipes after the program ended (stragglers are killed first)


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed program.

    Parameters
    ----------
    timeout_s : float, default=10.0
        Wall-clock limit in seconds; at the limit the whole process group is killed (reason ``"timeout"``).
    cpu_s : int, default=10
        CPU-time limit in seconds (``RLIMIT_CPU``; reason ``"cpu"``).
    memory_mb : int, default=1024
        Address-space limit in MiB (``RLIMIT_AS``; a ``MemoryError`` gives reason ``"memory"``).
    file_mb : int, default=16
        Largest file the program may write, in MiB (``RLIMIT_FSIZE``).
    max_procs : int, default=32
        Process limit (``RLIMIT_NPROC``).
    output_bytes : int, default=1 << 20
        Cap on each of stdout and stderr; beyond it the program is killed (reason ``"output_limit"``).
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_mb: int = 16
    max_procs: int = 32
    output_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not (
            0 < self.timeout_s < float("inf")
        ):
            raise ConfigError(f"sandbox.timeout_s={self.timeout_s!r} must be a finite number > 0.")
        minimum = {"cpu_s": 1, "memory_mb": 32, "file_mb": 1, "max_procs": 1, "output_bytes": 1}
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"sandbox.{name}={value!r} must be an integer >= {low}.")


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one sandboxed program.

    Attributes
    ----------
    passed : bool
        True when the program exited with code 0 within every limit.
    reason : str
        One word: ``"passed"``, ``"failed"``, ``"timeout"``, ``"cpu"``, ``"memory"``, ``"output_limit"``,
        ``"killed"`` or ``"error"`` (see the module docstring).
    returncode : int or None
        The program's exit code, ``-N`` when it was ended by signal N, None when unknown.
    stdout, stderr : str
        The program's output (UTF-8, invalid bytes replaced), each truncated to ``output_bytes``.
    seconds : float
        Wall-clock seconds from start to the end of the program.
    isolation : str
        The layer it ran under: ``"namespace"`` or ``"basic"``.
    """

    passed: bool
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: str = "basic"


# The bootstrap runs as ``python -I -B boot.py CONFIG_JSON`` inside the sandbox. It must not import equal: it only
# uses the standard library, so it works for any interpreter and any user that can read that interpreter.
_BOOT = r'''
import json, os, sys

CFG = json.loads(sys.argv[1])
STATUS_FD = CFG["status_fd"]
WORKDIR = CFG["workdir"]


def _fail(message):
    os.write(2, ("%s %s\n" % (CFG["mark"], message)).encode("utf-8", "replace"))
    os._exit(CFG["setup_failed"])


def _libc():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return ctypes, libc


def _mount(libc, ctypes, source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (source, target, os.strerror(err)))


def _mount_points():
    points = []
    with open("/proc/self/mountinfo", "rb") as fh:
        for line in fh:
            raw = line.split()[4].decode("utf-8", "surrogateescape")
            # mountinfo escapes space, tab, newline and backslash as octal
            for code in ("\\040", "\\011", "\\012", "\\134"):
                raw = raw.replace(code, chr(int(code[1:], 8)))
            points.append(raw)
    return points


def _lock_filesystem():
    """Make every mount read-only except WORKDIR; hide untraversable dirs but keep the interpreter visible."""
    ctypes, libc = _libc()
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
    MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
    MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
    _mount(libc, ctypes, None, "/", None, MS_REC | MS_PRIVATE)
    # Open the exposed paths before a tmpfs hides them; bind them back from their file descriptors.
    exposures = [(cover, [(path, os.open(path, os.O_PATH)) for path in paths]) for cover, paths in CFG["expose"]]
    for cover, paths in exposures:
        _mount(libc, ctypes, "tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for path, fd in paths:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(libc, ctypes, "/proc/self/fd/%d" % fd, path, None, MS_BIND | MS_REC)
            os.close(fd)
    _mount(libc, ctypes, WORKDIR, WORKDIR, None, MS_BIND)
    keep = {
        os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: MS_NOATIME,
        os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME,
    }
    for point in _mount_points():
        if point == WORKDIR:
            continue
        try:
            # A locked mount keeps its nosuid/nodev/... flags: pass them back unchanged, only add read-only.
            st_flags = os.statvfs(point).f_flag
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            for st_bit, ms_bit in keep.items():
                if st_flags & st_bit:
                    flags |= ms_bit
            _mount(libc, ctypes, None, point, None, flags)
        except OSError as exc:
            if point == "/":
                raise
            # Hidden (over-mounted) or unreachable mount points cannot be reached by the program either.
            if not os.path.exists(point) or exc.errno in (13, 2):
                continue
            raise
    probe = os.path.join(os.path.dirname(WORKDIR), ".equal-sandbox-probe-%d" % os.getpid())
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError:
        pass
    else:
        os.unlink(probe)
        raise OSError(0, "the file system stayed writable outside the working directory")


def _drop_privileges():
    import resource
    limits = CFG["limits"]
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_mb"] * mb, limits["file_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_procs"], limits["max_procs"]))
    if CFG["drop_caps"]:
        ctypes, libc = _libc()
        PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            last = int(fh.read())
        for cap in range(last + 1):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, %d)" % cap)
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        if CFG["uid"] is not None:
            os.setgroups([])
            os.setgid(CFG["gid"])
            os.setuid(CFG["uid"])  # from root to a non-zero uid: the kernel clears every capability
        else:
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
            data = (ctypes.c_uint32 * 6)()
            if libc.capset(header, data) != 0:
                raise OSError(ctypes.get_errno(), "capset")
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    elif CFG["uid"] is not None:
        os.setgroups([])
        os.setgid(CFG["gid"])
        os.setuid(CFG["uid"])
    # Last, so the limit does not get in the way of the steps above.
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb, limits["memory_mb"] * mb))


def _install_hook():
    strict = CFG["strict"]
    workdir = os.path.realpath(WORKDIR)
    me = os.getpid()
    net = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
    procs = {
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
        "pty.spawn", "os.kill", "os.killpg", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function",
    }
    paths = {
        "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
        "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
        "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,),
        "os.lchflags": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,),
        "shutil.move": (0, 1), "shutil.chown": (0,),
    }
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    fsdecode, realpath, sep = os.fsdecode, os.path.realpath, os.sep

    def inside(path):
        real = realpath(fsdecode(path))
        return real == workdir or real.startswith(workdir + sep) or real == "/dev/null"

    hidden = [h.rstrip(sep) + sep for h in CFG["hidden"]]
    visible = [v.rstrip(sep) + sep for v in CFG["visible"]]

    def concealed(path):
        """Inside the caller's home (credentials) and not part of the interpreter."""
        real = realpath(fsdecode(path)) + sep
        return any(real.startswith(h) for h in hidden) and not any(real.startswith(v) for v in visible)

    def other_proc(path):
        real = realpath(fsdecode(path))
        if not real.startswith("/proc/"):
            return False
        head = real[6:].split(sep, 1)[0]
        return head.isdigit() and int(head) != me

    def hook(event, args):
        if event in net:
            raise PermissionError("sandbox: %s is not allowed" % event)
        if not strict:
            return
        if event in procs:
            if event == "os.kill" and args[0] in (0, me):
                return
            raise PermissionError("sandbox: %s is not allowed" % event)
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            writing = (isinstance(flags, int) and flags & write_flags) or (
                isinstance(mode, str) and any(c in mode for c in "wax+")
            )
            if (writing and not inside(path)) or other_proc(path) or concealed(path):
                raise PermissionError("sandbox: opening %r is not allowed" % (path,))
            return
        if event in ("os.listdir", "os.scandir") and args and args[0] is not None and not isinstance(args[0], int):
            if concealed(args[0]):
                raise PermissionError("sandbox: listing %r is not allowed" % (args[0],))
            return
        where = paths.get(event)
        if where is not None:
            for i in where:
                target = args[i] if i < len(args) else None
                if target is not None and not isinstance(target, int) and not inside(target):
                    raise PermissionError("sandbox: %s on %r is not allowed" % (event, target))

    if strict:
        # _posixsubprocess.fork_exec raises no audit event of its own: take it away before the program runs.
        import _posixsubprocess

        def refused(*args, **kwargs):
            raise PermissionError("sandbox: starting processes is not allowed")

        _posixsubprocess.fork_exec = refused
    sys.addaudithook(hook)


def _child():
    try:
        os.close(STATUS_FD)
        os.chdir(WORKDIR)
        _drop_privileges()
        with open(CFG["program"], "rb") as fh:
            source = fh.read()
        _install_hook()
    except BaseException as exc:
        _fail("%s: %s" % (type(exc).__name__, exc))
    import types
    module = types.ModuleType("__main__")
    module.__file__ = CFG["program"]
    sys.modules["__main__"] = module
    sys.argv = [CFG["program"]]
    try:
        exec(compile(source, CFG["program"], "exec"), module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        # Print the traceback from the program's own frames on, as a plain ``python main.py`` would.
        import traceback
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != CFG["program"]:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        raise SystemExit(1)


def _init():
    if CFG["namespace"]:
        try:
            _lock_filesystem()
        except BaseException as exc:
            _fail("%s: %s" % (type(exc).__name__, exc))
    pid = os.fork()
    if pid == 0:
        _child()
        return  # the program ended normally: let the interpreter flush and run atexit as usual
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    report = {"status": status, "cpu_s": usage.ru_utime + usage.ru_stime}
    os.write(STATUS_FD, json.dumps(report).encode())
    os._exit(0)


_init()
'''


def _run_dir_root() -> str:
    return tempfile.gettempdir()


def _accessible_to(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may traverse every directory above ``path`` and read ``path`` (mode bits only)."""
    current = Path(path)
    for part in [*reversed(current.parents), current]:
        try:
            st = part.stat()
        except OSError:
            return False
        need = stat.S_IXOTH if part != current or part.is_dir() else stat.S_IROTH
        if st.st_uid == uid:
            need <<= 6
        elif st.st_gid == gid:
            need <<= 3
        if not st.st_mode & need:
            return False
    return True


def _blocking_dir(path: str, uid: int, gid: int) -> str | None:
    """The highest directory above ``path`` that ``uid`` cannot traverse, or None."""
    for part in reversed(Path(path).parents):
        if not _accessible_to(str(part), uid, gid):
            return str(part)
    return None


def _interpreter_paths() -> list[str]:
    """Directories the interpreter needs: its prefixes and the existing ``sys.path`` entries."""
    found = {os.path.realpath(os.path.dirname(os.path.realpath(sys.executable)))}
    for prefix in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix):
        found.add(os.path.realpath(prefix))
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            found.add(os.path.realpath(entry))
    # Keep only the outermost of nested paths: a bind mount of a directory brings its subdirectories with it.
    ordered = sorted(found, key=len)
    kept: list[str] = []
    for path in ordered:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _home() -> str | None:
    """The caller's home directory (where credentials live), or None when there is none worth hiding."""
    home = os.path.realpath(os.path.expanduser("~"))
    return home if home not in ("/", "") and os.path.isdir(home) else None


def _exposures(uid: int | None, gid: int | None, workdir_root: str) -> list[tuple[str, list[str]]] | None:
    """Directories to hide behind a tmpfs, each with the interpreter paths inside it to bind back.

    The covers are the caller's home (credential files) and, when the program drops to ``uid``, the directories
    that ``uid`` could not traverse (so the interpreter under e.g. ``/root`` stays reachable). None when the
    interpreter cannot be made reachable that way.
    """
    covers: set[str] = set()
    home = _home()
    root_dir = os.path.realpath(workdir_root)
    if home is not None and not (root_dir == home or root_dir.startswith(home + "/")):
        covers.add(home)
    paths = _interpreter_paths()
    if uid is not None and gid is not None:
        for path in paths:
            cover = _blocking_dir(path, uid, gid)
            if cover is None:
                if not _accessible_to(path, uid, gid):
                    return None
                continue
            if cover in ("/", "") or root_dir == cover or root_dir.startswith(cover + "/"):
                return None
            covers.add(cover)
    # A cover inside another one is hidden by it already.
    outer = [c for c in covers if not any(c != o and c.startswith(o + "/") for o in covers)]
    groups: dict[str, list[str]] = {c: [] for c in outer}
    for path in paths:
        for cover in outer:
            if path == cover:
                groups.pop(cover)  # the interpreter lives right there: do not hide it
                break
            if path.startswith(cover + "/"):
                groups[cover].append(path)
                break
    return sorted(groups.items())


@dataclass(frozen=True)
class _Plan:
    """How one program is launched: the command prefix and the bootstrap settings."""

    isolation: str
    prefix: tuple[str, ...]
    uid: int | None
    gid: int | None
    drop_caps: bool
    expose: tuple[tuple[str, tuple[str, ...]], ...]


def _freeze(expose: list[tuple[str, list[str]]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((cover, tuple(paths)) for cover, paths in expose)


def _plan(isolation: str) -> _Plan | None:
    """Build the launch plan for ``isolation`` ("namespace" or "basic"); None when it cannot work here."""
    root = os.geteuid() == 0
    if isolation == "namespace":
        unshare = shutil.which("unshare") or next(
            (p for p in ("/usr/bin/unshare", "/bin/unshare") if os.access(p, os.X_OK)), None
        )
        if unshare is None:
            return None
        flags = ("--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
        root_dir = _run_dir_root()
        if root:
            expose = _exposures(_NOBODY, _NOBODY, root_dir)
            if expose is None:
                return None
            return _Plan("namespace", (unshare, *flags), _NOBODY, _NOBODY, True, _freeze(expose))
        expose = _exposures(None, None, root_dir)
        return _Plan(
            "namespace", (unshare, "--user", "--map-root-user", *flags), None, None, True, _freeze(expose or [])
        )
    if root and all(_accessible_to(p, _NOBODY, _NOBODY) for p in _interpreter_paths()):
        return _Plan("basic", (), _NOBODY, _NOBODY, False, ())
    if root:
        logger.warning(
            "sandbox: running as root but the interpreter %s is not readable by uid %d; programs keep uid 0 in the "
            "basic layer (the audit hook still refuses writes outside their directory and new processes).",
            sys.executable, _NOBODY,
        )
    return _Plan("basic", (), None, None, False, ())


@functools.cache
def _namespace_plan() -> _Plan | None:
    """The namespace plan if a trivial program runs correctly under it, else None (probed once, cached)."""
    plan = _plan("namespace")
    if plan is None:
        logger.info("sandbox: namespace layer unavailable (no unshare, or the interpreter cannot be exposed).")
        return None
    probe = "import os, socket\nprint('ok', os.getpid() != 1)\n"
    result = _run(probe, SandboxLimits(timeout_s=30.0), plan)
    if result.passed and result.stdout == "ok True\n":
        return plan
    logger.info("sandbox: namespace layer unavailable (%s): %s", result.reason, result.stderr.strip()[-300:])
    return None


def sandbox_isolation(isolation: Isolation = "auto") -> str:
    """Return the layer programs run under for ``isolation`` ("auto" picks the strongest that works here).

    Raises
    ------
    ConfigError
        If ``isolation`` is unknown, or is ``"namespace"`` and namespaces are unavailable on this machine.
    """
    return _resolve(isolation).isolation


@functools.cache
def _resolve(isolation: str) -> _Plan:
    if isolation not in ("auto", "namespace", "basic"):
        raise ConfigError(f"sandbox.isolation={isolation!r} must be 'auto', 'namespace' or 'basic'.")
    if isolation in ("auto", "namespace"):
        plan = _namespace_plan()
        if plan is not None:
            logger.info(
                "sandbox: namespace layer (mount, pid, net%s; uid %s; rlimits; audit hook on sockets).",
                "" if plan.uid is not None else ", user",
                plan.uid if plan.uid is not None else "unchanged",
            )
            return plan
        if isolation == "namespace":
            raise ConfigError(
                "sandbox.isolation='namespace' needs util-linux unshare and kernel namespaces, unavailable here."
            )
    plan = _plan("basic")
    assert plan is not None  # the basic layer always has a plan
    logger.info(
        "sandbox: basic layer (rlimits, process-group kill, audit hook%s).",
        f", uid {plan.uid}" if plan.uid is not None else "",
    )
    return plan


def _env(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
    }


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The leader is not reaped yet (we wait() after this), so its process-group id cannot have been reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _classify(
    status: dict[str, float] | None, proc_rc: int | None, stderr: str, limits: SandboxLimits
) -> tuple[str, int | None]:
    if status is not None:
        raw = int(status["status"])
        rc = os.waitstatus_to_exitcode(raw)
        cpu = float(status["cpu_s"])
    else:
        rc = proc_rc
        cpu = 0.0
    if rc == _SETUP_FAILED and _SETUP_MARK in stderr:
        return "error", rc
    if rc == 0:
        return "passed", rc
    tail = stderr.rstrip().rsplit("\n", 1)[-1]
    if tail.startswith("MemoryError") or "\nMemoryError" in stderr[-2000:]:
        return "memory", rc
    if rc is not None and rc < 0:
        if -rc == signal.SIGXCPU or (-rc == signal.SIGKILL and cpu >= limits.cpu_s):
            return "cpu", rc
        return "killed", rc
    return "failed", rc


def _run(code: str, limits: SandboxLimits, plan: _Plan, tmp_root: str | None = None) -> SandboxResult:
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="equal-sandbox-", dir=tmp_root or _run_dir_root()))
    try:
        return _run_in(code, limits, plan, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(code: str, limits: SandboxLimits, plan: _Plan, workdir: str) -> SandboxResult:
    program = os.path.join(workdir, "main.py")
    boot = os.path.join(workdir, ".boot.py")
    with open(program, "w", encoding="utf-8") as fh:
        fh.write(code)
    with open(boot, "w", encoding="utf-8") as fh:
        fh.write(_BOOT)
    if plan.uid is not None:
        for path in (workdir, program, boot):
            os.chown(path, plan.uid, plan.gid if plan.gid is not None else -1)
    status_r, status_w = os.pipe()
    config = {
        "status_fd": status_w,
        "workdir": workdir,
        "program": program,
        "namespace": plan.isolation == "namespace",
        "strict": plan.isolation == "basic",
        "drop_caps": plan.drop_caps,
        "uid": plan.uid,
        "gid": plan.gid,
        "expose": [[cover, list(paths)] for cover, paths in plan.expose],
        "hidden": [_home()] if plan.isolation == "basic" and _home() else [],
        "visible": _interpreter_paths(),
        "limits": {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                   "max_procs": limits.max_procs},
        "mark": _SETUP_MARK,
        "setup_failed": _SETUP_FAILED,
    }
    # In the namespace layer the init process starts as root and drops privileges itself (after the mounts).
    drop_here = plan.uid is not None and plan.isolation == "basic"
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*plan.prefix, sys.executable, "-I", "-B", boot, json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=_env(workdir),
            start_new_session=True,
            pass_fds=(status_w,),
            user=plan.uid if drop_here else None,
            group=plan.gid if drop_here else None,
            extra_groups=[] if drop_here else None,
        )
    finally:
        os.close(status_w)
    assert proc.stdout is not None and proc.stderr is not None
    out, err, status_raw = bytearray(), bytearray(), bytearray()
    cap = limits.output_bytes
    reason: str | None = None
    deadline = start + limits.timeout_s
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status_raw}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    ended_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if ended_at is None and now >= deadline:
                reason = "timeout"
                _kill_group(proc)
                ended_at = now
            if ended_at is not None and now >= ended_at + _DRAIN_S:
                break
            wait = (deadline if ended_at is None else ended_at + _DRAIN_S) - now
            for key, _ in sel.select(max(wait, 0.0)):
                fd = int(key.fd)
                try:
                    data = os.read(fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                    if fd == status_r and ended_at is None:
                        # The bootstrap ended: kill whatever it left behind so the pipes reach EOF.
                        ended_at = time.monotonic()
                        _kill_group(proc)
                    continue
                buf = streams[fd]
                buf += data
                if fd != status_r and len(buf) > cap:
                    del buf[cap:]
                    if reason is None and ended_at is None:
                        reason = "output_limit"
                        ended_at = time.monotonic()
                        _kill_group(proc)
                    sel.unregister(fd)
    finally:
        sel.close()
        _kill_group(proc)
        proc.stdout.close()
        proc.stderr.close()
        os.close(status_r)
        proc_rc = proc.wait()
    seconds = (ended_at if ended_at is not None else time.monotonic()) - start
    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    try:
        status = json.loads(status_raw) if status_raw else None
    except ValueError:
        status = None
    if reason is not None:
        rc = os.waitstatus_to_exitcode(int(status["status"])) if status else proc_rc
        return SandboxResult(False, reason, rc, stdout, stderr, seconds, plan.isolation)
    reason, rc = _classify(status, proc_rc, stderr, limits)
    if reason == "error":
        logger.warning("sandbox: could not set up the %s layer: %s", plan.isolation, stderr.strip()[-300:])
    return SandboxResult(reason == "passed", reason, rc, stdout, stderr, seconds, plan.isolation)


def run_program(
    code: str, *, limits: SandboxLimits | None = None, isolation: Isolation = "auto", tmp_root: str | None = None
) -> SandboxResult:
    """Run one Python program in the sandbox and report how it ended.

    Parameters
    ----------
    code : str
        The program's source; it runs as ``__main__`` in a fresh temporary directory, removed afterwards.
    limits : SandboxLimits or None, default=None
        The limits; None means ``SandboxLimits()``.
    isolation : {"auto", "namespace", "basic"}, default="auto"
        The layer (see the module docstring); "auto" takes the strongest that works on this machine.
    tmp_root : str or None, default=None
        Folder under which the per-program directory is made (the system temporary folder by default). When
        running as root it must be traversable by ``nobody``.

    Returns
    -------
    SandboxResult
        Never raises for anything the program does; ``passed`` is True only for exit code 0 within every limit.
    """
    if not isinstance(code, str):
        raise ConfigError(f"code must be a str; got {type(code).__name__}.")
    limits = SandboxLimits() if limits is None else limits
    if not isinstance(limits, SandboxLimits):
        raise ConfigError(f"limits must be a SandboxLimits; got {type(limits).__name__}.")
    plan = _resolve(isolation)
    return _run(code, limits, plan, tmp_root)


def run_programs(
    codes: Sequence[str],
    *,
    limits: SandboxLimits | None = None,
    workers: int | None = None,
    isolation: Isolation = "auto",
    tmp_root: str | None = None,
) -> list[SandboxResult]:
    """Run many programs in the sandbox, ``workers`` at a time, and return their results in order.

    Parameters
    ----------
    codes : sequence of str
        The programs.
    limits : SandboxLimits or None, default=None
        Limits applied to each program.
    workers : int or None, default=None
        Programs run at once; None means the CPU cores available to this process.
    isolation, tmp_root
        As for :func:`run_program`.

    Returns
    -------
    list of SandboxResult
        ``results[i]`` belongs to ``codes[i]``.
    """
    if isinstance(codes, str):
        raise ConfigError("codes must be a sequence of programs, not one str; use run_program for one.")
    codes = list(codes)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"sandbox.workers={workers!r} must be an integer >= 1 or None.")
    n = min(workers or available_cores(), max(len(codes), 1))
    limits = SandboxLimits() if limits is None else limits
    _resolve(isolation)  # probe once, before the threads start
    if n == 1:
        return [run_program(c, limits=limits, isolation=isolation, tmp_root=tmp_root) for c in codes]
    lock = threading.Lock()
    done = [0]

    def one(code: str) -> SandboxResult:
        result = run_program(code, limits=limits, isolation=isolation, tmp_root=tmp_root)
        with lock:
            done[0] += 1
            logger.debug("sandbox: %d/%d programs done", done[0], len(codes))
        return result

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="equal-sandbox") as pool:
        return list(pool.map(one, codes))

