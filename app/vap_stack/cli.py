"""``vap``: run the stack and talk to its control API.

    vap up --config examples/site.yaml          the whole stack, a live table, Ctrl+C stops it
    vap scenario list|get|create|update|start|stop|delete
    vap watch [--scenario ID]...                live table of tracked detections and events
    vap counts SCENARIO [--since 2h --interval 15m --json|--csv]   counts per interval and rule, totals
    vap events SCENARIO [--since today --kind line --rule door]    line crossings and zone events
    vap detect IMAGE [--model NAME]             one-off detection on a JPEG/PNG
    vap models list|fetch [--only NAME]
    vap status                                  services, channels and their health

Where the API is: ``--target`` / $VAP_TARGET, else the ``stack.json`` that `vap up` writes in its data dir
(``--data-dir``, default .vap/stack), else 127.0.0.1:50051. The token: $VAP_TOKEN, else ``--token-file``,
else the stack's token file. Exit codes: 0 ok, 1 error, 2 bad usage or config / invalid argument, 3 not
found, 4 control API unreachable, 5 not authorised, 6 not possible in the current state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, json_format

from vap_common import aio
from vap_proto.v1 import control_pb2, control_pb2_grpc, inference_pb2, scenario_pb2

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_AUTH, EXIT_STATE = range(7)
DEFAULT_DATA_DIR = Path(".vap/stack")

_CODE_EXIT = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_USAGE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_STATE,
    grpc.StatusCode.ABORTED: EXIT_STATE,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_STATE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_STATE,
}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _err(message: str) -> None:
    print(f"vap: error: {message}", file=sys.stderr)


# -- connection ----------------------------------------------------------------------------------------


def _state(data_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((data_dir / "stack.json").read_text()))
    except (OSError, ValueError):
        return {}


class Api:
    def __init__(self, args: argparse.Namespace) -> None:
        state = _state(args.data_dir)
        self.target: str = (
            args.target or os.environ.get("VAP_TARGET") or state.get("control") or ("127.0.0.1:50051")
        )
        token = os.environ.get("VAP_TOKEN", "")
        if not token:
            token_file = args.token_file or (
                Path(state["token_file"])
                if "token_file" in state
                else args.data_dir / "control" / "api-token"
            )
            try:
                token = Path(token_file).read_text().strip()
            except OSError:
                raise CliError(
                    f"no API token: set VAP_TOKEN, pass --token-file, or run `vap up` (it writes "
                    f"{token_file})",
                    EXIT_AUTH,
                ) from None
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.channel = grpc.aio.insecure_channel(
            self.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.stub = control_pb2_grpc.ControlServiceStub(self.channel)
        self.state = state

    async def call(self, method: Callable[..., Awaitable[Any]], request: Any, timeout: float = 30) -> Any:
        try:
            return await method(request, metadata=self.metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc, self.target) from None


def _rpc_error(exc: grpc.aio.AioRpcError, target: str) -> CliError:
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return CliError(
            f"control API at {target} is not reachable ({code.name.lower()}); is `vap up` running? "
            "(--target / $VAP_TARGET to point elsewhere)",
            EXIT_UNAVAILABLE,
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return CliError("the control API refused the token (set VAP_TOKEN or --token-file)", EXIT_AUTH)
    return CliError(f"{exc.details() or code.name} ({code.name})", _CODE_EXIT.get(code, EXIT_ERROR))


def _json(message: Any) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)


def _status_name(status: scenario_pb2.ScenarioStatus.ValueType) -> str:
    return scenario_pb2.ScenarioStatus.Name(status).removeprefix("SCENARIO_STATUS_")


# -- commands -------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from vap_stack.config import load_config
    from vap_stack.display import default_mode
    from vap_stack.supervise import StackError
    from vap_stack.up import run_up

    config = load_config(args.config)
    if not config.cameras:
        raise CliError(f"{args.config} lists no cameras (cameras: [...])", EXIT_USAGE)
    try:
        return aio.run(run_up(config, display=args.display or default_mode(), duration=args.duration))
    except StackError as exc:
        raise CliError(str(exc)) from None


async def _scenario(args: argparse.Namespace) -> int:
    api = Api(args)
    stub, action = api.stub, args.action
    try:
        if action == "list":
            page_token = ""
            rows = []
            while True:
                reply = await api.call(
                    stub.ListScenarios, control_pb2.ListScenariosRequest(page_size=100, page_token=page_token)
                )
                rows += list(reply.scenarios)
                page_token = reply.next_page_token
                if not page_token:
                    break
            if args.json:
                print(json.dumps([json.loads(_json(s)) for s in rows], indent=2))
                return EXIT_OK
            print(f"{'ID':36}  {'NAME':20} {'STATUS':24} SOURCE")
            for s in rows:
                print(f"{s.id:36}  {s.name[:20]:20} {_status_name(s.status):24} {s.source.redacted_url}")
            return EXIT_OK
        if action == "get":
            got = await api.call(stub.GetScenario, control_pb2.GetScenarioRequest(scenario_id=args.id))
            print(_json(got.scenario))
            return EXIT_OK
        if action == "create":
            spec, key = _spec_from_args(args)
            created = await api.call(
                stub.CreateScenario,
                control_pb2.CreateScenarioRequest(scenario=spec, client_request_id=key, start=args.start),
            )
            verb = "created" if created.created else "exists (same client request id)"
            print(f"{created.scenario.id} {verb}: {_status_name(created.scenario.status)}")
            return EXIT_OK
        if action == "update":
            spec, paths = _update_from_args(args)
            spec.id = args.id
            updated = await api.call(
                stub.UpdateScenario,
                control_pb2.UpdateScenarioRequest(
                    scenario=spec, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
            )
            print(f"{updated.scenario.id} updated: revision {updated.scenario.revision}")
            return EXIT_OK
        if action in ("start", "stop"):
            request_type = (
                control_pb2.StartScenarioRequest if action == "start" else control_pb2.StopScenarioRequest
            )
            method = stub.StartScenario if action == "start" else stub.StopScenario
            reply = await api.call(method, request_type(scenario_id=args.id))
            print(f"{args.id}: {_status_name(reply.scenario.status)}")
            if action == "start" and args.wait:
                return await _wait_streaming(api, args.id, args.wait)
            return EXIT_OK
        if action == "delete":
            await api.call(
                stub.DeleteScenario, control_pb2.DeleteScenarioRequest(scenario_id=args.id, force=args.force)
            )
            print(f"{args.id} deleted")
            return EXIT_OK
        raise CliError(f"unknown scenario action {action}", EXIT_USAGE)
    finally:
        await api.channel.close()


def _camera_from_config(args: argparse.Namespace) -> Any:
    from vap_stack.config import load_config

    config = load_config(args.config)
    for cam in config.cameras:
        if cam.id == args.camera:
            return config, cam
    known = ", ".join(c.id for c in config.cameras) or "none"
    raise CliError(f"camera '{args.camera}' is not in {args.config} (cameras: {known})", EXIT_USAGE)


def _check_camera_args(args: argparse.Namespace) -> None:
    if (args.config is None) != (args.camera is None):
        raise CliError("--config and --camera go together (the camera id in that site file)", EXIT_USAGE)


def _spec_from_args(args: argparse.Namespace) -> tuple[scenario_pb2.Scenario, str]:
    _check_camera_args(args)
    if args.config and args.camera:
        config, cam = _camera_from_config(args)
        url = args.url or cam.url
        if url is None:
            raise CliError(
                f"camera '{cam.id}' is simulated (simulate: {cam.simulate}); only `vap up` serves simulated "
                "cameras: pass --url",
                EXIT_USAGE,
            )
        return cam.scenario(url, site=config.site), args.request_id or f"{config.site}/{cam.id}"
    if not args.url:
        raise CliError("give --url URL (and --name), or --config FILE --camera ID", EXIT_USAGE)
    from vap_stack.config import Camera

    cam = Camera(id="cli", name=args.name or "", url=args.url, fps=args.fps, model=args.model or "")
    spec = cam.scenario(args.url, site="cli")
    spec.labels.clear()
    return spec, args.request_id or ""


def _update_from_args(args: argparse.Namespace) -> tuple[scenario_pb2.Scenario, list[str]]:
    spec = scenario_pb2.Scenario()
    paths: list[str] = []
    _check_camera_args(args)
    if args.config and args.camera:
        config, cam = _camera_from_config(args)
        spec.CopyFrom(cam.scenario(cam.url or "unused://", site=config.site))
        paths += ["analytics", "name"]
    if args.name is not None:
        spec.name = args.name
        paths.append("name")
    if args.confidence is not None:
        spec.pipeline.confidence_threshold = args.confidence
        paths.append("pipeline.confidence_threshold")
    if not paths:
        raise CliError(
            "nothing to update: give --name, --confidence or --config FILE --camera ID", EXIT_USAGE
        )
    return spec, sorted(set(paths))


async def _watch(args: argparse.Namespace) -> int:
    from vap_stack.display import LiveView, default_mode

    api = Api(args)
    try:
        if args.scenario:
            ids = {sid: sid for sid in args.scenario}
            for sid in args.scenario:
                got = await api.call(api.stub.GetScenario, control_pb2.GetScenarioRequest(scenario_id=sid))
                ids[sid] = got.scenario.name or sid
        else:
            reply = await api.call(api.stub.ListScenarios, control_pb2.ListScenariosRequest(page_size=100))
            ids = {s.id: s.name or s.id for s in reply.scenarios}
        if not ids:
            raise CliError("no scenarios to watch (create one, or run `vap up`)", EXIT_NOT_FOUND)
        # Health first, so an unreachable API is an error rather than an empty table.
        await api.call(api.stub.ListChannels, control_pb2.ListChannelsRequest())
        view = LiveView(api.stub, api.metadata, {name: sid for sid, name in ids.items()})
        mode = args.display or default_mode()
        # Ctrl+C (or SIGTERM) is how a live view normally ends: stop cleanly, print the summary, exit 0.
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        running = asyncio.ensure_future(view.run(mode))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            print(
                f"vap: watching {', '.join(sorted(ids.values()))} (Ctrl+C stops)", file=sys.stderr, flush=True
            )
            await asyncio.wait(
                {running, stopped}, timeout=args.duration or None, return_when="FIRST_COMPLETED"
            )
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            for task in (running, stopped):
                task.cancel()
            await asyncio.gather(running, stopped, return_exceptions=True)
        failure = None if running.cancelled() else running.exception()
        if failure is not None:  # the view itself broke (not a stream: those are re-opened)
            raise failure
        view.print_summary()
        return EXIT_OK
    finally:
        await api.channel.close()


async def _wait_streaming(api: Api, scenario_id: str, seconds: float) -> int:
    """ACTIVE is not "video flows": wait for the channel's health to say STREAMING, or say why not."""
    from google.protobuf import duration_pb2

    from vap_proto.v1 import health_pb2

    wait = duration_pb2.Duration()
    wait.FromNanoseconds(int(min(max(seconds, 0.0), 60.0) * 1e9))
    got = await api.call(
        api.stub.GetScenario,
        control_pb2.GetScenarioRequest(scenario_id=scenario_id, wait_streaming=wait),
        timeout=seconds + 30,
    )
    health = got.scenario.health
    state = health_pb2.ChannelState.Name(health.state).removeprefix("CHANNEL_STATE_")
    if health.state == health_pb2.CHANNEL_STATE_STREAMING:
        print(f"{scenario_id}: STREAMING ({health.fps:.1f} fps)")
        return EXIT_OK
    since = (
        time.strftime("%H:%M:%S", time.localtime(health.state_since_ns / 1e9))
        if health.state_since_ns
        else "?"
    )
    reason = f": {health.reason}" if health.reason else ""
    print(f"{scenario_id}: no video after {seconds:g} s: {state} since {since}{reason}")
    return EXIT_STATE


