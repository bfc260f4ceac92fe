"""Every NATS subject VAP uses, in one place.

Layout (``<id>`` is always an escaped token, see :func:`token`)::

    vap.frames.<channel>            FrameRef          decoder -> inference       (per kept frame)
    vap.frames.<channel>.<node>     FrameRef          the same on a multi-node deployment: only the
                                                      node's own inference subscribes (rings are host-local)
    vap.detections.<channel>        FrameDetections   inference -> tracker, control
    vap.tracks.<channel>            TrackedFrame      tracker -> control
    vap.events.<channel>            AnalyticsEvent    tracker -> control
    vap.counts.<channel>            IntervalCounts    tracker -> control          (per closed interval)
    vap.health.<channel>            ChannelHealth     decoder agent -> control   (periodic + on change)
    vap.scenario.<scenario>.config  ScenarioConfig    control -> inference, tracker
    vap.agent.<agent>.commands      AgentCommand      control (outbox relay) -> decoder agent
    vap.agent.<agent>.replies       AgentReply        decoder agent -> control
    vap.agent.<agent>.status        AgentStatus       decoder agent -> control   (heartbeat)
    vap.tracker.<tracker>.status    TrackerStatus     tracker -> trackers        (shard membership)

JetStream streams (created by control; names are control settings, these are the defaults)::

    VAP_RESULTS          detections, tracks, events, counts: control's durable inbox
    VAP_SCENARIO_CONFIG  the latest ScenarioConfig per scenario: read by inference, tracker, dataset

Who may publish and subscribe which of these is derived from this module in ``vap_common.nats_auth``.

All payloads are serialised ``vap.v1`` protobuf messages (``vap_proto.v1``), never JSON.

Ids become subject tokens through :func:`token`, a reversible escaping that keeps ``[A-Za-z0-9_-]`` and
writes every other character as ``=XX`` per UTF-8 byte (quoted-printable style), so no token can contain
``.``, ``*``, ``>`` or whitespace, and distinct ids always give distinct tokens. Tokens are also valid
JetStream KV keys and consumer names. :func:`untoken` reverses it, e.g. to recover
the channel id of a message received on a wildcard subscription (see :func:`parse`).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = [
    "AGENT",
    "CONFIG_STREAM",
    "COUNTS",
    "DETECTIONS",
    "EVENTS",
    "FRAMES",
    "HEALTH",
    "PREFIX",
    "RESULTS_STREAM",
    "SCENARIO",
    "TRACKER",
    "TRACKS",
    "ParsedSubject",
    "agent_commands",
    "agent_replies",
    "agent_status",
    "all_agent_commands",
    "all_agent_replies",
    "all_agent_status",
    "all_channel_health",
    "all_counts",
    "all_detections",
    "all_events",
    "all_frames",
    "all_frames_every_node",
    "all_scenario_configs",
    "all_tracker_status",
    "all_tracks",
    "channel_health",
    "counts",
    "detections",
    "events",
    "frames",
    "parse",
    "scenario_config",
    "token",
    "tracker_status",
    "tracks",
    "untoken",
]

PREFIX: Final = "vap"
"""First token of every VAP subject."""

# Second tokens (the kind of stream).
FRAMES: Final = "frames"
DETECTIONS: Final = "detections"
TRACKS: Final = "tracks"
EVENTS: Final = "events"
COUNTS: Final = "counts"
HEALTH: Final = "health"
SCENARIO: Final = "scenario"
AGENT: Final = "agent"
TRACKER: Final = "tracker"

# JetStream streams: the default names of control's ``inbox_stream`` and ``config_stream`` settings.
RESULTS_STREAM: Final = "VAP_RESULTS"
CONFIG_STREAM: Final = "VAP_SCENARIO_CONFIG"

_SCENARIO_CONFIG: Final = "config"
_AGENT_COMMANDS: Final = "commands"
_AGENT_REPLIES: Final = "replies"
_AGENT_STATUS: Final = "status"

_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPE: Final = "="
_TOKEN_RE: Final = re.compile(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+")
_PER_CHANNEL: Final = frozenset({FRAMES, DETECTIONS, TRACKS, EVENTS, COUNTS, HEALTH})
_AGENT_LEAVES: Final = frozenset({_AGENT_COMMANDS, _AGENT_REPLIES, _AGENT_STATUS})
_TRACKER_STATUS: Final = "status"


def token(raw_id: str) -> str:
    """Escape an id (channel, scenario or agent id) into one NATS subject token.

    Letters, digits, ``_`` and ``-`` are kept; every other character (including ``=`` itself) becomes
    ``=XX`` for each byte of its UTF-8 encoding (upper-case hex). The mapping is injective and reversed by
    :func:`untoken`. Raises ValueError for an empty id (an empty token is not a valid subject).
    """
    if not raw_id:
        raise ValueError("an id used in a NATS subject must not be empty")
    data = raw_id.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if b in _SAFE else f"{_ESCAPE}{b:02X}" for b in data)


def untoken(tok: str) -> str:
    """Inverse of :func:`token`. Raises ValueError for a string :func:`token` cannot produce."""
    if not _TOKEN_RE.fullmatch(tok):
        raise ValueError(f"not an escaped subject token: {tok!r}")
    out = bytearray()
    i = 0
    while i < len(tok):
        if tok[i] == _ESCAPE:
            out.append(int(tok[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(tok[i]))
            i += 1
    raw = out.decode("utf-8", "surrogatepass")
    if token(raw) != tok:  # e.g. "=41" for a safe character: not canonical
        raise ValueError(f"not a canonical subject token: {tok!r}")
    return raw


def _join(*parts: str) -> str:
    return ".".join((PREFIX, *parts))


# Per-channel data path ---------------------------------------------------------------------------------


def frames(channel_id: str, node_id: str = "") -> str:
    """``vap.frames.<channel>``: vap.v1.FrameRef for every kept frame, published by the channel's decoder.

    With a ``node_id`` (a multi-node deployment): ``vap.frames.<channel>.<node>``, so each node's inference
    service receives only the frames whose rings live on its own host."""
    if node_id:
        return _join(FRAMES, token(channel_id), token(node_id))
    return _join(FRAMES, token(channel_id))


def detections(channel_id: str) -> str:
    """``vap.detections.<channel>``: vap.v1.FrameDetections per inferred frame, published by inference."""
    return _join(DETECTIONS, token(channel_id))


def tracks(channel_id: str) -> str:
    """``vap.tracks.<channel>``: vap.v1.TrackedFrame per tracked frame, published by the tracker."""
    return _join(TRACKS, token(channel_id))


def events(channel_id: str) -> str:
    """``vap.events.<channel>``: vap.v1.AnalyticsEvent (line crossings, zone events), from the tracker."""
    return _join(EVENTS, token(channel_id))


def counts(channel_id: str) -> str:
    """``vap.counts.<channel>``: vap.v1.IntervalCounts per rule when an interval closes, from the tracker."""
    return _join(COUNTS, token(channel_id))


def channel_health(channel_id: str) -> str:
    """``vap.health.<channel>``: vap.v1.ChannelHealth, periodic and on change, from the decoder agent."""
    return _join(HEALTH, token(channel_id))


# Control plane -----------------------------------------------------------------------------------------


def scenario_config(scenario_id: str) -> str:
    """``vap.scenario.<scenario>.config``: vap.v1.ScenarioConfig from control (start, rule change, stop)."""
    return _join(SCENARIO, token(scenario_id), _SCENARIO_CONFIG)


def agent_commands(agent_id: str) -> str:
    """``vap.agent.<agent>.commands``: vap.v1.AgentCommand, published by control's outbox relay."""
    return _join(AGENT, token(agent_id), _AGENT_COMMANDS)


