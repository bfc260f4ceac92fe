"""Request validation: every problem is an InvalidArgumentError whose message starts with the field's path
(``scenario.analytics.rules[1].zone.polygon: ...``), so a client can point at the field.

Messages never contain a camera URL's credentials: URLs are quoted redacted.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Collection, Iterable, Mapping
from urllib.parse import urlsplit

from google.protobuf import duration_pb2

from vap_common.redact import redact_url
from vap_control.errors import InvalidArgumentError
from vap_proto.v1 import analytics_pb2, common_pb2, scenario_pb2, source_pb2

MAX_URL_LENGTH = 4096
MAX_NAME_LENGTH = 200
MAX_REQUEST_ID_LENGTH = 128
MAX_LABELS = 64
MAX_RULES = 256
MAX_POLYGON_POINTS = 1000
MAX_DIMENSION = 16384
NETWORK_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https"})
_RULE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")
_WEBCAM_INDEX_RE = re.compile(r"^\d{1,3}$")
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x20\x7f]")


def _fail(field: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(field, problem)


def scenario_id(raw: str, field: str = "scenario_id") -> uuid.UUID:
    if not raw:
        raise _fail(field, "required")
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _fail(field, "not a scenario id (a UUID)") from None


def unit_interval(value: float, field: str) -> None:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise _fail(field, f"must be in [0, 1], got {value!r}")


def _finite(value: float, field: str) -> None:
    if not math.isfinite(value):
        raise _fail(field, "must be a finite number")


def _duration(d: duration_pb2.Duration, field: str, *, positive: bool = False) -> None:
    if d.seconds < 0 or d.nanos < 0:
        raise _fail(field, "must not be negative")
    if positive and d.seconds == 0 and d.nanos == 0:
        raise _fail(field, "must be positive")


def source_url(url: str, field: str = "scenario.source.url") -> None:
    """rtsp(s)/http(s) URLs with a host, file:// URLs, plain local paths, webcam indexes, /dev/video paths."""
    if not url:
        raise _fail(field, "required")
    if len(url) > MAX_URL_LENGTH:
        raise _fail(field, f"longer than {MAX_URL_LENGTH} characters")
    if url != url.strip() or any(c in url for c in "\r\n\t\x00"):
        raise _fail(field, "must not contain whitespace at the ends or control characters")
    if _WEBCAM_INDEX_RE.match(url) or url.startswith("/dev/"):
        return
    if "://" not in url:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url):
            raise _fail(field, f"unsupported URL {redact_url(url)!r}: use rtsp, rtsps, http, https or file")
        return  # a plain local path
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        # Not urllib's words: they quote the port, which can be part of a password (rtsp://u:pa/ss@host).
        raise _fail(
            field, f"malformed URL {redact_url(url)!r}: invalid port (not a number in 0-65535) or IPv6 host"
        ) from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        if not parts.path:
            raise _fail(field, "file:// URL without a path")
        return
    if scheme not in NETWORK_SCHEMES:
        raise _fail(field, f"unsupported scheme {scheme!r}: use rtsp, rtsps, http, https or file")
    host = parts.hostname
    if not host or _CONTROL_CHARS_RE.search(parts.netloc):
        raise _fail(field, f"malformed URL {redact_url(url)!r}: no valid host")
    if port == 0:
        raise _fail(field, f"malformed URL {redact_url(url)!r}: port 0")


def source(spec: source_pb2.SourceSpec, field: str = "scenario.source") -> None:
    if spec.HasField("target_fps") and (
        not math.isfinite(spec.target_fps) or not 0 < spec.target_fps <= 1000
    ):
        raise _fail(f"{field}.target_fps", f"must be in (0, 1000], got {spec.target_fps!r}")
    for name in ("width", "height"):
        if getattr(spec.resize, name) > MAX_DIMENSION:
            raise _fail(f"{field}.resize.{name}", f"must be at most {MAX_DIMENSION}")
    for name, value in (
        ("open_timeout", spec.open_timeout),
        ("read_timeout", spec.read_timeout),
        ("stall_timeout", spec.stall_timeout),
        ("backoff_max", spec.backoff_max),
    ):
        _duration(value, f"{field}.{name}")
    if spec.ring_slots == 1 or spec.ring_slots > 1024:
        raise _fail(f"{field}.ring_slots", "must be 0 (agent default) or in [2, 1024]")


