# ruff: noqa: S608  (SQL is assembled from constant fragments only; every value is a bound parameter)
"""Retention: stored results older than ``retention_hours`` are deleted, in small batches per scenario so no
delete holds locks or bloats WAL for long; delivered outbox rows are purged after the same time.

Deletes go through each table's primary key (scenario_id, time, ...), so no extra time index is needed.
"""

from __future__ import annotations

import asyncio
import time

from vap_common.logs import get_logger
from vap_common.tasks import cancel_and_wait
from vap_control import lifecycle, metrics
from vap_control.db.pool import Pool
from vap_control.repo import outbox as outbox_repo
from vap_control.repo import scenarios as repo
from vap_control.settings import ControlSettings

_log = get_logger("vap.control.retention")

# table -> its time column (Unix ns).
TABLES = {
    "detections": "capture_time_ns",
    "frames": "capture_time_ns",
    "tracks": "capture_time_ns",
    "tracked_frames": "capture_time_ns",
    "events": "event_time_ns",
    "counts": "interval_start_ns",
}
BATCH = 10_000
# The scenario and outbox gauges are refreshed this often (one cheap GROUP BY).
GAUGE_PERIOD_S = 15.0


async def purge(pool: Pool, *, older_than_ns: int, keep_outbox_s: float) -> dict[str, int]:
    deleted = dict.fromkeys(TABLES, 0)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id FROM scenarios")
        scenario_ids = [r[0] for r in await cur.fetchall()]
        for scenario_id in scenario_ids:
            for table, column in TABLES.items():
                while True:
                    async with conn.transaction():
                        cur = await conn.execute(
                            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
                            f" WHERE scenario_id = %s AND {column} < %s LIMIT %s))".encode(),
                            (scenario_id, older_than_ns, BATCH),
                        )
                    deleted[table] += cur.rowcount
                    if cur.rowcount < BATCH:
                        break
        async with conn.transaction():
            await outbox_repo.purge_sent(conn, older_than_s=keep_outbox_s)
    for table, n in deleted.items():
        if n:
            metrics.RETENTION_DELETED.labels(table).inc(n)
    return deleted


class Retention:
    def __init__(self, pool: Pool, settings: ControlSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="vap-control-retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        s = self._settings
        last_purge = 0.0
        while True:
            try:
                await self._gauges()
                if s.retention_hours > 0 and time.monotonic() - last_purge >= s.retention_check_s:
                    last_purge = time.monotonic()
                    keep_s = s.retention_hours * 3600
                    deleted = await purge(
                        self._pool, older_than_ns=time.time_ns() - int(keep_s * 1e9), keep_outbox_s=keep_s
                    )
                    if any(deleted.values()):
                        _log.info("retention deleted old results", **deleted)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("retention pass failed")
            await asyncio.sleep(GAUGE_PERIOD_S)

    async def _gauges(self) -> None:
        async with self._pool.connection() as conn:
            counts = await repo.status_counts(conn)
            pending = await outbox_repo.pending_count(conn)
        for status in lifecycle.ALL_STATES:
            metrics.SCENARIOS.labels(lifecycle.name(status)).set(counts.get(int(status), 0))
        metrics.OUTBOX_PENDING.set(pending)
