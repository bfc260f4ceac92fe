"""Contracts of package vap.v1: generated code is fresh, messages round-trip, services and enums are as
specified, every element is documented, and NATS subject tokens are safe."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from vap_common import subjects
from vap_proto.v1 import (
    agent_pb2,
    analytics_pb2,
    common_pb2,
    control_pb2,
    detection_pb2,
    frame_pb2,
    health_pb2,
    inference_pb2,
    nodes_pb2,
    scenario_pb2,
    source_pb2,
    tracking_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PROTO_FILES = sorted((PROTOS / "vap" / "v1").glob("*.proto"))
GENERATED_MODULES = [
    agent_pb2,
    analytics_pb2,
    common_pb2,
    control_pb2,
    detection_pb2,
    frame_pb2,
    health_pb2,
    inference_pb2,
    nodes_pb2,
    scenario_pb2,
    source_pb2,
    tracking_pb2,
]


# --- (1) generated code is reproducible and fresh ---------------------------------------------------------


def test_generated_code_is_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(PROTOS / "generate.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        "generated code is stale; run `python protos/generate.py`:\n" + result.stdout + result.stderr
    )


def test_every_proto_file_has_a_generated_module() -> None:
    generated = {Path(m.DESCRIPTOR.name).stem for m in GENERATED_MODULES}
    assert generated == {p.stem for p in PROTO_FILES}
    for module in GENERATED_MODULES:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        assert (proto.package, proto.syntax) == ("vap.v1", "proto3")


# --- (2) round trips of the main messages -----------------------------------------------------------------


def _ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def _frame_info() -> frame_pb2.FrameInfo:
    return frame_pb2.FrameInfo(
        channel_id="cam-1",
        scenario_id="scn-1",
        sequence=42,
        stream_epoch=3,
        capture_time_ns=1_700_000_000_123_456_789,
        pts_us=-5,
        width=1920,
        height=1080,
    )


def _frame_ref() -> frame_pb2.FrameRef:
    return frame_pb2.FrameRef(
        ring="vap-cam-1-1234",
        slot=7,
        generation=2**40 + 1,
        width=1280,
        height=720,
        pixel_format=frame_pb2.PIXEL_FORMAT_I420,
        strides=[1280, 640, 640],
        plane_offsets=[0, 921_600, 1_152_000],
        channel_id="cam-1",
        scenario_id="scn-1",
        sequence=42,
        pts_us=1_000_000,
        capture_time_ns=1_700_000_000_000_000_000,
        commit_time_ns=1_700_000_000_000_100_000,
        stream_epoch=3,
        source_width=1920,
        source_height=1080,
    )


def _box() -> common_pb2.BoundingBox:
    return common_pb2.BoundingBox(x1=10.5, y1=20.25, x2=110.0, y2=300.0)


def _stats() -> detection_pb2.InferenceStats:
    return detection_pb2.InferenceStats(
        model_name="nanodet-m-416",
        batch_size=4,
        queue_wait_us=1200,
        preprocess_us=800,
        inference_us=15_000,
        postprocess_us=300,
        backend=detection_pb2.INFERENCE_BACKEND_ONNXRUNTIME_CPU,
    )


def _frame_detections() -> detection_pb2.FrameDetections:
    return detection_pb2.FrameDetections(
        frame=_frame_info(),
        detections=[
            detection_pb2.Detection(box=_box(), class_id=0, class_name="person", confidence=0.91),
            detection_pb2.Detection(
                box=_box(),
                class_id=2,
                class_name="car",
                confidence=0.5,
                track_id=17,
                global_id=5,
                attributes=[common_pb2.Attribute(name="colour", value="red", confidence=0.7)],
            ),
        ],
        stats=_stats(),
        publish_time_ns=1_700_000_000_200_000_000,
    )


def _tracked_frame() -> tracking_pb2.TrackedFrame:
    return tracking_pb2.TrackedFrame(
        frame=_frame_info(),
        tracks=[
            tracking_pb2.Track(
                track_id=17,
                global_id=5,
                state=tracking_pb2.TRACK_STATE_CONFIRMED,
                box=_box(),
                velocity=tracking_pb2.Velocity(vx=-3.5, vy=12.0),
                class_id=0,
                class_name="person",
                confidence=0.88,
                age=30,
                hits=28,
                frames_since_update=0,
            ),
            tracking_pb2.Track(track_id=18, state=tracking_pb2.TRACK_STATE_LOST, frames_since_update=4),
        ],
        inference=_stats(),
        tracking_us=450,
        publish_time_ns=1_700_000_000_250_000_000,
    )


def _rules() -> analytics_pb2.AnalyticsSettings:
    line = analytics_pb2.AnalyticsRule(
        rule_id="door",
        name="Front door",
        class_names=["person"],
        line=analytics_pb2.Line(
            p1=common_pb2.Point(x=0, y=500),
            p2=common_pb2.Point(x=1920, y=500),
            a_to_b_label="in",
            b_to_a_label="out",
            min_crossing_distance=15.0,
            counted_directions=[analytics_pb2.CROSSING_DIRECTION_A_TO_B],
        ),
    )
    zone = analytics_pb2.AnalyticsRule(
        rule_id="till",
        name="Till queue",
        anchor=analytics_pb2.ANCHOR_POINT_BOTTOM_CENTER,
        normalized_coordinates=True,
        zone=analytics_pb2.Zone(
            polygon=[
                common_pb2.Point(x=0.1, y=0.1),
                common_pb2.Point(x=0.5, y=0.1),
                common_pb2.Point(x=0.3, y=0.6),
            ],
            loitering_threshold=Duration(seconds=60),
            dwell_report_interval=Duration(seconds=10),
        ),
    )
    return analytics_pb2.AnalyticsSettings(rules=[line, zone], count_interval=Duration(seconds=60))


def _events() -> list[analytics_pb2.AnalyticsEvent]:
    base = analytics_pb2.AnalyticsEvent(
        event_id="scn-1/3/42/door/17/line",
        scenario_id="scn-1",
        channel_id="cam-1",
        rule_id="door",
        rule_name="Front door",
        track_id=17,
        global_id=5,
        class_id=0,
        class_name="person",
        event_time_ns=1_700_000_000_000_000_000,
        frame_sequence=42,
        stream_epoch=3,
        box=_box(),
    )
    kinds = [
        analytics_pb2.AnalyticsEvent(
            line_crossing=analytics_pb2.LineCrossing(
                direction=analytics_pb2.CROSSING_DIRECTION_B_TO_A,
                direction_label="out",
                total_a_to_b=10,
                total_b_to_a=4,
            )
        ),
        analytics_pb2.AnalyticsEvent(zone_enter=analytics_pb2.ZoneEnter(occupancy=3)),
        analytics_pb2.AnalyticsEvent(
            zone_exit=analytics_pb2.ZoneExit(occupancy=2, enter_time_ns=1, dwell_ms=65_000)
        ),
        analytics_pb2.AnalyticsEvent(
            zone_dwell=analytics_pb2.ZoneDwell(enter_time_ns=1, dwell_ms=10_000, occupancy=2)
        ),
        analytics_pb2.AnalyticsEvent(
            loitering=analytics_pb2.Loitering(enter_time_ns=1, dwell_ms=60_001, threshold_ms=60_000)
        ),
    ]
    events = []
    for kind in kinds:
        event = analytics_pb2.AnalyticsEvent()
        event.CopyFrom(base)
        event.MergeFrom(kind)
        events.append(event)
    return events


def _health() -> health_pb2.ChannelHealth:
    return health_pb2.ChannelHealth(
        channel_id="cam-1",
        scenario_id="scn-1",
        state=health_pb2.CHANNEL_STATE_RECONNECTING,
        reason="connection refused",
        reconnect_count=2,
        fps=24.9,
        source_fps=25.0,
        last_frame_time_ns=1_700_000_000_000_000_000,
        frames_total=1000,
        frames_dropped=3,
        stream_epoch=3,
        next_retry_time_ns=1_700_000_001_000_000_000,
        width=1920,
        height=1080,
        codec="h264",
        agent_id="node-a",
        pid=4321,
    )


def _source() -> source_pb2.SourceSpec:
    return source_pb2.SourceSpec(
        url="rtsp://user:secret@10.0.0.5:554/stream1",
        redacted_url="rtsp://***@10.0.0.5:554/stream1",
        rtsp_transport=source_pb2.RTSP_TRANSPORT_TCP,
        realtime=True,
        loop=True,
        target_fps=10.0,
        resize=source_pb2.Resize(width=1280),
        pixel_format=frame_pb2.PIXEL_FORMAT_NV12,
        open_timeout=Duration(seconds=10),
        read_timeout=Duration(seconds=5),
        stall_timeout=Duration(seconds=5),
        backoff_max=Duration(seconds=30),
        ring_slots=8,
    )


def _scenario() -> scenario_pb2.Scenario:
    return scenario_pb2.Scenario(
        id="scn-1",
        name="Store 12 entrance",
        client_request_id="req-1",
        source=_source(),
        pipeline=scenario_pb2.PipelineSettings(
            model="nanodet-m-416",
            confidence_threshold=0.35,
            class_names=["person"],
            tracker=scenario_pb2.TrackerSettings(min_hits=3, lost_timeout=Duration(seconds=2)),
            reid=scenario_pb2.ReidSettings(enabled=True, site_id="store-12"),
            dataset=scenario_pb2.DatasetCapture(enabled=True, interval=Duration(seconds=30)),
        ),
        analytics=_rules(),
        status=scenario_pb2.SCENARIO_STATUS_ACTIVE,
        status_reason="running",
        health=_health(),
        create_time=_ts(1_700_000_000),
        update_time=_ts(1_700_000_100, 5),
        worker=scenario_pb2.WorkerAssignment(agent_id="node-a", node_id="host-a", pid=4321, ring="vap-cam-1"),
        revision=7,
        channel_id="cam-1",
        labels={"store": "12"},
    )


def _agent_messages() -> list[Message]:
    process = agent_pb2.ChannelProcess(
        channel_id="cam-1",
        scenario_id="scn-1",
        pid=4321,
        ring="vap-cam-1",
        ring_slots=8,
        redacted_url="rtsp://***@10.0.0.5:554/stream1",
        start_time=_ts(1_700_000_000),
        health=_health(),
    )
    return [
        agent_pb2.AgentCommand(
            command_id="outbox-1",
            agent_id="node-a",
            create_time=_ts(1_700_000_000),
            start_channel=agent_pb2.StartChannel(channel_id="cam-1", scenario_id="scn-1", source=_source()),
        ),
        agent_pb2.AgentCommand(
            command_id="outbox-2",
            stop_channel=agent_pb2.StopChannel(channel_id="cam-1", grace_period=Duration(seconds=5)),
        ),
        agent_pb2.AgentCommand(command_id="outbox-3", list_channels=agent_pb2.ListAgentChannels()),
        agent_pb2.AgentReply(
            command_id="outbox-1", agent_id="node-a", code=agent_pb2.AGENT_REPLY_CODE_OK, channel=process
        ),
        agent_pb2.AgentReply(
            command_id="outbox-4",
            code=agent_pb2.AGENT_REPLY_CODE_MAX_WORKERS,
            message="MAX_WORKERS=8 reached",
        ),
        agent_pb2.AgentReply(
            command_id="outbox-3",
            code=agent_pb2.AGENT_REPLY_CODE_OK,
            channels=agent_pb2.AgentChannelList(channels=[process], max_workers=8),
        ),
        agent_pb2.AgentStatus(agent_id="node-a", node_id="host-a", pid=1, max_workers=8, channels=[process]),
    ]


def _main_messages() -> list[Message]:
    return [
        _frame_ref(),
        _frame_detections(),
        _tracked_frame(),
        *_events(),
        analytics_pb2.IntervalCounts(
            scenario_id="scn-1",
            channel_id="cam-1",
            rule_id="door",
            interval_start_ns=1_700_000_000_000_000_000,
            interval_end_ns=1_700_000_060_000_000_000,
            line=analytics_pb2.LineCounts(a_to_b=5, b_to_a=3),
        ),
        analytics_pb2.IntervalCounts(
            rule_id="till",
            zone=analytics_pb2.ZoneCounts(
                enters=4, exits=3, max_occupancy=2, mean_occupancy=1.25, loitering=1
            ),
        ),
        _health(),
        _scenario(),
        scenario_pb2.ScenarioConfig(
            scenario_id="scn-1",
            channel_id="cam-1",
            revision=7,
            active=True,
            pipeline=_scenario().pipeline,
            analytics=_rules(),
        ),
        *_agent_messages(),
        control_pb2.CreateScenarioRequest(scenario=_scenario(), client_request_id="req-1", start=True),
        control_pb2.UpdateScenarioRequest(
            scenario=_scenario(), update_mask=FieldMask(paths=["analytics.rules"]), expected_revision=7
        ),
        control_pb2.ListScenariosRequest(
            page_size=10, page_token="abc", statuses=[scenario_pb2.SCENARIO_STATUS_FAILED]
        ),
        control_pb2.StreamDetectionsRequest(
            scenario_ids=["scn-1"], class_ids=[0], min_confidence=0.5, tracked=True
        ),
        control_pb2.StreamDetectionsResponse(frame=_frame_detections(), dropped_total=12),
        control_pb2.StreamEventsRequest(scenario_ids=["scn-1"], kinds=[analytics_pb2.EVENT_KIND_LOITERING]),
        control_pb2.StreamEventsResponse(event=_events()[0], dropped_total=1),
        control_pb2.QueryCountsRequest(
            scenario_id="scn-1",
            time_range=common_pb2.TimeRange(start_time=_ts(1_700_000_000), end_time=_ts(1_700_003_600)),
            interval=Duration(seconds=900),
            page_size=100,
        ),
        control_pb2.ListChannelsResponse(
            channels=[control_pb2.ChannelStatus(channel_id="cam-1", health=_health(), latency_p99_ms=120.0)]
        ),
        inference_pb2.DetectRequest(
            image=b"\xff\xd8\xff\xe0jpeg", model="ssdlite-person-300", confidence_threshold=0.4, class_ids=[0]
        ),
        inference_pb2.DetectResponse(
            detections=_frame_detections().detections, image_width=640, image_height=480, stats=_stats()
        ),
        inference_pb2.ListModelsResponse(
            models=[
                inference_pb2.ModelInfo(
                    name="nanodet-m-416",
                    family=inference_pb2.MODEL_FAMILY_NANODET,
                    input_width=416,
                    input_height=416,
                    class_names=["person", "bicycle"],
                    max_batch_size=8,
                    precision=inference_pb2.MODEL_PRECISION_FP32,
                    is_default=True,
                )
            ]
        ),
    ]


@pytest.mark.parametrize("message", _main_messages(), ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    data = message.SerializeToString(deterministic=True)
    copy = type(message)()
    copy.ParseFromString(data)
    assert copy == message
    assert copy.SerializeToString(deterministic=True) == data
    assert message.ListFields(), "the example should set fields"


def test_optional_fields_keep_presence() -> None:
    det = detection_pb2.Detection(track_id=0)
    assert det.HasField("track_id")
    copy = detection_pb2.Detection.FromString(det.SerializeToString())
    assert copy.HasField("track_id")
    assert not detection_pb2.Detection().HasField("track_id")
    assert not inference_pb2.DetectRequest().HasField("confidence_threshold")


def test_oneofs_select_the_event_kind() -> None:
    kinds = [e.WhichOneof("kind") for e in _events()]
    assert kinds == ["line_crossing", "zone_enter", "zone_exit", "zone_dwell", "loitering"]
    enum_names = {n.removeprefix("EVENT_KIND_").lower() for n in analytics_pb2.EventKind.keys()}  # noqa: SIM118
    assert {"line_crossing", "zone_enter", "zone_exit", "zone_dwell", "loitering"} <= enum_names


def test_frame_ref_contract_is_unchanged() -> None:
    expected = {
        "ring": (1, "string"),
        "slot": (2, "uint32"),
        "generation": (3, "uint64"),
        "width": (4, "uint32"),
        "height": (5, "uint32"),
        "pixel_format": (6, "enum"),
        "strides": (7, "uint32"),
        "plane_offsets": (8, "uint64"),
        "channel_id": (9, "string"),
        "scenario_id": (10, "string"),
        "sequence": (11, "uint64"),
        "pts_us": (12, "int64"),
        "capture_time_ns": (13, "int64"),
        "commit_time_ns": (14, "int64"),
        "stream_epoch": (15, "uint32"),
    }
    type_name = descriptor_pb2.FieldDescriptorProto.Type.Name
    proto = descriptor_pb2.DescriptorProto()
    frame_pb2.FrameRef.DESCRIPTOR.CopyToProto(proto)
    actual = {f.name: (f.number, type_name(f.type).removeprefix("TYPE_").lower()) for f in proto.field}
    for name, spec in expected.items():
        assert actual[name] == spec, name
    assert dict(frame_pb2.PixelFormat.items()) == {
        "PIXEL_FORMAT_UNSPECIFIED": 0,
        "PIXEL_FORMAT_BGR24": 1,
        "PIXEL_FORMAT_RGB24": 2,
        "PIXEL_FORMAT_I420": 3,
        "PIXEL_FORMAT_NV12": 4,
        "PIXEL_FORMAT_GRAY8": 5,
    }


# --- (3) scenario lifecycle states ------------------------------------------------------------------------


def test_scenario_status_has_exactly_the_lifecycle_states() -> None:
    assert scenario_pb2.ScenarioStatus.keys() == [
        "SCENARIO_STATUS_UNSPECIFIED",
        "SCENARIO_STATUS_INIT_STARTUP",
        "SCENARIO_STATUS_IN_STARTUP_PROCESSING",
        "SCENARIO_STATUS_ACTIVE",
        "SCENARIO_STATUS_INIT_SHUTDOWN",
        "SCENARIO_STATUS_IN_SHUTDOWN_PROCESSING",
        "SCENARIO_STATUS_INACTIVE",
        "SCENARIO_STATUS_FAILED",
    ]
    assert scenario_pb2.SCENARIO_STATUS_UNSPECIFIED == 0


def test_enums_start_with_a_prefixed_unspecified_zero() -> None:
    for module in GENERATED_MODULES:
        for enum in _all_enums(module.DESCRIPTOR):
            prefix = _upper_snake(enum.name) + "_"
            first = enum.value[0]
            assert (first.number, first.name) == (0, prefix + "UNSPECIFIED"), enum.name
            for value in enum.value:
                assert value.name.startswith(prefix), value.name


def _upper_snake(name: str) -> str:
    return "".join("_" + c if c.isupper() and i else c for i, c in enumerate(name)).upper()


def _all_enums(file: FileDescriptor) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    yield from proto.enum_type
    stack = list(proto.message_type)
    while stack:
        message = stack.pop()
        yield from message.enum_type
        stack.extend(message.nested_type)


# --- (4) services -----------------------------------------------------------------------------------------

# name -> (request type, response type, server streaming); no RPC is client streaming.
CONTROL_RPCS = {
    "CreateScenario": ("CreateScenarioRequest", "CreateScenarioResponse", False),
    "GetScenario": ("GetScenarioRequest", "GetScenarioResponse", False),
    "ListScenarios": ("ListScenariosRequest", "ListScenariosResponse", False),
    "UpdateScenario": ("UpdateScenarioRequest", "UpdateScenarioResponse", False),
    "StartScenario": ("StartScenarioRequest", "StartScenarioResponse", False),
    "StopScenario": ("StopScenarioRequest", "StopScenarioResponse", False),
    "DeleteScenario": ("DeleteScenarioRequest", "DeleteScenarioResponse", False),
    "StreamDetections": ("StreamDetectionsRequest", "StreamDetectionsResponse", True),
    "StreamEvents": ("StreamEventsRequest", "StreamEventsResponse", True),
    "QueryDetections": ("QueryDetectionsRequest", "QueryDetectionsResponse", False),
    "QueryEvents": ("QueryEventsRequest", "QueryEventsResponse", False),
    "QueryCounts": ("QueryCountsRequest", "QueryCountsResponse", False),
    "Detect": ("DetectRequest", "DetectResponse", False),
    "ListModels": ("ListModelsRequest", "ListModelsResponse", False),
    "ListChannels": ("ListChannelsRequest", "ListChannelsResponse", False),
    "ListNodes": ("ListNodesRequest", "ListNodesResponse", False),
    "DrainNode": ("DrainNodeRequest", "DrainNodeResponse", False),
}
INFERENCE_RPCS = {
    "Detect": ("DetectRequest", "DetectResponse", False),
    "ListModels": ("ListModelsRequest", "ListModelsResponse", False),
}


def _rpcs(service: ServiceDescriptor) -> dict[str, tuple[str, str, bool]]:
    proto = descriptor_pb2.ServiceDescriptorProto()
    service.CopyToProto(proto)
    for method in proto.method:
        assert not method.client_streaming, method.name
    return {
        m.name: (
            m.input_type.removeprefix(".vap.v1."),
            m.output_type.removeprefix(".vap.v1."),
            m.server_streaming,
        )
        for m in proto.method
    }


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (control_pb2.DESCRIPTOR.services_by_name["ControlService"], CONTROL_RPCS),
        (inference_pb2.DESCRIPTOR.services_by_name["InferenceService"], INFERENCE_RPCS),
    ],
    ids=["ControlService", "InferenceService"],
)
def test_service_rpcs(service: ServiceDescriptor, expected: dict[str, tuple[str, str, bool]]) -> None:
    assert service.full_name.startswith("vap.v1.")
    assert _rpcs(service) == expected


def test_control_and_inference_share_detect_messages() -> None:
    control = control_pb2.DESCRIPTOR.services_by_name["ControlService"].methods_by_name
    inference = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].methods_by_name
    for name in INFERENCE_RPCS:
        assert control[name].input_type is inference[name].input_type
        assert control[name].output_type is inference[name].output_type


# --- (5) every element is documented ----------------------------------------------------------------------

# FileDescriptorProto / DescriptorProto / EnumDescriptorProto / ServiceDescriptorProto field numbers.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out = tmp_path_factory.mktemp("descriptors") / "vap.pb"
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *(str(p.relative_to(PROTOS)) for p in PROTO_FILES),
    ]
    assert protoc.main(args) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _elements(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, source-info path) of every message, field, oneof, enum, enum value, service and method."""

    def enum(
        e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str
    ) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield f"{scope}.{e.name}", path
        for i, v in enumerate(e.value):
            yield f"{scope}.{e.name}.{v.name}", (*path, _ENUM_VALUE, i)

    def message(
        m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str
    ) -> Iterator[tuple[str, tuple[int, ...]]]:
        if m.options.map_entry:
            return  # synthetic entry type of a map<> field
        name = f"{scope}.{m.name}"
        yield name, path
        for i, f in enumerate(m.field):
            yield f"{name}.{f.name}", (*path, _MSG_FIELD, i)
        for i, o in enumerate(m.oneof_decl):
            if not o.name.startswith("_"):  # synthetic oneof of a proto3 `optional` field
                yield f"{name}.{o.name}", (*path, _MSG_ONEOF, i)
        for i, n in enumerate(m.nested_type):
            yield from message(n, (*path, _MSG_NESTED, i), name)
        for i, e in enumerate(m.enum_type):
            yield from enum(e, (*path, _MSG_ENUM, i), name)

    scope = file.package
    for i, m in enumerate(file.message_type):
        yield from message(m, (_FILE_MESSAGE, i), scope)
    for i, e in enumerate(file.enum_type):
        yield from enum(e, (_FILE_ENUM, i), scope)
    for i, s in enumerate(file.service):
        yield f"{scope}.{s.name}", (_FILE_SERVICE, i)
        for j, method in enumerate(s.method):
            yield f"{scope}.{s.name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j)