def agent_replies(agent_id: str) -> str:
    """``vap.agent.<agent>.replies``: vap.v1.AgentReply for every command the agent handled."""
    return _join(AGENT, token(agent_id), _AGENT_REPLIES)


def agent_status(agent_id: str) -> str:
    """``vap.agent.<agent>.status``: vap.v1.AgentStatus heartbeat of a decoder agent."""
    return _join(AGENT, token(agent_id), _AGENT_STATUS)


def tracker_status(tracker_id: str) -> str:
    """``vap.tracker.<tracker>.status``: vap.v1.TrackerStatus, the shard-membership heartbeat of a tracker."""
    return _join(TRACKER, token(tracker_id), _TRACKER_STATUS)


# Wildcards for subscribers -----------------------------------------------------------------------------


def all_frames(node_id: str = "") -> str:
    """``vap.frames.*``: FrameRef of every channel; with a ``node_id``, ``vap.frames.*.<node>``: every channel
    decoded on that node."""
    if node_id:
        return _join(FRAMES, "*", token(node_id))
    return _join(FRAMES, "*")


def all_frames_every_node() -> str:
    """``vap.frames.>``: FrameRef of every channel, single-node (``vap.frames.<channel>``) and node-scoped
    (``vap.frames.<channel>.<node>``) alike; what a permission for frames names."""
    return _join(FRAMES, ">")


