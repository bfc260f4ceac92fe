"""Creating, publishing and mapping ring segments: the file-system side of a ring.

POSIX shm on Linux is a tmpfs file under /dev/shm, and glibc's shm_open is a plain open() there; we use
os.open + mmap directly. We do *not* use multiprocessing.shared_memory: before Python 3.13 every process
that attaches registers the segment with its resource_tracker, which unlinks it when that process exits,
destroying the ring under the writer's feet.

Creation: build the whole segment under a hidden temporary name (mode 0600, writer flock taken, space
reserved with posix_fallocate so a full /dev/shm fails here with ENOSPC instead of SIGBUS on some later
frame, header and control table written), then publish it atomically with link(2). Readers therefore
never see a half-initialised ring.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import stat
import time

from vap_shmring.errors import RingExistsError, RingFormatError, RingNotFoundError, ShmRingError
from vap_shmring.geometry import FrameGeometry
from vap_shmring.layout import (
    CONTROL_LINE,
    CONTROL_OFFSET,
    CTL_GENERATION,
    CTL_WORDS,
    HEADER_SIZE,
    MAX_CHANNEL_ID,
    Header,
    data_offset,
    slot_stride,
)
from vap_shmring.liveness import directory_lock, process_start_time, read_header, remove_if_dead
from vap_shmring.naming import TMP_PREFIX


def build_header(channel_id: str, geometry: FrameGeometry, slots: int) -> Header:
    if len(channel_id.encode("utf-8")) > MAX_CHANNEL_ID:
        raise ValueError(f"channel_id longer than {MAX_CHANNEL_ID} bytes")
    if slots < 1:
        raise ValueError(f"a ring needs at least one slot, got {slots}")
    created = time.time_ns()
    stride = slot_stride(geometry.frame_bytes)
    offset = data_offset(slots)
    return Header(
        writer_pid=os.getpid(),
        writer_start_time=process_start_time(os.getpid()),
        created_ns=created,
        generation_base=created & ~1,
        width=geometry.width,
        height=geometry.height,
        pixel_format=int(geometry.pixel_format),
        plane_count=len(geometry.planes),
        slot_count=slots,
        row_align=geometry.row_align,
        frame_bytes=geometry.frame_bytes,
        slot_stride=stride,
        control_offset=CONTROL_OFFSET,
        data_offset=offset,
        total_size=offset + slots * stride,
        strides=geometry.strides,
        plane_offsets=geometry.plane_offsets,
        channel_id=channel_id,
    )


def _initial_control_table(header: Header) -> bytes:
    table = bytearray(header.slot_count * CONTROL_LINE)
    for slot in range(header.slot_count):
        # Every slot starts at the (even) base: no FrameRef ever carries it, so nothing matches an empty slot.
        start = (slot * CTL_WORDS + CTL_GENERATION) * 8
        table[start : start + 8] = header.generation_base.to_bytes(8, "little")
    return bytes(table)


def create_segment(shm_dir: str, name: str, header: Header) -> int:
    """Create and publish the segment; returns its descriptor, on which we hold the writer flock."""
    path = os.path.join(shm_dir, name)
    tmp_path = os.path.join(shm_dir, f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    with directory_lock(shm_dir):  # a cleanup never sees the temporary unlocked
        fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask: frames are private to the user running the pipeline
        try:
            os.posix_fallocate(fd, 0, header.total_size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise ShmRingError(
                    f"not enough space in {shm_dir} for ring {name!r} ({header.total_size} bytes)"
                ) from e
            raise
        os.pwrite(fd, header.pack(), 0)
        os.pwrite(fd, _initial_control_table(header), header.control_offset)
        with directory_lock(shm_dir):
            # A ring left by a dead writer is replaced; a live writer's ring is an error.
            if remove_if_dead(path) is False:
                existing = _open_quiet(path)
                pid = existing.writer_pid if existing is not None else -1
                raise RingExistsError(name, pid)
            os.link(tmp_path, path)
            os.unlink(tmp_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        os.close(fd)
        raise
    return fd


def _open_quiet(path: str) -> Header | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return read_header(fd)
    finally:
        os.close(fd)


def unlink_own(shm_dir: str, name: str, fd: int) -> None:
    """Unlink ``name`` if it still is our segment (someone may have removed it by hand)."""
    path = os.path.join(shm_dir, name)
    with directory_lock(shm_dir):
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except FileNotFoundError:
            pass


def map_segment(shm_dir: str, name: str) -> tuple[Header, mmap.mmap, int]:
    """Map an existing ring read-only; returns its header, the mapping and the file's inode."""
    # A name comes from a FrameRef off the bus: it must not leave shm_dir or name the directory itself.
    if not name or "/" in name or name in (".", ".."):
        raise RingNotFoundError(f"{name!r} is not a ring name")
    try:
        # O_NONBLOCK: a FIFO planted under a ring's name must not block the reader in open().
        fd = os.open(os.path.join(shm_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise RingNotFoundError(f"no ring named {name!r} in {shm_dir}") from e
    except OSError as e:  # not ours (EACCES), a symlink (ELOOP)...
        raise RingFormatError(f"{name!r}: cannot open: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RingFormatError(f"{name!r}: not a regular file")
        try:
            header = Header.unpack(os.pread(fd, HEADER_SIZE, 0))
        except ValueError as e:
            raise RingFormatError(f"{name!r}: {e}") from e
        if st.st_size < header.total_size:
            # Mapping beyond the end of the file would SIGBUS on access.
            raise RingFormatError(f"{name!r}: file is {st.st_size} bytes, header says {header.total_size}")
        # The mapping stays valid after the fd is closed and after the writer unlinks the name.
        return header, mmap.mmap(fd, header.total_size, prot=mmap.PROT_READ), st.st_ino
    finally:
        os.close(fd)