def _undocumented(files: Sequence[descriptor_pb2.FileDescriptorProto]) -> list[str]:
    missing = []
    for file in files:
        comments = {tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location}
        missing += [f"{file.name}: {name}" for name, path in _elements(file) if not comments.get(path)]
    return missing


def test_every_element_has_a_leading_comment(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    ours = [f for f in descriptor_set.file if f.package == "vap.v1"]
    assert {f.name for f in ours} == {f"vap/v1/{p.name}" for p in PROTO_FILES}
    assert sum(1 for f in ours for _ in _elements(f)) > 300
    assert _undocumented(ours) == []


def test_the_comment_check_catches_a_missing_comment(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    file = next(f for f in descriptor_set.file if f.name == "vap/v1/frame.proto")
    stripped = descriptor_pb2.FileDescriptorProto()
    stripped.CopyFrom(file)
    for loc in stripped.source_code_info.location:
        if list(loc.path) == [_FILE_MESSAGE, 0, _MSG_FIELD, 0]:  # FrameRef.ring
            loc.ClearField("leading_comments")
    assert _undocumented([stripped]) == ["vap/v1/frame.proto: vap.v1.FrameRef.ring"]


# --- (6) NATS subjects ------------------------------------------------------------------------------------

FORBIDDEN = frozenset(".*>")


@given(st.text())
def test_token_never_contains_subject_syntax_or_whitespace(raw: str) -> None:
    if not raw:
        with pytest.raises(ValueError, match="empty"):
            subjects.token(raw)
        return
    tok = subjects.token(raw)
    assert tok
    assert not FORBIDDEN & set(tok)
    assert not any(c.isspace() for c in tok)
    assert re.fullmatch(r"[-/_=.a-zA-Z0-9]+", tok) and "." not in tok  # also a valid JetStream KV key


@given(st.text(min_size=1), st.text(min_size=1))
def test_distinct_ids_give_distinct_tokens(a: str, b: str) -> None:
    assert (subjects.token(a) == subjects.token(b)) == (a == b)


@given(st.text(min_size=1))
def test_token_round_trips(raw: str) -> None:
    assert subjects.untoken(subjects.token(raw)) == raw


@given(st.from_regex(r"[A-Za-z0-9_-]+", fullmatch=True))
def test_plain_ids_are_kept_readable(raw: str) -> None:
    assert subjects.token(raw) == raw


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "*", ">", "=4", "=zz", "=41", "=2e", "%2E"])
def test_untoken_rejects_what_token_cannot_produce(bad: str) -> None:
    with pytest.raises(ValueError, match="token"):
        subjects.untoken(bad)


