"""The stack under test, started the way ``vap up`` starts it (vap_stack.up.start_stack: embedded NATS and
PostgreSQL, decoder agent, inference, tracker, control, each waited for), with no cameras in its config:
the suites add and remove channels through the control API while it runs.

All channels read one simulated camera: a gst-rtsp-server process serving vtest-720p25 on loopback with one
shared media (every client gets the same live stream, as several viewers of one real camera would), so the
camera's own cost stays the same whatever the channel count.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import psutil

from vap_common.paths import sample_video
from vap_common.ports import free_port_block
from vap_proto.v1 import control_pb2, control_pb2_grpc, scenario_pb2
from vap_rtspcam import RtspCamera, unavailable_reason
from vap_stack.config import Camera, Ports, SiteConfig
from vap_stack.supervise import StackError
from vap_stack.up import Stack, apply_scenario, start_stack

S = scenario_pb2.ScenarioStatus
Status: TypeAlias = scenario_pb2.ScenarioStatus.ValueType
VIDEO = "vtest-720p25.mp4"
# Index of each service's metrics port after ports.metrics_base (vap_stack.up).
METRICS_INDEX = {"decoder": 0, "inference": 1, "tracker": 2, "control": 3}
# Names of the supervisor's services -> the names used in rows.
SERVICE_NAMES = {
    "decoder-agent": "decoder",
    "inference": "inference",
    "tracker": "tracker",
    "control": "control",
}
STOPPED = (S.SCENARIO_STATUS_INACTIVE, S.SCENARIO_STATUS_FAILED)
START_ATTEMPTS = 3


def _quiet(message: str) -> None:
    """vap up's progress lines: only the ones that matter to someone watching a benchmark."""
    if "fetching" in message or "exited" in message:
        print(f"  stack: {message}", flush=True)


def missing_reason(models: Sequence[str]) -> str | None:
    """Why the pipeline suites cannot run here (no RTSP server, no video, no model), else None."""
    from vap_inference.testing import missing_model_reason
    from vap_models.catalogue import BUILTIN_MODELS

    if reason := unavailable_reason():
        return f"no RTSP server: {reason}"
    if not sample_video(VIDEO).is_file():
        return f"{sample_video(VIDEO)} not found (set VAP_SAMPLE_DATA_DIR)"
    specs = {s.name: s for s in BUILTIN_MODELS}
    for name in models:
        spec = specs.get(name)
        # A derived model (INT8, ...) is built from its base's file by the inference service at load.
        while spec is not None and spec.base:
            spec = specs.get(spec.base)
        if spec is not None and (reason := missing_model_reason(spec)):
            return reason
    return None


