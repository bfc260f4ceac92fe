"""Following scenario configs (vap_common.scenario_configs), as inference, the tracker and dataset capture
do: the live subscription is in place before the stored configs are read, and the newest revision of each
scenario wins whatever the order they arrive in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from vap_common.scenario_configs import ConfigRevisions, follow_scenario_configs
from vap_proto.v1 import scenario_pb2


def _config(scenario: str, revision: int, active: bool = True) -> bytes:
    return scenario_pb2.ScenarioConfig(
        scenario_id=scenario, channel_id=f"ch-{scenario}", revision=revision, active=active
    ).SerializeToString()


def test_a_stopped_scenario_is_not_restarted_by_an_older_config() -> None:
    revisions = ConfigRevisions()
    assert revisions.newer(_config("a", 2)) is not None
    stopped = revisions.newer(_config("a", 3, active=False))
    assert stopped is not None and not stopped.active
    assert revisions.newer(_config("a", 2)) is None  # the stored, older active config replayed late
    assert revisions.newer(_config("a", 3)) is None  # a repeat
    assert revisions.newer(_config("b", 1)) is not None  # scenarios are independent


def test_undecodable_configs_are_counted_not_raised() -> None:
    seen: list[int] = []
    revisions = ConfigRevisions(on_undecodable=lambda: seen.append(1))
    assert revisions.newer(b"\xff\xff\xff") is None
    assert revisions.undecodable == 1 and seen == [1]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 20)), max_size=40))
def test_each_scenario_sees_only_rising_revisions(arrivals: list[tuple[str, int]]) -> None:
    revisions = ConfigRevisions()
    accepted: dict[str, list[int]] = {}
    for scenario, revision in arrivals:
        config = revisions.newer(_config(scenario, revision))
        if config is not None:
            accepted.setdefault(scenario, []).append(config.revision)
    for scenario, revs in accepted.items():
        assert revs == sorted(set(revs))
        assert revs[-1] == max(r for s, r in arrivals if s == scenario)


def test_live_subscription_comes_before_the_stored_replay() -> None:
    events: list[str] = []
    handled: list[tuple[str, bytes]] = []

    async def subscribe(subject: str, handler: Callable[[str, bytes], None]) -> None:
        events.append(f"subscribe {subject}")

    async def stored() -> list[tuple[str, bytes]]:
        events.append("stored")
        return [("vap.scenario.a.config", _config("a", 1)), ("vap.scenario.b.config", _config("b", 4))]

    def handler(subject: str, payload: bytes) -> None:
        handled.append((subject, payload))

    count = asyncio.run(follow_scenario_configs(subscribe, stored, handler))
    assert count == 2 and len(handled) == 2
    assert events[0].startswith("subscribe vap.scenario.") and events[1] == "stored"

    async def async_handler(subject: str, payload: bytes) -> None:  # awaited when the handler is async
        handled.append((subject, payload))

    asyncio.run(follow_scenario_configs(subscribe, stored, async_handler))
    assert len(handled) == 4
