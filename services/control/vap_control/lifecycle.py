"""The scenario lifecycle: which status changes are legal, and the paths events walk.

Legal transitions (scenario.proto):

    INIT_STARTUP -> IN_STARTUP_PROCESSING -> ACTIVE -> INIT_SHUTDOWN -> IN_SHUTDOWN_PROCESSING -> INACTIVE
    INACTIVE -> INIT_STARTUP                       (start again)
    INIT_STARTUP, IN_STARTUP_PROCESSING -> INIT_SHUTDOWN   (stop while starting)
    any state except INACTIVE -> FAILED
    FAILED -> INIT_STARTUP (retry) or INIT_SHUTDOWN (stop and release what is left)

This module is pure (no I/O) so the table can be property-tested; the repository applies it under a row lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from vap_proto.v1.scenario_pb2 import ScenarioStatus

S = ScenarioStatus
INIT_STARTUP: Final = S.SCENARIO_STATUS_INIT_STARTUP
IN_STARTUP_PROCESSING: Final = S.SCENARIO_STATUS_IN_STARTUP_PROCESSING
ACTIVE: Final = S.SCENARIO_STATUS_ACTIVE
INIT_SHUTDOWN: Final = S.SCENARIO_STATUS_INIT_SHUTDOWN
IN_SHUTDOWN_PROCESSING: Final = S.SCENARIO_STATUS_IN_SHUTDOWN_PROCESSING
INACTIVE: Final = S.SCENARIO_STATUS_INACTIVE
FAILED: Final = S.SCENARIO_STATUS_FAILED

ALL_STATES: Final[tuple[ScenarioStatus.ValueType, ...]] = (
    INIT_STARTUP,
    IN_STARTUP_PROCESSING,
    ACTIVE,
    INIT_SHUTDOWN,
    IN_SHUTDOWN_PROCESSING,
    INACTIVE,
    FAILED,
)

LEGAL: Final[dict[ScenarioStatus.ValueType, frozenset[ScenarioStatus.ValueType]]] = {
    INIT_STARTUP: frozenset({IN_STARTUP_PROCESSING, INIT_SHUTDOWN, FAILED}),
    IN_STARTUP_PROCESSING: frozenset({ACTIVE, INIT_SHUTDOWN, FAILED}),
    ACTIVE: frozenset({INIT_SHUTDOWN, FAILED}),
    INIT_SHUTDOWN: frozenset({IN_SHUTDOWN_PROCESSING, FAILED}),
    IN_SHUTDOWN_PROCESSING: frozenset({INACTIVE, FAILED}),
    INACTIVE: frozenset({INIT_STARTUP}),
    FAILED: frozenset({INIT_STARTUP, INIT_SHUTDOWN}),
}

# States in which a decoder process may exist (or be about to): a start was requested and not yet undone.
RUNNING: Final = frozenset({INIT_STARTUP, IN_STARTUP_PROCESSING, ACTIVE})
STOPPING: Final = frozenset({INIT_SHUTDOWN, IN_SHUTDOWN_PROCESSING})
# Settings other than the live-changeable ones may only change in these states.
AT_REST: Final = frozenset({INACTIVE, FAILED})

# The forward chains events move along. An event names the state it proves; the scenario walks the chain up
# to it, never backwards and never across chains (a late "started" reply cannot undo a stop).
STARTUP_CHAIN: Final = (INIT_STARTUP, IN_STARTUP_PROCESSING, ACTIVE)
SHUTDOWN_CHAIN: Final = (INIT_SHUTDOWN, IN_SHUTDOWN_PROCESSING, INACTIVE)


class IllegalTransitionError(Exception):
    """The requested change is not in the table; the API answers FAILED_PRECONDITION."""

    def __init__(self, current: ScenarioStatus.ValueType, target: ScenarioStatus.ValueType) -> None:
        super().__init__(f"cannot go from {name(current)} to {name(target)}")
        self.current = current
        self.target = target


def name(status: ScenarioStatus.ValueType) -> str:
    return ScenarioStatus.Name(status).removeprefix("SCENARIO_STATUS_")


def is_legal(current: ScenarioStatus.ValueType, target: ScenarioStatus.ValueType) -> bool:
    return target in LEGAL.get(current, frozenset())


def check(current: ScenarioStatus.ValueType, target: ScenarioStatus.ValueType) -> None:
    if not is_legal(current, target):
        raise IllegalTransitionError(current, target)


def walk(
    current: ScenarioStatus.ValueType,
    target: ScenarioStatus.ValueType,
    chain: Sequence[ScenarioStatus.ValueType],
) -> list[ScenarioStatus.ValueType]:
    """The states to pass through to get from ``current`` to ``target`` along ``chain`` (target included).

    Empty when the event is stale or does not apply: ``current`` is not on the chain before ``target``
    (already there, past it, or on another chain). Every step of a non-empty result is legal.
    """
    if current not in chain or target not in chain:
        return []
    start, end = chain.index(current), chain.index(target)
    if end <= start:
        return []
    return list(chain[start + 1 : end + 1])


def start_target(current: ScenarioStatus.ValueType) -> ScenarioStatus.ValueType | None:
    """What StartScenario does: INIT_STARTUP, or None for a no-op (already starting or running).

    Raises IllegalTransitionError while the scenario is stopping.
    """
    if current in RUNNING:
        return None
    check(current, INIT_STARTUP)
    return INIT_STARTUP


def stop_target(current: ScenarioStatus.ValueType) -> ScenarioStatus.ValueType | None:
    """What StopScenario does: INIT_SHUTDOWN, or None for a no-op (already stopping or INACTIVE)."""
    if current in STOPPING or current == INACTIVE:
        return None
    check(current, INIT_SHUTDOWN)
    return INIT_SHUTDOWN
