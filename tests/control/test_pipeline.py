"""The whole pipeline through the control plane: simulated RTSP camera -> decoder agent -> inference service
(SSDLite person) -> tracker -> control. A scenario is started over gRPC; its tracked detections stream live
to a subscriber, are stored by the inbox, queried back with track ids, and its channel shows a live rate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vap_control.testing import RunningControl, wait_for
from vap_proto.v1 import analytics_pb2, common_pb2, control_pb2, scenario_pb2, source_pb2
from vap_proto.v1 import health_pb2 as health_pb2_v1

pytestmark = pytest.mark.integration

S = scenario_pb2.ScenarioStatus
MODEL = "ssdlite-mbv2-person-300"


class ServiceProcess:
    """``python -m <module>`` with NATS_URL and its log in a file; ready when its health says SERVING."""

    def __init__(self, module: str, log: Path, env: dict[str, str]) -> None:
        self.log = log
        environment = {k: v for k, v in os.environ.items() if k != "VAP_CONFIG"} | env
        self._file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module], env=environment, stdout=self._file, stderr=self._file
        )

    def record(self, event: str) -> dict[str, Any] | None:
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    return dict(record)
        return None

    async def serving(self, timeout: float = 60.0) -> int:
        """Wait for SERVING on the runtime's health port; returns that port (it also serves the gRPC API)."""
        started = await wait_for(self._started, timeout, f"{self.proc.args} to start")
        port = int(started["health_port"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def up() -> bool:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.proc.args} exited:\n{self.log.read_text()[-3000:]}")
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await wait_for(up, timeout, f"{self.proc.args} SERVING", interval=0.2)
        return port

    async def _started(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.proc.args} exited:\n{self.log.read_text()[-3000:]}")
        return self.record("service started")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()


@pytest.fixture(scope="module")
def models_available() -> None:
    registry = pytest.importorskip("vap_models.catalogue")
    from vap_inference.testing import missing_model_reason

    if reason := missing_model_reason(registry.SSDLITE):
        pytest.skip(reason)


@pytest.fixture(scope="module")
def pipeline(
    models_available: None, nats_url: str, tmp_path_factory: pytest.TempPathFactory, control_token: str
) -> Iterator[dict[str, ServiceProcess]]:
    pytest.importorskip("vap_tracker.service", reason="the tracker service (services/tracker) is needed")
    logs = tmp_path_factory.mktemp("pipeline")
    base = {"NATS_URL": nats_url}
    inference = ServiceProcess(
        "vap_inference",
        logs / "inference.log",
        base
        | {
            "VAP_INFERENCE_DEFAULT_MODEL": MODEL,
            "VAP_INFERENCE_THREADS": "1",
            "VAP_INFERENCE_DATA_DIR": str(logs / "inference-data"),
            # The control API's token: control forwards Detect/ListModels with it.
            "VAP_INFERENCE_AUTH_TOKENS": json.dumps([control_token]),
        },
    )
    tracker = ServiceProcess(
        "vap_tracker", logs / "tracker.log", base | {"VAP_TRACKER_REID__EMBEDDER": "hsv"}
    )
    try:
        yield {"inference": inference, "tracker": tracker}
    finally:
        tracker.stop()
        inference.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def control_overrides(pipeline: dict[str, ServiceProcess]) -> dict[str, Any]:
    # The inference service's gRPC port is its runtime's health port; known once it started.
    port = await pipeline["inference"].serving()
    return {"inference_target": f"127.0.0.1:{port}", "stats_window_s": 30.0}


async def test_a_camera_through_the_whole_pipeline(
    control: RunningControl, pipeline: dict[str, ServiceProcess], decoder_agent: Any, rtsp_camera: Any
) -> None:
    await pipeline["tracker"].serving()
    cam = rtsp_camera()
    line = analytics_pb2.AnalyticsRule(
        rule_id="middle",
        normalized_coordinates=True,
        line=analytics_pb2.Line(p1=common_pb2.Point(x=0.5, y=0.0), p2=common_pb2.Point(x=0.5, y=1.0)),
    )
    spec = scenario_pb2.Scenario(
        name="pipeline",
        source=source_pb2.SourceSpec(url=cam.url, target_fps=5.0),
        pipeline=scenario_pb2.PipelineSettings(model=MODEL, confidence_threshold=0.3),
        analytics=analytics_pb2.AnalyticsSettings(rules=[line]),
    )
    tracked = control.stub.StreamDetections(control_pb2.StreamDetectionsRequest(tracked=True))
    await tracked.initial_metadata()
    created = await control.stub.CreateScenario(control_pb2.CreateScenarioRequest(scenario=spec, start=True))
    sid = created.scenario.id

    # Live: tracked detections of this scenario arrive, people with track ids.
    deadline = time.monotonic() + 60
    item = None
    while time.monotonic() < deadline:
        item = await asyncio.wait_for(tracked.read(), 60)
        if item.frame.frame.scenario_id == sid and any(d.HasField("track_id") for d in item.frame.detections):
            break
    assert item is not None and item.frame.frame.scenario_id == sid
    assert all(d.class_name == "person" for d in item.frame.detections)
    tracked.cancel()

    # Stored: the inbox wrote the frames; the query joins detections with their track ids.
    async def stored() -> control_pb2.QueryDetectionsResponse | None:
        page = await control.stub.QueryDetections(control_pb2.QueryDetectionsRequest(scenario_id=sid))
        return page if any(d.HasField("track_id") for f in page.frames for d in f.detections) else None

    page = await wait_for(stored, 30.0, "stored detections with track ids")
    assert page.frames[0].stats.model_name == MODEL

    channels = await control.stub.ListChannels(control_pb2.ListChannelsRequest(scenario_ids=[sid]))
    (channel,) = channels.channels
    assert channel.detection_fps > 0 and channel.latency_p50_ms > 0
    assert channel.health.state == health_pb2_v1.CHANNEL_STATE_STREAMING and channel.worker.pid > 0

    await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid))

    async def inactive() -> bool:
        got = await control.stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=sid))
        return got.scenario.status == S.SCENARIO_STATUS_INACTIVE

    await wait_for(inactive, 30.0, "INACTIVE")
