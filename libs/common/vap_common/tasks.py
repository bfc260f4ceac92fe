"""Stopping background tasks reliably.

A plain ``task.cancel(); await task`` hangs forever when code inside the task swallows a CancelledError
(some client libraries do, around their own timeouts). ``cancel_and_wait`` cancels again until the task
ends and, past a deadline, logs where it is stuck instead of hanging the shutdown.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterable
from typing import Any

from vap_common.logs import get_logger

_log = get_logger("vap.tasks")


async def cancel_and_wait(task: asyncio.Task[Any] | None, *, timeout: float = 10.0) -> None:
    if task is None:
        return
    deadline = time.monotonic() + timeout
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
        if not task.done() and time.monotonic() > deadline:
            stack = io.StringIO()
            task.print_stack(file=stack)
            _log.error(
                "background task does not stop; abandoning it", task=task.get_name(), stack=stack.getvalue()
            )
            return
    if not task.cancelled() and task.exception() is not None:
        _log.error("background task had failed", task=task.get_name(), error=repr(task.exception()))


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], *, timeout: float = 10.0) -> None:
    """``cancel_and_wait`` for several tasks at once (they stop side by side, not one after another)."""
    await asyncio.gather(*(cancel_and_wait(task, timeout=timeout) for task in tasks))
