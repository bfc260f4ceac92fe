# ruff: noqa: S608  (SQL is assembled from constant fragments only; every value is a bound parameter)
"""SQL for reading stored results: the pages of QueryDetections, QueryEvents and QueryCounts.

Pages are keyset pages (``after`` is the sort key of the previous page's last row), so every page is as cheap
as the first and rows inserted meanwhile never shift one. ``vap_control.queries`` turns the rows into the
API's messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, LiteralString, NamedTuple, TypeVar

from psycopg.rows import args_row

from vap_control.repo.scenarios import Conn
from vap_proto.v1 import analytics_pb2, tracking_pb2

FrameKey = tuple[int, str, int, int]  # capture_time_ns, channel, epoch, sequence (within one scenario)
_R = TypeVar("_R")


@dataclass(slots=True)
class _Where:
    """A WHERE clause of constant fragments joined by AND, with its bound values in order."""

    parts: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, fragment: str, *values: Any) -> None:
        self.parts.append(fragment)
        self.params.extend(values)

    def between(self, column: str, start: int | None, end: int | None) -> None:
        """``start <= column < end``, either bound optional."""
        if start is not None:
            self.add(f"{column} >= %s", start)
        if end is not None:
            self.add(f"{column} < %s", end)

    def __str__(self) -> str:
        return " AND ".join(self.parts) if self.parts else "TRUE"


async def _fetch(
    conn: Conn, row: Callable[..., _R], query: LiteralString | bytes, params: Sequence[Any]
) -> list[_R]:
    async with conn.cursor(row_factory=args_row(row)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


# --- detections -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DetectionFilter:
    """Which detections count: one of the classes (by id or name; none: any), this confident at least."""

    class_ids: Sequence[int] = ()
    class_names: Sequence[str] = ()
    min_confidence: float = 0.0

    def add_to(self, where: _Where) -> None:
        """The filter's conditions on ``detections d``."""
        if self.class_ids or self.class_names:
            where.add(
                "(d.class_id = ANY(%s) OR d.class_name = ANY(%s))",
                list(self.class_ids),
                list(self.class_names),
            )
        if self.min_confidence > 0:
            where.add("d.confidence >= %s", self.min_confidence)


class FrameRow(NamedTuple):
    capture_time_ns: int
    channel_id: str
    stream_epoch: int
    sequence: int
    pts_us: int
    width: int
    height: int
    stats: bytes | None
    publish_time_ns: int


class DetectionRow(NamedTuple):
    capture_time_ns: int
    channel_id: str
    stream_epoch: int
    sequence: int
    class_id: int
    class_name: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float
    attributes: list[dict[str, Any]] | None


class TrackRow(NamedTuple):
    capture_time_ns: int
    channel_id: str
    stream_epoch: int
    sequence: int
    track_id: int
    global_id: int
    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float
    attributes: list[dict[str, Any]] | None


async def frames_page(
    conn: Conn,
    scenario_id: uuid.UUID,
    *,
    start: int | None,
    end: int | None,
    after: FrameKey | None,
    detections: DetectionFilter,
    limit: int,
) -> list[FrameRow]:
    """Frames with at least one detection that passes ``detections``, by (capture time, channel, epoch,
    sequence)."""
    where = _Where()
    where.add("f.scenario_id = %s", scenario_id)
    where.between("f.capture_time_ns", start, end)
    if after is not None:
        where.add("(f.capture_time_ns, f.channel_id, f.stream_epoch, f.sequence) > (%s, %s, %s, %s)", *after)
    matching = _Where()
    detections.add_to(matching)
    if matching.parts:
        where.add(
            "EXISTS (SELECT 1 FROM detections d WHERE d.scenario_id = f.scenario_id"
            " AND d.capture_time_ns = f.capture_time_ns AND d.channel_id = f.channel_id"
            f" AND d.stream_epoch = f.stream_epoch AND d.sequence = f.sequence AND {matching})",
            *matching.params,
        )
    else:
        where.add("f.detection_count > 0")
    return await _fetch(
        conn,
        FrameRow,
        "SELECT f.capture_time_ns, f.channel_id, f.stream_epoch, f.sequence, f.pts_us, f.width, f.height,"
        f" f.stats, f.publish_time_ns FROM frames f WHERE {where}"
        " ORDER BY f.capture_time_ns, f.channel_id, f.stream_epoch, f.sequence LIMIT %s".encode(),
        [*where.params, limit],
    )


