"""SQL for nodes: agent heartbeats with their node's capacity (the agents table), drain decisions (nodes)
and the scenarios placement has to move (of silent agents, of drained nodes)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from psycopg.types.json import Jsonb

from vap_control import status
from vap_control.repo.scenarios import Conn
from vap_proto.v1 import agent_pb2

# Scenarios with a decoder process that placement may have to move.
_MOVABLE = sorted(int(s) for s in status.MOVABLE)


@dataclass(slots=True)
class AgentRow:
    agent_id: str
    node_id: str
    max_workers: int
    labels: dict[str, str]
    backend: str
    models: list[str]
    shm_prefix: str
    last_seen: datetime
    alive: bool
    draining: bool
    scenario_ids: list[uuid.UUID] = field(default_factory=list)


async def record_agent(conn: Conn, status: agent_pb2.AgentStatus) -> None:
    """Upsert an agent from its heartbeat (node registration included)."""
    cap = status.capacity
    await conn.execute(
        "INSERT INTO agents (agent_id, node_id, pid, max_workers, channels, version, labels, backend, models,"
        " shm_prefix, last_seen) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())"
        " ON CONFLICT (agent_id) DO UPDATE SET node_id = excluded.node_id, pid = excluded.pid,"
        " max_workers = excluded.max_workers, channels = excluded.channels, version = excluded.version,"
        " labels = excluded.labels, backend = excluded.backend, models = excluded.models,"
        " shm_prefix = excluded.shm_prefix, last_seen = now()",
        (
            status.agent_id,
            status.node_id,
            status.pid,
            status.max_workers,
            len(status.channels),
            status.version,
            Jsonb(dict(cap.labels)),
            cap.backend,
            list(cap.models),
            cap.shm_prefix,
        ),
    )


async def list_agents(conn: Conn, *, agent_timeout_s: float) -> list[AgentRow]:
    """Every known agent with liveness, drain state and the scenarios placed on it, by node then agent."""
    cur = await conn.execute(
        "SELECT a.agent_id, a.node_id, a.max_workers, a.labels, a.backend, a.models, a.shm_prefix,"
        " a.last_seen, a.last_seen >= now() - make_interval(secs => %s), coalesce(n.draining, false),"
        " coalesce((SELECT array_agg(w.scenario_id ORDER BY w.scenario_id) FROM workers w"
        "   WHERE w.agent_id = a.agent_id), '{}')"
        " FROM agents a LEFT JOIN nodes n USING (node_id) ORDER BY a.node_id, a.agent_id",
        (agent_timeout_s,),
    )
    return [
        AgentRow(
            agent_id=str(r[0]),
            node_id=str(r[1]),
            max_workers=int(r[2]),
            labels={str(k): str(v) for k, v in (r[3] or {}).items()},
            backend=str(r[4]),
            models=[str(m) for m in r[5]],
            shm_prefix=str(r[6]),
            last_seen=r[7],
            alive=bool(r[8]),
            draining=bool(r[9]),
            scenario_ids=list(r[10]),
        )
        for r in await cur.fetchall()
    ]


async def node_known(conn: Conn, node_id: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM agents WHERE node_id = %s LIMIT 1", (node_id,))
    return await cur.fetchone() is not None


async def set_draining(conn: Conn, node_id: str, draining: bool) -> None:
    await conn.execute(
        "INSERT INTO nodes (node_id, draining, drain_time) VALUES (%s, %s, CASE WHEN %s THEN now() END)"
        " ON CONFLICT (node_id) DO UPDATE SET draining = excluded.draining, drain_time = excluded.drain_time",
        (node_id, draining, draining),
    )


async def scenarios_of_silent_agents(
    conn: Conn, *, agent_timeout_s: float, statuses: Sequence[int] = _MOVABLE
) -> list[tuple[uuid.UUID, str]]:
    """(scenario, agent) of scenarios in ``statuses`` (default: running ones) placed on agents silent for
    longer than the timeout."""
    cur = await conn.execute(
        "SELECT w.scenario_id, w.agent_id FROM workers w JOIN agents a USING (agent_id)"
        " JOIN scenarios s ON s.id = w.scenario_id"
        " WHERE a.last_seen < now() - make_interval(secs => %s) AND s.status = ANY(%s)"
        " ORDER BY w.scenario_id",
        (agent_timeout_s, list(statuses)),
    )
    return [(r[0], str(r[1])) for r in await cur.fetchall()]


async def scenarios_on_agent(conn: Conn, agent_id: str, *, statuses: Sequence[int]) -> list[uuid.UUID]:
    """Scenarios in ``statuses`` placed on ``agent_id``."""
    cur = await conn.execute(
        "SELECT w.scenario_id FROM workers w JOIN scenarios s ON s.id = w.scenario_id"
        " WHERE w.agent_id = %s AND s.status = ANY(%s) ORDER BY w.scenario_id",
        (agent_id, list(statuses)),
    )
    return [r[0] for r in await cur.fetchall()]


async def channels_placed_elsewhere(conn: Conn, channel_ids: Sequence[str], *, agent_id: str) -> list[str]:
    """Those of ``channel_ids`` whose scenario is placed on an agent other than ``agent_id``."""
    cur = await conn.execute(
        "SELECT s.channel_id FROM scenarios s JOIN workers w ON w.scenario_id = s.id"
        " WHERE s.channel_id = ANY(%s) AND w.agent_id <> %s ORDER BY s.channel_id",
        (list(channel_ids), agent_id),
    )
    return [str(r[0]) for r in await cur.fetchall()]


async def scenarios_of_draining_nodes(
    conn: Conn, node_ids: Sequence[str] = ()
) -> list[tuple[uuid.UUID, str]]:
    """(scenario, node) of running scenarios placed on drained nodes (only ``node_ids`` when given)."""
    cur = await conn.execute(
        "SELECT w.scenario_id, a.node_id FROM workers w JOIN agents a USING (agent_id)"
        " JOIN nodes n ON n.node_id = a.node_id JOIN scenarios s ON s.id = w.scenario_id"
        " WHERE n.draining AND s.status = ANY(%s) AND (cardinality(%s::text[]) = 0 OR a.node_id = ANY(%s))"
        " ORDER BY w.scenario_id",
        (_MOVABLE, list(node_ids), list(node_ids)),
    )
    return [(r[0], str(r[1])) for r in await cur.fetchall()]