def _classes(names: Iterable[str], field: str) -> None:
    for i, name in enumerate(names):
        if not name.strip():
            raise _fail(f"{field}[{i}]", "empty class name")


def pipeline(
    p: scenario_pb2.PipelineSettings,
    field: str = "scenario.pipeline",
    *,
    known_models: Collection[str] | None,
) -> None:
    if p.model and known_models is not None and p.model not in known_models:
        available = ", ".join(sorted(known_models)) or "none"
        raise _fail(f"{field}.model", f"unknown model {p.model!r} (available: {available})")
    if p.HasField("confidence_threshold"):
        unit_interval(p.confidence_threshold, f"{field}.confidence_threshold")
    if p.HasField("nms_iou_threshold"):
        unit_interval(p.nms_iou_threshold, f"{field}.nms_iou_threshold")
    _classes(p.class_names, f"{field}.class_names")
    t = p.tracker
    for name in ("high_score_threshold", "low_score_threshold", "new_track_threshold", "match_iou_threshold"):
        if t.HasField(name):
            unit_interval(getattr(t, name), f"{field}.tracker.{name}")
    if t.HasField("lost_timeout"):
        _duration(t.lost_timeout, f"{field}.tracker.lost_timeout")
    if p.reid.HasField("match_threshold"):
        unit_interval(p.reid.match_threshold, f"{field}.reid.match_threshold")
    if p.dataset.HasField("interval"):
        _duration(p.dataset.interval, f"{field}.dataset.interval")


def _point(pt: common_pb2.Point, field: str, *, normalized: bool) -> None:
    _finite(pt.x, f"{field}.x")
    _finite(pt.y, f"{field}.y")
    if normalized and not (0.0 <= pt.x <= 1.0 and 0.0 <= pt.y <= 1.0):
        raise _fail(field, "normalized coordinates must be in [0, 1]")


def _orientation(a: common_pb2.Point, b: common_pb2.Point, c: common_pb2.Point) -> float:
    return (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x)


def _on_segment(a: common_pb2.Point, b: common_pb2.Point, p: common_pb2.Point) -> bool:
    return min(a.x, b.x) <= p.x <= max(a.x, b.x) and min(a.y, b.y) <= p.y <= max(a.y, b.y)


def _segments_intersect(
    p1: common_pb2.Point, p2: common_pb2.Point, q1: common_pb2.Point, q2: common_pb2.Point
) -> bool:
    d1, d2 = _orientation(q1, q2, p1), _orientation(q1, q2, p2)
    d3, d4 = _orientation(p1, p2, q1), _orientation(p1, p2, q2)
    if ((d1 > 0) != (d2 > 0)) and d1 != 0 and d2 != 0 and ((d3 > 0) != (d4 > 0)) and d3 != 0 and d4 != 0:
        return True
    return (
        (d1 == 0 and _on_segment(q1, q2, p1))
        or (d2 == 0 and _on_segment(q1, q2, p2))
        or (d3 == 0 and _on_segment(p1, p2, q1))
        or (d4 == 0 and _on_segment(p1, p2, q2))
    )


def polygon(points: list[common_pb2.Point], field: str, *, normalized: bool) -> None:
    """At least 3 vertices, positive area, no two non-adjacent edges touching (not self-intersecting)."""
    if len(points) < 3:
        raise _fail(field, f"a zone needs at least 3 points, got {len(points)}")
    if len(points) > MAX_POLYGON_POINTS:
        raise _fail(field, f"at most {MAX_POLYGON_POINTS} points")
    for i, pt in enumerate(points):
        _point(pt, f"{field}[{i}]", normalized=normalized)
    n = len(points)
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # adjacent edges share a vertex
            if _segments_intersect(*edges[i], *edges[j]):
                raise _fail(field, f"self-intersecting: edge {i} crosses edge {j}")
    area2 = sum(
        points[i].x * points[(i + 1) % len(points)].y - points[(i + 1) % len(points)].x * points[i].y
        for i in range(len(points))
    )
    if abs(area2) <= 1e-12:
        raise _fail(field, "the polygon has no area (points are collinear or repeated)")