async def detections_between(
    conn: Conn, scenario_id: uuid.UUID, first_ns: int, last_ns: int, detections: DetectionFilter
) -> list[DetectionRow]:
    """Detections that pass ``detections`` captured from ``first_ns`` to ``last_ns`` (both included), in
    frame order and, within a frame, in their original order."""
    where = _Where()
    where.add("d.scenario_id = %s AND d.capture_time_ns BETWEEN %s AND %s", scenario_id, first_ns, last_ns)
    detections.add_to(where)
    return await _fetch(
        conn,
        DetectionRow,
        "SELECT d.capture_time_ns, d.channel_id, d.stream_epoch, d.sequence, d.class_id, d.class_name,"
        f" d.confidence, d.x1, d.y1, d.x2, d.y2, d.attributes FROM detections d WHERE {where}"
        " ORDER BY d.capture_time_ns, d.channel_id, d.stream_epoch, d.sequence, d.idx".encode(),
        where.params,
    )


async def matched_tracks_between(
    conn: Conn, scenario_id: uuid.UUID, first_ns: int, last_ns: int
) -> list[TrackRow]:
    """Tentative or confirmed tracks matched to a detection in their frame (``frames_since_update = 0``),
    captured from ``first_ns`` to ``last_ns`` (both included)."""
    return await _fetch(
        conn,
        TrackRow,
        "SELECT capture_time_ns, channel_id, stream_epoch, sequence, track_id, global_id, class_id,"
        " x1, y1, x2, y2, attributes FROM tracks WHERE scenario_id = %s AND capture_time_ns BETWEEN %s AND %s"
        " AND frames_since_update = 0 AND state = ANY(%s)",
        (
            scenario_id,
            first_ns,
            last_ns,
            [tracking_pb2.TrackState.TRACK_STATE_TENTATIVE, tracking_pb2.TrackState.TRACK_STATE_CONFIRMED],
        ),
    )


# --- events ---------------------------------------------------------------------------------------------


class EventRow(NamedTuple):
    event_time_ns: int
    event_id: str
    payload: bytes


async def events_page(
    conn: Conn,
    scenario_id: uuid.UUID,
    *,
    start: int | None,
    end: int | None,
    kinds: Sequence[int],
    rule_ids: Sequence[str],
    after: tuple[int, str] | None,
    limit: int,
) -> list[EventRow]:
    """Events of the given kinds and rules (none given = all), by (event time, event id)."""
    where = _Where()
    where.add("scenario_id = %s", scenario_id)
    where.between("event_time_ns", start, end)
    if kinds:
        where.add("kind = ANY(%s)", list(kinds))
    if rule_ids:
        where.add("rule_id = ANY(%s)", list(rule_ids))
    if after is not None:
        where.add("(event_time_ns, event_id) > (%s, %s)", *after)
    return await _fetch(
        conn,
        EventRow,
        f"SELECT event_time_ns, event_id, payload FROM events WHERE {where}"
        " ORDER BY event_time_ns, event_id LIMIT %s".encode(),
        [*where.params, limit],
    )


# --- counts ---------------------------------------------------------------------------------------------


class CountRule(NamedTuple):
    rule_id: str
    kind: str  # "line" | "zone"
    first_start_ns: int  # the earliest stored interval


@dataclass(slots=True)
class CountSums:
    """One bucket's counts of one rule, summed over the stored intervals that start in it."""

    a_to_b: int = 0
    b_to_a: int = 0
    enters: int = 0
    exits: int = 0
    max_occupancy: int = 0
    occupancy_ns: float = 0.0  # sum of mean_occupancy x interval length: time-weighted mean over the bucket
    loitering: int = 0
    dwell_weighted: float = 0.0  # sum of mean_dwell_ms x exits


class AttributeEvent(NamedTuple):
    bucket: int
    rule_id: str
    kind: int
    payload: bytes
    value: str | None  # the track's latest vote of the attribute; None without one


async def count_rules(
    conn: Conn, scenario_id: uuid.UUID, *, start: int | None, end: int | None
) -> list[CountRule]:
    """The rules with stored counts for intervals that overlap [start, end)."""
    where = _Where()
    where.add("scenario_id = %s", scenario_id)
    where.between("interval_start_ns", None, end)
    if start is not None:
        where.add("interval_end_ns > %s", start)
    return await _fetch(
        conn,
        CountRule,
        f"SELECT rule_id, min(kind), min(interval_start_ns) FROM counts WHERE {where}"
        " GROUP BY rule_id".encode(),
        where.params,
    )


