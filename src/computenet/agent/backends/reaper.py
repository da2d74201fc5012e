"""The first process in a local job's sandbox: starts the job, waits for it, reports what
it used, then ends as the job ended.

bwrap's own process outside the sandbox never reaps the job, so ``wait4`` on it would
measure bwrap alone; this one does, and writes the job's CPU time and peak memory to a
pipe the agent reads. It ignores SIGTERM, SIGINT and SIGHUP (the agent sends them to the
job, which ends; then this ends) and takes the job's command and environment from a
descriptor, so that the environment a job asked for (``LD_PRELOAD``, say) reaches only
the job, never bwrap. Where the job runs as another user, this stays root (with no
capability but to change user) and only the job becomes that user: the job cannot
signal it. It starts with every job, so it imports nothing it can do without:
nothing of computenet, ``_signal`` rather than ``signal`` (which imports ``enum``),
``marshal`` rather than ``json``; each costs milliseconds a job.

    python -I -S reaper.py SPEC_FD REPORT_FD
"""

from __future__ import annotations

import _signal as signal
import marshal
import os
import resource
import sys

PASSED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _report(fd: int, key: str, value: object) -> None:
    os.write(fd, f"{key}={value}\n".encode(errors="replace"))


def _libc(name: str, *args: int | bytes) -> None:
    """Calls a C library function that returns 0, or -1 and sets errno. Through
    ``_ctypes``, the core of ``ctypes``: importing ``ctypes`` itself costs each job some
    4 ms; ``ctypes`` where the core is not as expected."""
    try:
        import _ctypes

        class Int(_ctypes._SimpleCData):
            _type_ = "i"

        class Fn(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = Int

        class Lib:
            _handle = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]

        fn, errno = Fn((name, Lib)), _ctypes.get_errno  # type: ignore[arg-type]
    except (ImportError, AttributeError, TypeError):
        import ctypes

        fn, errno = getattr(ctypes.CDLL(None, use_errno=True), name), ctypes.get_errno
    if fn(*args) != 0:
        raise OSError(errno(), name)


def _undumpable() -> None:
    """Keeps the job (the same user) out of this process's ``/proc`` entries, where its
    report pipe is: what the job used is measured here, not said by the job."""
    _libc("prctl", 4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0


def _no_capabilities() -> None:
    """Clears the inheritable set too (setuid leaves it): the job keeps nothing of the
    two capabilities this process had to become its user."""
    version = (0x20080522).to_bytes(4, sys.byteorder)  # _LINUX_CAPABILITY_VERSION_3
    _libc("capset", version + bytes(4), bytes(24))  # this process; all sets empty


def main() -> None:
    spec_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
    data = b""
    while chunk := os.read(spec_fd, 1 << 16):
        data += chunk
    os.close(spec_fd)
    argv, env, ids, data_limit = marshal.loads(data)
    for s in PASSED:
        signal.signal(s, signal.SIG_IGN)
    os.set_inheritable(report_fd, False)
    _undumpable()
    # The job's peak memory counts this process's, which it starts as a copy of.
    _report(report_fd, "base_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    pid = os.fork()
    if pid == 0:
        for s in (*PASSED, signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores the last two
            signal.signal(s, signal.SIG_DFL)
        try:
            if data_limit:  # the job's alone: this process needs its own few MB
                resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))
            if ids is not None:  # (uid, gid, groups): the job's own, no capabilities
                uid, gid, groups = ids
                os.get_exec_path(env)  # imports warnings while the stdlib is in reach
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
                _no_capabilities()
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            _report(report_fd, "error", (e.strerror or str(e)).replace("\n", " "))
            os._exit(127 if isinstance(e, FileNotFoundError) else 126)
        except BaseException as e:
            _report(report_fd, "error", repr(e).replace("\n", " "))
            os._exit(126)
    _, status, usage = os.wait4(pid, 0)
    _report(report_fd, "cpu", usage.ru_utime + usage.ru_stime)
    _report(report_fd, "max_rss", usage.ru_maxrss * 1024)
    _report(report_fd, "status", os.waitstatus_to_exitcode(status))  # -N: killed by signal N
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the job's core, not this one's
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those are always the default
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    main()