def analytics(a: analytics_pb2.AnalyticsSettings, field: str = "scenario.analytics") -> None:
    if a.HasField("count_interval"):
        d = a.count_interval
        _duration(d, f"{field}.count_interval", positive=True)
        if d.nanos % 1_000_000 or d.seconds + d.nanos / 1e9 < 1.0 or d.seconds > 86_400:
            raise _fail(f"{field}.count_interval", "must be whole milliseconds between 1 s and 1 day")
    if len(a.rules) > MAX_RULES:
        raise _fail(f"{field}.rules", f"at most {MAX_RULES} rules")
    seen: set[str] = set()
    for i, rule in enumerate(a.rules):
        where = f"{field}.rules[{i}]"
        if not _RULE_ID_RE.match(rule.rule_id):
            raise _fail(f"{where}.rule_id", "required: 1-64 characters of [A-Za-z0-9_-]")
        if rule.rule_id in seen:
            raise _fail(f"{where}.rule_id", f"duplicate rule id {rule.rule_id!r}")
        seen.add(rule.rule_id)
        if len(rule.name) > MAX_NAME_LENGTH:
            raise _fail(f"{where}.name", f"longer than {MAX_NAME_LENGTH} characters")
        _classes(rule.class_names, f"{where}.class_names")
        kind = rule.WhichOneof("kind")
        if kind is None:
            raise _fail(where, "a rule needs a line or a zone")
        normalized = rule.normalized_coordinates
        if kind == "line":
            line = rule.line
            _point(line.p1, f"{where}.line.p1", normalized=normalized)
            _point(line.p2, f"{where}.line.p2", normalized=normalized)
            if line.p1.x == line.p2.x and line.p1.y == line.p2.y:
                raise _fail(f"{where}.line", "p1 and p2 are the same point")
            if not math.isfinite(line.min_crossing_distance) or line.min_crossing_distance < 0:
                raise _fail(f"{where}.line.min_crossing_distance", "must be >= 0")
        else:
            zone = rule.zone
            polygon(list(zone.polygon), f"{where}.zone.polygon", normalized=normalized)
            for name in ("loitering_threshold", "dwell_report_interval", "min_presence"):
                if zone.HasField(name):
                    _duration(getattr(zone, name), f"{where}.zone.{name}")


def labels(values: Mapping[str, str], field: str = "scenario.labels") -> None:
    items = list(values.items())
    if len(items) > MAX_LABELS:
        raise _fail(field, f"at most {MAX_LABELS} labels")
    for key, value in items:
        if not _LABEL_KEY_RE.match(key):
            raise _fail(f"{field}[{key!r}]", "keys are 1-63 characters of [A-Za-z0-9._/-]")
        if len(value) > 256:
            raise _fail(f"{field}[{key!r}]", "values are at most 256 characters")


def scenario(
    s: scenario_pb2.Scenario,
    *,
    known_models: Collection[str] | None,
    require_url: bool = True,
    field: str = "scenario",
) -> None:
    """Validate the settings of a scenario (output-only fields are ignored, not checked)."""
    if len(s.name) > MAX_NAME_LENGTH:
        raise _fail(f"{field}.name", f"longer than {MAX_NAME_LENGTH} characters")
    if s.source.url or require_url:
        source_url(s.source.url, f"{field}.source.url")
    source(s.source, f"{field}.source")
    pipeline(s.pipeline, f"{field}.pipeline", known_models=known_models)
    analytics(s.analytics, f"{field}.analytics")
    labels(s.labels, f"{field}.labels")
    labels(s.node_selector, f"{field}.node_selector")


def node_id(value: str, field: str = "node_id") -> str:
    if not value:
        raise _fail(field, "must not be empty")
    if len(value) > 253:
        raise _fail(field, "at most 253 characters")
    return value


def client_request_id(value: str) -> None:
    if len(value) > MAX_REQUEST_ID_LENGTH:
        raise _fail("client_request_id", f"at most {MAX_REQUEST_ID_LENGTH} characters")


def time_range(tr: common_pb2.TimeRange, field: str = "time_range") -> tuple[int | None, int | None]:
    """(start_ns, end_ns) with None for open bounds."""
    start = tr.start_time.ToNanoseconds() if tr.HasField("start_time") else None
    end = tr.end_time.ToNanoseconds() if tr.HasField("end_time") else None
    if start is not None and end is not None and end <= start:
        raise _fail(field, "end_time must be after start_time")
    return start, end


def page_size(value: int, *, default: int) -> int:
    return default if value == 0 else min(value, 1000)
