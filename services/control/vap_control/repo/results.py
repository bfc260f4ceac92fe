# ruff: noqa: S608  (SQL is assembled from constant fragments only; every value is a bound parameter)
"""SQL for stored results (frames, detections, tracks, events, counts): the inbox's writes and retention's
deletes. The read side (QueryDetections / QueryEvents / QueryCounts) is ``repo.queries``.

``store`` writes a parsed inbox batch so that storing it again changes nothing (JetStream redelivers a batch
whose ack was lost):

- frames (``frames``, ``tracked_frames``) are inserted ``ON CONFLICT DO NOTHING ... RETURNING`` their keys,
  and only the frames inserted now get their detection / track rows (``COPY``, the fastest bulk path);
- events are keyed by their deterministic event id, counts by (scenario, interval, rule, channel).

Results of scenarios that do not exist here (deleted, or another deployment's) are skipped.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

from vap_control.inbox.parse import Batch, FrameKey, event_kind
from vap_control.repo.scenarios import Conn
from vap_proto.v1 import analytics_pb2, common_pb2, detection_pb2, tracking_pb2

# Result table -> its time column (Unix ns), which leads each table's primary key after scenario_id.
TIME_COLUMNS = {
    "detections": "capture_time_ns",
    "frames": "capture_time_ns",
    "tracks": "capture_time_ns",
    "tracked_frames": "capture_time_ns",
    "events": "event_time_ns",
    "counts": "interval_start_ns",
}


async def delete_older(
    conn: Conn, table: str, *, scenario_id: uuid.UUID, older_than_ns: int, limit: int
) -> int:
    """Delete up to ``limit`` rows of ``table`` (one of TIME_COLUMNS) of a scenario older than
    ``older_than_ns``; returns how many went. The primary key finds them, so no extra time index is needed."""
    column = TIME_COLUMNS[table]
    cur = await conn.execute(
        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
        f" WHERE scenario_id = %s AND {column} < %s LIMIT %s))".encode(),
        (scenario_id, older_than_ns, limit),
    )
    return cur.rowcount


# --- the inbox's writes ------------------------------------------------------------------------------------


def _attributes_json(attributes: Iterable[common_pb2.Attribute]) -> str | None:
    items: list[dict[str, object]] = []
    for a in attributes:
        item: dict[str, object] = {"name": a.name, "value": a.value, "confidence": round(a.confidence, 6)}
        if a.votes:
            item["votes"] = a.votes
        items.append(item)
    return json.dumps(items) if items else None


@dataclass
class StoreResult:
    """Rows ``store`` wrote per table, and the results it found stored already (or twice in the batch)."""

    frames: int = 0
    detections: int = 0
    tracked_frames: int = 0
    tracks: int = 0
    events: int = 0
    counts: int = 0
    duplicates: int = 0

    def add(self, other: StoreResult) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


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