async def count_sums(
    conn: Conn, scenario_id: uuid.UUID, *, lo: int, hi: int, interval_ns: int, rule_ids: Sequence[str]
) -> dict[tuple[int, str], CountSums]:
    """(bucket start, rule) -> the sums of the rules' intervals starting in [lo, hi), in buckets of
    ``interval_ns``."""
    cur = await conn.execute(
        "SELECT interval_start_ns - interval_start_ns %% %s AS bucket, rule_id, sum(a_to_b), sum(b_to_a),"
        " sum(enters), sum(exits), max(max_occupancy),"
        " sum(mean_occupancy::float8 * (interval_end_ns - interval_start_ns)), sum(loitering),"
        " sum(mean_dwell_ms::float8 * exits)"
        " FROM counts WHERE scenario_id = %s AND interval_start_ns >= %s AND interval_start_ns < %s"
        " AND rule_id = ANY(%s) GROUP BY 1, 2",
        (interval_ns, scenario_id, lo, hi, list(rule_ids)),
    )
    out: dict[tuple[int, str], CountSums] = {}
    for bucket, rule_id, a2b, b2a, enters, exits, max_occ, occ_ns, loit, dwell in await cur.fetchall():
        out[(int(bucket), rule_id)] = CountSums(
            int(a2b),
            int(b2a),
            int(enters),
            int(exits),
            int(max_occ or 0),
            float(occ_ns or 0),
            int(loit),
            float(dwell or 0),
        )
    return out


class UncountedEvent(NamedTuple):
    event_time_ns: int
    rule_id: str
    kind: int
    payload: bytes


# Counted kinds: what RuleCounter counts (dwell reports are not counted).
COUNTED_KINDS = (
    analytics_pb2.EVENT_KIND_LINE_CROSSING,
    analytics_pb2.EVENT_KIND_ZONE_ENTER,
    analytics_pb2.EVENT_KIND_ZONE_EXIT,
    analytics_pb2.EVENT_KIND_LOITERING,
)
# No stored interval is longer than this (the scenario's count interval is at most a day: validation).
MAX_INTERVAL_NS = 86_400 * 10**9


async def uncounted_events(
    conn: Conn, scenario_id: uuid.UUID, *, lo: int, hi: int, rule_ids: Sequence[str]
) -> list[UncountedEvent]:
    """The counted kinds' events in [lo, hi) that no stored count interval of their rule covers: those of
    an interval still open, or never published (a tracker that died mid-interval)."""
    return await _fetch(
        conn,
        UncountedEvent,
        b"SELECT e.event_time_ns, e.rule_id, e.kind, e.payload FROM events e"
        b" WHERE e.scenario_id = %s AND e.event_time_ns >= %s AND e.event_time_ns < %s"
        b" AND e.rule_id = ANY(%s) AND e.kind = ANY(%s) AND NOT EXISTS (SELECT 1 FROM counts c"
        b" WHERE c.scenario_id = e.scenario_id AND c.interval_start_ns <= e.event_time_ns"
        b" AND c.interval_start_ns > e.event_time_ns - %s AND c.interval_end_ns > e.event_time_ns"
        b" AND c.rule_id = e.rule_id)",
        (scenario_id, lo, hi, list(rule_ids), [int(k) for k in COUNTED_KINDS], MAX_INTERVAL_NS),
    )


async def attribute_events(
    conn: Conn,
    scenario_id: uuid.UUID,
    *,
    name: str,
    lo: int,
    hi: int,
    interval_ns: int,
    rule_ids: Sequence[str],
) -> list[AttributeEvent]:
    """Events of ``rule_ids`` in [lo, hi) with their bucket start and their track's latest vote of attribute
    ``name``."""
    return await _fetch(
        conn,
        AttributeEvent,
        "SELECT e.event_time_ns - e.event_time_ns %% %s, e.rule_id, e.kind, e.payload, ta.value"
        " FROM events e LEFT JOIN track_attributes ta ON ta.scenario_id = e.scenario_id"
        " AND ta.channel_id = e.channel_id AND ta.track_id = e.track_id AND ta.name = %s"
        " WHERE e.scenario_id = %s AND e.event_time_ns >= %s AND e.event_time_ns < %s"
        " AND e.rule_id = ANY(%s)",
        (interval_ns, name, scenario_id, lo, hi, list(rule_ids)),
    )
