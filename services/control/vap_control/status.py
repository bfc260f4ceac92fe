"""Every change of a scenario's status: given its current status and what happened, what it becomes and why.

The API (start, stop), the outbox relay, agent replies, channel health, agent heartbeats, silent agents and
drained nodes all ask here what an event does to a scenario. The answer is a ``Change``: the states to walk
(each step legal in ``lifecycle``; none for a stale or repeated event, so a late reply changes nothing), the
``status_reason`` that goes with them and whether the scenario's placement (its workers row) is over. The
module is pure, so every decision can be tested without a database; the callers apply it in the transaction
that holds the scenario's row lock (``repo.scenarios.apply_change``), and a change that ends in INIT_STARTUP
also gets its start command (``placement.enqueue_start``).

Agent replies (``agent_sync``):

    start OK            -> IN_STARTUP_PROCESSING, and ACTIVE at once when the reply carries a running process
    start MAX_WORKERS   -> placed on another live agent with room, else FAILED ("no decoder capacity")
    start UNAVAILABLE   -> placed on another agent, else it waits for one (the agent is shutting down)
    start other codes   -> FAILED with the agent's message
    stop OK / NOT_FOUND -> IN_SHUTDOWN_PROCESSING, and INACTIVE once no process is left
    stop other codes    -> FAILED

A node that stops reporting or is drained takes its running scenarios along ACTIVE -> FAILED -> INIT_STARTUP
(a move to another node, ``placement``); without ``failover`` they fail instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, TypeAlias

from vap_common.redact import redact_text
from vap_control import lifecycle
from vap_control.lifecycle import (
    ACTIVE,
    FAILED,
    IN_SHUTDOWN_PROCESSING,
    IN_STARTUP_PROCESSING,
    INACTIVE,
    INIT_STARTUP,
    SHUTDOWN_CHAIN,
    STARTUP_CHAIN,
)
from vap_proto.v1 import agent_pb2, health_pb2, scenario_pb2

Status: TypeAlias = scenario_pb2.ScenarioStatus.ValueType
Code = agent_pb2.AgentReplyCode
CS = health_pb2.ChannelState

# Scenarios with a decoder process that a lost or drained node takes with it.
MOVABLE: Final = frozenset({IN_STARTUP_PROCESSING, ACTIVE})
# Scenarios an agent's heartbeat must list once they are placed on it long enough (an INIT_STARTUP one may not
# have reached the agent yet).
LISTED_IN_HEARTBEAT: Final = (IN_STARTUP_PROCESSING, ACTIVE, IN_SHUTDOWN_PROCESSING)


@dataclass(frozen=True, slots=True)
class Change:
    """What an event does to one scenario; ``Change()`` is nothing (a stale or repeated event)."""

    # The states to pass through, each step legal from the one before (the first from the current status).
    path: tuple[Status, ...] = ()
    # The new status_reason: with a path always a string ("" clears it); without one None keeps it.
    reason: str | None = None
    # The placement is over (no process left, or none will start there): the workers row goes.
    release: bool = False

    def __bool__(self) -> bool:
        return bool(self.path) or self.reason is not None or self.release

    @property
    def starts(self) -> bool:
        """The scenario ends in INIT_STARTUP: a start command must go out with the change, and the health of
        the previous run is forgotten."""
        return self.path[-1:] == (INIT_STARTUP,)


@dataclass(frozen=True, slots=True)
class StartRefusal:
    """What an agent's refusal of a start does."""

    # First offer the start to another live agent with room; when one takes it nothing else changes.
    place_elsewhere: bool
    # What happens otherwise.
    change: Change
    # The start command stays pending and is offered again later (the agent is shutting down).
    retry: bool = False


def code_name(code: int) -> str:
    """An AgentReplyCode without its prefix (the number when it is not one we know)."""
    if code not in Code.values():
        return str(code)
    return Code.Name(agent_pb2.AgentReplyCode.ValueType(code)).removeprefix("AGENT_REPLY_CODE_")


