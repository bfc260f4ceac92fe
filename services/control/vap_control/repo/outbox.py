# ruff: noqa: S608  (SQL is assembled from constant fragments only; every value is a bound parameter)
"""SQL for the transactional outbox.

Rows are written by the API in the transaction that changes the scenario (``enqueue_*``) and delivered by
``vap_control.outbox.OutboxRelay``. Rows of one scenario are delivered strictly in id order: ``claim`` only
takes the oldest pending row of each scenario, and a row being delivered stays pending (under a lease) until
its outcome is recorded, so a stop can never overtake the start it follows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from vap_control.repo.scenarios import Conn
from vap_proto.v1 import agent_pb2, scenario_pb2

# The outbox trigger (db/migrations) notifies this channel on every insert.
NOTIFY_CHANNEL = "vap_outbox"

START = "start_channel"
STOP = "stop_channel"
CONFIG = "scenario_config"


@dataclass(slots=True)
class OutboxRow:
    id: int
    command_id: uuid.UUID
    scenario_id: uuid.UUID
    kind: str
    agent_id: str | None
    payload: bytes
    attempts: int
    create_time: datetime
    state: str
    # A relay is delivering the row right now (its lease has not expired).
    leased: bool


_COLUMNS = (
    "id, command_id, scenario_id, kind, agent_id, payload, attempts, create_time, state,"
    " (lease_until IS NOT NULL AND lease_until > now()) AS leased"
)


async def _insert(conn: Conn, scenario_id: uuid.UUID, kind: str, payload: bytes, agent_id: str | None) -> int:
    cur = await conn.execute(
        "INSERT INTO outbox (command_id, scenario_id, kind, agent_id, payload) VALUES (%s, %s, %s, %s, %s)"
        " RETURNING id",
        (uuid.uuid4(), scenario_id, kind, agent_id, payload),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def enqueue_config(conn: Conn, config: scenario_pb2.ScenarioConfig) -> int:
    return await _insert(conn, uuid.UUID(config.scenario_id), CONFIG, config.SerializeToString(), None)


async def enqueue_start(conn: Conn, scenario_id: uuid.UUID, start: agent_pb2.StartChannel) -> int:
    """The agent is chosen when the row is delivered (a live agent with room at that moment)."""
    command = agent_pb2.AgentCommand(start_channel=start)
    return await _insert(conn, scenario_id, START, command.SerializeToString(), None)


async def enqueue_stop(
    conn: Conn, scenario_id: uuid.UUID, stop: agent_pb2.StopChannel, agent_id: str | None
) -> int:
    """``agent_id``: where the scenario is placed now; the relay prefers the placement at delivery time (a
    start still in flight may place it) and falls back to this one for deleted scenarios."""
    command = agent_pb2.AgentCommand(stop_channel=stop)
    return await _insert(conn, scenario_id, STOP, command.SerializeToString(), agent_id)


async def cancel_pending_starts(conn: Conn, scenario_id: uuid.UUID) -> int:
    """Cancel start commands not yet delivered (a stop or delete came first). Rows under a live lease are
    being delivered right now and are left alone: the stop will follow them."""
    cur = await conn.execute(
        "UPDATE outbox SET state = 'cancelled', lease_until = NULL WHERE id IN ("
        " SELECT id FROM outbox WHERE scenario_id = %s AND kind = %s AND state = 'pending'"
        " AND (lease_until IS NULL OR lease_until < now()) FOR UPDATE SKIP LOCKED)",
        (scenario_id, START),
    )
    return cur.rowcount


async def claim(conn: Conn, *, limit: int, lease_s: float) -> list[OutboxRow]:
    """Take up to ``limit`` due rows (the oldest pending one of each scenario) under a lease."""
    async with conn.cursor(row_factory=class_row(OutboxRow)) as cur:
        await cur.execute(
            f"UPDATE outbox SET lease_until = now() + make_interval(secs => %s) WHERE id IN ("
            " SELECT o.id FROM outbox o WHERE o.state = 'pending' AND o.next_attempt_at <= now()"
            " AND (o.lease_until IS NULL OR o.lease_until < now())"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending'"
            "   AND p.scenario_id = o.scenario_id AND p.id < o.id)"
            " ORDER BY o.id LIMIT %s FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_COLUMNS}".encode(),
            (lease_s, limit),
        )
        rows = await cur.fetchall()
    rows.sort(key=lambda r: r.id)
    return rows


async def mark_sent(conn: Conn, row_id: int, *, reply_code: int | None = None) -> None:
    await conn.execute(
        "UPDATE outbox SET state = 'sent', sent_time = now(), lease_until = NULL, attempts = attempts + 1,"
        " reply_code = %s, last_error = '' WHERE id = %s",
        (reply_code, row_id),
    )


async def mark_cancelled(conn: Conn, row_id: int, reason: str) -> None:
    await conn.execute(
        "UPDATE outbox SET state = 'cancelled', lease_until = NULL, last_error = %s WHERE id = %s",
        (reason, row_id),
    )


async def retry_later(
    conn: Conn, row_id: int, *, delay_s: float, error: str, agent_id: str | None, count_attempt: bool = True
) -> None:
    """Keep the row pending and due again after ``delay_s``; ``agent_id`` replaces the stored target (None
    lets the relay place a start afresh)."""
    await conn.execute(
        "UPDATE outbox SET lease_until = NULL, next_attempt_at = now() + make_interval(secs => %s),"
        " attempts = attempts + %s, last_error = %s, agent_id = %s WHERE id = %s",
        (delay_s, 1 if count_attempt else 0, error, agent_id, row_id),
    )


async def make_waiting_starts_due(conn: Conn) -> None:
    """Starts waiting for an agent with room (none placed yet) become due now, not after their backoff."""
    await conn.execute(
        "UPDATE outbox SET next_attempt_at = now() WHERE state = 'pending' AND kind = %s"
        " AND agent_id IS NULL AND next_attempt_at > now()",
        (START,),
    )


async def listen(conn: Conn) -> None:
    """LISTEN on ``conn`` (autocommit) for outbox inserts; ``conn.notifies()`` then yields one per insert."""
    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}".encode())


async def set_agent(conn: Conn, row_id: int, agent_id: str | None) -> None:
    await conn.execute("UPDATE outbox SET agent_id = %s WHERE id = %s", (agent_id, row_id))


async def find_by_command(conn: Conn, command_id: uuid.UUID, *, lock: bool = False) -> OutboxRow | None:
    query = f"SELECT {_COLUMNS} FROM outbox WHERE command_id = %s" + (" FOR UPDATE" if lock else "")
    async with conn.cursor(row_factory=class_row(OutboxRow)) as cur:
        await cur.execute(query.encode(), (command_id,))
        return await cur.fetchone()


async def pending_count(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def purge_sent(conn: Conn, *, older_than_s: float) -> int:
    cur = await conn.execute(
        "DELETE FROM outbox WHERE state <> 'pending' AND coalesce(sent_time, create_time)"
        " < now() - make_interval(secs => %s)",
        (older_than_s,),
    )
    return cur.rowcount
