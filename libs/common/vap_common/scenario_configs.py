"""The latest ScenarioConfig of every scenario, read from the JetStream stream the control service keeps.

Control publishes each ScenarioConfig on ``vap.scenario.<id>.config`` (core NATS, for running services)
and the server also stores it in a stream that keeps the last message per subject (control's
``config_stream``, VAP_SCENARIO_CONFIG by default). A service that starts after a scenario was created
(or is restarted after a crash) subscribes to the live subject first and then replays the stored configs
through the same handler: handlers keep the newest revision, so replayed and live messages may interleave.

The stream is found by subject, not by name, so a renamed stream still works. No stream (no control
running, JetStream disabled) is not an error: the service carries on with live updates only.

Every service that follows configs does it through ``follow_scenario_configs`` (live subscription first, then
the replay) and ``ConfigRevisions`` (the newest revision of each scenario wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import Error as JetStreamError

from vap_common import subjects
from vap_common.logs import get_logger
from vap_common.nats_auth import NatsAuth
from vap_proto.v1 import scenario_pb2

_log = get_logger("vap.scenario_configs")

_BATCH = 256


async def fetch_latest_scenario_configs(nc: Any, *, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """(subject, payload) of the stored ScenarioConfig of every scenario, oldest stored first, through the
    nats-py client ``nc``. Empty when there is no such stream or JetStream cannot be reached."""
    subject = subjects.all_scenario_configs()
    js = nc.jetstream(timeout=timeout)
    try:
        stream = await js.find_stream_name_by_subject(subject)
    except (JetStreamError, NatsError, TimeoutError) as exc:
        _log.debug("no scenario config stream; live updates only", error=repr(exc))
        return []
    out: list[tuple[str, bytes]] = []
    sub = None
    try:
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
                mem_storage=True,
            ),
        )
        info = await sub.consumer_info()
        pending = info.num_pending or 0
        while pending > 0:
            msgs = await sub.fetch(min(pending, _BATCH), timeout=timeout)
            for msg in msgs:
                out.append((msg.subject, msg.data))
                pending = msg.metadata.num_pending
    except (JetStreamError, NatsError, TimeoutError) as exc:
        _log.warning("cannot read stored scenario configs", stream=stream, error=repr(exc), read=len(out))
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                name = (await sub.consumer_info()).name
                await sub.unsubscribe()
                await js.delete_consumer(stream, name)
    _log.debug("read stored scenario configs", stream=stream, count=len(out))
    return out


async def fetch_latest_scenario_configs_from(
    url: str, *, auth: NatsAuth | None = None, timeout: float = 5.0
) -> list[tuple[str, bytes]]:
    """The same through a short-lived connection to ``url`` as ``auth`` (for services whose bus is not
    nats-py)."""
    from vap_common.bus import connect_nats  # vap_common.bus builds on this module

    try:
        nc = await asyncio.wait_for(
            connect_nats(
                url, name="vap-scenario-configs", auth=auth, connect_timeout=timeout, reconnect=False
            ),
            timeout,
        )
    except (NatsError, OSError, TimeoutError) as exc:  # NatsAuthError is an OSError
        _log.warning("cannot connect to read stored scenario configs", error=str(exc))
        return []
    try:
        return await fetch_latest_scenario_configs(nc, timeout=timeout)
    finally:
        await nc.close()


class ConfigRevisions:
    """Newest revision wins: ``newer`` parses a ScenarioConfig and returns it only when its revision is newer
    than any seen for that scenario, so a replayed stored config, a late live one or a repeat changes
    nothing. An inactive config (a stopped scenario) keeps its revision too: an older active one arriving
    after it cannot start the scenario again."""

    def __init__(self, on_undecodable: Callable[[], None] | None = None) -> None:
        self._revisions: dict[str, int] = {}
        self._on_undecodable = on_undecodable
        self.undecodable = 0

    def newer(self, payload: bytes) -> scenario_pb2.ScenarioConfig | None:
        try:
            config = scenario_pb2.ScenarioConfig.FromString(payload)
        except DecodeError:
            # A foreign or forged publisher: counted and logged, never a traceback per message.
            self.undecodable += 1
            _log.warning("undecodable scenario config", size=len(payload))
            if self._on_undecodable is not None:
                self._on_undecodable()
            return None
        if config.revision <= self._revisions.get(config.scenario_id, -1):
            return None
        self._revisions[config.scenario_id] = config.revision
        return config


H = TypeVar("H", bound=Callable[[str, bytes], Any])


async def follow_scenario_configs(
    subscribe: Callable[[str, H], Awaitable[object]],
    stored: Callable[[], Awaitable[list[tuple[str, bytes]]]],
    handler: H,
) -> int:
    """Subscribe ``handler`` (sync, or returning an awaitable) to every scenario's live config, then replay
    the stored configs through it; returns how many were stored. ``subscribe(subject, handler)`` must return
    once the server has the subscription (a flush), so nothing published meanwhile falls between the two;
    handlers keep the newest revision (``ConfigRevisions``), so replayed and live configs may interleave."""
    await subscribe(subjects.all_scenario_configs(), handler)
    configs = await stored()
    for subject, payload in configs:
        result = handler(subject, payload)
        if inspect.isawaitable(result):
            await result
    return len(configs)
