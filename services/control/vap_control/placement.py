"""Placement of scenarios on nodes, and moving them when a node dies or is drained.

A node is a decoder agent plus the inference service on the same host (rings are host-local); its agent
registers the node's capacity with every heartbeat (``repo.nodes.record_agent``). A start command is placed
when the outbox relay delivers it: on a live agent of a node that is not drained, whose labels contain the
scenario's ``node_selector`` and which serves its model, the most free slots first (``pick``).

Moving a running scenario (its node's heartbeats stopped, or the node was drained) is one transaction under
the scenario's row lock: the scenario walks ACTIVE -> FAILED -> INIT_STARTUP (both steps recorded in
``scenario_transitions`` with the reason, e.g. "moving off node n1: heartbeats stopped"; clients only ever
see the committed INIT_STARTUP) and a new start goes into the outbox. The workers table keeps at most one
placement per scenario, so a scenario is never placed twice:

- dead node: the placement is released at once (its decoders died with their agent, or are fenced when it
  comes back: ``agent_sync`` stops channels an agent runs that are placed elsewhere);
- drained node: a stop to the old agent goes first, in the same per-scenario outbox order as the new
  start, so the channel is never decoded twice and the gap is one stop plus one start (a reconnect).

Whether a scenario moves, fails (``failover: false``) or stays is decided by ``status`` (``agent_lost``,
``node_drained``, ``heartbeat``); ``carry_out`` does it.
"""

from __future__ import annotations

from collections.abc import Sequence

from vap_common.logs import get_logger
from vap_control import status
from vap_control.errors import NotFoundError
from vap_control.repo import nodes as nodes_repo
from vap_control.repo import outbox as outbox_repo
from vap_control.repo import scenarios as repo
from vap_control.repo.scenarios import Conn, ScenarioRow
from vap_control.settings import ControlSettings
from vap_proto.v1 import agent_pb2, nodes_pb2, scenario_pb2

_log = get_logger("vap.control.placement")


def stop_command(row: ScenarioRow, settings: ControlSettings) -> agent_pb2.StopChannel:
    stop = agent_pb2.StopChannel(channel_id=row.channel_id)
    if settings.stop_grace_s is not None:
        stop.grace_period.FromNanoseconds(round(settings.stop_grace_s * 1e9))
    return stop


def scenario_config(
    row: ScenarioRow, settings: ControlSettings, *, active: bool
) -> scenario_pb2.ScenarioConfig:
    return repo.scenario_config(
        row, active=active, default_count_interval_s=settings.default_count_interval_s
    )


async def enqueue_start(
    conn: Conn, row: ScenarioRow, settings: ControlSettings, change: status.Change
) -> None:
    """Apply a change that starts the scenario (it ends in INIT_STARTUP), with a new config revision and a
    start command (placed when the relay delivers it)."""
    assert change.starts, change
    if row.agent_id is not None:
        # A previous placement may still have a process (e.g. after ALREADY_EXISTS, or a drained node): stop
        # it there first; the outbox keeps the order, so the new start cannot overtake the stop.
        await outbox_repo.enqueue_stop(conn, row.id, stop_command(row, settings), row.agent_id)
    await repo.apply_change(conn, row, change)
    await repo.bump_revision(conn, row)
    await outbox_repo.enqueue_config(conn, scenario_config(row, settings, active=True))
    if row.sealed_url is None:  # only a row from before migration 0004 that start-up has not sealed yet
        raise RuntimeError(f"scenario {row.id}: source URL not sealed yet; restart the control service")
    # The URL only sealed (source.url stays empty): the decoder agent opens it.
    start = agent_pb2.StartChannel(
        channel_id=row.channel_id,
        scenario_id=str(row.id),
        source=row.spec_proto().source,
        sealed_url=row.sealed_url,
    )
    await outbox_repo.enqueue_start(conn, row.id, start)


async def pick(
    conn: Conn, scenario: ScenarioRow, settings: ControlSettings, *, exclude: Sequence[str] = ()
) -> str | None:
    """The agent a start of ``scenario`` goes to now, or None when no node fits."""
    spec = scenario.spec_proto()
    return await repo.pick_agent(
        conn,
        agent_timeout_s=settings.agent_timeout_s,
        exclude=exclude,
        selector=dict(spec.node_selector),
        model=spec.pipeline.model,
    )


