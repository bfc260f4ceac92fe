"""The inbox's loop: results from the JetStream stream into PostgreSQL, exactly once per (scenario, frame).

A durable pull consumer on the results stream hands out batches; each batch is parsed (``inbox.parse``),
stored in one transaction (``repo.results.store``, idempotent) and acknowledged after the commit. A crash
between commit and ack redelivers the batch, and storing it again changes nothing. If a batch fails for a
reason other than the connection (a value PostgreSQL refuses), it is stored message by message so one bad
message is dropped (and counted) instead of blocking the stream. Once caught up (a short batch) the loop
lingers for ``inbox_linger_s`` so the next batch carries many results.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import nats.errors
import psycopg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from vap_common.logs import get_logger
from vap_common.tasks import cancel_and_wait
from vap_control import metrics, streams
from vap_control.bus import NatsConnection
from vap_control.db.pool import Pool
from vap_control.inbox.parse import Batch, parse
from vap_control.repo.results import StoreResult, store
from vap_control.settings import ControlSettings

_log = get_logger("vap.control.inbox")


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
    def __init__(self, pool: Pool, bus: NatsConnection, settings: ControlSettings) -> None:
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
        self.totals.add(result)
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
            total.add(one)
        return total