async def _find_scenario(api: Api, key: str) -> scenario_pb2.Scenario:
    """A scenario by id, else by (unique) name."""
    try:
        uuid.UUID(key)
    except ValueError:
        pass
    else:
        got = await api.call(api.stub.GetScenario, control_pb2.GetScenarioRequest(scenario_id=key))
        scenario: scenario_pb2.Scenario = got.scenario
        return scenario
    found: list[scenario_pb2.Scenario] = []
    page_token = ""
    while True:
        reply = await api.call(
            api.stub.ListScenarios, control_pb2.ListScenariosRequest(page_size=100, page_token=page_token)
        )
        found += [s for s in reply.scenarios if s.name == key]
        page_token = reply.next_page_token
        if not page_token:
            break
    if not found:
        raise CliError(f"no scenario with id or name {key!r} (see `vap scenario list`)", EXIT_NOT_FOUND)
    if len(found) > 1:
        raise CliError(f"{len(found)} scenarios are named {key!r}: give the id", EXIT_USAGE)
    return found[0]


async def _numbers(args: argparse.Namespace) -> int:
    from vap_stack.numbers import UsageError, run_counts, run_events

    api = Api(args)
    try:
        scenario = await _find_scenario(api, args.scenario)
        await (run_counts if args.command == "counts" else run_events)(api, args, scenario)
        return EXIT_OK
    except UsageError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    finally:
        await api.channel.close()


