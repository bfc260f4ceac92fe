"""The status decisions (``vap_control.status``), property-tested without a database: whatever happens in
whatever order, every change walks legal steps only, and an agent event that arrives twice changes the status
once."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from vap_control import lifecycle, status
from vap_proto.v1 import agent_pb2, health_pb2

Code = agent_pb2.AgentReplyCode
States = st.sampled_from(list(lifecycle.ALL_STATES))
Decide = Callable[[lifecycle.S.ValueType], status.Change]

codes = st.sampled_from([*Code.values(), 999])
health_states = st.sampled_from(list(health_pb2.ChannelState.values()))
events: st.SearchStrategy[Decide] = st.one_of(
    st.builds(
        lambda running: lambda s: status.start_accepted(s, running=running),
        st.booleans(),
    ),
    st.builds(
        lambda code: lambda s: status.start_refused(s, code=code, agent="a", message="m").change,
        codes.filter(lambda c: c != Code.AGENT_REPLY_CODE_OK),
    ),
    st.builds(
        lambda gone, there: lambda s: status.stop_accepted(s, process_gone=gone, placed_there=there),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(
        lambda code: lambda s: status.stop_refused(s, code=code, agent="a", message="m"),
        codes,
    ),
    st.builds(
        lambda state, pid: lambda s: status.health_reported(s, state=state, pid=pid, reason="r"),
        health_states,
        st.sampled_from([0, 42]),
    ),
    st.builds(
        lambda listed, running, old, failover: (
            lambda s: status.heartbeat(
                s,
                listed=listed,
                running=listed and running,
                placed_long_ago=old,
                agent="a",
                failover=failover,
            )
        ),
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(
        lambda failover: lambda s: status.agent_lost(s, agent="a", node="n", failover=failover),
        st.booleans(),
    ),
    st.just(lambda s: status.agent_lost_while_stopping(s, agent="a")),
    st.just(lambda s: status.node_drained(s, node="n")),
    st.just(status.stop_unplaced),
    st.just(lambda s: status.stop_agent_gone(s, agent="a")),
)
requests = st.sampled_from([status.start_requested, status.stop_requested])


def _walk(current: lifecycle.S.ValueType, change: status.Change) -> lifecycle.S.ValueType:
    for step in change.path:
        assert lifecycle.is_legal(current, step), (current, change)
        current = step
    assert (change.reason is not None) or not change.path, change
    return current


@given(st.lists(st.one_of(events, requests), max_size=25), States)
@settings(max_examples=300)
def test_every_decision_walks_legal_steps(sequence: list[Decide], start: lifecycle.S.ValueType) -> None:
    current = start
    for decide in sequence:
        try:
            change = decide(current)
        except lifecycle.IllegalTransitionError:
            assert decide is status.start_requested and current in lifecycle.STOPPING
            continue
        current = _walk(current, change)


@given(events, States)
@settings(max_examples=300)
def test_an_agent_event_twice_changes_the_status_once(decide: Decide, start: lifecycle.S.ValueType) -> None:
    after = _walk(start, decide(start))
    if after != lifecycle.INIT_STARTUP:  # a move ends where a start begins: the next event is a new run's
        assert decide(after).path == ()
