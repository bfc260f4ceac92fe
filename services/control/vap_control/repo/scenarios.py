# ruff: noqa: S608  (SQL is assembled from constant fragments only; every value is a bound parameter)
"""SQL for scenarios, their status transitions and the workers table.

Functions take an ``AsyncConnection`` inside a transaction opened by the caller, so one API call or one bus
event is one transaction. Status changes lock the scenario row first (``FOR UPDATE``); every writer locks the
scenario before touching its outbox rows, so lock order is the same everywhere and cannot deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from psycopg import AsyncConnection
from psycopg.rows import TupleRow, class_row
from psycopg.types.json import Jsonb

from vap_common.redact import redact_text, redact_url
from vap_control import lifecycle, status
from vap_proto.v1 import health_pb2, scenario_pb2

Conn = AsyncConnection[TupleRow]
Status: TypeAlias = scenario_pb2.ScenarioStatus.ValueType


@dataclass(frozen=True, slots=True)
class SealedUrl:
    """A source URL as it is stored: redacted for display, sealed for the decoder (never the plaintext)."""

    redacted: str
    sealed: bytes


@dataclass(slots=True)
class ScenarioRow:
    id: uuid.UUID
    client_request_id: str | None
    channel_id: str
    # The source URL with its credentials replaced by *** (what the API shows), and the URL itself sealed
    # with the camera key (vap_common.camera_secrets); None only for a row written before migration 0004
    # that start-up has not sealed yet.
    redacted_url: str
    sealed_url: bytes | None
    spec: bytes
    status: int
    status_reason: str
    revision: int
    health: bytes | None
    create_time: datetime
    update_time: datetime
    agent_id: str | None
    node_id: str | None
    pid: int | None
    ring: str | None
    assign_time: datetime | None

    def spec_proto(self) -> scenario_pb2.Scenario:
        return scenario_pb2.Scenario.FromString(self.spec)

    @property
    def status_value(self) -> Status:
        return scenario_pb2.ScenarioStatus.ValueType(self.status)


_COLUMNS = (
    "s.id, s.client_request_id, s.channel_id, s.redacted_url, s.sealed_url, s.spec, s.status,"
    " s.status_reason, s.revision, s.health, s.create_time, s.update_time,"
    " w.agent_id, w.node_id, w.pid, w.ring, w.assign_time"
)
_FROM = "scenarios s LEFT JOIN workers w ON w.scenario_id = s.id"


def settings_only(scenario: scenario_pb2.Scenario) -> scenario_pb2.Scenario:
    """The fields stored in ``scenarios.spec``: settings, never output-only fields or the URL."""
    spec = scenario_pb2.Scenario(name=scenario.name)
    spec.source.CopyFrom(scenario.source)
    spec.source.url = ""
    spec.source.redacted_url = ""
    spec.pipeline.CopyFrom(scenario.pipeline)
    spec.analytics.CopyFrom(scenario.analytics)
    spec.labels.update(scenario.labels)
    spec.node_selector.update(scenario.node_selector)
    return spec


def to_proto(row: ScenarioRow) -> scenario_pb2.Scenario:
    """The scenario as the API returns it: credentials only as ``source.redacted_url``."""
    out = row.spec_proto()
    out.id = str(row.id)
    out.client_request_id = row.client_request_id or ""
    out.channel_id = row.channel_id
    out.source.url = ""
    out.source.redacted_url = redact_url(row.redacted_url)
    out.status = row.status_value
    out.status_reason = redact_text(row.status_reason)
    out.revision = row.revision
    out.create_time.FromDatetime(row.create_time)
    out.update_time.FromDatetime(row.update_time)
    if row.health:
        out.health.ParseFromString(row.health)
        out.health.reason = redact_text(out.health.reason)
    if row.agent_id is not None:
        out.worker.agent_id = row.agent_id
        out.worker.node_id = row.node_id or ""
        out.worker.pid = row.pid or 0
        out.worker.ring = row.ring or ""
        if row.assign_time is not None:
            out.worker.assign_time.FromDatetime(row.assign_time)
    return out


def scenario_config(
    row: ScenarioRow, *, active: bool, default_count_interval_s: int
) -> scenario_pb2.ScenarioConfig:
    spec = row.spec_proto()
    config = scenario_pb2.ScenarioConfig(
        scenario_id=str(row.id), channel_id=row.channel_id, revision=row.revision, active=active
    )
    config.pipeline.CopyFrom(spec.pipeline)
    config.analytics.CopyFrom(spec.analytics)
    if not config.analytics.HasField("count_interval"):
        config.analytics.count_interval.FromSeconds(default_count_interval_s)
    return config


def count_interval_s(row: ScenarioRow, default_s: int) -> float:
    interval = row.spec_proto().analytics.count_interval
    seconds = interval.seconds + interval.nanos / 1e9
    return seconds if seconds > 0 else float(default_s)


# --- reads ----------------------------------------------------------------------------------------------


async def get(conn: Conn, scenario_id: uuid.UUID, *, lock: bool = False) -> ScenarioRow | None:
    # FOR UPDATE OF s: lock the scenario only; the worker row may be absent (outer join).
    query = f"SELECT {_COLUMNS} FROM {_FROM} WHERE s.id = %s" + (" FOR UPDATE OF s" if lock else "")
    async with conn.cursor(row_factory=class_row(ScenarioRow)) as cur:
        await cur.execute(query.encode(), (scenario_id,))
        return await cur.fetchone()


async def get_by_request_id(conn: Conn, client_request_id: str) -> ScenarioRow | None:
    async with conn.cursor(row_factory=class_row(ScenarioRow)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM {_FROM} WHERE s.client_request_id = %s".encode(), (client_request_id,)
        )
        return await cur.fetchone()


async def get_by_channel(conn: Conn, channel_id: str, *, lock: bool = False) -> ScenarioRow | None:
    query = f"SELECT {_COLUMNS} FROM {_FROM} WHERE s.channel_id = %s" + (" FOR UPDATE OF s" if lock else "")
    async with conn.cursor(row_factory=class_row(ScenarioRow)) as cur:
        await cur.execute(query.encode(), (channel_id,))
        return await cur.fetchone()


async def list_page(
    conn: Conn,
    *,
    statuses: Sequence[int],
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[ScenarioRow]:
    """Newest first; ``after`` is the (create_time, id) of the last row of the previous page."""
    where = ["TRUE"]
    params: list[object] = []
    if statuses:
        where.append("s.status = ANY(%s)")
        params.append(list(statuses))
    if after is not None:
        where.append("(s.create_time, s.id) < (%s, %s)")
        params.extend(after)
    params.append(limit)
    query = (
        f"SELECT {_COLUMNS} FROM {_FROM} WHERE {' AND '.join(where)}"
        " ORDER BY s.create_time DESC, s.id DESC LIMIT %s"
    )
    async with conn.cursor(row_factory=class_row(ScenarioRow)) as cur:
        await cur.execute(query.encode(), params)
        return await cur.fetchall()


async def count(conn: Conn, *, statuses: Sequence[int]) -> int:
    if statuses:
        cur = await conn.execute("SELECT count(*) FROM scenarios WHERE status = ANY(%s)", (list(statuses),))
    else:
        cur = await conn.execute("SELECT count(*) FROM scenarios")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def list_for_channels(
    conn: Conn, *, scenario_ids: Sequence[uuid.UUID], include_inactive: bool
) -> list[ScenarioRow]:
    where = ["TRUE"]
    params: list[object] = []
    if scenario_ids:
        where.append("s.id = ANY(%s)")
        params.append(list(scenario_ids))
    if not include_inactive:
        where.append("s.status <> %s")
        params.append(int(lifecycle.INACTIVE))
    query = f"SELECT {_COLUMNS} FROM {_FROM} WHERE {' AND '.join(where)} ORDER BY s.channel_id"
    async with conn.cursor(row_factory=class_row(ScenarioRow)) as cur:
        await cur.execute(query.encode(), params)
        return await cur.fetchall()


async def all_ids(conn: Conn) -> list[uuid.UUID]:
    cur = await conn.execute("SELECT id FROM scenarios")
    return [r[0] for r in await cur.fetchall()]


async def status_counts(conn: Conn) -> dict[int, int]:
    cur = await conn.execute("SELECT status, count(*) FROM scenarios GROUP BY status")
    return {int(status): int(n) for status, n in await cur.fetchall()}


async def transitions(conn: Conn, scenario_id: uuid.UUID) -> list[tuple[int, int, str]]:
    """(from, to, reason) of every status change of a scenario, oldest first."""
    cur = await conn.execute(
        "SELECT from_status, to_status, reason FROM scenario_transitions WHERE scenario_id = %s ORDER BY id",
        (scenario_id,),
    )
    return [(int(a), int(b), str(r)) for a, b, r in await cur.fetchall()]


# --- writes ---------------------------------------------------------------------------------------------


async def insert(
    conn: Conn,
    *,
    scenario_id: uuid.UUID,
    client_request_id: str | None,
    channel_id: str,
    source: SealedUrl,
    spec: scenario_pb2.Scenario,
    status: Status,
) -> bool:
    """Insert a new scenario; False when ``client_request_id`` is already taken (the caller re-reads it)."""
    cur = await conn.execute(
        "INSERT INTO scenarios (id, client_request_id, channel_id, redacted_url, sealed_url, spec, status)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (client_request_id) DO NOTHING RETURNING id",
        (
            scenario_id,
            client_request_id,
            channel_id,
            source.redacted,
            source.sealed,
            spec.SerializeToString(),
            int(status),
        ),
    )
    return await cur.fetchone() is not None


async def update_settings(
    conn: Conn, scenario_id: uuid.UUID, *, spec: scenario_pb2.Scenario, source: SealedUrl | None
) -> None:
    """New settings; ``source`` None keeps the stored URL."""
    if source is None:
        await conn.execute(
            "UPDATE scenarios SET spec = %s, revision = revision + 1, update_time = now() WHERE id = %s",
            (spec.SerializeToString(), scenario_id),
        )
        return
    await conn.execute(
        "UPDATE scenarios SET spec = %s, redacted_url = %s, sealed_url = %s, revision = revision + 1,"
        " update_time = now() WHERE id = %s",
        (spec.SerializeToString(), source.redacted, source.sealed, scenario_id),
    )


async def bump_revision(conn: Conn, row: ScenarioRow) -> None:
    """A new revision without a settings change, for start and stop: consumers of ScenarioConfig apply only
    revisions newer than the one they hold, so the "stopped" config (and the next "started" one) must have
    one. ``row`` is updated in place."""
    cur = await conn.execute(
        "UPDATE scenarios SET revision = revision + 1 WHERE id = %s RETURNING revision", (row.id,)
    )
    found = await cur.fetchone()
    assert found is not None
    row.revision = int(found[0])


async def delete(conn: Conn, scenario_id: uuid.UUID) -> None:
    """Delete a scenario, its workers row and history (cascade) and its stored results."""
    for table in ("detections", "frames", "tracks", "tracked_frames", "events", "counts"):
        await conn.execute(f"DELETE FROM {table} WHERE scenario_id = %s".encode(), (scenario_id,))
    await conn.execute("DELETE FROM scenarios WHERE id = %s", (scenario_id,))


async def apply_change(conn: Conn, row: ScenarioRow, change: status.Change) -> None:
    """Apply a decision of ``vap_control.status`` to a locked scenario; ``row`` is updated in place."""
    if change.path:
        await _apply_path(conn, row, change.path, change.reason or "", clear_health=change.starts)
    elif change.reason is not None:
        await _set_reason(conn, row.id, change.reason)
    if change.release:
        await release_worker(conn, row.id)


async def _apply_path(
    conn: Conn,
    row: ScenarioRow,
    path: Sequence[Status],
    reason: str,
    *,
    clear_health: bool,
) -> None:
    """Move a locked scenario through ``path`` (each step checked against the lifecycle table), recording
    every step. ``reason`` becomes status_reason (already redacted)."""
    current = row.status_value
    for target in path:
        lifecycle.check(current, target)
        await conn.execute(
            "INSERT INTO scenario_transitions (scenario_id, from_status, to_status, reason)"
            " VALUES (%s, %s, %s, %s)",
            (row.id, int(current), int(target), reason),
        )
        current = target
    await conn.execute(
        "UPDATE scenarios SET status = %s, status_reason = %s, update_time = now()"
        + (", health = NULL" if clear_health else "")
        + " WHERE id = %s",
        (int(current), reason, row.id),
    )
    row.status = int(current)
    row.status_reason = reason
    if clear_health:
        row.health = None


async def _set_reason(conn: Conn, scenario_id: uuid.UUID, reason: str) -> None:
    await conn.execute(
        "UPDATE scenarios SET status_reason = %s WHERE id = %s AND status_reason IS DISTINCT FROM %s",
        (reason, scenario_id, reason),
    )


async def set_health(conn: Conn, scenario_id: uuid.UUID, health: health_pb2.ChannelHealth) -> None:
    # The stored reason is redacted too: the column is read by people with SQL access.
    stored = health_pb2.ChannelHealth()
    stored.CopyFrom(health)
    stored.reason = redact_text(stored.reason)
    await conn.execute(
        "UPDATE scenarios SET health = %s WHERE id = %s", (stored.SerializeToString(), scenario_id)
    )


# --- workers and agents ---------------------------------------------------------------------------------


async def assign_worker(conn: Conn, row: ScenarioRow, agent_id: str) -> None:
    await conn.execute(
        "INSERT INTO workers (scenario_id, channel_id, agent_id, node_id)"
        " VALUES (%s, %s, %s, coalesce((SELECT node_id FROM agents WHERE agent_id = %s), ''))"
        " ON CONFLICT (scenario_id) DO UPDATE SET agent_id = excluded.agent_id, node_id = excluded.node_id,"
        " pid = 0, ring = '', assign_time = now(), update_time = now()",
        (row.id, row.channel_id, agent_id, agent_id),
    )
    row.agent_id = agent_id


_PG_INT4_MAX = 2**31 - 1


async def update_worker(
    conn: Conn,
    scenario_id: uuid.UUID,
    *,
    agent_id: str,
    pid: int,
    ring: str | None = None,
    start_time: datetime | None = None,
) -> None:
    """Record the process of a placed scenario (only for the agent it is placed on)."""
    if not 0 <= pid <= _PG_INT4_MAX:
        # Linux pids fit in 22 bits; anything else comes from a forged or broken health message, and
        # must not make the whole health update fail on the integer column.
        pid = 0
    await conn.execute(
        "UPDATE workers SET pid = %s, ring = coalesce(%s, ring), assign_time = coalesce(%s, assign_time),"
        " update_time = now() WHERE scenario_id = %s AND agent_id = %s"
        " AND (pid, ring) IS DISTINCT FROM (%s, coalesce(%s, ring))",
        (pid, ring or None, start_time, scenario_id, agent_id, pid, ring or None),
    )


async def placed_before(
    conn: Conn, scenario_id: uuid.UUID, *, seconds: float, reported: datetime | None, margin_s: float
) -> bool:
    """Whether the scenario's placement is older than ``seconds`` now and, when ``reported`` is given, older
    than ``margin_s`` at that time too."""
    cur = await conn.execute(
        "SELECT 1 FROM workers WHERE scenario_id = %s AND update_time < now() - make_interval(secs => %s)"
        " AND (%s::timestamptz IS NULL OR update_time < %s::timestamptz - make_interval(secs => %s))",
        (scenario_id, seconds, reported, reported, margin_s),
    )
    return await cur.fetchone() is not None


async def placed_before_time(conn: Conn, scenario_id: uuid.UUID, when: datetime, *, margin_s: float) -> bool:
    """Whether the scenario's placement was made more than ``margin_s`` before ``when``."""
    cur = await conn.execute(
        "SELECT 1 FROM workers WHERE scenario_id = %s"
        " AND update_time < %s::timestamptz - make_interval(secs => %s)",
        (scenario_id, when, margin_s),
    )
    return await cur.fetchone() is not None


