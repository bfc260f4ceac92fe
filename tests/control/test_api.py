"""The gRPC API surface: reflection, health, authentication, validation, idempotency, updates, pagination,
state preconditions, Detect/ListModels forwarded to a real inference service, request size limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import psycopg
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from vap_common import subjects
from vap_control.testing import RunningControl, wait_for
from vap_proto.v1 import (
    analytics_pb2,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    inference_pb2,
    scenario_pb2,
    source_pb2,
)

pytestmark = pytest.mark.integration

S = scenario_pb2.ScenarioStatus
SECRET = "hunter2-Secret"
MAX_REQUEST = 1024 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def inference_target() -> AsyncIterator[str]:
    """The real InferenceService (vap_inference.grpc_api) on its own gRPC server in this process."""
    grpc_api = pytest.importorskip("vap_inference.grpc_api")
    from vap_inference.manager import ModelManager
    from vap_inference.settings import InferenceSettings

    settings = InferenceSettings(default_model="ssdlite-mbv2-person-300", threads=1)
    manager = ModelManager(settings)
    api = grpc_api.InferenceApi(settings, manager)
    server = grpc.aio.server()
    grpc_api.add_to_server(server, api)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        api.close()
        manager.close()


@pytest.fixture(scope="module")
def control_overrides(inference_target: str) -> dict[str, Any]:
    return {"inference_target": inference_target, "max_request_bytes": MAX_REQUEST}


def _scenario(url: str = "rtsp://cam.example/stream", **fields: Any) -> scenario_pb2.Scenario:
    return scenario_pb2.Scenario(source=source_pb2.SourceSpec(url=url), **fields)


def _zone(rule_id: str, points: list[tuple[float, float]], **fields: Any) -> analytics_pb2.AnalyticsRule:
    zone = analytics_pb2.Zone(polygon=[common_pb2.Point(x=x, y=y) for x, y in points])
    return analytics_pb2.AnalyticsRule(rule_id=rule_id, zone=zone, **fields)


def _line(rule_id: str, p1: tuple[float, float], p2: tuple[float, float]) -> analytics_pb2.AnalyticsRule:
    line = analytics_pb2.Line(p1=common_pb2.Point(x=p1[0], y=p1[1]), p2=common_pb2.Point(x=p2[0], y=p2[1]))
    return analytics_pb2.AnalyticsRule(rule_id=rule_id, line=line)


def _set_status(db: str, scenario_id: str, status: int) -> None:
    """Put a scenario into a state directly (what an agent's replies would do), to test preconditions."""
    with psycopg.connect(db) as conn:
        conn.execute("UPDATE scenarios SET status = %s WHERE id = %s", (status, uuid.UUID(scenario_id)))


# --- reflection, health, auth ---------------------------------------------------------------------------


def _reflect_and_call(target: str, token: str) -> tuple[list[str], str]:
    """What grpcurl does: list services via reflection, resolve a method's types, call it. Uses no
    generated code (a fresh descriptor pool filled from the server only)."""
    with grpc.insecure_channel(target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = list(db.get_services())
        pool = descriptor_pool.DescriptorPool(db)
        method = pool.FindServiceByName("vap.v1.ControlService").FindMethodByName("ListScenarios")
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/vap.v1.ControlService/ListScenarios",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        response = call(request_cls(page_size=1), metadata=(("authorization", f"Bearer {token}"),))
        return services, response.DESCRIPTOR.full_name


async def test_reflection_lists_the_services_and_a_method_can_be_called_without_proto_files(
    control: RunningControl,
) -> None:
    # Blocking reflection client in a thread: the server runs on this event loop.
    services, response_type = await asyncio.to_thread(_reflect_and_call, control.target, control.token)
    assert {
        "vap.v1.ControlService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(services)
    assert response_type == "vap.v1.ListScenariosResponse"


async def test_health_needs_no_token(control: RunningControl) -> None:
    async with grpc.aio.insecure_channel(control.target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong-token"),), (("authorization", "Basic dXNlcjpwdw=="),)],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_calls_without_a_valid_bearer_token_are_unauthenticated(
    control: RunningControl, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with grpc.aio.insecure_channel(control.target) as channel:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.ListScenarios(control_pb2.ListScenariosRequest(), metadata=metadata)
        assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stream = stub.StreamEvents(control_pb2.StreamEventsRequest(), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as streaming:
            await stream.read()
        assert streaming.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The same call with the token works.
        ok = await stub.ListScenarios(control_pb2.ListScenariosRequest(), metadata=control.metadata)
        assert ok.total_size >= 0


# --- validation --------------------------------------------------------------------------------------------

Call = Callable[[Any], Any]  # stub -> awaitable call


def _create(scenario: scenario_pb2.Scenario, **fields: Any) -> Call:
    return lambda stub: stub.CreateScenario(control_pb2.CreateScenarioRequest(scenario=scenario, **fields))


def _pipeline(**fields: Any) -> scenario_pb2.Scenario:
    return _scenario(pipeline=scenario_pb2.PipelineSettings(**fields))


def _rules(*rules: analytics_pb2.AnalyticsRule, **fields: Any) -> scenario_pb2.Scenario:
    return _scenario(analytics=analytics_pb2.AnalyticsSettings(rules=list(rules), **fields))


def _interval(seconds: float) -> Any:
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


SQUARE = [(0, 0), (100, 0), (100, 100), (0, 100)]
VALIDATION_CASES: list[tuple[str, Call, str]] = [
    ("url-missing", _create(scenario_pb2.Scenario(name="x")), "scenario.source.url"),
    ("url-scheme", _create(_scenario(f"ftp://u:{SECRET}@cam/x")), "scenario.source.url"),
    ("url-no-host", _create(_scenario(f"rtsp://u:{SECRET}@/stream")), "scenario.source.url"),
    ("url-port", _create(_scenario(f"rtsp://u:{SECRET}@cam:99999/x")), "scenario.source.url"),
    ("url-other-scheme", _create(_scenario("javascript:alert(1)")), "scenario.source.url"),
    ("unknown-model", _create(_pipeline(model="no-such-model")), "scenario.pipeline.model"),
    (
        "threshold-high",
        _create(_pipeline(confidence_threshold=1.5)),
        "scenario.pipeline.confidence_threshold",
    ),
    ("threshold-negative", _create(_pipeline(nms_iou_threshold=-0.1)), "scenario.pipeline.nms_iou_threshold"),
    (
        "tracker-threshold",
        _create(_pipeline(tracker=scenario_pb2.TrackerSettings(match_iou_threshold=2.0))),
        "scenario.pipeline.tracker.match_iou_threshold",
    ),
    (
        "zone-two-points",
        _create(_rules(_zone("z", [(0, 0), (5, 5)]))),
        "scenario.analytics.rules[0].zone.polygon",
    ),
    (
        "zone-self-intersecting",
        _create(
            _rules(_line("l", (0, 0), (1, 1)), _zone("bowtie", [(0, 0), (100, 100), (100, 0), (0, 100)]))
        ),
        "scenario.analytics.rules[1].zone.polygon",
    ),
    (
        "zone-collinear",
        _create(_rules(_zone("flat", [(0, 0), (50, 50), (100, 100)]))),
        "scenario.analytics.rules[0].zone.polygon",
    ),
    (
        "zone-normalized-range",
        _create(_rules(_zone("n", SQUARE, normalized_coordinates=True))),
        "scenario.analytics.rules[0].zone.polygon[1]",
    ),
    ("line-degenerate", _create(_rules(_line("l", (3, 3), (3, 3)))), "scenario.analytics.rules[0].line"),
    ("rule-id", _create(_rules(_zone("has space", SQUARE))), "scenario.analytics.rules[0].rule_id"),
    (
        "rule-duplicate",
        _create(_rules(_zone("a", SQUARE), _line("a", (0, 0), (1, 1)))),
        "scenario.analytics.rules[1].rule_id",
    ),
    ("rule-kind", _create(_rules(analytics_pb2.AnalyticsRule(rule_id="k"))), "scenario.analytics.rules[0]"),
    (
        "count-interval",
        _create(_rules(count_interval=_interval(0.5))),
        "scenario.analytics.count_interval",
    ),
    (
        "target-fps",
        _create(scenario_pb2.Scenario(source=source_pb2.SourceSpec(url="rtsp://cam/x", target_fps=0.0))),
        "scenario.source.target_fps",
    ),
    ("request-id", _create(_scenario(), client_request_id="x" * 129), "client_request_id"),
    ("get-id", lambda s: s.GetScenario(control_pb2.GetScenarioRequest(scenario_id="nope")), "scenario_id"),
    (
        "update-mask",
        lambda s: s.UpdateScenario(
            control_pb2.UpdateScenarioRequest(
                scenario=scenario_pb2.Scenario(id=str(uuid.uuid4())), update_mask={"paths": ["no_such_field"]}
            )
        ),
        "update_mask",
    ),
    (
        "query-confidence",
        lambda s: s.QueryDetections(control_pb2.QueryDetectionsRequest(scenario_id="nope", min_confidence=2)),
        "scenario_id",
    ),
    ("detect-empty", lambda s: s.Detect(inference_pb2.DetectRequest()), "image"),
    (
        "detect-threshold",
        lambda s: s.Detect(inference_pb2.DetectRequest(image=b"\xff\xd8", confidence_threshold=3)),
        "confidence_threshold",
    ),
    (
        "page-token",
        lambda s: s.ListScenarios(control_pb2.ListScenariosRequest(page_token="garbage!")),
        "page_token",
    ),
]


@pytest.mark.parametrize(
    ("call", "field"), [c[1:] for c in VALIDATION_CASES], ids=[c[0] for c in VALIDATION_CASES]
)
async def test_invalid_requests_name_the_field(control: RunningControl, call: Call, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(control.stub)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    details = error.value.details() or ""
    assert details.startswith(f"{field}:"), details
    assert SECRET not in details


async def test_invalid_values_of_existing_scenarios_and_streams(control: RunningControl) -> None:
    created = await control.stub.CreateScenario(control_pb2.CreateScenarioRequest(scenario=_scenario()))
    sid = created.scenario.id
    cases: list[tuple[Any, str]] = [
        (control_pb2.QueryDetectionsRequest(scenario_id=sid, min_confidence=2), "min_confidence"),
        (
            control_pb2.QueryEventsRequest(
                scenario_id=sid,
                time_range=common_pb2.TimeRange(start_time={"seconds": 20}, end_time={"seconds": 10}),
            ),
            "time_range",
        ),
        (control_pb2.QueryCountsRequest(scenario_id=sid, interval=_interval(90)), "interval"),
    ]
    for request, field in cases:
        method = {
            control_pb2.QueryDetectionsRequest: control.stub.QueryDetections,
            control_pb2.QueryEventsRequest: control.stub.QueryEvents,
            control_pb2.QueryCountsRequest: control.stub.QueryCounts,
        }[type(request)]
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await method(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.value.details() or "").startswith(f"{field}:")
    stream = control.stub.StreamDetections(control_pb2.StreamDetectionsRequest(min_confidence=-1))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream.read()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith("min_confidence:")
    # A valid id that does not exist is NOT_FOUND, not INVALID_ARGUMENT.
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await control.stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=str(uuid.uuid4())))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_request_size_limit(control: RunningControl) -> None:
    # Just over the limit: INVALID_ARGUMENT naming the setting (issue 23); far over: the transport refuses.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await control.stub.Detect(inference_pb2.DetectRequest(image=b"\0" * (MAX_REQUEST + 1)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_request_bytes" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await control.stub.Detect(inference_pb2.DetectRequest(image=b"\0" * (3 * MAX_REQUEST + 1024 * 1024)))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- scenarios -------------------------------------------------------------------------------------------


async def test_create_is_idempotent_on_the_client_request_id(
    control: RunningControl, control_db: str
) -> None:
    key = uuid.uuid4().hex
    request = control_pb2.CreateScenarioRequest(
        scenario=_scenario(f"rtsp://admin:{SECRET}@cam.example/1", name="first"), client_request_id=key
    )
    results = await asyncio.gather(*(control.stub.CreateScenario(request) for _ in range(5)))
    assert sum(r.created for r in results) == 1
    assert len({r.scenario.id for r in results}) == 1
    again = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(scenario=_scenario(name="second"), client_request_id=key)
    )
    assert not again.created and again.scenario.name == "first" and again.scenario.client_request_id == key
    # Credentials are write-only.
    assert again.scenario.source.url == "" and SECRET not in str(again)
    assert again.scenario.source.redacted_url == "rtsp://***@cam.example/1"
    with psycopg.connect(control_db) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM scenarios WHERE client_request_id = %s", (key,)
        ).fetchone() or (0,)
    assert n == 1


async def test_create_with_start_writes_the_scenario_and_its_commands_in_one_transaction(
    control: RunningControl, control_db: str
) -> None:
    created = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(
            scenario=_scenario(), client_request_id=uuid.uuid4().hex, start=True
        )
    )
    sid = uuid.UUID(created.scenario.id)
    assert created.scenario.status == S.SCENARIO_STATUS_INIT_STARTUP
    with psycopg.connect(control_db) as conn:
        kinds = [
            r[0] for r in conn.execute("SELECT kind FROM outbox WHERE scenario_id = %s ORDER BY id", (sid,))
        ]
    assert kinds == ["scenario_config", "start_channel"]
    # No decoder agent is alive for this database: the start waits (visible in the reason), nothing is lost.

    async def waiting() -> scenario_pb2.Scenario | None:
        s = (await control.stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=str(sid)))).scenario
        return s if "waiting for a decoder agent" in s.status_reason else None

    s = await wait_for(waiting, 10.0, "the waiting reason")
    assert s.status == S.SCENARIO_STATUS_INIT_STARTUP
    # Stopping a scenario whose start never went out completes without an agent.
    await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=str(sid)))

    async def inactive() -> bool:
        got = await control.stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=str(sid)))
        return got.scenario.status == S.SCENARIO_STATUS_INACTIVE

    await wait_for(inactive, 10.0, "INACTIVE")
    with psycopg.connect(control_db) as conn:
        states = dict(
            conn.execute("SELECT kind, state FROM outbox WHERE scenario_id = %s", (sid,)).fetchall()
        )
    assert states["start_channel"] == "cancelled" and states["stop_channel"] == "sent"


