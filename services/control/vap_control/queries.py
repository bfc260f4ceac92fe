# ruff: noqa: S608  (SQL is assembled from constant fragments only; every value is a bound parameter)
"""Stored results: QueryDetections, QueryEvents and QueryCounts, with keyset pagination.

Keyset (not OFFSET) pagination keeps every page as cheap as the first, and rows inserted meanwhile never shift
a page. Sort keys: frames by (capture time, channel, epoch, sequence), events by (event time, event id),
counts by (interval start, rule id).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from vap_control import pagetokens, validation
from vap_control.errors import InvalidArgumentError
from vap_control.repo.scenarios import Conn, ScenarioRow
from vap_proto.v1 import analytics_pb2, control_pb2, detection_pb2, frame_pb2, tracking_pb2

DEFAULT_PAGE = 100
FrameKey = tuple[int, str, int, int]  # capture_time_ns, channel, epoch, sequence (within one scenario)


def _time_where(column: str, start: int | None, end: int | None, params: list[Any]) -> str:
    parts = []
    if start is not None:
        parts.append(f"{column} >= %s")
        params.append(start)
    if end is not None:
        parts.append(f"{column} < %s")
        params.append(end)
    return " AND ".join(parts) if parts else "TRUE"


# --- detections -----------------------------------------------------------------------------------------


def _class_filter(req: control_pb2.QueryDetectionsRequest, params: list[Any], alias: str = "d") -> str:
    parts = []
    if req.class_ids or req.class_names:
        parts.append(f"({alias}.class_id = ANY(%s) OR {alias}.class_name = ANY(%s))")
        params.extend([list(req.class_ids), list(req.class_names)])
    if req.min_confidence > 0:
        parts.append(f"{alias}.confidence >= %s")
        params.append(req.min_confidence)
    return " AND ".join(parts)


async def query_detections(
    conn: Conn, scenario: ScenarioRow, req: control_pb2.QueryDetectionsRequest
) -> control_pb2.QueryDetectionsResponse:
    """Frames with at least one (matching) detection, oldest first, with track ids where the tracker ran."""
    validation.unit_interval(req.min_confidence, "min_confidence")
    start, end = validation.time_range(req.time_range)
    size = validation.page_size(req.page_size, default=DEFAULT_PAGE)
    cursor = pagetokens.decode(req, req.page_token)
    params: list[Any] = [scenario.id]
    where = ["f.scenario_id = %s", _time_where("f.capture_time_ns", start, end, params)]
    if cursor is not None:
        where.append("(f.capture_time_ns, f.channel_id, f.stream_epoch, f.sequence) > (%s, %s, %s, %s)")
        params.extend(_frame_cursor(cursor))
    det_params: list[Any] = []
    det_filter = _class_filter(req, det_params)
    if det_filter:
        where.append(
            "EXISTS (SELECT 1 FROM detections d WHERE d.scenario_id = f.scenario_id"
            " AND d.capture_time_ns = f.capture_time_ns AND d.channel_id = f.channel_id"
            f" AND d.stream_epoch = f.stream_epoch AND d.sequence = f.sequence AND {det_filter})"
        )
        params.extend(det_params)
    else:
        where.append("f.detection_count > 0")
    params.append(size + 1)
    cur = await conn.execute(
        "SELECT f.capture_time_ns, f.channel_id, f.stream_epoch, f.sequence, f.pts_us, f.width, f.height,"
        f" f.stats, f.publish_time_ns FROM frames f WHERE {' AND '.join(where)}"
        " ORDER BY f.capture_time_ns, f.channel_id, f.stream_epoch, f.sequence LIMIT %s".encode(),
        params,
    )
    rows = await cur.fetchall()
    more = len(rows) > size
    rows = rows[:size]
    response = control_pb2.QueryDetectionsResponse()
    if not rows:
        return response
    frames: dict[FrameKey, detection_pb2.FrameDetections] = {}
    for capture_ns, channel, epoch, seq, pts, width, height, stats, publish_ns in rows:
        fd = response.frames.add(publish_time_ns=publish_ns)
        fd.frame.CopyFrom(
            frame_pb2.FrameInfo(
                channel_id=channel,
                scenario_id=str(scenario.id),
                sequence=seq,
                stream_epoch=epoch,
                capture_time_ns=capture_ns,
                pts_us=pts,
                width=width,
                height=height,
            )
        )
        if stats:
            fd.stats.ParseFromString(stats)
        frames[(capture_ns, channel, epoch, seq)] = fd
    first_ns, last_ns = rows[0][0], rows[-1][0]
    await _attach_detections(conn, scenario.id, frames, first_ns, last_ns, req)
    await _attach_track_ids(conn, scenario.id, frames, first_ns, last_ns)
    if more:
        last = rows[-1]
        response.next_page_token = pagetokens.encode(req, [last[0], last[1], last[2], last[3]])
    return response


def _frame_cursor(cursor: list[Any]) -> list[Any]:
    try:
        ns, channel, epoch, seq = cursor
        return [int(ns), str(channel), int(epoch), int(seq)]
    except (TypeError, ValueError):
        raise InvalidArgumentError("page_token", "not a page token of this call") from None


async def _attach_detections(
    conn: Conn,
    scenario_id: uuid.UUID,
    frames: dict[FrameKey, detection_pb2.FrameDetections],
    first_ns: int,
    last_ns: int,
    req: control_pb2.QueryDetectionsRequest,
) -> None:
    params: list[Any] = [scenario_id, first_ns, last_ns]
    det_filter = _class_filter(req, params)
    cur = await conn.execute(
        "SELECT d.capture_time_ns, d.channel_id, d.stream_epoch, d.sequence, d.class_id, d.class_name,"
        " d.confidence, d.x1, d.y1, d.x2, d.y2, d.attributes FROM detections d"
        " WHERE d.scenario_id = %s AND d.capture_time_ns BETWEEN %s AND %s"
        + (f" AND {det_filter}" if det_filter else "")
        + " ORDER BY d.capture_time_ns, d.channel_id, d.stream_epoch, d.sequence, d.idx",
        params,
    )
    for (
        ns,
        channel,
        epoch,
        seq,
        class_id,
        class_name,
        conf,
        x1,
        y1,
        x2,
        y2,
        attributes,
    ) in await cur.fetchall():
        fd = frames.get((ns, channel, epoch, seq))
        if fd is None:
            continue  # a frame of the same time range outside this page
        det = fd.detections.add(class_id=class_id, class_name=class_name, confidence=conf)
        det.box.x1, det.box.y1, det.box.x2, det.box.y2 = x1, y1, x2, y2
        _add_attributes(det, attributes)


def _add_attributes(det: detection_pb2.Detection, attributes: list[dict[str, Any]] | None) -> None:
    for a in attributes or []:
        det.attributes.add(
            name=a["name"], value=a["value"], confidence=a["confidence"], votes=a.get("votes", 0)
        )


async def _attach_track_ids(
    conn: Conn,
    scenario_id: uuid.UUID,
    frames: dict[FrameKey, detection_pb2.FrameDetections],
    first_ns: int,
    last_ns: int,
) -> None:
    """A track matched in a frame has exactly its detection's box (tracking.proto): match on class and box."""
    cur = await conn.execute(
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
    by_frame: dict[FrameKey, list[tuple[int, int, int, tuple[float, float, float, float], Any]]] = (
        defaultdict(list)
    )
    for ns, channel, epoch, seq, track_id, global_id, class_id, x1, y1, x2, y2, attrs in await cur.fetchall():
        by_frame[(ns, channel, epoch, seq)].append((track_id, global_id, class_id, (x1, y1, x2, y2), attrs))
    for key, tracks in by_frame.items():
        fd = frames.get(key)
        if fd is None:
            continue
        for det in fd.detections:
            box = (det.box.x1, det.box.y1, det.box.x2, det.box.y2)
            for track_id, global_id, class_id, tbox, attrs in tracks:
                if class_id == det.class_id and max(abs(a - b) for a, b in zip(box, tbox, strict=True)) < 0.5:
                    det.track_id = track_id
                    if global_id:
                        det.global_id = global_id
                    if not det.attributes:  # the track's votes (gender, age group...) when inference had none
                        _add_attributes(det, attrs)
                    break


# --- events ---------------------------------------------------------------------------------------------


async def query_events(
    conn: Conn, scenario: ScenarioRow, req: control_pb2.QueryEventsRequest
) -> control_pb2.QueryEventsResponse:
    start, end = validation.time_range(req.time_range)
    size = validation.page_size(req.page_size, default=DEFAULT_PAGE)
    cursor = pagetokens.decode(req, req.page_token)
    params: list[Any] = [scenario.id]
    where = ["scenario_id = %s", _time_where("event_time_ns", start, end, params)]
    if req.kinds:
        where.append("kind = ANY(%s)")
        params.append([int(k) for k in req.kinds])
    if req.rule_ids:
        where.append("rule_id = ANY(%s)")
        params.append(list(req.rule_ids))
    if cursor is not None:
        try:
            ns, event_id = int(cursor[0]), str(cursor[1])
        except (IndexError, TypeError, ValueError):
            raise InvalidArgumentError("page_token", "not a page token of this call") from None
        where.append("(event_time_ns, event_id) > (%s, %s)")
        params.extend([ns, event_id])
    params.append(size + 1)
    cur = await conn.execute(
        f"SELECT event_time_ns, event_id, payload FROM events WHERE {' AND '.join(where)}"
        " ORDER BY event_time_ns, event_id LIMIT %s".encode(),
        params,
    )
    rows = await cur.fetchall()
    response = control_pb2.QueryEventsResponse()
    for _, _, payload in rows[:size]:
        response.events.add().ParseFromString(payload)
    if len(rows) > size:
        last = rows[size - 1]
        response.next_page_token = pagetokens.encode(req, [last[0], last[1]])
    return response


# --- counts ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Agg:
    a_to_b: int = 0
    b_to_a: int = 0
    enters: int = 0
    exits: int = 0
    max_occupancy: int = 0
    occupancy_ns: float = 0.0  # sum of mean_occupancy x interval length: time-weighted mean over the bucket
    loitering: int = 0
    dwell_weighted: float = 0.0  # sum of mean_dwell_ms x exits


async def query_counts(
    conn: Conn,
    scenario: ScenarioRow,
    req: control_pb2.QueryCountsRequest,
    *,
    base_interval_s: float,
    now_ns: int,
) -> control_pb2.QueryCountsResponse:
    base_ns = round(base_interval_s * 1e9)
    if req.HasField("interval"):
        interval_ns = req.interval.ToNanoseconds()
        if interval_ns <= 0 or interval_ns % base_ns:
            raise InvalidArgumentError(
                "interval",
                f"must be a positive multiple of the scenario's count interval ({base_interval_s:g} s)",
            )
    else:
        interval_ns = base_ns
    start, end = validation.time_range(req.time_range)
    size = validation.page_size(req.page_size, default=DEFAULT_PAGE)
    cursor = pagetokens.decode(req, req.page_token)
    response = control_pb2.QueryCountsResponse()
    response.interval.FromNanoseconds(interval_ns)
    wanted = set(req.rule_ids)

    rules: dict[str, str] = {}  # rule id -> "line" | "zone"
    for rule in scenario.spec_proto().analytics.rules:
        kind = rule.WhichOneof("kind")
        if kind is not None and (not wanted or rule.rule_id in wanted):
            rules[rule.rule_id] = kind
    params: list[Any] = [scenario.id]
    time_sql = _time_where("interval_start_ns", None, end, params)
    if start is not None:
        time_sql += " AND interval_end_ns > %s"
        params.append(start)
    cur = await conn.execute(
        f"SELECT rule_id, min(kind), min(interval_start_ns) FROM counts WHERE scenario_id = %s AND {time_sql}"
        " GROUP BY rule_id".encode(),
        params,
    )
    first_stored: int | None = None
    for rule_id, kind, first in await cur.fetchall():
        if not wanted or rule_id in wanted:
            rules.setdefault(rule_id, kind)
            first_stored = first if first_stored is None else min(first_stored, first)
    if not rules:
        return response
    if start is None:
        start = first_stored if first_stored is not None else int(scenario.create_time.timestamp() * 1e9)
    end = end if end is not None else now_ns
    first_bucket = start - start % interval_ns  # intervals overlapping a bound are included whole
    rule_order = sorted(rules)

    if cursor is not None:
        try:
            bucket, last_rule = int(cursor[0]), str(cursor[1])
        except (IndexError, TypeError, ValueError):
            raise InvalidArgumentError("page_token", "not a page token of this call") from None
        position = [(bucket, r) for r in rule_order if r > last_rule]
        bucket_next = bucket + interval_ns
    else:
        position, bucket_next = [], first_bucket
    # Enough buckets for one page.
    items: list[tuple[int, str]] = list(position)
    b = bucket_next
    while len(items) < size + 1 and b < end:
        items.extend((b, r) for r in rule_order)
        b += interval_ns
    if not items:
        return response
    page, more = items[:size], len(items) > size
    lo, hi = page[0][0], page[-1][0] + interval_ns
    aggs = await _aggregate(conn, scenario.id, lo, hi, interval_ns, list(rules))
    for bucket, rule_id in page:
        agg = aggs.get((bucket, rule_id), _Agg())
        ic = response.counts.add(
            scenario_id=str(scenario.id),
            channel_id=scenario.channel_id,
            rule_id=rule_id,
            interval_start_ns=bucket,
            interval_end_ns=bucket + interval_ns,
        )
        if rules[rule_id] == "line":
            ic.line.a_to_b, ic.line.b_to_a = agg.a_to_b, agg.b_to_a
        else:
            ic.zone.enters, ic.zone.exits, ic.zone.loitering = agg.enters, agg.exits, agg.loitering
            ic.zone.max_occupancy = agg.max_occupancy
            ic.zone.mean_occupancy = agg.occupancy_ns / interval_ns
            ic.zone.mean_dwell_ms = round(agg.dwell_weighted / agg.exits) if agg.exits else 0
    if req.split_by_attribute:
        await _attribute_counts(conn, scenario.id, req.split_by_attribute, page, interval_ns, response)
    if more:
        last_bucket, last_rule_id = page[-1]
        response.next_page_token = pagetokens.encode(req, [last_bucket, last_rule_id])
    return response


async def _attribute_counts(
    conn: Conn,
    scenario_id: uuid.UUID,
    name: str,
    page: list[tuple[int, str]],
    interval_ns: int,
    response: control_pb2.QueryCountsResponse,
) -> None:
    """The page's events split by their track's latest vote of attribute ``name`` ("unknown" without one)."""
    lo, hi = page[0][0], page[-1][0] + interval_ns
    wanted = set(page)
    cur = await conn.execute(
        "SELECT e.event_time_ns - e.event_time_ns %% %s, e.rule_id, e.kind, e.payload, ta.value"
        " FROM events e LEFT JOIN track_attributes ta ON ta.scenario_id = e.scenario_id"
        " AND ta.channel_id = e.channel_id AND ta.track_id = e.track_id AND ta.name = %s"
        " WHERE e.scenario_id = %s AND e.event_time_ns >= %s AND e.event_time_ns < %s"
        " AND e.rule_id = ANY(%s)",
        (interval_ns, name, scenario_id, lo, hi, sorted({r for _, r in page})),
    )
    counts: dict[tuple[int, str, int, int, str], int] = defaultdict(int)
    for bucket, rule_id, kind, payload, value in await cur.fetchall():
        if (int(bucket), rule_id) not in wanted:
            continue
        direction = 0
        if kind == analytics_pb2.EVENT_KIND_LINE_CROSSING:
            direction = analytics_pb2.AnalyticsEvent.FromString(payload).line_crossing.direction
        counts[(int(bucket), rule_id, int(kind), direction, value or "unknown")] += 1
    for (bucket, rule_id, kind, direction, value), n in sorted(counts.items()):
        response.attribute_counts.add(
            rule_id=rule_id,
            interval_start_ns=bucket,
            kind=kind,
            direction=direction,
            value=value,
            count=n,
        )


async def _aggregate(
    conn: Conn, scenario_id: uuid.UUID, lo: int, hi: int, interval_ns: int, rule_ids: list[str]
) -> dict[tuple[int, str], _Agg]:
    cur = await conn.execute(
        "SELECT interval_start_ns - interval_start_ns %% %s AS bucket, rule_id, sum(a_to_b), sum(b_to_a),"
        " sum(enters), sum(exits), max(max_occupancy),"
        " sum(mean_occupancy::float8 * (interval_end_ns - interval_start_ns)), sum(loitering),"
        " sum(mean_dwell_ms::float8 * exits)"
        " FROM counts WHERE scenario_id = %s AND interval_start_ns >= %s AND interval_start_ns < %s"
        " AND rule_id = ANY(%s) GROUP BY 1, 2",
        (interval_ns, scenario_id, lo, hi, rule_ids),
    )
    out: dict[tuple[int, str], _Agg] = {}
    for bucket, rule_id, a2b, b2a, enters, exits, max_occ, occ_ns, loit, dwell in await cur.fetchall():
        out[(int(bucket), rule_id)] = _Agg(
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
