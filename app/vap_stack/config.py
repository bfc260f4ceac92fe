"""The site config of ``vap up``: a site's cameras with their sampling, model, lines, zones and capture.

    site: demo
    cameras:
      - id: entrance                      # stable id: the scenario's idempotency key
        name: Entrance
        simulate: vtest-720p25.mp4        # served over RTSP by `vap up` (sample dir or a path); or url: rtsp://...
        fps: 5
        model: ssdlite-mbv2-person-300
        lines:
          - id: door
            points: [[0.5, 0.0], [0.5, 1.0]]   # fractions of the frame (normalized: true, the default)
            arrow: [[0.4, 0.8], [0.6, 0.8]]    # a crossing this way is labels[0] (see LineRule)
            labels: [in, out]
        zones:
          - id: lobby
            polygon: [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]]
            loitering_s: 30

Services keep their own settings: the sections ``decoder``, ``inference``, ``tracker``, ``control`` and
``web`` of this file are handed to them unchanged (see each service's README). Errors name the file and the
field (``cameras[1].lines[0].points``), never a pydantic traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from google.protobuf import duration_pb2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vap_common.paths import sample_data_dir
from vap_proto.v1 import analytics_pb2, common_pb2, scenario_pb2, source_pb2

_ID_RE = r"^[A-Za-z0-9_-]{1,64}$"
SERVICE_SECTIONS = ("decoder", "inference", "tracker", "control", "web")


class ConfigError(ValueError):
    """A site config that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Point = tuple[float, float]


class LineRule(_Strict):
    """A counting line. Directions are said in words that cannot be read the wrong way round:

    - ``arrow: [[x, y], [x, y]]``, a movement across the line drawn as an arrow from one side to the other,
      with ``labels: [along, against]`` naming a crossing along the arrow and the opposite one (default
      ``[in, out]``), e.g. ``arrow: [[0.45, 0.5], [0.55, 0.5]]`` and ``labels: [entering, leaving]``;
    - without an arrow the names say the movement on screen: ``left->right`` / ``right->left`` for a
      steep line, ``top->bottom`` / ``bottom->top`` for a flat one (``labels`` then need an arrow).

    (analytics.proto's sides: B is the right of p1 -> p2 on screen, y down; the arrow decides which of A->B
    and B->A is "along", so the order of ``points`` no longer matters to the user.)
    """

    id: str = Field(pattern=_ID_RE)
    name: str = ""
    points: tuple[Point, Point]
    arrow: tuple[Point, Point] | None = None
    labels: tuple[str, str] | None = None
    normalized: bool = True
    classes: list[str] = Field(default_factory=lambda: ["person"])
    min_crossing_distance: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _directions_are_unambiguous(self) -> Self:
        if self.labels is not None and self.arrow is None:
            raise ValueError(
                "labels need an arrow: add arrow: [[x, y], [x, y]] drawn across the line the way labels[0] "
                "means (labels[1] is the opposite way)"
            )
        if self.arrow is not None:
            sides = {_side(self.points, q) for q in self.arrow}
            if sides != {-1, 1}:
                raise ValueError("arrow must start on one side of the line and end on the other")
        return self

    def direction_labels(self) -> tuple[str, str]:
        """(A->B label, B->A label) in analytics.proto's convention."""
        if self.arrow is None:
            return _screen_words(self.points)
        along, against = self.labels or ("in", "out")
        # Along the arrow is A->B when the arrow ends on side B.
        return (along, against) if _side(self.points, self.arrow[1]) > 0 else (against, along)


def _side(points: tuple[Point, Point], q: Point) -> int:
    """+1 on side B (right of p1 -> p2 on screen, y down), -1 on side A, 0 on the line."""
    (x1, y1), (x2, y2) = points
    cross = (x2 - x1) * (q[1] - y1) - (y2 - y1) * (q[0] - x1)
    return (cross > 0) - (cross < 0)


def _screen_words(points: tuple[Point, Point]) -> tuple[str, str]:
    """(A->B, B->A) named by the movement on screen: side B lies along the normal (-dy, dx)."""
    (x1, y1), (x2, y2) = points
    nx, ny = -(y2 - y1), x2 - x1
    if abs(nx) >= abs(ny):
        return ("left->right", "right->left") if nx > 0 else ("right->left", "left->right")
    return ("top->bottom", "bottom->top") if ny > 0 else ("bottom->top", "top->bottom")


class ZoneRule(_Strict):
    id: str = Field(pattern=_ID_RE)
    name: str = ""
    polygon: list[Point] = Field(min_length=3)
    normalized: bool = True
    classes: list[str] = Field(default_factory=lambda: ["person"])
    loitering_s: float | None = Field(default=None, gt=0)
    dwell_report_s: float | None = Field(default=None, gt=0)
    min_presence_s: float | None = Field(default=None, gt=0)


