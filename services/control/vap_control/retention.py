"""Retention: stored results older than ``retention_hours`` are deleted, in small batches per scenario so no
delete holds locks or bloats WAL for long; delivered outbox rows are purged after the same time.

The deletes themselves are ``repo.results.delete_older``.
"""

from __future__ import annotations

import asyncio
import time

from vap_common.logs import get_logger
from vap_common.tasks import cancel_and_wait
from vap_control import lifecycle, metrics
from vap_control.db.pool import Pool
from vap_control.repo import outbox as outbox_repo
from vap_control.repo import results as results_repo
from vap_control.repo import scenarios as repo
from vap_control.settings import ControlSettings

_log = get_logger("vap.control.retention")

BATCH = 10_000
# The scenario and outbox gauges are refreshed this often (one cheap GROUP BY).
GAUGE_PERIOD_S = 15.0


async def purge(pool: Pool, *, older_than_ns: int, keep_outbox_s: float) -> dict[str, int]:
    deleted = dict.fromkeys(results_repo.TIME_COLUMNS, 0)
    async with pool.connection() as conn:
        for scenario_id in await repo.all_ids(conn):
            for table in results_repo.TIME_COLUMNS:
                while True:
                    async with conn.transaction():
                        n = await results_repo.delete_older(
                            conn, table, scenario_id=scenario_id, older_than_ns=older_than_ns, limit=BATCH
                        )
                    deleted[table] += n
                    if n < BATCH:
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
