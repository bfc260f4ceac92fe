"""Single-process behaviour of the ring: round trips per pixel format, permissions, naming, errors,
lifecycle (close, unlink, replace), and the zero-copy claims."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_shmring import (
    SHM_DIR,
    GeometryMismatchError,
    ReaderPool,
    RingClosedError,
    RingExistsError,
    RingMismatchError,
    RingNotFoundError,
    RingReader,
    RingWriter,
    ShmRingError,
    SlotOutOfRangeError,
    StaleGenerationError,
    WriterStateError,
    cleanup_stale_rings,
    find_stale_rings,
    ring_name,
    writer_alive,
)
from vap_shmring.geometry import BGR24, GRAY8, I420, NV12, RGB24, SUPPORTED_FORMATS
from vap_shmring.layout import PAGE
from vap_shmring.testing import fill_uniform, rich_ok, rich_planes, uniform_ok

WORKERS = Path(__file__).with_name("shmring_workers.py")


def _create(channel: str, fmt: PixelFormat.ValueType = BGR24, *, slots: int = 3, **kw: int) -> RingWriter:
    return RingWriter.create(
        channel, width=kw.get("width", 64), height=kw.get("height", 48), pixel_format=fmt, slots=slots,
        row_align=kw.get("row_align", 64),
    )  # fmt: skip


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS, ids=PixelFormat.Name)
@pytest.mark.parametrize("row_align", [1, 64])
def test_round_trip_each_format(channel_id: str, fmt: PixelFormat.ValueType, row_align: int) -> None:
    with _create(channel_id, fmt, width=62, height=34, row_align=row_align) as writer:
        view = writer.begin()
        for dst, src in zip(view.planes, rich_planes(view, 5), strict=True):
            dst[...] = src
        ref = writer.commit(sequence=5, pts_us=-40, capture_time_ns=123, stream_epoch=2, scenario_id="sc")

        with RingReader.attach(ref.ring) as reader, reader.read(ref) as frame:
            assert rich_ok(frame, 5)
            assert all(not p.flags.writeable for p in frame.planes)
            if fmt in (BGR24, RGB24):
                assert frame.image.shape == (34, 62, 3)
            elif fmt == GRAY8:
                assert frame.image.shape == (34, 62)
            elif row_align == 1:  # tight 4:2:0: the classic (H*3/2) x W buffer, planes back to back
                assert frame.image.shape == (51, 62)
                assert np.array_equal(frame.image[:34], frame.planes[0])
                assert np.array_equal(
                    frame.image[34:].reshape(-1)[: frame.planes[1].size], frame.planes[1].reshape(-1)
                )
            else:
                with pytest.raises(ShmRingError):
                    _ = frame.image
    assert (ref.sequence, ref.pts_us, ref.capture_time_ns, ref.stream_epoch) == (5, -40, 123, 2)
    assert (ref.scenario_id, ref.channel_id, ref.width, ref.height) == ("sc", channel_id, 62, 34)
    assert ref.commit_time_ns > 0 and ref.generation % 2 == 0


def test_frame_ref_carries_padded_layout(channel_id: str) -> None:
    with _create(channel_id, I420, width=100, height=50, row_align=64) as writer:
        writer.begin()
        ref = writer.commit(sequence=0)
    assert list(ref.strides) == [128, 64, 64]
    assert list(ref.plane_offsets) == [0, 128 * 50, 128 * 50 + 64 * 25]
    assert all(offset % 64 == 0 for offset in ref.plane_offsets)


def test_write_copies_a_ready_frame(channel_id: str) -> None:
    rng = np.random.default_rng(0)
    yuv = rng.integers(0, 256, (72, 64), dtype=np.uint8)  # tight I420 of 64x48
    with _create(channel_id, I420) as writer, RingReader.attach(writer.name) as reader:
        ref = writer.write(yuv, sequence=1)
        with reader.read(ref) as frame:
            assert np.array_equal(frame.planes[0], yuv[:48])
            assert np.array_equal(frame.planes[1].reshape(-1), yuv[48:60].reshape(-1))
            assert np.array_equal(frame.planes[2].reshape(-1), yuv[60:].reshape(-1))
        with pytest.raises(ValueError, match="4:2:0"):
            writer.write(yuv[:10], sequence=2)
        ref = writer.write(yuv, sequence=3)  # the failed write left the writer usable
        assert reader.is_current(ref)


def test_views_are_zero_copy_and_cached(channel_id: str) -> None:
    with _create(channel_id, BGR24, slots=2) as writer, RingReader.attach(writer.name) as reader:
        view = writer.begin()
        view.planes[0][...] = 9
        ref = writer.commit(sequence=0)
        first = reader.view(ref)
        assert reader.view(ref) is first  # precomputed at attach: nothing built per frame
        # The reader's array is the writer's memory: a write through the writer's view shows up.
        view.planes[0][0, 0, 0] = 200
        assert first.image[0, 0, 0] == 200
        assert not first.image.flags.owndata


def test_ring_file_is_0600_and_page_aligned(channel_id: str) -> None:
    old = os.umask(0)  # the mode must not depend on the caller's umask
    try:
        writer = _create(channel_id, NV12, slots=4)
    finally:
        os.umask(old)
    with writer:
        st = os.stat(os.path.join(SHM_DIR, writer.name))
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        view = writer.begin()
        for plane in view.planes:
            assert plane.ctypes.data % 64 == 0
        assert view.planes[0].ctypes.data % PAGE == 0


def test_name_is_deterministic_sanitised_and_short() -> None:
    assert ring_name("cam-1") == ring_name("cam-1")
    assert ring_name("cam-1") != ring_name("cam-2")
    assert ring_name("a/b") != ring_name("a_b")  # same sanitised text, different ids: the hash differs
    hostile = ring_name("../../etc/pass wd\x00ü" + "x" * 500)
    assert hostile.startswith("vap-ring-")
    assert len(hostile) < 100
    assert all(c.isalnum() or c in "._-" for c in hostile)
    with pytest.raises(ValueError):
        ring_name("")


def test_unknown_ring() -> None:
    with pytest.raises(RingNotFoundError):
        RingReader.attach("vap-ring-does-not-exist-000000000000")


def test_out_of_range_slot(channel_id: str) -> None:
    with _create(channel_id, slots=3) as writer, RingReader.attach(writer.name) as reader:
        writer.begin()
        ref = writer.commit(sequence=0)
        ref.slot = 3
        with pytest.raises(SlotOutOfRangeError):
            reader.view(ref)
        with pytest.raises(SlotOutOfRangeError):
            reader.check(ref)


@pytest.mark.parametrize(
    "field,value",
    [
        ("width", 65),
        ("height", 47),
        ("pixel_format", RGB24),
        ("strides", [192 + 64]),
        ("plane_offsets", [64]),
    ],
)
def test_geometry_mismatch(channel_id: str, field: str, value: object) -> None:
    with _create(channel_id) as writer, RingReader.attach(writer.name) as reader:
        writer.begin()
        ref = writer.commit(sequence=0)
        reader.view(ref)  # the untouched ref is fine
        bad = FrameRef()
        bad.CopyFrom(ref)
        if isinstance(value, list):
            getattr(bad, field)[:] = value
        else:
            setattr(bad, field, value)
        with pytest.raises(GeometryMismatchError):
            reader.view(bad)


def test_ref_for_another_ring(channel_id: str) -> None:
    with _create(channel_id) as writer, RingReader.attach(writer.name) as reader:
        writer.begin()
        ref = writer.commit(sequence=0)
        ref.ring = ring_name("other")
        with pytest.raises(RingMismatchError):
            reader.view(ref)


def test_stale_generation_is_raised_and_counted(channel_id: str) -> None:
    with _create(channel_id, slots=2) as writer, RingReader.attach(writer.name) as reader:
        fill_uniform(writer.begin(), 0)
        old = writer.commit(sequence=0)
        frame = reader.view(old)
        assert uniform_ok(frame, 0)
        writer.begin()  # slot 1
        writer.commit(sequence=1)
        reader.check(old)  # slot 0 untouched so far
        fill_uniform(writer.begin(), 2)  # slot 0 again: overwritten while "in use"
        with pytest.raises(StaleGenerationError) as info:
            reader.check(old)  # during the write (odd generation)
        assert info.value.found == old.generation + 2 * 2 - 1
        writer.commit(sequence=2)
        with pytest.raises(StaleGenerationError):
            reader.check(old)
        with pytest.raises(StaleGenerationError):
            reader.view(old)
        with pytest.raises(StaleGenerationError), reader.read(old):
            pass
        assert reader.stale_reads == 4
        assert reader.is_current(old) is False and reader.stale_reads == 4  # is_current doesn't count


def test_read_context_checks_after_the_block(channel_id: str) -> None:
    with _create(channel_id, slots=1) as writer, RingReader.attach(writer.name) as reader:
        writer.begin()
        ref = writer.commit(sequence=0)
        with pytest.raises(StaleGenerationError), reader.read(ref) as frame:
            assert frame.slot == 0
            writer.begin()  # the writer laps the reader in the middle of the block
        fresh = writer.commit(sequence=1)
        with pytest.raises(KeyError), reader.read(fresh):  # a failing block isn't masked by the check
            writer.begin()
            raise KeyError("boom")


def test_generation_protocol(channel_id: str) -> None:
    with _create(channel_id, slots=3) as writer, RingReader.attach(writer.name) as reader:
        base = reader.header.generation_base
        assert [reader.generation(s) for s in range(3)] == [base] * 3
        assert reader.latest() is None
        writer.begin()
        assert reader.generation(0) == base + 1  # odd while written
        ref = writer.commit(sequence=0)
        assert ref.generation == reader.generation(0) == base + 2
        writer.begin()
        writer.abort()  # slot 1 stays marked as being written, latest still the frame of slot 0
        assert reader.generation(1) % 2 == 1
        latest = reader.latest()
        assert latest is not None and latest.slot == 0 and latest.generation == ref.generation
        assert writer.next_slot == 2


def test_writer_call_order_is_enforced(channel_id: str) -> None:
    with _create(channel_id) as writer:
        with pytest.raises(WriterStateError):
            writer.commit(sequence=0)
        with pytest.raises(WriterStateError):
            writer.abort()
        writer.begin()
        with pytest.raises(WriterStateError):
            writer.begin()


def test_close_unlinks_and_readers_keep_their_mapping(channel_id: str) -> None:
    writer = _create(channel_id)
    path = os.path.join(SHM_DIR, writer.name)
    fill_uniform(writer.begin(), 7)
    ref = writer.commit(sequence=7)
    reader = RingReader.attach(writer.name)
    assert writer_alive(writer.name) and reader.writer_alive()
    writer.close()
    writer.close()  # idempotent
    assert not os.path.exists(path)
    assert reader.writer_closed and not reader.writer_alive()
    with reader.read(ref) as frame:  # still mapped
        assert uniform_ok(frame, 7)
    with pytest.raises(RingNotFoundError):
        RingReader.attach(writer.name)
    with pytest.raises(RingClosedError):
        writer.begin()
    reader.close()
    with pytest.raises(RingClosedError):
        reader.view(ref)
    with pytest.raises(RingClosedError):
        reader.check(ref)


def test_close_with_live_views_defers_the_unmap(channel_id: str) -> None:
    with _create(channel_id) as writer:
        fill_uniform(writer.begin(), 3)
        ref = writer.commit(sequence=3)
        reader = RingReader.attach(writer.name)
        held = reader.view(ref).image
        reader.close()  # must neither raise nor invalidate `held`
        assert int(held[0, 0, 0]) == 3
        del held


def test_second_writer_for_a_live_ring_is_refused(channel_id: str) -> None:
    with _create(channel_id) as writer:
        with pytest.raises(RingExistsError) as info:
            _create(channel_id)
        assert info.value.writer_pid == os.getpid()
        writer.begin()
        ref = writer.commit(sequence=0)
        with RingReader.attach(writer.name) as reader:
            assert reader.is_current(ref)  # the refused create touched nothing
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(".vap-ring-tmp-")]


def test_dead_writers_ring_is_replaced_on_create(channel_id: str) -> None:
    out = subprocess.run(
        [sys.executable, str(WORKERS), "exit-without-close", "--channel", channel_id],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    name = out.stdout.split()[1]
    assert name == ring_name(channel_id)
    assert os.path.exists(os.path.join(SHM_DIR, name))  # left behind
    assert not writer_alive(name)
    assert name in find_stale_rings()
    old = RingReader.attach(name)
    with _create(channel_id, slots=2, width=16, height=16) as writer:  # the dead writer's geometry
        assert writer.name == name and writer_alive(name)
        assert name not in find_stale_rings()
        assert not old.is_same_segment()
        writer.begin()
        ref = writer.commit(sequence=0)
        with pytest.raises(StaleGenerationError):
            old.view(ref)  # an old mapping never accepts a new ring's ref...
        with ReaderPool() as pool:
            pool._readers[name] = old  # ...but a pool holding the old mapping re-attaches
            assert pool.view(ref).slot == 0
            assert pool.reader(name) is not old
            assert pool.stale_reads == 1  # the old mapping's earlier stale read; re-attaching isn't one
        assert cleanup_stale_rings(only={name}) == []  # a live writer's ring is never removed
        assert os.path.exists(os.path.join(SHM_DIR, name))


@pytest.mark.parametrize("kind", ["libatomic", "membarrier"])
def test_strong_fences_work_here(kind: str) -> None:
    """The fences aarch64 relies on can be loaded and called (exercised on x86 through the override)."""
    code = (
        "from vap_shmring import fence; fence.writer_fence(); fence.reader_fence(); print(fence.FENCE_KIND)"
    )
    env = {**os.environ, "VAP_SHMRING_FENCE": kind}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    if out.returncode == 0 and out.stdout.strip() == "unavailable":
        pytest.skip(f"{kind} is not available on this host")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == kind


def test_opencv_converts_straight_into_a_padded_slot(channel_id: str) -> None:
    """The decoder's path: cv2 writes into the slot view itself (no temporary), even with padded rows."""
    cv2 = pytest.importorskip("cv2")
    yuv = np.random.default_rng(1).integers(0, 256, (90 * 3 // 2, 166), dtype=np.uint8)
    with RingWriter.create(channel_id, width=166, height=90, pixel_format=BGR24, slots=2) as writer:
        frame = writer.begin()
        assert frame.image.strides[0] == 512  # 166 * 3 = 498 bytes, padded to 512
        out = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420, dst=frame.image)
        assert out.ctypes.data == frame.image.ctypes.data
        ref = writer.commit(sequence=0)
        with RingReader.attach(writer.name) as reader, reader.read(ref) as seen:
            assert np.array_equal(seen.image, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420))