async def test_update_with_mask_revision_and_live_rules(
    control: RunningControl, control_db: str, nats_client: Any
) -> None:
    created = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(scenario=_scenario(f"rtsp://u:{SECRET}@cam/9", name="a"))
    )
    sid = created.scenario.id
    assert created.scenario.revision == 1
    renamed = await control.stub.UpdateScenario(
        control_pb2.UpdateScenarioRequest(
            scenario=scenario_pb2.Scenario(id=sid, name="b"), update_mask={"paths": ["name"]}
        )
    )
    assert renamed.scenario.name == "b" and renamed.scenario.revision == 2
    # The write-only URL survives an update that does not name it.
    assert renamed.scenario.source.redacted_url == "rtsp://***@cam/9"
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await control.stub.UpdateScenario(
            control_pb2.UpdateScenarioRequest(
                scenario=scenario_pb2.Scenario(id=sid, name="c"),
                update_mask={"paths": ["name"]},
                expected_revision=1,
            )
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED

    # While running, the source may not change but rules may, and they reach the pipeline as ScenarioConfig.
    _set_status(control_db, sid, S.SCENARIO_STATUS_ACTIVE)
    with pytest.raises(grpc.aio.AioRpcError) as running:
        await control.stub.UpdateScenario(
            control_pb2.UpdateScenarioRequest(
                scenario=scenario_pb2.Scenario(id=sid, source=source_pb2.SourceSpec(url="rtsp://other/x")),
                update_mask={"paths": ["source"]},
            )
        )
    assert running.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "scenario.source" in (running.value.details() or "")
    configs: list[scenario_pb2.ScenarioConfig] = []

    async def on_config(msg: Any) -> None:
        configs.append(scenario_pb2.ScenarioConfig.FromString(msg.data))

    sub = await nats_client.subscribe(subjects.scenario_config(sid), cb=on_config)
    try:
        updated = await control.stub.UpdateScenario(
            control_pb2.UpdateScenarioRequest(
                scenario=scenario_pb2.Scenario(
                    id=sid, analytics=analytics_pb2.AnalyticsSettings(rules=[_zone("door", SQUARE)])
                ),
                update_mask={"paths": ["analytics.rules"]},
                expected_revision=2,
            )
        )
        assert updated.scenario.revision == 3

        async def delivered() -> bool:
            return any(c.revision == 3 for c in configs)

        await wait_for(delivered, 10.0, "ScenarioConfig revision 3")
    finally:
        await sub.unsubscribe()
    config = next(c for c in configs if c.revision == 3)
    assert config.active and [r.rule_id for r in config.analytics.rules] == ["door"]
    assert config.analytics.count_interval.seconds == 60  # the default is filled in for consumers
    assert SECRET not in str(config)  # ScenarioConfig never carries the source


async def test_illegal_transitions_are_failed_precondition(control: RunningControl, control_db: str) -> None:
    created = await control.stub.CreateScenario(control_pb2.CreateScenarioRequest(scenario=_scenario()))
    sid = created.scenario.id
    for status in (S.SCENARIO_STATUS_INIT_SHUTDOWN, S.SCENARIO_STATUS_IN_SHUTDOWN_PROCESSING):
        _set_status(control_db, sid, status)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await control.stub.StartScenario(control_pb2.StartScenarioRequest(scenario_id=sid))
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Stopping while stopping is a no-op, not an error.
    same = await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid))
    assert same.scenario.status == S.SCENARIO_STATUS_IN_SHUTDOWN_PROCESSING
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await control.stub.DeleteScenario(control_pb2.DeleteScenarioRequest(scenario_id=sid))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    _set_status(control_db, sid, S.SCENARIO_STATUS_INACTIVE)
    await control.stub.DeleteScenario(control_pb2.DeleteScenarioRequest(scenario_id=sid))