async def carry_out(
    conn: Conn, row: ScenarioRow, settings: ControlSettings, change: status.Change, *, release_old: bool
) -> bool:
    """Apply a decision about a locked scenario that may move it (see the module docstring). A move ends the
    old placement, released at once when its process is gone with its agent (``release_old``) or else
    stopped there first, and starts the scenario again; any other change is applied as it is. Returns
    whether anything changed."""
    if not change:
        return False
    if not change.starts:
        await repo.apply_change(conn, row, change)
        return True
    if release_old:
        await repo.release_worker(conn, row.id)
        row.agent_id = None
    await enqueue_start(conn, row, settings, change)
    return True


async def reconcile(conn: Conn, settings: ControlSettings) -> int:
    """Move the running scenarios of silent agents and of drained nodes; returns how many moved."""
    moved = 0
    for scenario_id, agent_id in await nodes_repo.scenarios_of_silent_agents(
        conn, agent_timeout_s=settings.agent_timeout_s
    ):
        row = await repo.get(conn, scenario_id, lock=True)
        if row is None:
            continue
        node = row.node_id or agent_id
        change = status.agent_lost(row.status_value, agent=agent_id, node=node, failover=settings.failover)
        moved += await carry_out(conn, row, settings, change, release_old=True)
    return moved + await _move_off_drained(conn, settings)


async def _move_off_drained(conn: Conn, settings: ControlSettings, node_ids: Sequence[str] = ()) -> int:
    """Move the running scenarios of drained nodes (only of ``node_ids`` when given); returns how many."""
    moved = 0
    for scenario_id, node in await nodes_repo.scenarios_of_draining_nodes(conn, node_ids):
        row = await repo.get(conn, scenario_id, lock=True)
        if row is not None:
            change = status.node_drained(row.status_value, node=node)
            moved += await carry_out(conn, row, settings, change, release_old=False)
    return moved


async def list_nodes(
    conn: Conn, settings: ControlSettings, *, include_dead: bool
) -> list[nodes_pb2.NodeInfo]:
    agents = await nodes_repo.list_agents(conn, agent_timeout_s=settings.agent_timeout_s)
    nodes: dict[str, nodes_pb2.NodeInfo] = {}
    for agent in agents:  # ordered by node, then agent: the newest heartbeat of a node describes it
        info = nodes.get(agent.node_id)
        if info is None:
            info = nodes[agent.node_id] = nodes_pb2.NodeInfo(node_id=agent.node_id, draining=agent.draining)
        info.agent_ids.append(agent.agent_id)
        info.alive = info.alive or agent.alive
        if not info.HasField("last_seen") or info.last_seen.ToDatetime() < agent.last_seen.replace(
            tzinfo=None
        ):
            info.last_seen.FromDatetime(agent.last_seen)
            cap = info.capacity
            cap.backend, cap.shm_prefix = agent.backend, agent.shm_prefix
            del cap.models[:]
            cap.models.extend(agent.models)
            cap.labels.clear()
            cap.labels.update(agent.labels)
        if agent.alive:
            info.capacity.max_channels += agent.max_workers
        info.channels += len(agent.scenario_ids)
        info.scenario_ids.extend(str(s) for s in agent.scenario_ids)
    return [n for n in nodes.values() if include_dead or n.alive]


async def drain(
    conn: Conn, settings: ControlSettings, node_id: str, *, undrain: bool
) -> tuple[nodes_pb2.NodeInfo, int]:
    """Mark a node drained (or not) and start moving its running scenarios; returns the node and how many
    scenarios this call moved (the reconcile moves any that start there later)."""
    if not await nodes_repo.node_known(conn, node_id):
        raise NotFoundError(f"node {node_id!r} not found (no decoder agent of that node ever reported)")
    await nodes_repo.set_draining(conn, node_id, not undrain)
    moved = 0
    if not undrain:
        moved = await _move_off_drained(conn, settings, [node_id])
        _log.info("node drained", node=node_id, moved=moved)
    else:
        _log.info("node undrained", node=node_id)
    infos = await list_nodes(conn, settings, include_dead=True)
    info = next((n for n in infos if n.node_id == node_id), nodes_pb2.NodeInfo(node_id=node_id))
    return info, moved
