# ruff: noqa: S608  (SQL is assembled from constant fragments only; every value is a bound parameter)
"""The inbox: results from JetStream into PostgreSQL, exactly once per (scenario, frame).

A durable pull consumer on the results stream hands out batches; each batch is stored in one transaction and
acknowledged after the commit. A crash between commit and ack redelivers the batch, and storing it again
changes nothing:

- frames (``frames``, ``tracked_frames``) are inserted ``ON CONFLICT DO NOTHING ... RETURNING`` their keys,
  and only the frames inserted now get their detection / track rows (``COPY``, the fastest bulk path);
- events are keyed by their deterministic event id, counts by (scenario, interval, rule, channel).

Results of scenarios that do not exist here (deleted, or another deployment's) are skipped, as are messages
that cannot be parsed. If a batch fails for a reason other than the connection (a value PostgreSQL refuses),
it is stored message by message so one bad message is dropped (and counted) instead of blocking the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import nats.errors
import psycopg
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from vap_common import subjects
from vap_common.logs import get_logger
from vap_common.tasks import cancel_and_wait
from vap_control import metrics, streams
from vap_control.bus import Bus
from vap_control.db.pool import Pool
from vap_control.repo.scenarios import Conn
from vap_control.settings import ControlSettings
from vap_proto.v1 import analytics_pb2, common_pb2, detection_pb2, frame_pb2, tracking_pb2

_log = get_logger("vap.control.inbox")

EventKind = analytics_pb2.EventKind
EVENT_KINDS: dict[str, int] = {
    "line_crossing": EventKind.EVENT_KIND_LINE_CROSSING,
    "zone_enter": EventKind.EVENT_KIND_ZONE_ENTER,
    "zone_exit": EventKind.EVENT_KIND_ZONE_EXIT,
    "zone_dwell": EventKind.EVENT_KIND_ZONE_DWELL,
    "loitering": EventKind.EVENT_KIND_LOITERING,
}

_M = TypeVar("_M", detection_pb2.FrameDetections, tracking_pb2.TrackedFrame)
FrameKey = tuple[uuid.UUID, int, str, int, int]  # scenario, capture_time_ns, channel, epoch, sequence


def event_kind(event: analytics_pb2.AnalyticsEvent) -> int:
    which = event.WhichOneof("kind")
    return EVENT_KINDS.get(which or "", EventKind.EVENT_KIND_UNSPECIFIED)


def _attributes_json(attributes: Iterable[common_pb2.Attribute]) -> str | None:
    items: list[dict[str, object]] = []
    for a in attributes:
        item: dict[str, object] = {"name": a.name, "value": a.value, "confidence": round(a.confidence, 6)}
        if a.votes:
            item["votes"] = a.votes
        items.append(item)
    return json.dumps(items) if items else None


@dataclass
class Batch:
    """Parsed messages of one fetch, ready for the database."""

    frames: dict[FrameKey, detection_pb2.FrameDetections] = field(default_factory=dict)
    tracked: dict[FrameKey, tracking_pb2.TrackedFrame] = field(default_factory=dict)
    events: list[tuple[uuid.UUID, analytics_pb2.AnalyticsEvent]] = field(default_factory=list)
    counts: list[tuple[uuid.UUID, analytics_pb2.IntervalCounts]] = field(default_factory=list)
    duplicates_in_batch: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.frames) + len(self.tracked) + len(self.events) + len(self.counts)


def _scenario_uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None  # not a scenario of any control service (e.g. a channel run outside a scenario)


def parse(messages: Sequence[tuple[str, bytes]], *, store_tracks: bool, count: bool = True) -> Batch:
    """Sort ``(subject, payload)`` pairs into a Batch; unparsable or scenario-less messages are dropped."""
    batch = Batch()
    for subject, payload in messages:
        try:
            kind = subjects.parse(subject).kind
        except ValueError:
            batch.dropped += 1
            continue
        if count:
            metrics.INBOX_MESSAGES.labels(kind).inc()
        try:
            if kind == subjects.DETECTIONS:
                fd = detection_pb2.FrameDetections.FromString(payload)
                _add_frame(batch.frames, batch, fd.frame, fd)
            elif kind == subjects.TRACKS:
                if not store_tracks:
                    continue
                tf = tracking_pb2.TrackedFrame.FromString(payload)
                _add_frame(batch.tracked, batch, tf.frame, tf)
            elif kind == subjects.EVENTS:
                ev = analytics_pb2.AnalyticsEvent.FromString(payload)
                sid = _scenario_uuid(ev.scenario_id)
                if sid is None or not ev.event_id:
                    batch.dropped += 1
                    continue
                batch.events.append((sid, ev))
            elif kind == subjects.COUNTS:
                ic = analytics_pb2.IntervalCounts.FromString(payload)
                sid = _scenario_uuid(ic.scenario_id)
                if sid is None or ic.WhichOneof("counts") is None:
                    batch.dropped += 1
                    continue
                batch.counts.append((sid, ic))
        except DecodeError:
            batch.dropped += 1
    return batch


def _add_frame(target: dict[FrameKey, _M], batch: Batch, info: frame_pb2.FrameInfo, message: _M) -> None:
    sid = _scenario_uuid(info.scenario_id)
    if sid is None or not info.channel_id:
        batch.dropped += 1
        return
    key: FrameKey = (sid, info.capture_time_ns, info.channel_id, info.stream_epoch, info.sequence)
    if key in target:
        batch.duplicates_in_batch += 1  # the same frame twice in one fetch (a producer retry)
        return
    target[key] = message


@dataclass
class StoreResult:
    frames: int = 0
    detections: int = 0
    tracked_frames: int = 0
    tracks: int = 0
    events: int = 0
    counts: int = 0
    duplicates: int = 0


_FRAME_KEY_COLS = "scenario_id, capture_time_ns, channel_id, stream_epoch, sequence"
_FRAME_KEY_TYPES = "%s::uuid[], %s::int8[], %s::text[], %s::int8[], %s::int8[]"


def _key_arrays(keys: Sequence[FrameKey]) -> list[list[object]]:
    return [[k[i] for k in keys] for i in range(5)]


async def store(conn: Conn, batch: Batch) -> StoreResult:
    """Write a parsed batch (caller holds the transaction)."""
    result = StoreResult(duplicates=batch.duplicates_in_batch)
    if batch.frames:
        new = await _insert_frames(conn, batch.frames)
        result.frames = len(new)
        result.duplicates += len(batch.frames) - len(new)
        rows = [
            (
                *key,
                i,
                d.class_id,
                d.class_name,
                d.confidence,
                d.box.x1,
                d.box.y1,
                d.box.x2,
                d.box.y2,
                _attributes_json(d.attributes),
            )
            for key in new
            for i, d in enumerate(batch.frames[key].detections)
        ]
        result.detections = await _copy(
            conn,
            "detections",
            f"{_FRAME_KEY_COLS}, idx, class_id, class_name, confidence, x1, y1, x2, y2, attributes",
            rows,
        )
    if batch.tracked:
        new = await _insert_tracked(conn, batch.tracked)
        result.tracked_frames = len(new)
        result.duplicates += len(batch.tracked) - len(new)
        track_rows = [
            (
                *key,
                t.track_id,
                t.global_id,
                int(t.state),
                t.class_id,
                t.class_name,
                t.confidence,
                t.box.x1,
                t.box.y1,
                t.box.x2,
                t.box.y2,
                t.velocity.vx,
                t.velocity.vy,
                t.age,
                t.hits,
                t.frames_since_update,
                _attributes_json(t.attributes),
            )
            for key in new
            for t in batch.tracked[key].tracks
        ]
        result.tracks = await _copy(
            conn,
            "tracks",
            f"{_FRAME_KEY_COLS}, track_id, global_id, state, class_id, class_name, confidence,"
            " x1, y1, x2, y2, vx, vy, age, hits, frames_since_update, attributes",
            track_rows,
        )
        await _upsert_track_attributes(conn, [(key, batch.tracked[key]) for key in new])
    if batch.events:
        result.events = await _insert_events(conn, batch.events)
        result.duplicates += len(batch.events) - result.events
    if batch.counts:
        result.counts = await _insert_counts(conn, batch.counts)
        result.duplicates += len(batch.counts) - result.counts
    return result


async def _insert_frames(conn: Conn, frames: dict[FrameKey, detection_pb2.FrameDetections]) -> list[FrameKey]:
    keys = list(frames)
    values = [frames[k] for k in keys]
    cur = await conn.execute(
        f"INSERT INTO frames ({_FRAME_KEY_COLS}, pts_us, width, height, model_name, stats, publish_time_ns,"
        " detection_count)"
        f" SELECT u.* FROM unnest({_FRAME_KEY_TYPES}, %s::int8[], %s::int4[], %s::int4[], %s::text[],"
        " %s::bytea[], %s::int8[], %s::int4[])"
        f" AS u({_FRAME_KEY_COLS}, pts_us, width, height, model_name, stats, publish_time_ns,"
        " detection_count)"
        " WHERE EXISTS (SELECT 1 FROM scenarios s WHERE s.id = u.scenario_id)"
        f" ON CONFLICT DO NOTHING RETURNING {_FRAME_KEY_COLS}".encode(),
        [
            *_key_arrays(keys),
            [v.frame.pts_us for v in values],
            [v.frame.width for v in values],
            [v.frame.height for v in values],
            [v.stats.model_name for v in values],
            [v.stats.SerializeToString() if v.HasField("stats") else None for v in values],
            [v.publish_time_ns for v in values],
            [len(v.detections) for v in values],
        ],
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]


async def _insert_tracked(conn: Conn, tracked: dict[FrameKey, tracking_pb2.TrackedFrame]) -> list[FrameKey]:
    keys = list(tracked)
    values = [tracked[k] for k in keys]
    cur = await conn.execute(
        f"INSERT INTO tracked_frames ({_FRAME_KEY_COLS}, tracking_us, publish_time_ns, track_count)"
        f" SELECT u.* FROM unnest({_FRAME_KEY_TYPES}, %s::int4[], %s::int8[], %s::int4[])"
        f" AS u({_FRAME_KEY_COLS}, tracking_us, publish_time_ns, track_count)"
        " WHERE EXISTS (SELECT 1 FROM scenarios s WHERE s.id = u.scenario_id)"
        f" ON CONFLICT DO NOTHING RETURNING {_FRAME_KEY_COLS}".encode(),
        [
            *_key_arrays(keys),
            [v.tracking_us for v in values],
            [v.publish_time_ns for v in values],
            [len(v.tracks) for v in values],
        ],
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]


async def _upsert_track_attributes(
    conn: Conn, frames: Sequence[tuple[FrameKey, tracking_pb2.TrackedFrame]]
) -> None:
    """Each track's latest vote per attribute (the newest frame wins, so a redelivered older frame never
    takes a vote back)."""
    latest: dict[tuple[uuid.UUID, str, int, str], tuple[int, common_pb2.Attribute]] = {}
    for (sid, ns, channel, _, _), tracked in frames:
        for t in tracked.tracks:
            for a in t.attributes:
                key = (sid, channel, t.track_id, a.name)
                if key not in latest or latest[key][0] <= ns:
                    latest[key] = (ns, a)
    if not latest:
        return
    keys = list(latest)
    await conn.execute(
        "INSERT INTO track_attributes (scenario_id, channel_id, track_id, name, value, confidence, votes,"
        " first_seen_ns, last_seen_ns)"
        " SELECT u.*, u.ns FROM unnest(%s::uuid[], %s::text[], %s::int8[], %s::text[], %s::text[],"
        " %s::float4[], %s::int4[], %s::int8[])"
        " AS u(scenario_id, channel_id, track_id, name, value, confidence, votes, ns)"
        " WHERE EXISTS (SELECT 1 FROM scenarios s WHERE s.id = u.scenario_id)"
        " ON CONFLICT (scenario_id, channel_id, track_id, name) DO UPDATE SET"
        " value = EXCLUDED.value, confidence = EXCLUDED.confidence, votes = EXCLUDED.votes,"
        " last_seen_ns = EXCLUDED.last_seen_ns,"
        " first_seen_ns = least(track_attributes.first_seen_ns, EXCLUDED.first_seen_ns)"
        " WHERE EXCLUDED.last_seen_ns >= track_attributes.last_seen_ns",
        [
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [k[3] for k in keys],
            [latest[k][1].value for k in keys],
            [latest[k][1].confidence for k in keys],
            [latest[k][1].votes for k in keys],
            [latest[k][0] for k in keys],
        ],
    )


async def _copy(conn: Conn, table: str, columns: str, rows: Sequence[tuple[object, ...]]) -> int:
    if not rows:
        return 0
    async with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN".encode()) as copy:
        for row in rows:
            await copy.write_row(row)
    return len(rows)


async def _insert_events(conn: Conn, events: Sequence[tuple[uuid.UUID, analytics_pb2.AnalyticsEvent]]) -> int:
    cur = await conn.execute(
        "INSERT INTO events (scenario_id, event_id, event_time_ns, channel_id, rule_id, kind, track_id,"
        " class_name, payload)"
        " SELECT u.* FROM unnest(%s::uuid[], %s::text[], %s::int8[], %s::text[], %s::text[], %s::int2[],"
        " %s::int8[], %s::text[], %s::bytea[])"
        " AS u(scenario_id, event_id, event_time_ns, channel_id, rule_id, kind, track_id, class_name,"
        " payload)"
        " WHERE EXISTS (SELECT 1 FROM scenarios s WHERE s.id = u.scenario_id)"
        " ON CONFLICT DO NOTHING",
        [
            [sid for sid, _ in events],
            [e.event_id for _, e in events],
            [e.event_time_ns for _, e in events],
            [e.channel_id for _, e in events],
            [e.rule_id for _, e in events],
            [event_kind(e) for _, e in events],
            [e.track_id for _, e in events],
            [e.class_name for _, e in events],
            [e.SerializeToString() for _, e in events],
        ],
    )
    return max(cur.rowcount, 0)


async def _insert_counts(conn: Conn, counts: Sequence[tuple[uuid.UUID, analytics_pb2.IntervalCounts]]) -> int:
    def line(c: analytics_pb2.IntervalCounts) -> bool:
        return c.WhichOneof("counts") == "line"

    cur = await conn.execute(
        "INSERT INTO counts (scenario_id, interval_start_ns, rule_id, channel_id, interval_end_ns, kind,"
        " a_to_b, b_to_a, enters, exits, max_occupancy, mean_occupancy, loitering, mean_dwell_ms)"
        " SELECT u.* FROM unnest(%s::uuid[], %s::int8[], %s::text[], %s::text[], %s::int8[], %s::text[],"
        " %s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::int4[], %s::float4[], %s::int8[], %s::int8[])"
        " AS u(scenario_id, interval_start_ns, rule_id, channel_id, interval_end_ns, kind, a_to_b, b_to_a,"
        " enters, exits, max_occupancy, mean_occupancy, loitering, mean_dwell_ms)"
        " WHERE EXISTS (SELECT 1 FROM scenarios s WHERE s.id = u.scenario_id)"
        " ON CONFLICT DO NOTHING",
        [
            [sid for sid, _ in counts],
            [c.interval_start_ns for _, c in counts],
            [c.rule_id for _, c in counts],
            [c.channel_id for _, c in counts],
            [c.interval_end_ns for _, c in counts],
            ["line" if line(c) else "zone" for _, c in counts],
            [c.line.a_to_b for _, c in counts],
            [c.line.b_to_a for _, c in counts],
            [c.zone.enters for _, c in counts],
            [c.zone.exits for _, c in counts],
            [c.zone.max_occupancy for _, c in counts],
            [c.zone.mean_occupancy for _, c in counts],
            [c.zone.loitering for _, c in counts],
            [c.zone.mean_dwell_ms for _, c in counts],
        ],
    )
    return max(cur.rowcount, 0)


def _count(result: StoreResult, batch: Batch) -> None:
    for kind, n in (
        ("frames", result.frames),
        ("detections", result.detections),
        ("tracked_frames", result.tracked_frames),
        ("tracks", result.tracks),
        ("events", result.events),
        ("counts", result.counts),
    ):
        if n:
            metrics.INBOX_STORED.labels(kind).inc(n)
    if result.duplicates:
        metrics.INBOX_DUPLICATES.labels("all").inc(result.duplicates)
    if batch.dropped:
        metrics.INBOX_DROPPED.labels("unparsable_or_no_scenario").inc(batch.dropped)


def _num_delivered(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # not a JetStream message (tests may hand in plain ones)
        return 1


class Inbox:
    def __init__(self, pool: Pool, bus: Bus, settings: ControlSettings) -> None:
        self._pool = pool
        self._bus = bus
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._psub: JetStreamContext.PullSubscription | None = None
        # Totals since start, for tests and logs (the Prometheus counters carry the same).
        self.totals = StoreResult()
        self.redelivered = 0
        self.batches = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="vap-control-inbox")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
            self._psub = None

    async def bind(self) -> JetStreamContext.PullSubscription:
        """Make sure the stream and the durable consumer exist and bind to the consumer."""
        await self._bus.wait_connected()
        js = self._bus.js
        s = self._settings
        await streams.ensure_stream(js, streams.results_stream_config(s))
        await streams.ensure_consumer(js, s.inbox_stream, streams.inbox_consumer_config(s))
        return await js.pull_subscribe_bind(s.inbox_consumer, s.inbox_stream)

    async def _loop(self) -> None:
        delay = 0.5
        while True:
            try:
                if self._psub is None:
                    self._psub = await self.bind()
                msgs = await self._psub.fetch(self._settings.inbox_batch, timeout=1.0)
                fetched = time.monotonic()
            except asyncio.CancelledError:
                raise
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nothing to store (nats-py raises either, depending on where the wait ended)
            except Exception as exc:
                if not self._bus.closing:
                    _log.warning(
                        "inbox fetch failed; retrying", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay
                    )
                if self._psub is not None and not self._bus.connected:
                    pass  # the subscription survives a reconnect
                elif self._psub is not None:
                    with contextlib.suppress(Exception):
                        await self._psub.unsubscribe()
                    self._psub = None  # e.g. the consumer was deleted: bind again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.5
            await self.process(msgs)
            if len(msgs) < self._settings.inbox_batch:
                # A short batch means we caught up: let results gather (see inbox_linger_s).
                await asyncio.sleep(self._settings.inbox_linger_s - (time.monotonic() - fetched))

    async def process(self, msgs: Sequence[Msg], *, ack: bool = True) -> StoreResult | None:
        """Store one fetched batch and acknowledge it after the commit. ``ack=False`` leaves the messages
        unacknowledged (what a crash between commit and ack looks like to JetStream). None = the database was
        unreachable; nothing was acknowledged and JetStream will deliver the batch again."""
        started = time.perf_counter()
        self.batches += 1
        redelivered = sum(1 for m in msgs if _num_delivered(m) > 1)
        if redelivered:
            self.redelivered += redelivered
            metrics.INBOX_REDELIVERED.inc(redelivered)
        raw = [(m.subject, m.data) for m in msgs]
        batch = parse(raw, store_tracks=self._settings.store_tracks)
        try:
            result = await self._store(batch, raw)
        except psycopg.OperationalError as exc:
            _log.warning("inbox cannot reach PostgreSQL; batch will be redelivered", error=str(exc))
            await asyncio.sleep(1.0)
            return None
        _count(result, batch)
        for name in ("frames", "detections", "tracked_frames", "tracks", "events", "counts", "duplicates"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(result, name))
        if ack:
            for msg in msgs:
                with contextlib.suppress(Exception):  # an ack lost now means one harmless redelivery
                    await msg.ack()
        metrics.INBOX_BATCH_SECONDS.observe(time.perf_counter() - started)
        return result

    async def _store(self, batch: Batch, raw: Sequence[tuple[str, bytes]]) -> StoreResult:
        if not len(batch):
            return StoreResult(duplicates=batch.duplicates_in_batch)
        try:
            async with self._pool.connection() as conn, conn.transaction():
                return await store(conn, batch)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            _log.warning("inbox batch refused; storing message by message", error=str(exc))
        total = StoreResult(duplicates=batch.duplicates_in_batch)
        for subject, payload in raw:
            single = parse([(subject, payload)], store_tracks=self._settings.store_tracks, count=False)
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    one = await store(conn, single)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                metrics.INBOX_DROPPED.labels("refused_by_database").inc()
                _log.error("inbox dropped a message PostgreSQL refused", subject=subject, error=str(exc))
                continue
            for name in (
                "frames",
                "detections",
                "tracked_frames",
                "tracks",
                "events",
                "counts",
                "duplicates",
            ):
                setattr(total, name, getattr(total, name) + getattr(one, name))
        return total