def all_detections() -> str:
    """``vap.detections.*``: FrameDetections of every channel."""
    return _join(DETECTIONS, "*")


def all_tracks() -> str:
    """``vap.tracks.*``: TrackedFrame of every channel."""
    return _join(TRACKS, "*")


def all_events() -> str:
    """``vap.events.*``: AnalyticsEvent of every channel."""
    return _join(EVENTS, "*")


def all_counts() -> str:
    """``vap.counts.*``: IntervalCounts of every channel."""
    return _join(COUNTS, "*")


def all_channel_health() -> str:
    """``vap.health.*``: ChannelHealth of every channel."""
    return _join(HEALTH, "*")


def all_scenario_configs() -> str:
    """``vap.scenario.*.config``: ScenarioConfig of every scenario."""
    return _join(SCENARIO, "*", _SCENARIO_CONFIG)


def all_agent_commands() -> str:
    """``vap.agent.*.commands``: AgentCommand to every agent."""
    return _join(AGENT, "*", _AGENT_COMMANDS)


def all_agent_replies() -> str:
    """``vap.agent.*.replies``: AgentReply of every agent."""
    return _join(AGENT, "*", _AGENT_REPLIES)


def all_agent_status() -> str:
    """``vap.agent.*.status``: AgentStatus heartbeats of every agent."""
    return _join(AGENT, "*", _AGENT_STATUS)


def all_tracker_status() -> str:
    """``vap.tracker.*.status``: TrackerStatus heartbeats of every sharded tracker."""
    return _join(TRACKER, "*", _TRACKER_STATUS)


class ParsedSubject(NamedTuple):
    """A concrete VAP subject split into its kind and the (unescaped) id it is about."""

    kind: str
    """Second token: one of FRAMES, DETECTIONS, TRACKS, EVENTS, COUNTS, HEALTH, SCENARIO, AGENT, TRACKER."""
    id: str
    """Channel id (per-channel kinds), scenario id (SCENARIO), agent id (AGENT) or tracker id (TRACKER),
    unescaped."""
    leaf: str
    """Last token for SCENARIO ("config"), AGENT ("commands", "replies", "status") and TRACKER ("status");
    the (unescaped) node id of a node-scoped FRAMES subject; "" otherwise."""


def parse(subject: str) -> ParsedSubject:
    """Split a concrete subject made by this module (e.g. ``msg.subject`` of a wildcard subscription).

    Raises ValueError for any subject this module does not produce.
    """
    parts = subject.split(".")
    if len(parts) == 3 and parts[0] == PREFIX and parts[1] in _PER_CHANNEL:
        return ParsedSubject(parts[1], untoken(parts[2]), "")
    if len(parts) == 4 and parts[0] == PREFIX:
        kind, tok, leaf = parts[1], parts[2], parts[3]
        if kind == FRAMES:
            return ParsedSubject(kind, untoken(tok), untoken(leaf))
        if (
            (kind == SCENARIO and leaf == _SCENARIO_CONFIG)
            or (kind == AGENT and leaf in _AGENT_LEAVES)
            or (kind == TRACKER and leaf == _TRACKER_STATUS)
        ):
            return ParsedSubject(kind, untoken(tok), leaf)
    raise ValueError(f"not a VAP subject: {subject!r}")