def _walk(current: Status, target: Status, chain: tuple[Status, ...], reason: str = "") -> Change:
    path = lifecycle.walk(current, target, chain)
    return Change(tuple(path), reason) if path else Change()


def _fail(current: Status, reason: str) -> Change:
    """FAILED unless the scenario is INACTIVE or FAILED already."""
    return Change((FAILED,), reason) if lifecycle.is_legal(current, FAILED) else Change()


def _move(current: Status, reason: str) -> Change:
    """A running scenario starts again on another node: FAILED, then INIT_STARTUP, both with the reason."""
    return Change((FAILED, INIT_STARTUP), reason) if current in MOVABLE else Change()


# --- the API --------------------------------------------------------------------------------------------


def start_requested(current: Status) -> Change:
    """StartScenario (or CreateScenario with start): INIT_STARTUP; nothing while starting or running.

    Raises ``lifecycle.IllegalTransitionError`` while the scenario is stopping."""
    target = lifecycle.start_target(current)
    return Change((target,), "") if target is not None else Change()


def stop_requested(current: Status) -> Change:
    """StopScenario: INIT_SHUTDOWN; nothing while stopping or INACTIVE."""
    target = lifecycle.stop_target(current)
    return Change((target,), "") if target is not None else Change()


# --- the outbox relay -----------------------------------------------------------------------------------


def start_deliverable(current: Status) -> bool:
    """A start command goes out only while its scenario is INIT_STARTUP: stopped or failed before the command
    was delivered, starting it now would be wrong."""
    return current == INIT_STARTUP


def waiting_for_agent(reason: str) -> Change:
    """No live agent with a free slot takes a start now: say so, keeping why the scenario moves if it does."""
    return Change(
        reason="waiting for a decoder agent with a free slot"
        + (f" ({reason})" if reason.startswith("moving") else "")
    )


def agent_found() -> Change:
    """A start was placed on an agent: whatever the scenario waited for is over."""
    return Change(reason="")


def _stopped_without_process(current: Status, reason: str) -> Change:
    """A stop with no process to stop: the rest of the shutdown chain, and the placement goes in any case."""
    return replace(_walk(current, INACTIVE, SHUTDOWN_CHAIN, reason), release=True)


def stop_unplaced(current: Status) -> Change:
    """A stop of a scenario no agent was ever asked to run."""
    return _stopped_without_process(current, "")


def stop_agent_gone(current: Status, *, agent: str | None) -> Change:
    """A stop whose agent no longer runs at all (no responders, no heartbeats): its decoders died with it."""
    return _stopped_without_process(current, f"decoder agent {agent} is gone")


# --- agent replies --------------------------------------------------------------------------------------


def start_accepted(current: Status, *, running: bool) -> Change:
    """The agent started the channel: IN_STARTUP_PROCESSING, and ACTIVE at once when its process runs."""
    return _walk(current, ACTIVE if running else IN_STARTUP_PROCESSING, STARTUP_CHAIN)


def start_refused(current: Status, *, code: int, agent: str, message: str) -> StartRefusal:
    """The agent refused the start (``message`` redacted already)."""
    starting = current == INIT_STARTUP
    if code in (Code.AGENT_REPLY_CODE_MAX_WORKERS, Code.AGENT_REPLY_CODE_UNAVAILABLE):
        if code == Code.AGENT_REPLY_CODE_UNAVAILABLE and starting:
            # The only agent is shutting down; another (or it, restarted) will take the command later.
            waiting = Change(reason=f"decoder agent {agent} is shutting down; waiting", release=True)
            return StartRefusal(place_elsewhere=True, change=waiting, retry=True)
        full = _fail(current, f"no decoder capacity: agent {agent} reached MAX_WORKERS")
        return StartRefusal(place_elsewhere=starting, change=replace(full, release=True))
    failed = _fail(current, f"decoder agent {agent} refused the start: {code_name(code)}: {message}")
    # ALREADY_EXISTS keeps the workers row: that process is left to release with a stop.
    return StartRefusal(
        place_elsewhere=False, change=replace(failed, release=code != Code.AGENT_REPLY_CODE_ALREADY_EXISTS)
    )


