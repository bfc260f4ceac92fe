"""The JetStream streams the control service owns.

- Results (``inbox_stream``): detections, tracks, events and counts of every channel. Publishers keep using
  plain NATS publishes (the server stores what matches a stream); the control service reads it through a
  durable pull consumer, so results published while it is down or slow are stored later, not lost.
  Interest retention: a message is removed once the control consumer acknowledged it.
- Scenario configs (``config_stream``): the latest ScenarioConfig per scenario (one message per subject), so
  an inference or tracker service that starts late can read the current settings of every scenario.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from vap_common import subjects
from vap_common.logs import get_logger
from vap_control.settings import ControlSettings

_log = get_logger("vap.control.streams")

RESULT_SUBJECTS = [
    subjects.all_detections(),
    subjects.all_tracks(),
    subjects.all_events(),
    subjects.all_counts(),
]


def results_stream_config(settings: ControlSettings) -> StreamConfig:
    return StreamConfig(
        name=settings.inbox_stream,
        description="VAP results waiting to be stored by the control service",
        subjects=RESULT_SUBJECTS,
        retention=RetentionPolicy.INTEREST,
        storage=StorageType.MEMORY if settings.inbox_storage == "memory" else StorageType.FILE,
        max_age=settings.inbox_max_age_s,
        max_bytes=settings.inbox_max_bytes,
        discard=DiscardPolicy.OLD,
        num_replicas=settings.stream_replicas,
    )


def inbox_consumer_config(settings: ControlSettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=settings.inbox_consumer,
        description="vap control inbox",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.inbox_ack_wait_s,
        max_ack_pending=max(1000, settings.inbox_batch * 8),
        max_deliver=-1,
    )


def config_stream_config(settings: ControlSettings) -> StreamConfig:
    return StreamConfig(
        name=settings.config_stream,
        description="Latest vap.v1.ScenarioConfig per scenario",
        subjects=[subjects.all_scenario_configs()],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.OLD,
        num_replicas=settings.stream_replicas,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> bool:
    """Create the stream or bring its settings up to date. False when another stream already covers the
    subjects (a deployment choice we respect: the caller falls back to plain NATS)."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            _log.warning("cannot create JetStream stream", stream=config.name, error=str(exc))
            return False
        _log.info("created JetStream stream", stream=config.name)
        return True
    try:
        await js.update_stream(config)
    except BadRequestError as exc:
        # e.g. a storage type change, which JetStream refuses: keep the existing stream.
        _log.warning("cannot update JetStream stream; keeping it", stream=config.name, error=str(exc))
    return True


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    assert config.durable_name is not None
    try:
        await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await js.add_consumer(stream, config)
        _log.info("created JetStream consumer", stream=stream, consumer=config.durable_name)