def test_token_examples() -> None:
    assert subjects.token("cam-01_a") == "cam-01_a"
    assert subjects.token("store.12 cam*>") == "store=2E12=20cam=2A=3E"
    assert subjects.token("a=b") == "a=3Db"
    assert subjects.token("100%") == "100=25"
    assert subjects.token("caméra") == "cam=C3=A9ra"


@given(st.text(min_size=1))
def test_subjects_have_fixed_shape_and_parse_back(raw: str) -> None:
    per_channel: dict[Callable[[str], str], str] = {
        subjects.frames: subjects.FRAMES,
        subjects.detections: subjects.DETECTIONS,
        subjects.tracks: subjects.TRACKS,
        subjects.events: subjects.EVENTS,
        subjects.counts: subjects.COUNTS,
        subjects.channel_health: subjects.HEALTH,
    }
    for make, kind in per_channel.items():
        subject = make(raw)
        assert subject.split(".")[:2] == [subjects.PREFIX, kind]
        assert len(subject.split(".")) == 3
        assert subjects.parse(subject) == subjects.ParsedSubject(kind, raw, "")
    scoped: dict[Callable[[str], str], tuple[str, str]] = {
        subjects.scenario_config: (subjects.SCENARIO, "config"),
        subjects.agent_commands: (subjects.AGENT, "commands"),
        subjects.agent_replies: (subjects.AGENT, "replies"),
        subjects.agent_status: (subjects.AGENT, "status"),
    }
    for make, (kind, leaf) in scoped.items():
        subject = make(raw)
        assert len(subject.split(".")) == 4
        assert subjects.parse(subject) == subjects.ParsedSubject(kind, raw, leaf)