@dataclass
class BenchStack:
    stack: Stack
    camera: RtspCamera
    metrics_base: int

    @property
    def stub(self) -> control_pb2_grpc.ControlServiceAsyncStub:
        assert self.stack.stub is not None
        return self.stack.stub

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return self.stack.metadata

    @property
    def agent_id(self) -> str:
        return f"{self.stack.config.site}-{socket.gethostname()}"

    def decoder_processes(self) -> list[psutil.Process]:
        """Every decoder channel process of this stack's agent alive now, wherever it is in the process tree
        (one that lost its agent is reparented, so this looks at the agent id in each one's environment)."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if "vap_decoder" not in cmdline or "channel" not in cmdline:
                continue
            try:
                if proc.environ().get("VAP_DECODER_AGENT_ID") == self.agent_id:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def metrics_port(self, service: str) -> int:
        return self.metrics_base + METRICS_INDEX[service]

    def service_pids(self) -> dict[str, int]:
        """Root pid of each service's process tree: the four services, NATS, PostgreSQL, the camera."""
        pids = {
            SERVICE_NAMES.get(s.name, s.name): s.pid
            for s in self.stack.supervisor.services
            if s.pid is not None
        }
        if self.stack.servers is not None:
            pids |= self.stack.servers.spawned_pids()
        if self.camera.pid is not None:
            pids["rtsp"] = self.camera.pid
        return {name: pid for name, pid in pids.items() if pid is not None}

    async def add_channels(self, count: int, model: str, fps: float) -> list[str]:
        """Create and start ``count`` scenarios reading the camera; their ids."""
        sids = []
        for _ in range(count):
            cam = Camera(id=f"ch-{uuid.uuid4().hex[:10]}", url=self.camera.url, fps=fps, model=model)
            sids.append(await apply_scenario(self.stack, cam, self.camera.url, lambda _m: None))
        return sids

    async def status(self, sid: str) -> Status:
        got = await self.stub.GetScenario(
            control_pb2.GetScenarioRequest(scenario_id=sid), metadata=self.metadata, timeout=10
        )
        return got.scenario.status

    async def wait_status(self, sids: Sequence[str], wanted: Sequence[Status], timeout: float) -> None:
        pending = set(sids)
        deadline = time.monotonic() + timeout
        while pending:
            for sid in list(pending):
                status = await self.status(sid)
                if status in wanted:
                    pending.discard(sid)
                elif status == S.SCENARIO_STATUS_FAILED:
                    raise RuntimeError(f"scenario {sid} FAILED")
            if pending and time.monotonic() > deadline:
                names = ", ".join(S.Name(s) for s in wanted)
                raise RuntimeError(f"{len(pending)} scenario(s) not {names} within {timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def remove_channels(self, sids: Sequence[str], timeout: float = 60.0) -> None:
        """Stop the scenarios, wait until they are stopped, delete them."""
        for sid in sids:
            await self.stub.StopScenario(
                control_pb2.StopScenarioRequest(scenario_id=sid), metadata=self.metadata, timeout=30
            )
        await self.wait_status(sids, STOPPED, timeout)
        for sid in sids:
            await self.stub.DeleteScenario(
                control_pb2.DeleteScenarioRequest(scenario_id=sid), metadata=self.metadata, timeout=30
            )


def site_config(workdir: Path, models: Sequence[str], metrics_base: int, **sections: Any) -> SiteConfig:
    """The site config: no cameras, free ports, every model preloaded; ``sections`` override the services'
    own settings (decoder=..., inference=..., tracker=..., control=...)."""
    inference: dict[str, Any] = {"default_model": models[0], "preload": list(models[1:])}
    decoder: dict[str, Any] = {"max_workers": 64}
    ports: dict[str, Any] = {"control": 0, "inference": 0, "metrics_base": metrics_base}
    if "web" in Ports.model_fields:
        ports["web"] = None  # the live web view is no part of the pipeline under test
    return SiteConfig(
        # Unique: the decoder agent's id (site-host) tells this stack's decoder processes from others'.
        site=f"bench-{uuid.uuid4().hex[:8]}",
        data_dir=workdir / "stack",
        ports=Ports(**ports),
        inference=inference | sections.get("inference", {}),
        decoder=decoder | sections.get("decoder", {}),
        tracker=sections.get("tracker", {}),
        control=sections.get("control", {}),
    )


@contextlib.asynccontextmanager
async def running_stack(workdir: Path, models: Sequence[str], **sections: Any) -> AsyncIterator[BenchStack]:
    camera = RtspCamera(sample_video(VIDEO), path="bench", shared=True)
    camera.start()
    stack: Stack | None = None
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            base = free_port_block(len(METRICS_INDEX) + 1)
            config = site_config(workdir / f"try{attempt}", models, base, **sections)
            try:
                stack = await start_stack(config, report=_quiet)
                break
            except StackError as exc:
                # vap up picks free ports before the services bind them: on a busy machine another
                # process can take one in between. Anything else fails every attempt the same way.
                if attempt == START_ATTEMPTS:
                    raise
                print(f"  stack did not start (attempt {attempt}), retrying: {str(exc)[-300:]}", flush=True)
        assert stack is not None
        yield BenchStack(stack, camera, base)
    finally:
        if stack is not None:
            await stack.close()
        camera.close()
