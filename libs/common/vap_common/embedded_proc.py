"""Process plumbing shared by the embedded NATS and PostgreSQL servers (see ``vap_common.embedded``).

Three concerns live here so that the two server modules read as configuration, not as process handling:

* spawning a server so that it dies with us (``PR_SET_PDEATHSIG``) and, for PostgreSQL started by root, as an
  unprivileged user that can still reach root-only paths (see ``RunAs``);
* stopping it (polite signal, wait, ``SIGKILL``) and finding processes left behind in a data directory;
* small helpers: free ports, polling with a deadline, log tails, a data-directory lock.

Linux only, like the rest of VAP.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import pwd
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

_log = logging.getLogger("vap_common.embedded")

_PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_CAP_DAC_OVERRIDE = 1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped; the message says why and quotes its log."""


# ----------------------------------------------------------------------------------------------------
# Running as an unprivileged user


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@dataclass(frozen=True, slots=True)
class RunAs:
    """The user a server runs as when we are root (PostgreSQL refuses to run as root).

    The server keeps exactly one capability, CAP_DAC_OVERRIDE, as an *ambient* capability so that it survives
    ``execve``. Without it the unprivileged server could not reach a data directory under a root-only path
    (``/root/...``, pytest's ``/tmp/pytest-of-root`` is 0700) or binaries in a venv under ``/root``. The
    alternative, widening permissions of every parent directory, would change the machine for everyone.
    """

    uid: int
    gid: int
    name: str


def unprivileged_user(name: str = "nobody") -> RunAs | None:
    """``None`` when we are not root (servers run as ourselves); otherwise the account to run servers as.

    ``nobody`` exists on every Debian/Ubuntu/RHEL/Alpine system, so nothing has to be created (no useradd).
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise EmbeddedServerError(
            f"running as root: PostgreSQL must run as an unprivileged user and user {name!r} does not exist"
        ) from exc
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, name=name)


def chown_tree(path: Path, run_as: RunAs) -> None:
    """Give ``path`` and everything below it to ``run_as`` (the server's own directory, never parents)."""
    os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), run_as.uid, run_as.gid, follow_symlinks=False)