async def _detect(args: argparse.Namespace) -> int:
    try:
        data = Path(args.image).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read image {args.image}: {exc.strerror}", EXIT_USAGE) from None
    api = Api(args)
    try:
        request = inference_pb2.DetectRequest(image=data, model=args.model or "")
        if args.confidence is not None:
            request.confidence_threshold = args.confidence
        reply = await api.call(api.stub.Detect, request, timeout=60)
        if args.json:
            print(_json(reply))
            return EXIT_OK
        for d in reply.detections:
            b = d.box
            box = f"({b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f})"
            print(f"{d.class_name:12} {d.confidence:.2f}  box={box}")
        print(f"{len(reply.detections)} detection(s)", file=sys.stderr)
        return EXIT_OK
    finally:
        await api.channel.close()


def cmd_models(args: argparse.Namespace) -> int:
    from vap_stack.models import main as models_main
    from vap_stack.up import resolve_models_dir

    resolve_models_dir()
    argv = [args.action]
    for name in args.only or []:
        argv += ["--only", name]
    return models_main(argv)


async def _status(args: argparse.Namespace) -> int:
    from vap_stack.supervise import health_serving

    api = Api(args)
    problems = 0
    try:
        services = api.state.get("services", {})
        if services:
            print("services:")
            for name, info in services.items():
                ok = await health_serving(int(info["health_port"]))
                problems += not ok
                print(f"  {name:14} pid {info.get('pid')!s:8} {'SERVING' if ok else 'NOT SERVING'}")
        reply = await api.call(api.stub.ListChannels, control_pb2.ListChannelsRequest())
        print(f"control API {api.target}: SERVING")
        print("channels:")
        for ch in reply.channels:
            from vap_proto.v1 import health_pb2

            state = health_pb2.ChannelState.Name(ch.health.state).removeprefix("CHANNEL_STATE_")
            reason = f" ({ch.health.reason})" if ch.health.reason else ""
            print(
                f"  {ch.channel_id[:24]:24} {state:13} fps {ch.detection_fps:5.1f}  p50 "
                f"{ch.latency_p50_ms:6.0f} ms  reconnects {ch.health.reconnect_count}  "
                f"{ch.redacted_url}{reason}"
            )
        if not reply.channels:
            print("  (none)")
        return EXIT_ERROR if problems else EXIT_OK
    finally:
        await api.channel.close()


