"""The decoder process: one per channel, started by the agent as ``python -m vap_decoder channel``.

Launch contract (agent -> process):

- stdin: the serialized ``vap.v1.StartChannel`` (then EOF), its URL opened by the agent (``source.url``;
  never ``sealed_url``, and no camera key in the environment). The source URL carries camera credentials, and
  ``/proc/<pid>/cmdline`` is world-readable while ``/proc/<pid>/environ`` and pipes are not: nothing
  secret ever goes on the command line.
- environment: the agent's resolved settings as ``VAP_DECODER_*`` variables and ``NATS_URL``
  (``child_environment``), so a decoder runs with exactly its agent's defaults.
- argv: ``--restarts N`` (how often the agent restarted this channel's process; reported in health) and
  ``--agent-pid PID`` (the agent that started it: a process whose agent died while it was still starting
  exits instead of running unsupervised).

Exit status (process -> agent): 0 = stopped on request or the file ended, ``EXIT_FAILED`` = the source
failed permanently (do not restart), anything else (a crash, a signal) = restart with backoff.

Processes are started with exec (``subprocess``), never forked from the agent: the ring's dead-writer
detection relies on the writer's flock, which a forked child would inherit.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType

import av.logging

from vap_common.camera_secrets import KEY_FILE_ENV, KEYS_ENV
from vap_common.logs import configure_logging, get_logger
from vap_common.redact import remember_url_secrets
from vap_decoder.channel import ChannelResult, ChannelRunner
from vap_decoder.health import FAILED, state_name
from vap_decoder.settings import DecoderSettings
from vap_framebus import FrameBusError, FramePublisher
from vap_proto.v1.agent_pb2 import StartChannel

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
# After a stop request, how long the loop may take to unwind before the process reports STOPPED and exits
# anyway (the loop can be blocked inside FFmpeg until an open/read timeout expires).
STOP_UNWIND_S = 1.0
_PR_SET_PDEATHSIG = 1

_log = get_logger("vap.decoder.process")


def channel_argv(process_restarts: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vap_decoder",
        "channel",
        "--restarts",
        str(process_restarts),
        "--agent-pid",
        str(os.getpid()),
    ]


# Settings a decoder process does not get as VAP_DECODER_* variables: the URLs, and the credentials, which it
# gets as its own VAP_NATS_* (the channel's credentials, never the agent's when the channel has its own).
_NOT_INHERITED = frozenset(
    {
        "nats_url",
        "database_url",
        *(name for name in DecoderSettings.model_fields if name.startswith(("nats_", "channel_nats_"))),
    }
)


def child_environment(settings: DecoderSettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a decoder process: ``base`` (default: ours) plus the agent's resolved settings, with
    the NATS credentials of the decoder processes (``channel_nats_auth``) in place of the agent's. The agent
    opens sealed camera URLs; its decoder processes get the plain URL and no camera key."""
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        # the values below are already resolved from VAP_CONFIG; credentials are set below
        if key not in ("VAP_CONFIG", KEYS_ENV, KEY_FILE_ENV)
        and not key.startswith(("VAP_NATS_", "VAP_DECODER_CHANNEL_NATS_"))
    }
    for name, value in settings.model_dump(exclude=set(_NOT_INHERITED), mode="json").items():
        # Lists and mappings as JSON, the form the settings parser reads them back in.
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"VAP_DECODER_{name.upper()}"] = text
    if settings.nats_url:
        env["NATS_URL"] = settings.nats_url
    env |= settings.channel_nats_auth().environment()
    return env


def _silence_ffmpeg_logs() -> None:
    # FFmpeg's own log stays off (PyAV's default, made explicit). Routing it to Python makes FFmpeg's
    # decoder threads take the GIL to log, and a thread that closes a frame-threaded decoder holds the GIL
    # while it joins them: observed here as a deadlock at the end of every looped file. Damaged data is
    # counted and logged by the loop itself (decode errors, concealed frames), rate-limited.
    av.logging.set_level(None)


def _die_with_parent() -> None:
    """SIGTERM us when the agent dies, so no decoder outlives its supervisor (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return


def exit_code_for(result: ChannelResult) -> int:
    return EXIT_FAILED if result.state == FAILED else EXIT_OK


def run_channel(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vap_decoder channel",
        description="Decode one channel into its ring (StartChannel protobuf on stdin).",
    )
    parser.add_argument("--restarts", type=int, default=0, help="times the agent restarted this channel")
    parser.add_argument("--agent-pid", type=int, default=0, help="the agent that started this process")
    args = parser.parse_args(argv)
    # The death signal is armed only now, after interpreter start-up: an agent killed in between would
    # leave us running unsupervised, writing a ring its restarted agent's decoder then cannot take over.
    # Reparented = the agent is gone (getppid() read before arming could already be the reaper).
    parent = args.agent_pid or os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return EXIT_CRASH

    settings = DecoderSettings.load()
    configure_logging("decoder", level=settings.log_level, fmt=settings.log_format)
    _silence_ffmpeg_logs()
    start = StartChannel.FromString(sys.stdin.buffer.read())
    if not start.channel_id:
        _log.error("no StartChannel on stdin")
        return EXIT_USAGE
    # Whatever shape the URL has and whatever FFmpeg quotes of it, its secrets never reach a log or a reason.
    remember_url_secrets(start.source.url)
    log = _log.bind(channel=start.channel_id)

    publisher = FramePublisher()
    if settings.nats_url:
        try:
            publisher.connect(
                settings.nats_url, name=f"decoder-{start.channel_id}", auth=settings.nats_auth()
            )
        except FrameBusError as exc:
            # Without NATS nobody can see frames or health: let the agent restart us with backoff.
            log.error("cannot connect to NATS", error=str(exc))
            return EXIT_CRASH
    runner = ChannelRunner(
        start, settings, publisher, pid=os.getpid(), process_restarts=max(0, args.restarts)
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        runner.request_stop()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    outcome: list[ChannelResult | BaseException] = []

    def body() -> None:
        try:
            outcome.append(runner.run())
        except BaseException as exc:
            outcome.append(exc)

    # The loop runs in a thread so that this (main) thread can always act on SIGTERM: Python signal handlers
    # only run in the main thread, and never while it is blocked inside FFmpeg.
    worker = threading.Thread(target=body, name=f"decode-{start.channel_id}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
        if stop.is_set():
            worker.join(STOP_UNWIND_S)
            if worker.is_alive():
                log.info("loop blocked in FFmpeg; exiting without waiting for it")
                runner.finish_abandoned()
                publisher.flush(timeout=1.0)
                os._exit(EXIT_OK)  # the agent removes the ring of a writer that is gone
            break
    result = outcome[0] if outcome else RuntimeError("decode thread ended without a result")
    if isinstance(result, BaseException):
        log.error("decoder crashed", error=repr(result), exc_info=result)
        publisher.close()
        return EXIT_CRASH
    publisher.flush(timeout=1.0)
    publisher.close()
    log.info(
        "channel ended",
        state=state_name(result.state),
        reason=result.reason,
        frames=runner.health.frames_published,
    )
    return exit_code_for(result)
