"""Is a ring's writer alive? Finding and removing rings left behind by dead writers.

Liveness is an ``flock(LOCK_EX)`` that the writer takes on its segment before publishing it and holds for
its whole life. The kernel drops it when the last descriptor of the writer's open file goes away, which
includes SIGKILL and crashes; so "the lock can be taken" means "no writer", without pid-reuse or
pid-namespace pitfalls. (One caveat: a child forked *without exec* inherits the descriptor and keeps the
ring looking alive as long as it lives.) The pid and process start time in the header are only for
messages and ``ps``.

Replacing or removing a ring by name must not race with a writer publishing a new ring under that name,
so these steps run under a short exclusive flock on the shm directory itself (no lock file to leak).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Collection, Iterator

from vap_shmring.layout import HEADER_SIZE, Header
from vap_shmring.naming import SHM_DIR, TMP_PREFIX, is_ring_name


@contextlib.contextmanager
def directory_lock(shm_dir: str = SHM_DIR) -> Iterator[None]:
    """Serialise create/replace/remove of ring names between all our processes (held for microseconds)."""
    fd = os.open(shm_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), 0 when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # The command name (field 2) may contain spaces and parentheses: split after its closing ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else 0


def _lock_is_free(fd: int) -> bool:
    """Try to take the writer lock; True (and we now hold it on ``fd``) when nobody else holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def read_header(fd: int) -> Header | None:
    try:
        return Header.unpack(os.pread(fd, HEADER_SIZE, 0))
    except ValueError:
        return None


def writer_alive(name: str, shm_dir: str = SHM_DIR) -> bool:
    """True when the ring exists and its writer process still holds it."""
    try:
        fd = os.open(os.path.join(shm_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return not _lock_is_free(fd)
    finally:
        os.close(fd)


def remove_if_dead(path: str) -> bool | None:
    """Unlink ``path`` when no writer holds it; True removed, False alive, None already gone.

    Call under :func:`directory_lock`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not _lock_is_free(fd):
            return False
        # Holding the dead ring's lock and the directory lock: the name still refers to this very file.
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _candidates(shm_dir: str) -> Iterator[str]:
    for entry in os.scandir(shm_dir):
        if (is_ring_name(entry.name) or entry.name.startswith(TMP_PREFIX)) and entry.is_file(
            follow_symlinks=False
        ):
            yield entry.name


def find_stale_rings(shm_dir: str = SHM_DIR) -> list[str]:
    """Names of our segments (rings and half-built temporaries) whose writer is gone."""
    with directory_lock(shm_dir):
        return sorted(name for name in _candidates(shm_dir) if not writer_alive(name, shm_dir))


def cleanup_stale_rings(shm_dir: str = SHM_DIR, *, only: Collection[str] | None = None) -> list[str]:
    """Unlink every ring (and half-built temporary) whose writer is dead; returns the names removed.

    ``only`` restricts the sweep to those names (a supervisor cleaning up after its own decoders, or tests
    running in parallel). Rings of other users that we may not unlink are skipped. Readers still mapping
    a removed ring keep their mapping; the memory is freed when the last of them unmaps.
    """
    removed = []
    with directory_lock(shm_dir):
        for name in _candidates(shm_dir):
            if only is not None and name not in only:
                continue
            try:
                if remove_if_dead(os.path.join(shm_dir, name)):
                    removed.append(name)
            except PermissionError:
                continue
    return sorted(removed)
