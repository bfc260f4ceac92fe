"""Pure parts of the control service: the lifecycle table (property-tested), validation, page tokens, the
bounded subscriber queue and the live statistics. No servers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vap_control import lifecycle, pagetokens, validation
from vap_control.errors import InvalidArgumentError
from vap_control.repo.scenarios import ScenarioRow, settings_only, to_proto
from vap_control.subscriptions import LiveStats, Subscriber, _percentile
from vap_proto.v1 import common_pb2, control_pb2, scenario_pb2, source_pb2

STATES = list(lifecycle.ALL_STATES)
states = st.sampled_from(STATES)


# --- lifecycle ----------------------------------------------------------------------------------------


def test_the_table_is_the_documented_one() -> None:
    expected = {
        (lifecycle.INIT_STARTUP, lifecycle.IN_STARTUP_PROCESSING),
        (lifecycle.IN_STARTUP_PROCESSING, lifecycle.ACTIVE),
        (lifecycle.ACTIVE, lifecycle.INIT_SHUTDOWN),
        (lifecycle.INIT_SHUTDOWN, lifecycle.IN_SHUTDOWN_PROCESSING),
        (lifecycle.IN_SHUTDOWN_PROCESSING, lifecycle.INACTIVE),
        (lifecycle.INACTIVE, lifecycle.INIT_STARTUP),
        (lifecycle.INIT_STARTUP, lifecycle.INIT_SHUTDOWN),
        (lifecycle.IN_STARTUP_PROCESSING, lifecycle.INIT_SHUTDOWN),
        (lifecycle.FAILED, lifecycle.INIT_STARTUP),
        (lifecycle.FAILED, lifecycle.INIT_SHUTDOWN),
    } | {(s, lifecycle.FAILED) for s in STATES if s not in (lifecycle.INACTIVE, lifecycle.FAILED)}
    actual = {(a, b) for a, targets in lifecycle.LEGAL.items() for b in targets}
    assert actual == expected


@given(states, states)
def test_check_agrees_with_is_legal(current: int, target: int) -> None:
    if lifecycle.is_legal(current, target):  # type: ignore[arg-type]
        lifecycle.check(current, target)  # type: ignore[arg-type]
    else:
        with pytest.raises(lifecycle.IllegalTransitionError):
            lifecycle.check(current, target)  # type: ignore[arg-type]


@given(states, states, st.sampled_from([lifecycle.STARTUP_CHAIN, lifecycle.SHUTDOWN_CHAIN]))
def test_walks_are_legal_forward_and_end_at_the_target(
    current: int, target: int, chain: tuple[int, ...]
) -> None:
    path = lifecycle.walk(current, target, chain)  # type: ignore[arg-type]
    if not path:
        return
    assert path[-1] == target
    at = current
    for step in path:
        assert lifecycle.is_legal(at, step)  # type: ignore[arg-type]
        at = step
    assert chain.index(target) > chain.index(current)  # never backwards


EVENTS = st.lists(
    st.sampled_from(["start", "stop", "ack_start", "running", "ack_stop", "gone", "fail"]), max_size=40
)


@given(EVENTS)
@settings(max_examples=300)
def test_any_event_sequence_only_takes_legal_steps(events: list[str]) -> None:
    """Drive the state machine the way the service does (API calls and agent events, in any order, stale
    ones included): every applied step is in the table and the state is always a known one."""
    status = lifecycle.INACTIVE
    for event in events:
        try:
            if event == "start":
                target = lifecycle.start_target(status)
                path = [target] if target is not None else []
            elif event == "stop":
                target = lifecycle.stop_target(status)
                path = [target] if target is not None else []
            elif event == "ack_start":
                path = lifecycle.walk(status, lifecycle.IN_STARTUP_PROCESSING, lifecycle.STARTUP_CHAIN)
            elif event == "running":
                path = lifecycle.walk(status, lifecycle.ACTIVE, lifecycle.STARTUP_CHAIN)
            elif event == "ack_stop":
                path = lifecycle.walk(status, lifecycle.IN_SHUTDOWN_PROCESSING, lifecycle.SHUTDOWN_CHAIN)
            elif event == "gone":
                path = lifecycle.walk(status, lifecycle.INACTIVE, lifecycle.SHUTDOWN_CHAIN)
            else:
                path = [lifecycle.FAILED] if lifecycle.is_legal(status, lifecycle.FAILED) else []
        except lifecycle.IllegalTransitionError:
            assert event == "start" and status in lifecycle.STOPPING
            continue
        for step in path:
            assert lifecycle.is_legal(status, step)
            status = step
        assert status in STATES


def test_every_state_can_reach_every_other() -> None:
    def reachable(start: int) -> set[int]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in lifecycle.LEGAL[todo.pop()]:  # type: ignore[index]
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for state in STATES:
        assert reachable(state) == set(STATES)


def test_start_and_stop_rules() -> None:
    assert (
        lifecycle.start_target(lifecycle.INACTIVE) == lifecycle.INIT_STARTUP
        and lifecycle.start_target(lifecycle.FAILED) == lifecycle.INIT_STARTUP
    )
    assert all(lifecycle.start_target(s) is None for s in lifecycle.RUNNING)  # no-op
    for s in lifecycle.STOPPING:
        with pytest.raises(lifecycle.IllegalTransitionError):
            lifecycle.start_target(s)
    assert all(lifecycle.stop_target(s) is None for s in (*lifecycle.STOPPING, lifecycle.INACTIVE))
    assert all(
        lifecycle.stop_target(s) == lifecycle.INIT_SHUTDOWN for s in (*lifecycle.RUNNING, lifecycle.FAILED)
    )


# --- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://cam/stream",
        "rtsps://u:p@cam:8554/x",
        "https://cam/video.mjpg",
        "file:///data/a.mp4",
        "/data/a.mp4",
        "clip.mp4",
        "0",
        "/dev/video2",
    ],
)
def test_accepted_source_urls(url: str) -> None:
    validation.source_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://u:secretpw@cam/x",
        "rtsp://u:secretpw@/x",
        "rtsp://u:secretpw@cam:70000/x",
        # Odd shapes: no scheme, a password that ends the authority early (its tail read as a port), a
        # percent-encoded one, IPv6.
        "u:secretpw@127.0.0.1",
        "u:secretpw@[::1]:8554/x",
        "rtsp://u:secretpw/x@cam/x",
        "rtsp://u:secretpw@[::1:8554/x",
        "ftp://u%40x:secretpw%3A@cam/x",
        "rtsp://cam:0/x",
        "mailto:x@y",
        " rtsp://cam/x",
        "rtsp://ca m/x",
        "file://",
        "x" * 5000,
    ],
)
def test_refused_source_urls_never_echo_credentials(url: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validation.source_url(url)
    assert error.value.field == "scenario.source.url"
    assert "secretpw" not in str(error.value)


def _pts(points: list[tuple[float, float]]) -> list[common_pb2.Point]:
    return [common_pb2.Point(x=x, y=y) for x, y in points]


@given(st.integers(3, 40), st.floats(10, 500), st.floats(0, 1000), st.floats(0, 1000))
def test_regular_polygons_are_valid(n: int, radius: float, cx: float, cy: float) -> None:
    import math

    points = [
        (cx + radius * math.cos(2 * math.pi * i / n), cy + radius * math.sin(2 * math.pi * i / n))
        for i in range(n)
    ]
    validation.polygon(_pts(points), "zone", normalized=False)


@pytest.mark.parametrize(
    ("points", "problem"),
    [
        ([(0, 0), (10, 10)], "at least 3"),
        ([(0, 0), (10, 10), (10, 0), (0, 10)], "self-intersecting"),
        ([(0, 0), (5, 5), (10, 10)], "no area"),
        ([(0, 0), (10, 0), (10, 10), (0, 10), (5, 0)], "self-intersecting"),
        ([(0, 0), (float("nan"), 1), (2, 2)], "finite"),
    ],
)
def test_malformed_polygons(points: list[tuple[float, float]], problem: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validation.polygon(_pts(points), "rules[0].zone.polygon", normalized=False)
    assert problem in str(error.value) and str(error.value).startswith("rules[0].zone.polygon")


# --- page tokens --------------------------------------------------------------------------------------


def test_page_tokens_round_trip_and_are_bound_to_the_filters() -> None:
    request = control_pb2.QueryEventsRequest(scenario_id="a", rule_ids=["door"], page_size=10)
    token = pagetokens.encode(request, [123, "evt"])
    request.page_token = token
    request.page_size = 50  # page size may change between pages
    assert pagetokens.decode(request, token) == [123, "evt"]
    other = control_pb2.QueryEventsRequest(scenario_id="a", rule_ids=["area"], page_token=token)
    with pytest.raises(InvalidArgumentError):
        pagetokens.decode(other, token)
    with pytest.raises(InvalidArgumentError):
        pagetokens.decode(request, "not-a-token")
    assert pagetokens.decode(request, "") is None


# --- subscriber queue and live figures ---------------------------------------------------------------------


@given(st.integers(1, 8), st.lists(st.one_of(st.integers(0, 1000), st.none()), max_size=60))
def test_subscriber_queue_drops_the_oldest_and_counts(maxlen: int, ops: list[int | None]) -> None:
    """Model: a list where offer appends (dropping the head when full) and get pops the head."""

    async def run() -> None:
        sub: Subscriber[int] = Subscriber(maxlen, "test")
        model: list[int] = []
        dropped = 0
        for op in ops:
            if op is not None:
                sub.offer(op)
                model.append(op)
                if len(model) > maxlen:
                    model.pop(0)
                    dropped += 1
            elif model:
                got = await sub.get()
                assert got == (model.pop(0), dropped)
            assert len(sub) == len(model) <= maxlen and sub.dropped == dropped
        sub.close()
        while model:
            assert await sub.get() == (model.pop(0), dropped)
        assert await sub.get() is None

    asyncio.run(run())


def test_percentiles_and_rates() -> None:
    assert _percentile([1.0], 0.99) == 1.0
    values = [float(v) for v in range(1, 101)]
    assert _percentile(values, 0.5) == 50.0 and _percentile(values, 0.99) == 99.0
    stats = LiveStats(window_s=5.0)
    for i in range(10):
        stats.record(
            "ch", capture_ns=1_000_000_000, publish_ns=1_000_000_000 + (i + 1) * 1_000_000, tracked=False
        )
    fps, p50, p99 = stats.snapshot("ch")
    assert fps == pytest.approx(2.0) and p50 == 5.0 and p99 == 10.0
    assert stats.snapshot("unknown") == (0.0, 0.0, 0.0)


# --- redaction of stored scenarios ------------------------------------------------------------------------


def test_scenarios_leave_the_service_without_credentials() -> None:
    given_scenario = scenario_pb2.Scenario(
        name="x", source=source_pb2.SourceSpec(url="rtsp://admin:topsecret@cam/1", redacted_url="forged")
    )
    spec = settings_only(given_scenario)
    assert spec.source.url == "" and spec.source.redacted_url == ""
    now = datetime.now(UTC)
    row = ScenarioRow(
        id=uuid.uuid4(),
        client_request_id=None,
        channel_id="c",
        # A row sealed by start-up holds the redacted form here; even a plaintext one is never returned.
        redacted_url="rtsp://admin:topsecret@cam/1",
        sealed_url=None,
        spec=spec.SerializeToString(),
        status=lifecycle.FAILED,
        status_reason="open rtsp://admin:topsecret@cam/1 failed",
        revision=1,
        health=None,
        create_time=now,
        update_time=now,
        agent_id=None,
        node_id=None,
        pid=None,
        ring=None,
        assign_time=None,
    )
    out = to_proto(row)
    assert "topsecret" not in str(out)
    assert (
        out.source.redacted_url == "rtsp://***@cam/1" and out.status_reason == "open rtsp://***@cam/1 failed"
    )