class DatasetOptions(_Strict):
    """Saving sampled frames with their detections (see vap_dataset)."""

    enabled: bool = True
    interval_s: float = Field(default=10.0, gt=0)
    only_with_detections: bool = True
    max_frames: int = Field(default=500, ge=0)


class Reconnect(_Strict):
    """Per-camera reconnect settings (SourceSpec); unset = the decoder's defaults (fast retries for the
    first minute of an outage, then a backoff growing to 30 s)."""

    backoff_max_s: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=0, ge=0)  # give up (FAILED) after this many; 0 = never
    open_timeout_s: float | None = Field(default=None, gt=0)
    read_timeout_s: float | None = Field(default=None, gt=0)
    stall_timeout_s: float | None = Field(default=None, gt=0)


class Camera(_Strict):
    id: str = Field(pattern=_ID_RE)
    name: str = ""
    # Exactly one of: a camera URL (rtsp://, http(s)://, a file, a webcam index) or a video file that
    # `vap up` serves over RTSP itself (a name in the sample data dir, or a path).
    url: str | None = None
    simulate: str | None = None
    fps: float | None = Field(default=5.0, gt=0, le=120)
    model: str = ""
    confidence: float | None = Field(default=None, ge=0, le=1)
    classes: list[str] = Field(default_factory=lambda: ["person"])
    lines: list[LineRule] = Field(default_factory=list)
    zones: list[ZoneRule] = Field(default_factory=list)
    count_interval_s: int | None = Field(default=None, ge=1)
    reid: bool = False
    dataset: DatasetOptions | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    reconnect: Reconnect = Field(default_factory=Reconnect)

    @model_validator(mode="after")
    def _one_source(self) -> Camera:
        if (self.url is None) == (self.simulate is None):
            raise ValueError("give exactly one of 'url' (a camera) or 'simulate' (a video file to serve)")
        ids = [r.id for r in self.lines] + [z.id for z in self.zones]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"rule ids must be unique within a camera: {', '.join(dupes)}")
        return self

    def simulate_path(self) -> Path | None:
        """The file to serve: a path as given when it exists, else a name in the sample data dir."""
        if self.simulate is None:
            return None
        given = Path(self.simulate).expanduser()
        if given.is_absolute() or given.exists():
            return given
        return sample_data_dir() / given

    def scenario(self, url: str, *, site: str) -> scenario_pb2.Scenario:
        """The Scenario to create for this camera (``url``: the real or the simulated camera's URL)."""
        rules = [_line(r) for r in self.lines] + [_zone(z) for z in self.zones]
        analytics = analytics_pb2.AnalyticsSettings(rules=rules)
        if self.count_interval_s is not None:
            analytics.count_interval.CopyFrom(duration_pb2.Duration(seconds=self.count_interval_s))
        pipeline = scenario_pb2.PipelineSettings(model=self.model, class_names=self.classes)
        if self.confidence is not None:
            pipeline.confidence_threshold = self.confidence
        if self.reid:
            pipeline.reid.CopyFrom(scenario_pb2.ReidSettings(enabled=True, site_id=site))
        if self.dataset is not None and self.dataset.enabled:
            pipeline.dataset.CopyFrom(
                scenario_pb2.DatasetCapture(
                    enabled=True,
                    interval=_duration(self.dataset.interval_s),
                    only_with_detections=self.dataset.only_with_detections,
                    max_frames=self.dataset.max_frames,
                )
            )
        source = source_pb2.SourceSpec(url=url, max_reconnect_attempts=self.reconnect.max_attempts)
        if self.fps is not None:
            source.target_fps = self.fps
        for name in ("backoff_max", "open_timeout", "read_timeout", "stall_timeout"):
            seconds = getattr(self.reconnect, f"{name}_s")
            if seconds is not None:
                getattr(source, name).CopyFrom(_duration(seconds))
        return scenario_pb2.Scenario(
            name=self.name or self.id,
            source=source,
            pipeline=pipeline,
            analytics=analytics,
            labels={"site": site, "camera": self.id, **self.labels},
        )


class Ports(_Strict):
    """Fixed ports of the stack (0 = any free port, chosen once at start and kept across restarts)."""

    control: int = Field(default=50051, ge=0, le=65535)
    inference: int = Field(default=50061, ge=0, le=65535)
    # Prometheus metrics of each service: base, base+1, ... (decoder, inference, tracker, control); 0 = free.
    metrics_base: int = Field(default=9101, ge=0, le=65530)
    # The live web view (HTTP, vap_web); null = do not start it.
    web: int | None = Field(default=8080, ge=0, le=65535)


