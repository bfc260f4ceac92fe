"""Binary layout of a ring segment (layout version 1). All integers are little-endian.

::

    offset 0        header page (4096 bytes)
                      0  magic "VAPRING\\0"          8s
                      8  layout version (1)           u32
                     12  header size (4096)           u32
                     16  writer pid                   i64   diagnostics; liveness is an flock, see liveness.py
                     24  writer start time            u64   /proc/<pid>/stat starttime (ticks), 0 unknown
                     32  created at (Unix ns)         i64
                     40  generation base              u64   even; see "generations" below
                     48  width, height                u32, u32
                     56  pixel format                 u32   vap.v1.PixelFormat
                     60  plane count                  u32
                     64  slot count                   u32
                     68  row alignment                u32
                     72  frame bytes                  u64   bytes of one frame's planes
                     80  slot stride                  u64   distance between slot starts (multiple of 4096)
                     88  control table offset         u64
                     96  data offset                  u64
                    104  total size                   u64
                    112  plane strides                3 x u32
                    128  plane offsets                3 x u64
                    152  channel id length            u32
                    160  channel id                   256 bytes UTF-8
                    448  writer state                 u64   1 open, 2 closed (own cache line: it is mutable)
                    456  last committed index + 1     u64   0 = nothing committed yet
    offset 4096     control table: one 64-byte cache line per slot (no false sharing between slots)
                      0  generation                   u64   odd while being written, even when committed
                      8  sequence                     u64   \\
                     16  pts (us)                     i64    | the committed frame's metadata, protected
                     24  capture time (Unix ns)       i64    | by the same generation as its pixels
                     32  commit time (Unix ns)        i64    |
                     40  stream epoch                 u64   /
    data offset     slot 0 pixels, slot 1 pixels, ...  each slot starts on a 4096-byte boundary

Generations: commit number ``n`` (0, 1, 2, ... over the ring's life) goes to slot ``n % slot_count``
(round robin) and moves that slot's generation to ``base + 2n + 1`` while it is written and to
``base + 2n + 2`` when committed. So generations strictly increase per slot, are unique across slots, and
``(generation - base) / 2 - 1`` is the commit number. ``base`` is the creation time in ns (rounded to
even): a ring re-created under the same name starts above every generation its predecessor could have
reached (that would take one commit per nanosecond), so a FrameRef of the old ring never matches a slot of
the new one, and vice versa.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"VAPRING\x00"
LAYOUT_VERSION = 1
PAGE = 4096
HEADER_SIZE = PAGE
CONTROL_OFFSET = HEADER_SIZE
CONTROL_LINE = 64
MAX_PLANES = 3
MAX_CHANNEL_ID = 256

_HEADER = struct.Struct("<8sIIqQqQIIIIIIQQQQQ3I4x3QI4x256s")

# Mutable header words, as indices into the header viewed as u64 words.
WRITER_STATE_WORD = 448 // 8
LATEST_WORD = 456 // 8
WRITER_OPEN = 1
WRITER_CLOSED = 2

# Control-line words (u64 index inside the slot's 64-byte line).
CTL_GENERATION = 0
CTL_SEQUENCE = 1
CTL_PTS = 2
CTL_CAPTURE = 3
CTL_COMMIT = 4
CTL_EPOCH = 5
CTL_WORDS = CONTROL_LINE // 8

assert _HEADER.size <= WRITER_STATE_WORD * 8, "header fields overlap the mutable words"


@dataclass(frozen=True)
class Header:
    """The immutable part of a ring's header."""

    writer_pid: int
    writer_start_time: int
    created_ns: int
    generation_base: int
    width: int
    height: int
    pixel_format: int
    plane_count: int
    slot_count: int
    row_align: int
    frame_bytes: int
    slot_stride: int
    control_offset: int
    data_offset: int
    total_size: int
    strides: tuple[int, ...]
    plane_offsets: tuple[int, ...]
    channel_id: str

    def pack(self) -> bytes:
        pad = MAX_PLANES - self.plane_count
        channel = self.channel_id.encode("utf-8")
        return _HEADER.pack(
            MAGIC,
            LAYOUT_VERSION,
            HEADER_SIZE,
            self.writer_pid,
            self.writer_start_time,
            self.created_ns,
            self.generation_base,
            self.width,
            self.height,
            self.pixel_format,
            self.plane_count,
            self.slot_count,
            self.row_align,
            self.frame_bytes,
            self.slot_stride,
            self.control_offset,
            self.data_offset,
            self.total_size,
            *self.strides,
            *([0] * pad),
            *self.plane_offsets,
            *([0] * pad),
            len(channel),
            channel,
        )

    @classmethod
    def unpack(cls, buf: bytes) -> Header:
        """Parse a header; raises ValueError when it is not a ring header of this layout version."""
        if len(buf) < _HEADER.size:
            raise ValueError(f"segment too small for a ring header ({len(buf)} bytes)")
        f = _HEADER.unpack_from(buf)
        if f[0] != MAGIC:
            raise ValueError("bad magic: not a VAP ring")
        if f[1] != LAYOUT_VERSION or f[2] != HEADER_SIZE:
            raise ValueError(f"unsupported ring layout version {f[1]} (header size {f[2]})")
        planes = f[10]
        if not 1 <= planes <= MAX_PLANES:
            raise ValueError(f"bad plane count {planes}")
        return cls(
            writer_pid=f[3],
            writer_start_time=f[4],
            created_ns=f[5],
            generation_base=f[6],
            width=f[7],
            height=f[8],
            pixel_format=f[9],
            plane_count=planes,
            slot_count=f[11],
            row_align=f[12],
            frame_bytes=f[13],
            slot_stride=f[14],
            control_offset=f[15],
            data_offset=f[16],
            total_size=f[17],
            strides=tuple(f[18 : 18 + planes]),
            plane_offsets=tuple(f[21 : 21 + planes]),
            channel_id=f[25][: f[24]].decode("utf-8"),
        )


def slot_stride(frame_bytes: int) -> int:
    """Slots start on page boundaries: aligned for any SIMD width, and no two slots share a page."""
    return -(-frame_bytes // PAGE) * PAGE


def data_offset(slot_count: int) -> int:
    return CONTROL_OFFSET + -(-(slot_count * CONTROL_LINE) // PAGE) * PAGE