async def test_list_scenarios_pages_newest_first(control: RunningControl) -> None:
    label = uuid.uuid4().hex[:8]
    ids = []
    for i in range(5):
        r = await control.stub.CreateScenario(
            control_pb2.CreateScenarioRequest(
                scenario=_scenario(name=f"{label}-{i}", labels={"batch": label})
            )
        )
        ids.append(r.scenario.id)
    request = control_pb2.ListScenariosRequest(page_size=2, statuses=[S.SCENARIO_STATUS_INACTIVE])
    seen: list[str] = []
    pages = 0
    while True:
        page = await control.stub.ListScenarios(request)
        pages += 1
        assert len(page.scenarios) <= 2
        seen.extend(s.id for s in page.scenarios)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert len(seen) == len(set(seen)) == page.total_size
    mine = [i for i in seen if i in ids]
    assert mine == list(reversed(ids))  # newest first
    with pytest.raises(grpc.aio.AioRpcError) as error:  # a token used with other filters
        first = await control.stub.ListScenarios(control_pb2.ListScenariosRequest(page_size=1))
        await control.stub.ListScenarios(
            control_pb2.ListScenariosRequest(
                page_token=first.next_page_token, statuses=[S.SCENARIO_STATUS_ACTIVE]
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- inference --------------------------------------------------------------------------------------------


async def test_detect_and_list_models_are_forwarded_to_the_inference_service(control: RunningControl) -> None:
    models = await control.stub.ListModels(inference_pb2.ListModelsRequest())
    names = [m.name for m in models.models]
    assert names[0] == "ssdlite-mbv2-person-300" and models.models[0].is_default
    assert "nanodet-m-416" in names
    from vap_inference.testing import missing_model_reason, video_frames
    from vap_models.catalogue import SSDLITE

    if reason := missing_model_reason(SSDLITE):
        pytest.skip(reason)
    import cv2

    ok, jpeg = cv2.imencode(".jpg", video_frames((0,))[0])
    assert ok
    response = await control.stub.Detect(
        inference_pb2.DetectRequest(image=jpeg.tobytes(), confidence_threshold=0.3)
    )
    assert (response.image_width, response.image_height) == (768, 576)
    assert response.detections and all(d.class_name == "person" for d in response.detections)
    assert response.stats.model_name == "ssdlite-mbv2-person-300"
    # Errors of the inference service keep their code: an unknown model is NOT_FOUND there.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await control.stub.Detect(inference_pb2.DetectRequest(image=jpeg.tobytes(), model="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_known_model_is_accepted(control: RunningControl) -> None:
    created = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(scenario=_pipeline(model="nanodet-m-416", confidence_threshold=0.4))
    )
    assert created.scenario.pipeline.model == "nanodet-m-416"