async def release_worker(conn: Conn, scenario_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM workers WHERE scenario_id = %s", (scenario_id,))


# Agents seen within %s seconds on nodes not drained, as ``a``, with their placed workers' count ``w.n``.
_LIVE_UNDRAINED_AGENTS = (
    " FROM agents a"
    " LEFT JOIN (SELECT agent_id, count(*) AS n FROM workers GROUP BY agent_id) w USING (agent_id)"
    " LEFT JOIN nodes d ON d.node_id = a.node_id"
    " WHERE a.last_seen >= now() - make_interval(secs => %s) AND NOT coalesce(d.draining, false)"
)


async def pick_agent(
    conn: Conn,
    *,
    agent_timeout_s: float,
    exclude: Sequence[str] = (),
    selector: Mapping[str, str] | None = None,
    model: str = "",
) -> str | None:
    """A live agent with a free decoder slot on a node that is not drained, whose labels contain
    ``selector`` and which serves ``model`` (a node listing no models serves any): the most free slots
    first (placements count as load at once), then the least loaded, then by id."""
    cur = await conn.execute(
        "SELECT a.agent_id" + _LIVE_UNDRAINED_AGENTS + " AND coalesce(w.n, 0) < a.max_workers"
        " AND NOT (a.agent_id = ANY(%s)) AND a.labels @> %s"
        " AND (%s = '' OR cardinality(a.models) = 0 OR %s = ANY(a.models))"
        " ORDER BY a.max_workers - coalesce(w.n, 0) DESC,"
        " coalesce(w.n, 0)::float8 / greatest(a.max_workers, 1), a.agent_id LIMIT 1",
        (agent_timeout_s, list(exclude), Jsonb(dict(selector or {})), model, model),
    )
    found = await cur.fetchone()
    return str(found[0]) if found else None


async def capacity(conn: Conn, *, agent_timeout_s: float) -> tuple[int, int]:
    """(live agents, live agents with a free decoder slot), drained nodes left out."""
    cur = await conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE coalesce(w.n, 0) < a.max_workers)" + _LIVE_UNDRAINED_AGENTS,
        (agent_timeout_s,),
    )
    found = await cur.fetchone()
    return (int(found[0]), int(found[1])) if found else (0, 0)


async def agent_alive(conn: Conn, agent_id: str, *, agent_timeout_s: float) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM agents WHERE agent_id = %s AND last_seen >= now() - make_interval(secs => %s)",
        (agent_id, agent_timeout_s),
    )
    return await cur.fetchone() is not None