async def _node(args: argparse.Namespace) -> int:
    """`vap node list` (nodes with capacity, load, drain state) and `vap node drain|undrain NODE`."""
    api = Api(args)
    try:
        if args.action == "list":
            reply = await api.call(api.stub.ListNodes, control_pb2.ListNodesRequest(include_dead=args.all))
            if args.json:
                print(json.dumps([json.loads(_json(n)) for n in reply.nodes], indent=2))
                return EXIT_OK
            print(f"{'NODE':28} {'STATE':9} {'CHANNELS':>8} {'MAX':>4}  {'BACKEND':12} LABELS")
            for n in reply.nodes:
                state = "draining" if n.draining else ("alive" if n.alive else "dead")
                labels = ",".join(f"{k}={v}" for k, v in sorted(n.capacity.labels.items()))
                print(
                    f"{n.node_id[:28]:28} {state:9} {n.channels:>8} {n.capacity.max_channels:>4}  "
                    f"{n.capacity.backend[:12]:12} {labels}"
                )
            if not reply.nodes:
                print("(no live nodes; --all shows dead ones)")
            return EXIT_OK
        request = control_pb2.DrainNodeRequest(node_id=args.node, undrain=args.action == "undrain")
        drained = await api.call(api.stub.DrainNode, request)
        if args.action == "undrain":
            print(f"{args.node}: takes new scenarios again")
        else:
            print(f"{args.node}: drained; moving {drained.moved} scenario(s) to other nodes")
        return EXIT_OK
    finally:
        await api.channel.close()


