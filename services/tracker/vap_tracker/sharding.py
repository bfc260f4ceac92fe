"""Channel sharding between tracker processes: rendezvous hashing over the trackers heard recently.

A tracker keeps per-channel state (tracks, line sides, zone occupancy), so frames of one channel must all go
to one tracker: NATS queue groups spread messages, not channels. Instead every sharded tracker subscribes to
all detections, publishes a TrackerStatus heartbeat (``subjects.tracker_status``) and tracks exactly the
channels whose rendezvous hash it wins among the trackers heard within ``timeout_s``. Every tracker computes
the same owner from the same membership, a new tracker takes about 1/n of the channels, and when a tracker
stops (a "leaving" heartbeat) or dies (silence for ``timeout_s``) only its channels move, to the others.
Until heartbeats have propagated, two trackers may briefly both (or neither) track a channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable

from google.protobuf.message import DecodeError

from vap_common import subjects
from vap_common.bus import Bus
from vap_common.logs import get_logger
from vap_common.tasks import cancel_and_wait
from vap_proto.v1 import nodes_pb2

_log = get_logger("vap.tracker.sharding")


def score(member: str, channel: str) -> int:
    """Rendezvous weight of ``member`` for ``channel`` (the NUL cannot occur in either id)."""
    digest = hashlib.blake2b(f"{member}\0{channel}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(members: Iterable[str], channel: str) -> str | None:
    """The member that tracks ``channel``: highest weight, ties (practically impossible) by id."""
    return max(members, key=lambda m: (score(m, channel), m), default=None)


class Membership:
    """Trackers heard within ``timeout_s`` (this one always included). Pure bookkeeping: the clock is a
    parameter so it can be tested without waiting."""

    def __init__(self, self_id: str, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.self_id = self_id
        self.timeout_s = timeout_s
        self._clock = clock
        self._seen: dict[str, float] = {}
        # owns() runs for every frame of every channel: the answers hold until the membership changes.
        self._owned_among: list[str] = []
        self._owned: dict[str, bool] = {}

    def heard(self, member: str, *, leaving: bool = False) -> None:
        if member == self.self_id:
            return
        if leaving:
            self._seen.pop(member, None)
        else:
            self._seen[member] = self._clock()

    def live(self) -> list[str]:
        now = self._clock()
        for member, seen in list(self._seen.items()):
            if now - seen > self.timeout_s:
                del self._seen[member]
        return sorted([self.self_id, *self._seen])

    def owns(self, channel: str) -> bool:
        members = self.live()
        if members != self._owned_among:
            self._owned_among, self._owned = members, {}
        owned = self._owned.get(channel)
        if owned is None:
            owned = self._owned[channel] = owner(members, channel) == self.self_id
        return owned


class ShardMember:
    """A tracker's part in sharding: heartbeats out, the others' heartbeats in, ``owns(channel)``."""

    def __init__(self, bus: Bus, tracker_id: str, *, heartbeat_s: float, timeout_s: float) -> None:
        self.tracker_id = tracker_id
        self.membership = Membership(tracker_id, timeout_s)
        self._bus = bus
        self._heartbeat_s = heartbeat_s
        self._task: asyncio.Task[None] | None = None
        self.channels: Callable[[], int] = lambda: 0
        self._members: tuple[str, ...] = ()

    def owns(self, channel: str) -> bool:
        return self.membership.owns(channel)

    async def start(self) -> None:
        await self._bus.subscribe(subjects.all_tracker_status(), self._on_status)
        await self._publish(leaving=False)
        self._task = asyncio.create_task(self._heartbeats(), name="vap-tracker-shard-heartbeat")
        # Hear the others before claiming anything: alone in its membership, a new tracker would take every
        # channel for a moment.
        await asyncio.sleep(self._heartbeat_s * 1.5)
        _log.info("tracker sharding on", tracker=self.tracker_id, timeout_s=self.membership.timeout_s)

    async def silence(self) -> None:
        """Stop heartbeats without a goodbye (as a crash would): the others take over after the timeout."""
        await cancel_and_wait(self._task)
        self._task = None

    async def stop(self) -> None:
        await self.silence()
        with contextlib.suppress(Exception):  # NATS gone: the others notice the silence instead
            await self._publish(leaving=True)

    async def _on_status(self, subject: str, payload: bytes) -> None:
        try:
            status = nodes_pb2.TrackerStatus.FromString(payload)
        except DecodeError:
            return
        if status.tracker_id:
            self.membership.heard(status.tracker_id, leaving=status.leaving)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            with contextlib.suppress(Exception):
                await self._publish(leaving=False)
            members = tuple(self.membership.live())
            if members != self._members:
                _log.info("tracker shard members changed", members=list(members), tracker=self.tracker_id)
                self._members = members

    async def _publish(self, *, leaving: bool) -> None:
        status = nodes_pb2.TrackerStatus(
            tracker_id=self.tracker_id, pid=os.getpid(), channels=self.channels(), leaving=leaving
        )
        status.report_time.GetCurrentTime()
        await self._bus.publish(subjects.tracker_status(self.tracker_id), status.SerializeToString())
