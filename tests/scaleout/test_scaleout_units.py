"""The pure parts of scale-out: tracker shard ownership, node-scoped subjects and ring names, NATS server
lists, node settings passed to decoder processes."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vap_common import subjects
from vap_common.nats_urls import nats_servers
from vap_decoder.process import child_environment
from vap_decoder.settings import DecoderSettings
from vap_shmring import ring_name
from vap_shmring.naming import is_ring_name
from vap_tracker.sharding import Membership, owner

ids = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=20)


@given(st.sets(ids, min_size=1, max_size=6), st.lists(ids, min_size=1, max_size=30))
def test_each_channel_has_one_owner_and_a_departure_moves_only_its_channels(
    members: set[str], channels: list[str]
) -> None:
    before = {c: owner(members, c) for c in channels}
    assert all(o in members for o in before.values())
    gone = sorted(members)[0]
    rest = members - {gone}
    after = {c: owner(rest, c) for c in channels}
    for c in channels:
        if before[c] != gone:
            assert after[c] == before[c]  # rendezvous hashing: survivors keep their channels
        else:
            assert after[c] in rest or not rest


def test_a_second_tracker_takes_about_half_the_channels() -> None:
    channels = [f"cam-{i}" for i in range(2000)]
    share = sum(owner(["tracker-a", "tracker-b"], c) == "tracker-b" for c in channels) / len(channels)
    assert 0.45 < share < 0.55


def test_membership_forgets_silent_and_leaving_trackers() -> None:
    now = [0.0]
    m = Membership("me", timeout_s=2.0, clock=lambda: now[0])
    m.heard("a")
    m.heard("b")
    assert m.live() == ["a", "b", "me"]
    now[0] = 1.5
    m.heard("a")
    m.heard("b", leaving=True)
    assert m.live() == ["a", "me"]
    now[0] = 3.6  # a silent for 2.1 s
    assert m.live() == ["me"]
    assert all(m.owns(f"ch-{i}") for i in range(20))


@given(ids, ids)
def test_node_frame_subjects_round_trip(channel: str, node: str) -> None:
    subject = subjects.frames(channel, node)
    assert subjects.parse(subject) == subjects.ParsedSubject(subjects.FRAMES, channel, node)
    assert subjects.frames(channel) != subject
    pattern = subjects.all_frames(node).split(".")
    parts = subject.split(".")
    assert len(pattern) == len(parts) and all(p in ("*", q) for p, q in zip(pattern, parts, strict=True))
    tracker = subjects.tracker_status(node)
    assert subjects.parse(tracker) == subjects.ParsedSubject(subjects.TRACKER, node, "status")


@given(ids, ids, ids)
def test_ring_names_with_node_prefixes(channel: str, node_a: str, node_b: str) -> None:
    plain, a = ring_name(channel), ring_name(channel, node_a)
    assert plain == ring_name(channel, "") and a == ring_name(channel, node_a)
    assert a != plain and is_ring_name(a) and "/" not in a and len(a) < 255
    if node_a != node_b:
        assert a != ring_name(channel, node_b)


def test_nats_server_lists() -> None:
    assert nats_servers("nats://a:1") == ["nats://a:1"]
    assert nats_servers(" nats://a:1, nats://b:2 ,") == ["nats://a:1", "nats://b:2"]
    with pytest.raises(ValueError, match="no NATS server"):
        nats_servers(" , ")


def test_node_settings_reach_decoder_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DecoderSettings(
        agent_id="agent-x", node_id="node-x", node_labels={"zone": "north"}, node_models=["m1", "m2"]
    )
    env = child_environment(settings, base={})
    for name in [n for n in os.environ if n.startswith("VAP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = DecoderSettings()  # what the decoder process reads from its environment
    assert (child.node_id, child.node_labels, child.node_models) == (
        "node-x",
        {"zone": "north"},
        ["m1", "m2"],
    )
    assert child.ring_prefix == "node-x"
    assert DecoderSettings(agent_id="a", node_id="n", shm_prefix="p").ring_prefix == "p"
