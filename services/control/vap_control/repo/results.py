# ruff: noqa: S608  (SQL is assembled from constant fragments only; every value is a bound parameter)
"""SQL for stored results (frames, detections, tracks, events, counts): the inbox's writes and retention's
deletes. The read side (QueryDetections / QueryEvents / QueryCounts) is ``repo.queries``."""

from __future__ import annotations

import uuid

from vap_control.repo.scenarios import Conn

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
