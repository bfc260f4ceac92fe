"""Stored results: QueryDetections, QueryEvents and QueryCounts, with keyset pagination.

Keyset (not OFFSET) pagination keeps every page as cheap as the first, and rows inserted meanwhile never shift
a page. Sort keys: frames by (capture time, channel, epoch, sequence), events by (event time, event id),
counts by (interval start, rule id). This module validates requests, keeps page tokens and builds the
responses; the SQL is ``repo.queries``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from vap_control import lifecycle, pagetokens, validation
from vap_control.errors import InvalidArgumentError
from vap_control.repo import queries as repo
from vap_control.repo.queries import FrameKey
from vap_control.repo.scenarios import Conn, ScenarioRow
from vap_proto.v1 import analytics_pb2, control_pb2, detection_pb2, frame_pb2

DEFAULT_PAGE = 100


# --- detections -----------------------------------------------------------------------------------------


def _detection_filter(req: control_pb2.QueryDetectionsRequest) -> repo.DetectionFilter:
    return repo.DetectionFilter(list(req.class_ids), list(req.class_names), req.min_confidence)


async def query_detections(
    conn: Conn, scenario: ScenarioRow, req: control_pb2.QueryDetectionsRequest
) -> control_pb2.QueryDetectionsResponse:
    """Frames with at least one (matching) detection, oldest first, with track ids where the tracker ran."""
    validation.unit_interval(req.min_confidence, "min_confidence")
    start, end = validation.time_range(req.time_range)
    size = validation.page_size(req.page_size, default=DEFAULT_PAGE)
    cursor = pagetokens.decode(req, req.page_token)
    rows = await repo.frames_page(
        conn,
        scenario.id,
        start=start,
        end=end,
        after=_frame_cursor(cursor) if cursor is not None else None,
        detections=_detection_filter(req),
        limit=size + 1,
    )
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


def _frame_cursor(cursor: list[Any]) -> FrameKey:
    try:
        ns, channel, epoch, seq = cursor
        return (int(ns), str(channel), int(epoch), int(seq))
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
    for d in await repo.detections_between(conn, scenario_id, first_ns, last_ns, _detection_filter(req)):
        fd = frames.get((d.capture_time_ns, d.channel_id, d.stream_epoch, d.sequence))
        if fd is None:
            continue  # a frame of the same time range outside this page
        det = fd.detections.add(class_id=d.class_id, class_name=d.class_name, confidence=d.confidence)
        det.box.x1, det.box.y1, det.box.x2, det.box.y2 = d.x1, d.y1, d.x2, d.y2
        _add_attributes(det, d.attributes)


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
    by_frame: dict[FrameKey, list[tuple[int, int, int, tuple[float, float, float, float], Any]]] = (
        defaultdict(list)
    )
    for t in await repo.matched_tracks_between(conn, scenario_id, first_ns, last_ns):
        by_frame[(t.capture_time_ns, t.channel_id, t.stream_epoch, t.sequence)].append(
            (t.track_id, t.global_id, t.class_id, (t.x1, t.y1, t.x2, t.y2), t.attributes)
        )
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
    after = None
    if cursor is not None:
        try:
            after = (int(cursor[0]), str(cursor[1]))
        except (IndexError, TypeError, ValueError):
            raise InvalidArgumentError("page_token", "not a page token of this call") from None
    rows = await repo.events_page(
        conn,
        scenario.id,
        start=start,
        end=end,
        kinds=[int(k) for k in req.kinds],
        rule_ids=list(req.rule_ids),
        after=after,
        limit=size + 1,
    )
    response = control_pb2.QueryEventsResponse()
    for _, _, payload in rows[:size]:
        response.events.add().ParseFromString(payload)
    if len(rows) > size:
        last = rows[size - 1]
        response.next_page_token = pagetokens.encode(req, [last[0], last[1]])
    return response


# --- counts ---------------------------------------------------------------------------------------------


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
    first_stored: int | None = None
    for stored in await repo.count_rules(conn, scenario.id, start=start, end=end):
        if not wanted or stored.rule_id in wanted:
            rules.setdefault(stored.rule_id, stored.kind)
            first = stored.first_start_ns
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
    sums = await repo.count_sums(
        conn, scenario.id, lo=lo, hi=hi, interval_ns=interval_ns, rule_ids=list(rules)
    )
    uncounted = _count_events(
        await repo.uncounted_events(conn, scenario.id, lo=lo, hi=hi, rule_ids=list(rules)), sums, interval_ns
    )
    # A running scenario's interval is not over before its end; a stopped one's last interval is complete.
    running = scenario.status_value in lifecycle.RUNNING or scenario.status_value in lifecycle.STOPPING
    for bucket, rule_id in page:
        agg = sums.get((bucket, rule_id), repo.CountSums())
        ic = response.counts.add(
            scenario_id=str(scenario.id),
            channel_id=scenario.channel_id,
            rule_id=rule_id,
            interval_start_ns=bucket,
            interval_end_ns=bucket + interval_ns,
            partial=(bucket, rule_id) in uncounted or (running and bucket + interval_ns > now_ns),
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


def _count_events(
    events: list[repo.UncountedEvent], sums: dict[tuple[int, str], repo.CountSums], interval_ns: int
) -> set[tuple[int, str]]:
    """Add events no stored interval counted to their buckets' sums as the tracker counts them; returns the
    buckets that got any."""
    touched: set[tuple[int, str]] = set()
    for ev in events:
        key = (ev.event_time_ns - ev.event_time_ns % interval_ns, ev.rule_id)
        agg = sums.setdefault(key, repo.CountSums())
        touched.add(key)
        event = analytics_pb2.AnalyticsEvent.FromString(ev.payload)
        if ev.kind == analytics_pb2.EVENT_KIND_LINE_CROSSING:
            if event.line_crossing.direction == analytics_pb2.CROSSING_DIRECTION_A_TO_B:
                agg.a_to_b += 1
            elif event.line_crossing.direction == analytics_pb2.CROSSING_DIRECTION_B_TO_A:
                agg.b_to_a += 1
        elif ev.kind == analytics_pb2.EVENT_KIND_ZONE_ENTER:
            agg.enters += 1
            agg.max_occupancy = max(agg.max_occupancy, event.zone_enter.occupancy)
        elif ev.kind == analytics_pb2.EVENT_KIND_ZONE_EXIT:
            agg.exits += 1
            agg.dwell_weighted += event.zone_exit.dwell_ms
        elif ev.kind == analytics_pb2.EVENT_KIND_LOITERING:
            agg.loitering += 1
    return touched


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
    counts: dict[tuple[int, str, int, int, str], int] = defaultdict(int)
    events = await repo.attribute_events(
        conn,
        scenario_id,
        name=name,
        lo=lo,
        hi=hi,
        interval_ns=interval_ns,
        rule_ids=sorted({r for _, r in page}),
    )
    for bucket, rule_id, kind, payload, value in events:
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