class DatasetSink(_Strict):
    """Where captured datasets go and in which format (the per-camera ``dataset`` turns capture on)."""

    dir: Path | None = None  # default: <data_dir>/datasets
    format: Literal["yolo", "coco"] = "yolo"
    max_bytes: int = Field(default=2 * 1024**3, ge=1024)
    jpeg_quality: int = Field(default=90, ge=10, le=100)


class SiteConfig(_Strict):
    site: str = Field(default="site", pattern=_ID_RE)
    # Where the stack keeps its servers' data, logs, the API token and its state (for the `vap` CLI).
    data_dir: Path = Path(".vap/stack")
    # External servers; unset = NATS_URL / DATABASE_URL from the environment, else embedded ones.
    nats_url: str | None = None
    database_url: str | None = None
    # The external NATS's users of VAP's service roles (a nats-credentials.json; else $VAP_NATS_CREDENTIALS):
    # each service then connects as its own role. Unset: every service uses NATS_URL's user info. The
    # embedded NATS always has its own (<data_dir>/embedded/nats/nats-credentials.json).
    nats_credentials: Path | None = None
    ports: Ports = Field(default_factory=Ports)
    dataset: DatasetSink = Field(default_factory=DatasetSink)
    cameras: list[Camera] = Field(default_factory=list)
    # Passed to the services as their own YAML sections (validated by them at start).
    decoder: dict[str, Any] = Field(default_factory=dict)
    inference: dict[str, Any] = Field(default_factory=dict)
    tracker: dict[str, Any] = Field(default_factory=dict)
    control: dict[str, Any] = Field(default_factory=dict)
    web: dict[str, Any] = Field(default_factory=dict)

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[Camera]) -> list[Camera]:
        ids = [c.id for c in cameras]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"camera ids must be unique: {', '.join(dupes)}")
        return cameras

    def models(self, default_model: str) -> list[str]:
        """Every model the cameras use (the inference default for those naming none)."""
        return sorted({c.model or default_model for c in self.cameras})

    def dataset_dir(self) -> Path:
        return self.dataset.dir if self.dataset.dir is not None else self.data_dir / "datasets"


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _points(points: list[Point] | tuple[Point, ...]) -> list[common_pb2.Point]:
    return [common_pb2.Point(x=x, y=y) for x, y in points]


def _line(rule: LineRule) -> analytics_pb2.AnalyticsRule:
    p1, p2 = _points(rule.points)
    return analytics_pb2.AnalyticsRule(
        rule_id=rule.id,
        name=rule.name or rule.id,
        class_names=rule.classes,
        normalized_coordinates=rule.normalized,
        line=analytics_pb2.Line(
            p1=p1,
            p2=p2,
            a_to_b_label=rule.direction_labels()[0],
            b_to_a_label=rule.direction_labels()[1],
            min_crossing_distance=rule.min_crossing_distance,
        ),
    )


def _zone(rule: ZoneRule) -> analytics_pb2.AnalyticsRule:
    zone = analytics_pb2.Zone(polygon=_points(rule.polygon))
    if rule.loitering_s is not None:
        zone.loitering_threshold.CopyFrom(_duration(rule.loitering_s))
    if rule.dwell_report_s is not None:
        zone.dwell_report_interval.CopyFrom(_duration(rule.dwell_report_s))
    if rule.min_presence_s is not None:
        zone.min_presence.CopyFrom(_duration(rule.min_presence_s))
    return analytics_pb2.AnalyticsRule(
        rule_id=rule.id,
        name=rule.name or rule.id,
        class_names=rule.classes,
        normalized_coordinates=rule.normalized,
        zone=zone,
    )


def _where(loc: tuple[int | str, ...]) -> str:
    """pydantic's location ('cameras', 1, 'lines', 0, 'points') as 'cameras[1].lines[0].points'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        # Union / tagged-union branch names ("function-after[...]") say nothing to a user.
    return out or "(top level)"


def parse_config(data: Any, source: str = "config") -> SiteConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (site:, cameras:, ...)")
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"  {_where(tuple(err['loc']))}: {msg}")
        raise ConfigError(f"{source} is not a valid site config:\n" + "\n".join(problems)) from None


def load_config(path: Path | str) -> SiteConfig:
    """Read and validate a site config. Relative ``data_dir`` / dataset paths stay relative to the cwd
    (like the services' own settings), so `vap up` and `vap` commands run from the same place agree."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, str(path))
