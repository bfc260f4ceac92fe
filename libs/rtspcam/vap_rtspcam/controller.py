"""Typed controller for simulated RTSP cameras (one gst_rtsp_server.py process per camera).

Used from the project venv; the server itself runs under the system interpreter because python3-gi is a
Debian package (see gst_rtsp_server.py). Typical use:

    cam = RtspCamera(sample_video("vtest-720p25.mp4")).start()
    av.open(cam.url, options={"rtsp_transport": "tcp"})
    cam.pause()   # SIGSTOP: a hung camera (TCP stays open, no data)
    cam.resume()  # SIGCONT
    cam.kill()    # SIGKILL: a dead camera; cam.start() brings it back on the same port
    cam.close()

Cleanup is layered so no camera outlives the test run: close() in fixtures, an atexit hook, a pipe whose
EOF tells the server its parent process is gone, and (from the main thread) PR_SET_PDEATHSIG=SIGKILL,
which also ends a SIGSTOPped camera that cannot read the pipe.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import json
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

from vap_common.ports import free_tcp_port

SERVER_SCRIPT = Path(__file__).with_name("gst_rtsp_server.py")
# The interpreter that has python3-gi (Debian's); overridable for machines with gi elsewhere.
SYSTEM_PYTHON = os.environ.get("VAP_RTSP_PYTHON", "/usr/bin/python3")
# Must match the exit codes documented in gst_rtsp_server.py.
EXIT_PORT_IN_USE = 3
EXIT_MISSING_PACKAGES = 4

Protocol = Literal["tcp", "udp", "udp-mcast"]
AuthScheme = Literal["basic", "digest"]

_live: weakref.WeakSet[RtspCamera] = weakref.WeakSet()


class RtspCameraError(RuntimeError):
    """The camera process failed to start or misbehaved; the message carries its last output lines."""


@functools.cache
def unavailable_reason(python: str = SYSTEM_PYTHON) -> str | None:
    """Why simulated cameras cannot run on this machine (None = they can). Cached per interpreter."""
    if not Path(python).exists():
        return f"{python} not found (install Debian package python3)"
    try:
        out = subprocess.run(
            [python, str(SERVER_SCRIPT), "--check"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} {SERVER_SCRIPT.name} --check failed: {exc}"
    if out.returncode != 0:
        return f"{SERVER_SCRIPT.name} --check exited {out.returncode}: {out.stderr.strip()[-500:]}"
    missing: list[str] = json.loads(out.stdout)["missing"]
    if missing:
        return (
            f"missing Debian packages for the RTSP test server: {' '.join(missing)} "
            "(install scripts/apt-packages.txt)"
        )
    return None


class RtspCamera:
    """One simulated camera serving `file` in a loop at rtsp://host:port/path.

    port=None picks a free port on the first start() and keeps it across kill()/restart(), so clients
    can reconnect to the same URL like they would to a rebooted camera.
    """

    def __init__(
        self,
        file: str | os.PathLike[str],
        port: int | None = None,
        path: str = "cam",
        user: str | None = None,
        password: str | None = None,
        *,
        host: str = "127.0.0.1",
        auth: AuthScheme = "digest",
        protocols: tuple[Protocol, ...] = ("tcp", "udp", "udp-mcast"),
        shared: bool = False,
        then: Sequence[str | os.PathLike[str]] = (),
        ready_timeout: float = 15.0,
        python: str = SYSTEM_PYTHON,
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        self.file = Path(file)
        self.port = port
        self.path = path.strip("/")
        self.user = user
        self.password = password
        self.host = host
        self.auth = auth
        self.protocols = protocols
        self.shared = shared
        # Files served after `file` in the same loop (another resolution: a stream that changes size).
        self.then = [Path(p) for p in then]
        self.ready_timeout = ready_timeout
        self.python = python
        self.ready_line: str | None = None
        self.startup_s: float | None = None  # start() to READY of the last start
        self.exit_code: int | None = None  # of the last process, once it is gone (-9 = SIGKILL)
        self._auto_port = port is None
        self._proc: subprocess.Popen[str] | None = None
        self._parent_w: int | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=50)
        self._paused = False
        self._reader: threading.Thread | None = None

    # -- URLs -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """URL with credentials (percent-encoded) when user/password are set."""
        if self.user is None or self.password is None:
            return self.url_without_credentials
        creds = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
        return f"rtsp://{creds}{self.host}:{self._require_port()}/{self.path}"

    @property
    def url_without_credentials(self) -> str:
        return f"rtsp://{self.host}:{self._require_port()}/{self.path}"

    def _require_port(self) -> int:
        if self.port is None:
            raise RtspCameraError("port is not known before the first start()")
        return self.port

    # -- process state ----------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the server process exists (also when paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def output(self) -> list[str]:
        """Last lines the server printed (stdout and stderr), for assertions and error messages."""
        return list(self._output)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the server and wait for its READY line; raises RtspCameraError with its output if not."""
        if self.running:
            raise RtspCameraError(f"camera {self.url_without_credentials} is already running")
        if self.port is None:
            self.port = free_tcp_port(self.host)
        for attempt in range(5):
            code = self._spawn_and_wait()
            if code is None:
                return self
            if code == EXIT_PORT_IN_USE and self._auto_port and attempt < 4:
                self.port = free_tcp_port(self.host)  # raced with another process for the port
                continue
            break
        raise RtspCameraError(
            f"RTSP camera for {self.file} on port {self.port} exited with {code} before READY:\n"
            + "\n".join(self._output)
        )

    def _argv(self) -> list[str]:
        argv = [
            self.python,
            "-u",
            str(SERVER_SCRIPT),
            "--file",
            str(self.file),
            "--port",
            str(self.port),
            "--address",
            self.host,
            "--path",
            self.path,
            "--protocols",
            ",".join(self.protocols),
        ]
        if self.user is not None and self.password is not None:
            argv += ["--user", self.user, "--password", self.password, "--auth", self.auth]
        if self.shared:
            argv.append("--shared")
        for path in self.then:
            argv += ["--then", str(path)]
        return argv

    def _spawn_and_wait(self) -> int | None:
        """Spawn once; None when READY, else the exit code (-1 on timeout, after killing it)."""
        self._output.clear()
        read_fd, write_fd = os.pipe()
        argv = [*self._argv(), "--parent-fd", str(read_fd)]
        # PR_SET_PDEATHSIG fires when the spawning *thread* exits, so only ask for it from the main thread.
        if threading.current_thread() is threading.main_thread():
            argv.append("--pdeathsig")
        ready = threading.Event()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                pass_fds=(read_fd,),
            )
        finally:
            os.close(read_fd)
        self._proc, self._parent_w, self._paused = proc, write_fd, False
        _live.add(self)
        # The reader also keeps draining the pipe for the life of the process, so a chatty GStreamer
        # warning stream can never fill it and block the server.
        self._reader = threading.Thread(target=self._read_output, args=(proc, ready), daemon=True)
        self._reader.start()

        deadline = t0 + self.ready_timeout
        while not ready.wait(0.02):
            if proc.poll() is not None:
                self._cleanup_process()  # joins the reader, so the output is complete
                return proc.returncode
            if time.monotonic() > deadline:
                self._output.append(f"(no READY within {self.ready_timeout} s)")
                self._terminate(signal.SIGKILL)
                return -1
        self.startup_s = time.monotonic() - t0
        return None

    def _read_output(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        # This thread owns the pipe and closes it at EOF (the process exited), never the caller's thread,
        # so no read races with a close.
        with proc.stdout:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                self._output.append(line)
                if line.startswith("READY ") and not ready.is_set():
                    self.ready_line = line
                    ready.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop (SIGTERM; SIGKILL if it does not exit within timeout). No-op if not running."""
        if self._proc is None:
            return
        if self._paused:
            self.resume()  # a stopped process would not handle SIGTERM until continued
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL, like a camera losing power: no TEARDOWN, sockets reset."""
        self._terminate(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP, like a hung camera: connections stay open, no data, no RTSP replies."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> Self:
        """Kill and start again on the same port (clients must reconnect, as after a camera reboot)."""
        self.kill()
        return self.start()

    def close(self) -> None:
        """Idempotent final cleanup for fixtures: the process is gone afterwards, whatever its state."""
        self._terminate(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise RtspCameraError(f"camera {self.url_without_credentials} is not running")
        assert self._proc is not None
        self._proc.send_signal(sig)

    def _terminate(self, sig: signal.Signals, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL works on stopped processes too
                proc.wait(timeout)
        self._cleanup_process()

    def _cleanup_process(self) -> None:
        if self._proc is not None:
            self.exit_code = self._proc.poll()
        if self._parent_w is not None:
            os.close(self._parent_w)
            self._parent_w = None
        if self._reader is not None:
            self._reader.join(1.0)  # the process is gone, so EOF is imminent
            self._reader = None
        self._proc = None
        self._paused = False
        _live.discard(self)

    # -- context manager ----------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        port = self.port if self.port is not None else "?"
        where = f"rtsp://{self.host}:{port}/{self.path}"
        return f"RtspCamera({self.file.name!r}, {where}, {state}, pid={self.pid})"


@atexit.register
def _close_all() -> None:
    for cam in list(_live):
        cam.close()
