"""The web gateway's parts without a browser: ring slot -> JPEG for every pixel format (real rings), what the
pages get as JSON (no credentials), the viewer mailbox, the frame message layout, token and origin rules,
settings, and the site config's ``ports.web`` / ``web:`` section."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import yaml
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from vap_inference.testing import write_frame
from vap_proto.v1 import (
    analytics_pb2,
    common_pb2,
    control_pb2,
    detection_pb2,
    frame_pb2,
    health_pb2,
    scenario_pb2,
    source_pb2,
)
from vap_proto.v1.frame_pb2 import PixelFormat
from vap_shmring import RingWriter
from vap_stack.config import ConfigError, parse_config
from vap_stack.up import _service_yaml
from vap_web import auth, payloads
from vap_web.__main__ import split_listen
from vap_web.app import _local_path
from vap_web.frames import FrameEncoder
from vap_web.live import Viewer, frame_message
from vap_web.settings import WebSettings

PF = PixelFormat


def _picture(width: int, height: int) -> np.ndarray:
    """Smooth gradients and flat colour blocks: survives JPEG and 4:2:0 chroma well enough to compare."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    image = np.stack(
        [np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)), (x + y) / 2], 2
    )
    image = image.astype(np.uint8)
    image[height // 4 : height // 2, width // 4 : width // 2] = (0, 0, 255)
    return np.ascontiguousarray(image)


@pytest.fixture
def encoder() -> Iterator[FrameEncoder]:
    enc = FrameEncoder(quality=90, max_width=0)
    try:
        yield enc
    finally:
        enc.close()


@pytest.mark.parametrize(
    "fmt",
    [
        PF.PIXEL_FORMAT_BGR24,
        PF.PIXEL_FORMAT_RGB24,
        PF.PIXEL_FORMAT_GRAY8,
        PF.PIXEL_FORMAT_I420,
        PF.PIXEL_FORMAT_NV12,
    ],
)
@pytest.mark.parametrize("width", [256, 200])  # 200: rows padded to 64 bytes, planes not contiguous
def test_ring_slot_to_jpeg(fmt: PixelFormat.ValueType, width: int, encoder: FrameEncoder) -> None:
    height = 120
    image = _picture(width, height)
    with RingWriter.create(
        f"web-test-{uuid.uuid4().hex}", width=width, height=height, pixel_format=fmt, slots=3
    ) as ring:
        ref = write_frame(ring, image, sequence=7)
        jpeg = encoder.encode_now(ref)
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (height, width, 3)
    expected = (
        cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        if fmt == PF.PIXEL_FORMAT_GRAY8
        else image
    )
    error = np.abs(decoded.astype(np.int16) - expected.astype(np.int16)).mean()
    assert error < 6, f"mean abs error {error:.1f} for format {fmt} width {width}"
    # The red block is red (not blue: channel order kept), unless the ring is grey.
    b, g, r = decoded[height * 3 // 8, width * 3 // 8]
    if fmt != PF.PIXEL_FORMAT_GRAY8:
        assert r > 200 and b < 60 and g < 60
    assert encoder.encoded == 1 and encoder.stale == 0


def test_overwritten_slot_is_not_sent(encoder: FrameEncoder) -> None:
    image = _picture(64, 48)
    with RingWriter.create(
        f"web-test-{uuid.uuid4().hex}", width=64, height=48, pixel_format=PF.PIXEL_FORMAT_I420, slots=2
    ) as ring:
        first = write_frame(ring, image, sequence=1)
        write_frame(ring, image, sequence=2)
        assert encoder.encode_now(first) is not None
        write_frame(ring, image, sequence=3)  # reuses the first frame's slot
        assert encoder.encode_now(first) is None
    assert encoder.stale == 1
    gone = first.__class__()
    gone.CopyFrom(first)
    gone.ring = f"vap-ring-missing-{uuid.uuid4().hex}"
    assert encoder.encode_now(gone) is None  # the ring itself is gone: dropped, not an error


async def test_wide_frames_are_scaled_down() -> None:
    enc = FrameEncoder(quality=70, max_width=320)
    try:
        with RingWriter.create(
            f"web-test-{uuid.uuid4().hex}", width=640, height=360, pixel_format=PF.PIXEL_FORMAT_I420, slots=2
        ) as ring:
            jpeg = await enc.encode(write_frame(ring, _picture(640, 360), sequence=1))
    finally:
        enc.close()
    assert jpeg is not None
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (180, 320, 3)


def _scenario() -> scenario_pb2.Scenario:
    line = analytics_pb2.AnalyticsRule(
        rule_id="door",
        normalized_coordinates=True,
        line=analytics_pb2.Line(
            p1=common_pb2.Point(x=0.5, y=0.05), p2=common_pb2.Point(x=0.5, y=0.95), a_to_b_label="in"
        ),
    )
    zone = analytics_pb2.AnalyticsRule(
        rule_id="lobby",
        name="Lobby",
        zone=analytics_pb2.Zone(
            polygon=[common_pb2.Point(x=10, y=20), common_pb2.Point(x=30, y=20), common_pb2.Point(x=30, y=40)]
        ),
    )
    return scenario_pb2.Scenario(
        id=str(uuid.uuid4()),
        name="Door",
        status=scenario_pb2.SCENARIO_STATUS_ACTIVE,
        status_reason="could not open rtsp://admin:hunter2@10.0.0.5/stream",
        source=source_pb2.SourceSpec(redacted_url="rtsp://***@10.0.0.5/stream"),
        analytics=analytics_pb2.AnalyticsSettings(rules=[line, zone]),
        labels={"camera": "door", "site": "hq"},
    )


def test_camera_json_has_no_credentials() -> None:
    scenario = _scenario()
    channel = control_pb2.ChannelStatus(
        scenario_id=scenario.id,
        health=health_pb2.ChannelHealth(
            state=health_pb2.CHANNEL_STATE_RECONNECTING,
            reason="401 from rtsp://admin:hunter2@10.0.0.5/",
            fps=4.2,
        ),
        detection_fps=3.5,
    )
    row = payloads.camera_detail(scenario, channel)
    text = json.dumps(row)
    assert "hunter2" not in text and "admin" not in text
    assert row["status"] == "ACTIVE" and row["state"] == "RECONNECTING" and row["camera"] == "door"
    assert row["decode_fps"] == 4.2 and row["detection_fps"] == 3.5
    line, zone = row["rules"]
    assert line == {
        "id": "door",
        "name": "door",
        "disabled": False,
        "normalized": True,
        "classes": [],
        "kind": "line",
        "points": [[0.5, 0.05], [0.5, 0.95]],
        "labels": ["in", "b_to_a"],
    }
    assert zone["kind"] == "zone" and zone["name"] == "Lobby" and zone["points"][2] == [30.0, 40.0]
    assert not zone["normalized"]
    # Without a live channel the scenario's own stored health is shown.
    assert payloads.camera(scenario, None)["state"] == "UNSPECIFIED"


def test_tracks_and_counts() -> None:
    frame = detection_pb2.FrameDetections(
        detections=[
            detection_pb2.Detection(
                class_name="person",
                confidence=0.9,
                track_id=12,
                box=common_pb2.BoundingBox(x1=1, y1=2, x2=3, y2=4),
            ),
            detection_pb2.Detection(class_name="car", confidence=0.5),
            detection_pb2.Detection(
                class_name="person",
                confidence=0.8,
                track_id=3,
                global_id=7,
                attributes=[common_pb2.Attribute(name="gender", value="female", confidence=0.9, votes=5)],
            ),
        ]
    )
    tracks = payloads.tracks(frame)
    assert [t["id"] for t in tracks] == [3, 12, None]
    assert tracks[0]["global_id"] == 7 and tracks[1]["box"] == [1.0, 2.0, 3.0, 4.0]
    assert tracks[0]["attrs"] == {"gender": "female"} and tracks[1]["attrs"] == {}

    counts = payloads.RunningCounts()
    crossing = analytics_pb2.AnalyticsEvent(
        rule_id="door",
        line_crossing=analytics_pb2.LineCrossing(direction_label="in", total_a_to_b=4, total_b_to_a=1),
    )
    # Line figures are not the tracker's running totals: they come from QueryCounts (set_lines).
    assert not counts.apply(crossing)
    assert counts.apply(
        analytics_pb2.AnalyticsEvent(rule_id="lobby", zone_enter=analytics_pb2.ZoneEnter(occupancy=2))
    )
    assert counts.apply(
        analytics_pb2.AnalyticsEvent(rule_id="lobby", zone_exit=analytics_pb2.ZoneExit(occupancy=1))
    )
    assert payloads.event(crossing)["label"] == "in"

    reply = control_pb2.QueryCountsResponse(
        counts=[
            analytics_pb2.IntervalCounts(
                rule_id="door",
                interval_start_ns=60_000_000_000,
                line=analytics_pb2.LineCounts(a_to_b=2, b_to_a=1),
            ),
            analytics_pb2.IntervalCounts(
                rule_id="door", interval_start_ns=120_000_000_000, line=analytics_pb2.LineCounts(a_to_b=3)
            ),
            analytics_pb2.IntervalCounts(
                rule_id="lobby", zone=analytics_pb2.ZoneCounts(enters=5, exits=4, max_occupancy=2)
            ),
        ]
    )
    rows = payloads.interval_counts(reply.counts)
    assert rows[0] == {"start_ms": 60_000, "rule_id": "door", "kind": "line", "a_to_b": 2, "b_to_a": 1}
    assert payloads.summed(reply.counts) == {
        "door": {"kind": "line", "a_to_b": 5, "b_to_a": 1},
        "lobby": {"kind": "zone", "enters": 5, "exits": 4},
    }
    summed = payloads.summed(reply.counts)
    assert counts.set_lines(summed) and not counts.set_lines(summed)
    assert counts.as_json() == {
        "type": "counts",
        "window_minutes": payloads.WINDOW_MINUTES,
        "lines": {"door": [5, 1]},
        "zones": {"lobby": 1},
    }


async def test_viewer_keeps_only_the_newest_frame() -> None:
    viewer = Viewer()
    for i in range(3):
        viewer.offer_frame(bytes([i]))
    viewer.offer_text({"type": "counts"})
    received = []
    async for message in viewer.messages():
        received.append(message)
        if isinstance(message, bytes):
            break
    assert received == ['{"type":"counts"}', b"\x02"]
    assert viewer.frames_replaced == 2


def test_frame_message_layout() -> None:
    message = frame_message({"type": "frame", "seq": 5}, b"\xff\xd8jpeg")
    (size,) = struct.unpack(">I", message[:4])
    assert json.loads(message[4 : 4 + size]) == {"type": "frame", "seq": 5}
    assert message[4 + size :] == b"\xff\xd8jpeg"


def test_token_and_origin_rules() -> None:
    header = make_mocked_request(
        "GET", "/api/cameras", headers={"Authorization": "Bearer abc", "Cookie": "vap_token=xyz"}
    )
    assert auth.request_token(header) == "abc"  # the header wins over the cookie
    cookie = make_mocked_request("GET", "/", headers={"Cookie": "vap_token=xyz"})
    assert auth.request_token(cookie) == "xyz"
    assert auth.request_token(make_mocked_request("GET", "/", headers={"Authorization": "Basic abc"})) is None
    same = make_mocked_request(
        "GET", "/", headers={"Host": "127.0.0.1:8080", "Origin": "http://127.0.0.1:8080"}
    )
    other = make_mocked_request(
        "GET", "/", headers={"Host": "127.0.0.1:8080", "Origin": "http://evil.example"}
    )
    assert auth.same_origin(same) and not auth.same_origin(other)
    assert auth.is_public("/login") and auth.is_public("/static/app.css")
    assert not auth.is_public("/") and not auth.is_public("/api/cameras") and not auth.is_public("/loginx")
    # After login only this site's paths: no open redirect.
    for target, expected in [
        ("/camera/x", "/camera/x"),
        ("//evil.example/", "/"),
        ("https://evil.example", "/"),
        ("/\\evil", "/"),
    ]:
        assert _local_path(target) == expected


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert split_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert split_listen("[::1]:0") == ("::1", 0)
    for bad in ("8080", "host:", "host:http", "host:70000"):
        with pytest.raises(ValueError, match="listen"):
            split_listen(bad)
    monkeypatch.setenv("VAP_WEB_MAX_FPS", "2.5")
    assert WebSettings.load().max_fps == 2.5


def test_site_config_web_port_and_section(tmp_path: Path) -> None:
    assert parse_config({}).ports.web == 8080
    config = parse_config({"ports": {"web": None}, "web": {"max_fps": 2}})
    assert config.ports.web is None
    _service_yaml(config, tmp_path / "services.yaml")
    assert yaml.safe_load((tmp_path / "services.yaml").read_text())["web"] == {"max_fps": 2}
    with pytest.raises(ConfigError, match=r"ports\.web"):
        parse_config({"ports": {"web": 70000}})


async def test_watch_streams_raw_frames_and_says_when_the_ring_is_elsewhere(
    nats_url: str, nats_client: Any
) -> None:
    """A watch with no tracked results (the control API is unreachable here) still shows the camera: the
    newest frames from the ring, marked raw, JPEG-encoded; refs of a ring that is not on this host end in a
    notice instead of frames. Real NATS, real ring, real control client (to a closed port)."""
    from vap_common import subjects
    from vap_framebus import AsyncFrameSubscriber
    from vap_web.control import ControlClient
    from vap_web.live import UNREADABLE_NOTICE, Watches

    settings = WebSettings(control_target="127.0.0.1:9", max_fps=10, raw_after_s=0.2, nats_url=nats_url)
    client = ControlClient(settings)
    bus = AsyncFrameSubscriber()
    await bus.connect(nats_url)
    encoder = FrameEncoder(max_width=0)
    watches = Watches(client, bus, encoder, settings)
    channel = f"web-test-{uuid.uuid4().hex}"
    viewer = Viewer("token")
    frames: list[dict[str, Any]] = []
    notices: list[str] = []

    async def publish(refs: Iterator[Any], stop: asyncio.Event) -> None:
        for ref in refs:
            if stop.is_set():
                return
            await nats_client.publish(subjects.frames(channel), ref.SerializeToString())
            await asyncio.sleep(0.03)

    async def read(want_frames: int, want_notice: bool) -> None:
        async for message in viewer.messages():
            if isinstance(message, bytes):
                (size,) = struct.unpack(">I", message[:4])
                header = json.loads(message[4 : 4 + size])
                image = cv2.imdecode(np.frombuffer(message[4 + size :], np.uint8), cv2.IMREAD_COLOR)
                frames.append(header | {"shape": image.shape})
            elif json.loads(message)["type"] == "notice":
                notices.append(json.loads(message)["message"])
            if len(frames) >= want_frames and (bool(notices) or not want_notice):
                return

    try:
        with RingWriter.create(
            channel, width=64, height=48, pixel_format=PF.PIXEL_FORMAT_I420, slots=4
        ) as ring:
            await watches.join("scenario-1", channel, viewer)
            assert len(watches) == 1
            refs = (write_frame(ring, _picture(64, 48), sequence=i) for i in range(1000))
            stop = asyncio.Event()
            publisher = asyncio.ensure_future(publish(refs, stop))
            await asyncio.wait_for(read(3, False), 30)
            stop.set()
            await publisher
        assert all(f["raw"] and f["tracks"] == [] and f["shape"] == (48, 64, 3) for f in frames), frames
        seqs = [f["seq"] for f in frames]
        assert seqs == sorted(set(seqs)), seqs  # newest frames, never one twice

        # Refs naming a ring this host does not have: no frames, a notice after a few tries.
        elsewhere = f"vap-ring-elsewhere-{uuid.uuid4().hex}"
        missing = (
            frame_pb2.FrameRef(ring=elsewhere, width=64, height=48, sequence=10_000 + i)
            for i in range(UNREADABLE_NOTICE * 20)
        )
        stop = asyncio.Event()
        publisher = asyncio.ensure_future(publish(missing, stop))
        count = len(frames)
        await asyncio.wait_for(read(count, True), 30)
        stop.set()
        await publisher
        assert "host that decodes" in notices[0] and len(frames) == count
    finally:
        await watches.leave("scenario-1", viewer)
        assert len(watches) == 0
        await bus.close()
        await client.close()
        encoder.close()


@given(st.text())
def test_after_login_only_local_paths(target: str) -> None:
    path = _local_path(target)
    assert path.startswith("/") and not path.startswith("//") and "\\" not in path
    assert urlsplit(path).netloc == "" and urlsplit(path).scheme == ""


@given(
    user=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=12),
    # "pw" first: no other text of the JSON (keys, enum names, the rest of the URL) contains it.
    password=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=4, max_size=20).map(
        lambda t: "pw" + t
    ),
)
def test_camera_json_never_holds_a_password(user: str, password: str) -> None:
    url = f"rtsp://{user}:{password}@cam.local:554/stream"
    scenario = scenario_pb2.Scenario(id="s", name="cam", status_reason=f"cannot open {url}")
    channel = control_pb2.ChannelStatus(health=health_pb2.ChannelHealth(reason=f"401 from {url}"))
    assert password not in json.dumps(payloads.camera_detail(scenario, channel), ensure_ascii=False)


def test_busy_web_port_is_noticed() -> None:
    """`vap up` skips the live view (with a message) rather than fail when its fixed port is taken."""
    import socket

    from vap_common.ports import port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not port_free(port)
    assert port_free(port)