def cmd_secrets(args: argparse.Namespace) -> int:
    from vap_stack.secrets import complete_env_file

    try:
        added = complete_env_file(args.env_file)
    except OSError as exc:
        raise CliError(f"cannot write {args.env_file}: {exc.strerror}", EXIT_USAGE) from exc
    names = ", ".join(added) if added else "nothing (every secret was there)"
    print(f"{args.env_file}: added {names}; mode 0600")
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vap", description="Run the VAP stack and talk to its control API.")
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--target", help="control API host:port (default: from the running stack)")
    conn.add_argument("--token-file", type=Path, help="file with the API token (default: the stack's)")
    conn.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="data dir of `vap up` (default .vap/stack)"
    )
    display = argparse.ArgumentParser(add_help=False)
    display.add_argument("--display", choices=["table", "lines", "none"], help="default: table on a terminal")
    display.add_argument("--duration", type=float, help="stop after this many seconds")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[display], help="run the whole stack from a site config")
    up.add_argument("--config", required=True, type=Path, help="site config (see examples/site.yaml)")

    sc = sub.add_parser("scenario", help="manage scenarios").add_subparsers(dest="action", required=True)
    sc.add_parser("list", parents=[conn], help="list scenarios").add_argument("--json", action="store_true")
    for name in ("get", "start", "stop", "delete"):
        p = sc.add_parser(name, parents=[conn], help=f"{name} a scenario")
        p.add_argument("id", help="scenario id")
        if name == "delete":
            p.add_argument("--force", action="store_true", help="delete even when not stopped")
        if name == "start":
            p.add_argument(
                "--wait",
                type=float,
                metavar="SECONDS",
                help="wait up to this long (<= 60) for video to flow; exit 6 if it does not",
            )
    create = sc.add_parser("create", parents=[conn], help="create a scenario")
    create.add_argument("--config", type=Path, help="site config to take the camera from")
    create.add_argument("--camera", help="camera id in --config")
    create.add_argument("--url", help="source URL (overrides the camera's)")
    create.add_argument("--name")
    create.add_argument("--fps", type=float, default=5.0)
    create.add_argument("--model")
    create.add_argument("--request-id", help="idempotency key (default: <site>/<camera> with --config)")
    create.add_argument("--start", action="store_true", help="start it right away")
    update = sc.add_parser("update", parents=[conn], help="change a scenario")
    update.add_argument("id", help="scenario id")
    update.add_argument("--config", type=Path, help="take rules (lines, zones) and name from this camera")
    update.add_argument("--camera")
    update.add_argument("--name")
    update.add_argument("--confidence", type=float)

    sub.add_parser("watch", parents=[conn, display], help="live tracked detections and events").add_argument(
        "--scenario", action="append", help="scenario id (repeatable; default: all)"
    )
    from vap_stack.numbers import add_parsers

    add_parsers(sub, conn)
    detect = sub.add_parser("detect", parents=[conn], help="detect objects in an image")
    detect.add_argument("image", help="JPEG or PNG file")
    detect.add_argument("--model")
    detect.add_argument("--confidence", type=float)
    detect.add_argument("--json", action="store_true")
    models = sub.add_parser("models", help="the detection models")
    models.add_argument("action", choices=["list", "fetch"])
    models.add_argument("--only", action="append", metavar="NAME")
    sub.add_parser("status", parents=[conn], help="services, channels, health")
    sub.add_parser(
        "secrets", help="make or complete docker-compose's env file: every secret it needs, random"
    ).add_argument("env_file", type=Path, help="the env file, e.g. .env beside docker-compose.yml")
    node = sub.add_parser("node", help="nodes of a multi-host deployment").add_subparsers(
        dest="action", required=True
    )
    node_list = node.add_parser("list", parents=[conn], help="nodes with capacity, load and drain state")
    node_list.add_argument("--all", action="store_true", help="also nodes whose heartbeats stopped")
    node_list.add_argument("--json", action="store_true")
    for name, text in (
        ("drain", "move a node's scenarios away, place none there"),
        ("undrain", "undo drain"),
    ):
        node.add_parser(name, parents=[conn], help=text).add_argument("node", help="node id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vap_stack.config import ConfigError

    try:
        if args.command == "up":
            return cmd_up(args)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "secrets":
            return cmd_secrets(args)
        runners: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
            "scenario": _scenario,
            "watch": _watch,
            "counts": _numbers,
            "events": _numbers,
            "detect": _detect,
            "status": _status,
            "node": _node,
        }
        return aio.run(runners[args.command](args))
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except CliError as exc:
        _err(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
