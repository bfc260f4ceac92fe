"""Hypothesis properties: the plane layout for any geometry, and a state machine over writer and reader
operations checked against a model of the generation protocol."""

from __future__ import annotations

import os
import uuid

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_shmring import SHM_DIR, RingReader, RingWriter, StaleGenerationError, compute_geometry
from vap_shmring.geometry import BGR24, GRAY8, I420, NV12, RGB24, SUPPORTED_FORMATS
from vap_shmring.testing import fill_uniform, uniform_ok

formats = st.sampled_from(SUPPORTED_FORMATS)
aligns = st.sampled_from([1, 2, 4, 16, 64, 256, 4096])


@st.composite
def geometries(draw: st.DrawFn) -> tuple[int, int, PixelFormat.ValueType, int]:
    fmt = draw(formats)
    even = fmt in (I420, NV12)
    width = draw(st.integers(1, 4096)) * (2 if even else 1)
    height = draw(st.integers(1, 2200)) * (2 if even else 1)
    return width, height, fmt, draw(aligns)


PAYLOAD_PER_PIXEL_X2 = {BGR24: 6, RGB24: 6, GRAY8: 2, I420: 3, NV12: 3}


@settings(max_examples=300, deadline=None)
@given(geometries())
def test_plane_layout_invariants(geo: tuple[int, int, PixelFormat.ValueType, int]) -> None:
    width, height, fmt, align = geo
    g = compute_geometry(width, height, fmt, align)
    end = 0
    for plane in g.planes:
        assert plane.offset % align == 0 and plane.stride % align == 0
        assert plane.stride >= plane.row_bytes  # padding only: rows never overlap
        assert plane.offset >= end  # planes in order, never overlapping
        end = plane.offset + plane.rows * plane.stride
        assert int(np.prod(plane.shape[1:])) == plane.row_bytes  # the view's row is exactly the payload
        assert plane.strides[0] == plane.stride
    assert g.frame_bytes == end
    payload = sum(int(np.prod(p.shape)) for p in g.planes)
    assert 2 * payload == width * height * PAYLOAD_PER_PIXEL_X2[fmt]
    assert g.is_tight == (g.frame_bytes == payload)
    assert g.is_tight == (align == 1) or payload == g.frame_bytes


class RingMachine(RuleBasedStateMachine):
    """Model: the commit number n goes to slot n % slots; a ref is valid iff its slot's last begin() was
    the one that produced it. Checked after every step against the real ring."""

    refs = Bundle("refs")

    def __init__(self) -> None:
        super().__init__()
        self.writer: RingWriter | None = None
        self.reader: RingReader | None = None
        self.slots = 0
        self.n = 0  # commit number of the next begin
        self.slot_gen: list[int] = []  # model: generation each slot holds
        self.open = False
        self.expected_stale = 0
        self.last_committed: FrameRef | None = None

    @initialize(slots=st.integers(1, 4), fmt=formats)
    def create(self, slots: int, fmt: PixelFormat.ValueType) -> None:
        self.writer = RingWriter.create(
            f"pytest-sm-{uuid.uuid4().hex[:10]}", width=8, height=6, pixel_format=fmt, slots=slots
        )
        self.reader = RingReader.attach(self.writer.name)
        self.slots = slots
        self.slot_gen = [self.reader.header.generation_base] * slots

    def _gen(self, slot: int) -> int:
        assert self.reader is not None
        return self.reader.generation(slot)

    @precondition(lambda self: not self.open)
    @rule(target=refs, sequence=st.integers(0, 2**40))
    def commit(self, sequence: int) -> FrameRef:
        assert self.writer is not None
        slot = self.n % self.slots
        assert self.writer.next_slot == slot  # round robin
        before = self._gen(slot)
        fill_uniform(self.writer.begin(), sequence)
        assert self._gen(slot) % 2 == 1 and self._gen(slot) > before
        ref = self.writer.commit(sequence=sequence)
        assert ref.slot == slot and ref.generation % 2 == 0
        assert ref.generation > before  # strictly increasing per slot
        assert ref.generation > max(self.slot_gen)  # ...and across the ring
        self.slot_gen[slot] = ref.generation
        self.n += 1
        self.last_committed = ref
        return ref

    @precondition(lambda self: not self.open)
    @rule()
    def begin(self) -> None:
        assert self.writer is not None
        self.writer.begin()
        self.slot_gen[self.n % self.slots] = self.writer.pending_generation - 1
        self.open = True

    @precondition(lambda self: self.open)
    @rule(commit=st.booleans())
    def finish(self, commit: bool) -> None:
        assert self.writer is not None
        slot = self.n % self.slots
        if commit:  # content was not filled: only the protocol matters here
            ref = self.writer.commit(sequence=0)
            self.slot_gen[slot] = ref.generation
            self.last_committed = ref
        else:
            self.writer.abort()
        self.n += 1
        self.open = False

    @rule(ref=refs)
    def read(self, ref: FrameRef) -> None:
        assert self.reader is not None
        valid = self.slot_gen[ref.slot] == ref.generation
        assert self.reader.is_current(ref) == valid
        try:
            with self.reader.read(ref) as frame:
                assert uniform_ok(frame, ref.sequence)  # a valid ref shows exactly its frame
        except StaleGenerationError:
            assert not valid
            self.expected_stale += 1
        else:
            assert valid

    @invariant()
    def ring_matches_model(self) -> None:
        if self.reader is None:
            return
        assert [self._gen(s) for s in range(self.slots)] == self.slot_gen
        assert self.reader.stale_reads == self.expected_stale
        latest = self.reader.latest()
        if self.last_committed is None:
            assert latest is None
        elif self.slot_gen[self.last_committed.slot] == self.last_committed.generation:
            assert latest is not None
            assert (latest.slot, latest.generation) == (
                self.last_committed.slot,
                self.last_committed.generation,
            )
        else:
            assert latest is None  # the newest frame's slot is being rewritten

    def teardown(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.writer is not None:
            name = self.writer.name
            self.writer.close()
            assert not os.path.exists(os.path.join(SHM_DIR, name))


RingMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_ring_state_machine = RingMachine.TestCase