def stop_accepted(current: Status, *, process_gone: bool, placed_there: bool) -> Change:
    """The agent stopped the channel, or had none to stop (OK, NOT_FOUND, UNAVAILABLE):
    IN_SHUTDOWN_PROCESSING, and INACTIVE without a placement once no process is left. ``placed_there``: the
    scenario is placed on the agent that answered."""
    if not process_gone:
        return _walk(current, IN_SHUTDOWN_PROCESSING, SHUTDOWN_CHAIN)
    if current == INIT_STARTUP and placed_there:
        # The stop ahead of a restart or a move (drained node): that placement is over, the start that
        # follows places the scenario afresh.
        return Change(release=True)
    done = _walk(current, INACTIVE, SHUTDOWN_CHAIN)
    return replace(done, release=True) if done else done


def stop_refused(current: Status, *, code: int, agent: str, message: str) -> Change:
    return _fail(current, f"decoder agent {agent} could not stop the channel: {code_name(code)}: {message}")


# --- what agents report ---------------------------------------------------------------------------------


def process_gone(current: Status, reason: str = "") -> Change:
    """The decoder process of a scenario in IN_SHUTDOWN_PROCESSING is gone: INACTIVE, with no placement."""
    return Change((INACTIVE,), reason, release=True) if current == IN_SHUTDOWN_PROCESSING else Change()


def health_reported(current: Status, *, state: int, pid: int, reason: str) -> Change:
    """A channel's health: FAILED fails a running scenario (a source that gave up), STOPPED completes a stop,
    and a process reporting with a pid makes a starting scenario ACTIVE."""
    if state == CS.CHANNEL_STATE_FAILED and current in (IN_STARTUP_PROCESSING, ACTIVE):
        return _fail(current, f"source failed: {redact_text(reason)}")
    if state == CS.CHANNEL_STATE_STOPPED:
        return process_gone(current)
    if pid > 0 and state != CS.CHANNEL_STATE_FAILED and current == IN_STARTUP_PROCESSING:
        return Change((ACTIVE,), "")
    return Change()


def heartbeat(
    current: Status, *, listed: bool, running: bool, placed_long_ago: bool, agent: str, failover: bool
) -> Change:
    """An agent's heartbeat about a scenario placed on it (one in LISTED_IN_HEARTBEAT). ``listed``: the agent
    lists the channel; ``running``: with a live process; ``placed_long_ago``: placed there long enough before
    the heartbeat was made that it must list the channel.

    A stopping scenario whose process is gone becomes INACTIVE; a starting one whose process runs ACTIVE. A
    channel the agent no longer knows (e.g. the agent restarted) lost its decoder: with failover the scenario
    starts again like one of a dead node (an agent restart must not lose it), else it fails."""
    if current == IN_SHUTDOWN_PROCESSING:
        return Change() if running else process_gone(current)
    if listed:
        return Change((ACTIVE,), "") if current == IN_STARTUP_PROCESSING and running else Change()
    if not placed_long_ago:
        return Change()
    reason = f"decoder agent {agent} no longer runs the channel"
    return _move(current, reason) if failover else _fail(current, reason)


def agent_lost(current: Status, *, agent: str, node: str, failover: bool) -> Change:
    """The agent of a running scenario stopped reporting for ``agent_timeout_s``: moved to another node, or
    FAILED without failover."""
    if failover:
        return _move(current, f"moving off node {node}: decoder agent {agent} stopped reporting")
    return _fail(current, f"decoder agent {agent} stopped reporting")


def agent_lost_while_stopping(current: Status, *, agent: str) -> Change:
    """The agent of a scenario in IN_SHUTDOWN_PROCESSING stopped reporting: its process went with it."""
    return process_gone(current, f"decoder agent {agent} stopped reporting")


def node_drained(current: Status, *, node: str) -> Change:
    """The node of a running scenario was drained: it moves to another node."""
    return _move(current, f"moving off node {node}: drained")
