"""Site config validation (friendly errors naming the field), scenario building, dataset capture files
(YOLO and COCO, valid and within the quota) and the sample-video transcode — no servers needed."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from vap_dataset.capture import Capture, frame_boxes
from vap_dataset.writer import Box, DatasetWriter
from vap_proto.v1 import detection_pb2, scenario_pb2
from vap_stack.cli import EXIT_USAGE, main
from vap_stack.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
VERTICAL = {"points": [[0.5, 0.05], [0.5, 0.95]]}  # drawn top to bottom: side B (analytics.proto) is the left


def test_example_site_config_is_valid() -> None:
    config = load_config(REPO / "examples" / "site.yaml")
    assert [c.id for c in config.cameras] == ["entrance", "corridor"]
    spec = config.cameras[0].scenario("rtsp://127.0.0.1:8554/entrance", site=config.site)
    assert spec.source.target_fps == 5 and spec.pipeline.model == "nanodet-m-416-int8"
    kinds = [r.WhichOneof("kind") for r in spec.analytics.rules]
    assert kinds == ["line", "zone"] and spec.analytics.rules[0].normalized_coordinates
    assert spec.pipeline.dataset.enabled and spec.pipeline.dataset.max_frames == 100
    assert spec.labels["site"] == "demo"


def test_reconnect_settings_per_camera() -> None:
    config = load_config(REPO / "examples" / "site.yaml")
    corridor = config.cameras[1].scenario("rtsp://x/y", site="s").source
    assert corridor.backoff_max.seconds == 10 and corridor.read_timeout.seconds == 5
    assert not corridor.HasField("open_timeout") and corridor.max_reconnect_attempts == 0
    entrance = config.cameras[0].scenario("rtsp://x/y", site="s").source
    assert not entrance.HasField("backoff_max")  # unset: the decoder's defaults
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.reconnect\.backoff_max_s"):
        parse_config({"cameras": [{"id": "a", "url": "x", "reconnect": {"backoff_max_s": -1}}]})


@pytest.mark.parametrize(
    ("line", "a_to_b", "b_to_a"),
    [
        # No arrow: the movement on screen, whichever way the points were drawn.
        (VERTICAL, "right->left", "left->right"),
        ({"points": [[0.5, 0.95], [0.5, 0.05]]}, "left->right", "right->left"),
        ({"points": [[0.05, 0.45], [0.95, 0.45]]}, "top->bottom", "bottom->top"),
        # An arrow drawn left to right is labels[0] whatever the order of the points.
        ({**VERTICAL, "arrow": [[0.4, 0.5], [0.6, 0.5]], "labels": ["in", "out"]}, "out", "in"),
        (
            {
                "points": [[0.5, 0.95], [0.5, 0.05]],
                "arrow": [[0.4, 0.5], [0.6, 0.5]],
                "labels": ["in", "out"],
            },
            "in",
            "out",
        ),
        ({**VERTICAL, "arrow": [[0.6, 0.5], [0.4, 0.5]]}, "in", "out"),
    ],
)
def test_line_directions_are_named_from_the_arrow_or_the_screen(
    line: dict[str, object], a_to_b: str, b_to_a: str
) -> None:
    config = parse_config({"cameras": [{"id": "a", "url": "rtsp://x/y", "lines": [{"id": "l", **line}]}]})
    rule = config.cameras[0].scenario("rtsp://x/y", site="s").analytics.rules[0].line
    assert (rule.a_to_b_label, rule.b_to_a_label) == (a_to_b, b_to_a)


def test_a_walker_going_right_is_counted_under_the_arrows_label() -> None:
    """Through the real tracker pipeline: the label on the event is the one the arrow means."""
    from vap_tracker.bytetrack import TrackerConfig
    from vap_tracker.pipeline import ChannelPipeline
    from vap_tracker.testing import Walker, detections, line_path

    config = parse_config(
        {
            "cameras": [
                {
                    "id": "a",
                    "url": "rtsp://x/y",
                    "lines": [
                        {
                            "id": "door",
                            **VERTICAL,
                            "arrow": [[0.4, 0.5], [0.6, 0.5]],
                            "labels": ["entering", "leaving"],
                        }
                    ],
                }
            ]
        }
    )
    scenario = scenario_pb2.ScenarioConfig(
        scenario_id="s",
        channel_id="cam",
        revision=1,
        active=True,
        analytics=config.cameras[0].scenario("rtsp://x/y", site="s").analytics,
    )
    pipe = ChannelPipeline("s", "cam", TrackerConfig())
    pipe.apply(scenario)
    walker = Walker(line_path((160, 300), (480, 300), 40))  # left to right across x = 320 (640 wide)
    labels = [
        e.line_crossing.direction_label
        for f in range(60)
        for e in pipe.process(detections(f, [walker], "cam", "s")).events
        if e.HasField("line_crossing")
    ]
    assert labels == ["entering"]


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"cameras": [{"id": "a"}]}, "cameras[0]", "exactly one of 'url'"),
        ({"cameras": [{"id": "a", "url": "rtsp://x/y", "fps": -1}]}, "cameras[0].fps", "greater than 0"),
        (
            {"cameras": [{"id": "a", "url": "x", "lines": [{"id": "l", "points": [[0, 0]]}]}]},
            "cameras[0].lines[0].points",
            "",
        ),
        ({"cameras": [{"id": "bad id!", "url": "x"}]}, "cameras[0].id", "pattern"),
        ({"cameras": [{"id": "a", "url": "x"}, {"id": "a", "url": "y"}]}, "cameras", "unique"),
        ({"camras": []}, "camras", "Extra inputs"),
        (
            {"cameras": [{"id": "a", "url": "x", "zones": [{"id": "z", "polygon": [[0, 0]]}]}]},
            "cameras[0].zones[0].polygon",
            "at least 3",
        ),
        (
            {
                "cameras": [
                    {"id": "a", "url": "x", "lines": [{"id": "l", **VERTICAL, "labels": ["in", "out"]}]}
                ]
            },
            "cameras[0].lines[0]",
            "labels need an arrow",
        ),
        (
            {
                "cameras": [
                    {"id": "a", "url": "x", "lines": [{"id": "l", **VERTICAL, "arrow": [[0.1, 0], [0.2, 0]]}]}
                ]
            },
            "cameras[0].lines[0]",
            "arrow must start on one side",
        ),
    ],
)
def test_config_errors_name_the_field(data: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "site.yaml")
    message = str(err.value)
    assert message.startswith("site.yaml is not a valid site config")
    assert f"  {field}" in message and words in message
    assert "pydantic" not in message and "Traceback" not in message


def test_cli_reports_config_errors_with_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text(yaml.safe_dump({"cameras": [{"id": "a", "url": "rtsp://x/y", "fps": 0}]}))
    assert main(["up", "--config", str(bad)]) == EXIT_USAGE
    assert "cameras[0].fps" in capsys.readouterr().err
    bad.write_text("cameras: [")
    assert main(["up", "--config", str(bad)]) == EXIT_USAGE
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["up", "--config", str(tmp_path / "missing.yaml")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err


def _frame(
    channel: str, t_ns: int, boxes: list[tuple[float, float, float, float]]
) -> detection_pb2.FrameDetections:
    fd = detection_pb2.FrameDetections()
    fd.frame.channel_id, fd.frame.capture_time_ns, fd.frame.sequence = channel, t_ns, t_ns // 1000
    for x1, y1, x2, y2 in boxes:
        d = fd.detections.add(class_id=0, class_name="person", confidence=0.9)
        d.box.x1, d.box.y1, d.box.x2, d.box.y2 = x1, y1, x2, y2
    return fd


def _config(max_frames: int, interval_s: float = 1.0) -> scenario_pb2.ScenarioConfig:
    config = scenario_pb2.ScenarioConfig(scenario_id="s1", channel_id="c1", revision=1, active=True)
    ds = config.pipeline.dataset
    ds.enabled, ds.only_with_detections, ds.max_frames = True, True, max_frames
    ds.interval.FromNanoseconds(int(interval_s * 1e9))
    return config


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_dataset_capture_writes_valid_files_within_limits(tmp_path: Path, fmt: str) -> None:
    capture = Capture(tmp_path, fmt, max_bytes=10 * 1024 * 1024)  # type: ignore[arg-type]
    capture.apply_config(_config(max_frames=3))
    image = np.full((240, 320, 3), 128, np.uint8)
    offered = 0
    for i in range(20):  # 10 frames per second for 2 s; the interval (1 s) and max_frames (3) decide
        fd = _frame("c1", 1_000_000_000 + i * 100_000_000, [(10, 20, 110, 220)] if i % 2 == 0 else [])
        if capture.due(fd) is not None:
            offered += capture.offer(fd, image, frame_boxes(fd))
        capture.flush()
    capture.close()
    assert offered == 2  # t = 1.0 s and 2.0 s... only frames with detections, 1 s apart
    root = tmp_path / "s1"
    images = sorted((root / "images").glob("*.jpg"))
    assert len(images) == 2
    for path in images:
        assert cv2.imread(str(path)).shape == (240, 320, 3)
    if fmt == "yolo":
        labels = sorted((root / "labels").glob("*.txt"))
        assert [p.stem for p in labels] == [p.stem for p in images]
        cls, cx, cy, w, h = labels[0].read_text().split()
        assert cls == "0" and np.allclose(
            [float(v) for v in (cx, cy, w, h)], [60 / 320, 120 / 240, 100 / 320, 200 / 240], atol=1e-5
        )
        assert (root / "classes.txt").read_text() == "person\n"
        assert yaml.safe_load((root / "data.yaml").read_text())["names"] == {0: "person"}
    else:
        coco = json.loads((root / "annotations.json").read_text())
        assert len(coco["images"]) == 2 and coco["categories"] == [{"id": 0, "name": "person"}]
        ann = coco["annotations"][0]
        assert ann["bbox"] == [10, 20, 100, 200] and ann["image_id"] == 1
        assert {img["file_name"] for img in coco["images"]} == {f"images/{p.name}" for p in images}


def test_dataset_quota_and_max_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)  # incompressible: ~200 kB per JPEG
    capture = Capture(tmp_path, "yolo", max_bytes=300 * 1024)
    capture.apply_config(_config(max_frames=0, interval_s=0.001))
    for i in range(10):
        fd = _frame("c1", (i + 1) * 1_000_000_000, [(0, 0, 50, 50)])
        if capture.due(fd) is not None:
            capture.offer(fd, noisy, frame_boxes(fd))
        capture.flush()
    capture.close()
    # Writing stops once the quota is reached: at most one frame beyond it.
    assert 1 <= capture.saved <= 2
    assert capture.used_bytes >= 300 * 1024 or capture.saved == 2
    # A restarted capture counts what is on disk already.
    again = Capture(tmp_path, "yolo", max_bytes=300 * 1024)
    again.apply_config(_config(max_frames=0, interval_s=0.001))
    assert again.due(_frame("c1", 99_000_000_000, [(0, 0, 5, 5)])) is None
    again.close()
    # max_frames counts the scenario's saved frames, existing ones included.
    writer = DatasetWriter(tmp_path / "s1", "yolo")
    assert writer.frames == capture.saved
    writer.write("extra", np.zeros((8, 8, 3), np.uint8), [Box(3, "dog", 1, 1, 4, 4)])
    assert (tmp_path / "s1" / "classes.txt").read_text().splitlines() == [
        "person",
        "class_1",
        "class_2",
        "dog",
    ]


@pytest.mark.parametrize("encoder", ["ffmpeg", "pyav"])
def test_sample_video_transcode(tmp_path: Path, encoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data set's encoding either way: H.264 main, 16:9 at 360 lines, no B-frames, a keyframe a second
    and one slice per picture (several slices broke the RTSP test camera once; PyAV's default makes them)."""
    import shutil

    import av

    from vap_common.paths import sample_video
    from vap_stack import sample
    from vap_stack.sample import SampleEncoding, ensure_sample_video, slices_per_picture, transcode

    if encoder == "ffmpeg" and shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed (scripts/setup.sh installs it)")
    if encoder == "pyav":
        monkeypatch.setattr(sample.shutil, "which", lambda _name: None)
    source = sample_video("vtest-576p25.mp4")
    # A short clip stands in for vtest.avi: the transcode (scale, H.264, fps) is what is tested here.
    clip = tmp_path / "clip.mp4"
    with av.open(str(source)) as inp, av.open(str(clip), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 768, 576, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i >= 30:
                break
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    dest = tmp_path / "vtest-360p25.mp4"
    encoding = SampleEncoding.from_name(dest.name)
    assert encoding is not None and (encoding.width, encoding.height, encoding.fps) == (640, 360, 25)
    transcode(clip, dest, encoding)
    with av.open(str(dest)) as result:
        video = result.streams.video[0]
        assert video.codec_context.name == "h264" and video.height == 360 and video.width == 640
        assert video.codec_context.profile == "Main"
        frames = list(result.decode(video=0))
        assert len(frames) == 30
        assert [i for i, f in enumerate(frames) if f.key_frame] == [0, 25]
        assert all(int(f.pict_type) != int(av.video.frame.PictureType.B) for f in frames)
    assert slices_per_picture(dest) == {1}
    assert ensure_sample_video(dest, lambda _m: None) == dest  # present: nothing fetched
    with pytest.raises(Exception, match="does not exist"):
        ensure_sample_video(tmp_path / "my-own.mp4", lambda _m: None)


def test_sample_names_give_the_data_sets_encodings() -> None:
    from vap_stack.sample import STANDARD_NAMES, SampleEncoding

    got = {n: SampleEncoding.from_name(n) for n in STANDARD_NAMES}
    assert got["vtest-576p25.mp4"] == SampleEncoding(768, 576, 25, None, 1500)
    assert got["vtest-720p25.mp4"] == SampleEncoding(1280, 720, 25, None, 2500)
    assert got["vtest-1080p25-10s.mp4"] == SampleEncoding(1920, 1080, 25, 10, 4000)
    argv = SampleEncoding(1920, 1080, 25, 10, 4000).ffmpeg_argv(Path("in.avi"), Path("out.mp4"))
    assert argv[argv.index("-t") : argv.index("-t") + 2] == ["-t", "10"] and "-bf" in argv
    assert SampleEncoding.from_name("my-camera.mp4") is None
