"""Stopping child processes the same way everywhere: SIGTERM for a clean shutdown, SIGKILL after a grace
period, so a hung child can never hang its parent."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 20.0) -> int | None:
    """SIGTERM ``proc``, SIGKILL it after ``timeout`` s; returns its exit status (None without a process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