def _matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` matches one token, `>` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def test_wildcards_match_their_subjects_only() -> None:
    pairs = [
        (subjects.all_frames(), subjects.frames),
        (subjects.all_detections(), subjects.detections),
        (subjects.all_tracks(), subjects.tracks),
        (subjects.all_events(), subjects.events),
        (subjects.all_counts(), subjects.counts),
        (subjects.all_channel_health(), subjects.channel_health),
        (subjects.all_scenario_configs(), subjects.scenario_config),
        (subjects.all_agent_replies(), subjects.agent_replies),
        (subjects.all_agent_status(), subjects.agent_status),
    ]
    concrete = [make("x.y z") for _, make in pairs] + [subjects.agent_commands("x.y z")]
    for pattern, make in pairs:
        assert [s for s in concrete if _matches(pattern, s)] == [make("x.y z")], pattern


@pytest.mark.parametrize(
    "bad",
    [
        "vap.frames",
        "vap.detections.a.b",
        "vap.frames.a.b.c",
        "vap.bogus.a",
        "other.frames.a",
        "vap.agent.a.nope",
        "vap.frames.a=2",
    ],
)
def test_parse_rejects_foreign_subjects(bad: str) -> None:
    with pytest.raises(ValueError, match=r"subject|token"):
        subjects.parse(bad)