def _make_preexec(*, pdeathsig: signal.Signals, run_as: RunAs | None) -> Callable[[], None]:
    """The function the child runs between fork and exec.

    Everything that could allocate or take a lock (loading libc, building the capability structs) is done
    here, in the parent: only async-signal-safe work is wise in a forked child of a threaded process.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    parent_pid = os.getpid()
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    caps = (_CapData * 2)()
    mask = 1 << _CAP_DAC_OVERRIDE
    caps[0].effective = caps[0].permitted = caps[0].inheritable = mask

    def drop_privileges(user: RunAs) -> None:
        # KEEPCAPS keeps the permitted set across setuid, so the one capability can be re-raised afterwards.
        libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)
        granted = libc.capset(ctypes.byref(header), caps) == 0 and (
            libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_OVERRIDE, 0, 0) == 0
        )
        if not granted:
            # Not fatal: the server still works if its paths are reachable by the user. The line lands in the
            # server's log, which the startup error quotes.
            os.write(
                2, b"vap-embedded: could not keep CAP_DAC_OVERRIDE; paths must be reachable by the user\n"
            )

    def preexec() -> None:
        if run_as is not None:
            drop_privileges(run_as)
        # After setuid: the kernel clears the death signal when credentials change.
        libc.prctl(_PR_SET_PDEATHSIG, int(pdeathsig), 0, 0, 0)
        if os.getppid() != parent_pid:  # we died before the death signal was armed
            os._exit(1)

    return preexec


_SpawnJob = Callable[[], "subprocess.Popen[bytes]"]


class _Spawner:
    """Starts child processes from one long-lived daemon thread.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Spawning from a
    short-lived thread (``asyncio.to_thread``, an executor) would kill the server as soon as that thread ends;
    this thread lives as long as the process does.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[_SpawnJob, Future[subprocess.Popen[bytes]]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, job: _SpawnJob) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="vap-embedded-spawner", daemon=True)
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((job, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)


_SPAWNER = _Spawner()


def spawn(
    argv: Sequence[str],
    *,
    log: IO[bytes],
    cwd: Path,
    env: Mapping[str, str],
    pdeathsig: signal.Signals,
    run_as: RunAs | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server process that dies with us; stdout and stderr go to ``log``.

    ``start_new_session``: a Ctrl-C in the terminal goes to the foreground process group; the servers must not
    get it directly, we stop them in order (tests still need them while tearing down).
    """
    preexec = _make_preexec(pdeathsig=pdeathsig, run_as=run_as)

    def job() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            preexec_fn=preexec,  # noqa: PLW1509  (see _make_preexec: prepared in the parent)
            start_new_session=True,
        )

    return _SPAWNER.run(job)


def run_once(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], run_as: RunAs | None, timeout: float
) -> str:
    """Run a short command (initdb) with the same user switch; return its output or raise quoting it."""
    # A file, not a pipe: a chatty child could fill a pipe and block while we wait for it.
    with tempfile.TemporaryFile() as log:
        proc = spawn(argv, log=log, cwd=cwd, env=env, pdeathsig=signal.SIGKILL, run_as=run_as)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise EmbeddedServerError(
                f"{argv[0]} timed out after {timeout:.0f} s:\n{_read_all(log)}"
            ) from None
        if code != 0:
            raise EmbeddedServerError(f"{argv[0]} failed with exit code {code}:\n{_read_all(log)}")
        return _read_all(log)


def _read_all(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


# ----------------------------------------------------------------------------------------------------
# Process state and stopping


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running (not zombie) process, whoever owns it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_in(directory: Path) -> list[int]:
    """Pids whose working directory is ``directory`` or below it.

    PostgreSQL backends rename themselves (``postgres: checkpointer``) so their command line does not name the
    data directory, but they all run with it as their working directory.
    """
    target = str(directory.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cwd = process_cwd(int(entry.name))  # None: gone, or another user's process (so not ours either)
        if (
            cwd is not None
            and (cwd == target or cwd.startswith(target + os.sep))
            and pid_alive(int(entry.name))
        ):
            found.append(int(entry.name))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_process(
    pid: int, popen: subprocess.Popen[bytes] | None, *, sig: signal.Signals, timeout: float, what: str
) -> None:
    """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL. ``popen`` is given for our own child (so
    it is reaped); a server left by a crashed run is someone else's child and is polled instead."""
    if not pid_alive(pid):
        _reap(popen)
        return
    _signal(pid, sig)
    if _wait_gone(pid, popen, timeout):
        return
    _log.warning("%s (pid %d) did not stop within %.0f s after %s; killing it", what, pid, timeout, sig.name)
    _signal(pid, signal.SIGKILL)
    if not _wait_gone(pid, popen, 5.0):
        raise EmbeddedServerError(f"{what} (pid {pid}) survived SIGKILL")


def kill_leftovers(directory: Path, *, what: str, timeout: float = 5.0) -> None:
    """Kill processes still running in ``directory`` (backends of a SIGKILLed postmaster, a server whose
    parent crashed before its death signal was armed): they would hold the data directory and the port."""
    pids = processes_in(directory)
    if not pids:
        return
    _log.warning("killing %d leftover %s process(es) in %s: %s", len(pids), what, directory, pids)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    if not wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout, interval=0.01):
        raise EmbeddedServerError(f"leftover {what} processes {pids} in {directory} survived SIGKILL")


def _wait_gone(pid: int, popen: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if popen is not None:
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    return wait_until(lambda: not pid_alive(pid), timeout, interval=0.01)


def _reap(popen: subprocess.Popen[bytes] | None) -> None:
    if popen is not None:
        popen.poll()


# ----------------------------------------------------------------------------------------------------
# Small helpers


def wait_until(predicate: Callable[[], bool], timeout: float, *, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; report which."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tcp_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40, *, since: int = 0) -> str:
    """The last ``lines`` lines of a log, reading only from byte offset ``since`` (logs are appended to across
    runs; an error must quote this run's lines, not an older run's)."""
    try:
        with path.open("rb") as file:
            file.seek(since)
            text = file.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def process_cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


class DirLock:
    """An exclusive ``flock`` on ``<directory>/.lock`` held while we run a server from that directory.

    Two processes starting a server from the same directory would fight over the pid file and data; the second
    fails fast instead. The kernel drops the lock when we die, so a crashed run never blocks the next one.
    """

    def __init__(self, directory: Path, what: str) -> None:
        self._path = directory / ".lock"
        self._what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise EmbeddedServerError(
                    f"{self._what} data directory {self._path.parent} is in use by another process"
                ) from None
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
