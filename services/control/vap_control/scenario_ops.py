"""Scenario use cases behind the API: each one is a single transaction that changes the scenario and writes
the outbox rows the change needs (ScenarioConfig for inference and tracker, StartChannel / StopChannel for
a decoder agent). Everything after the commit happens asynchronously (outbox relay, agent replies)."""

from __future__ import annotations

import uuid
from datetime import datetime

from google.protobuf import field_mask_pb2

from vap_common.camera_secrets import CameraKeys
from vap_common.logs import get_logger
from vap_common.redact import redact_url
from vap_control import lifecycle, pagetokens, placement, status, validation
from vap_control.db.pool import Pool
from vap_control.errors import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from vap_control.inference import InferenceClient
from vap_control.repo import outbox as outbox_repo
from vap_control.repo import scenarios as repo
from vap_control.repo.scenarios import Conn, ScenarioRow
from vap_control.sealing import seal_url
from vap_control.settings import ControlSettings
from vap_proto.v1 import control_pb2, scenario_pb2

_log = get_logger("vap.control.scenarios")

# Top-level settings fields: what an empty update mask replaces.
MUTABLE_FIELDS = ("name", "source", "pipeline", "analytics", "labels", "node_selector")
OUTPUT_ONLY = frozenset(
    {
        "id",
        "status",
        "status_reason",
        "health",
        "create_time",
        "update_time",
        "worker",
        "revision",
        "channel_id",
    }
)
# What may change while the scenario is not INACTIVE/FAILED (control.proto, UpdateScenarioRequest).
LIVE_FIELDS = ("name", "labels", "analytics", "node_selector")
LIVE_PIPELINE_FIELDS = frozenset({"confidence_threshold", "class_ids", "class_names", "dataset"})
DEFAULT_PAGE = 50


class ScenarioOps:
    def __init__(
        self, pool: Pool, settings: ControlSettings, inference: InferenceClient, keys: CameraKeys
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._inference = inference
        # Seals source URLs as they arrive; control never opens a stored one (vap_control.sealing).
        self._keys = keys

    # --- helpers --------------------------------------------------------------------------------------------

    async def _known_models(self, model: str) -> set[str] | None:
        if not model:
            return None  # the default model always exists
        try:
            return await self._inference.model_names()
        except UnavailableError as exc:
            raise UnavailableError(f"cannot check scenario.pipeline.model: {exc.message}") from None

    async def _locked(self, conn: Conn, scenario_id: uuid.UUID) -> ScenarioRow:
        row = await repo.get(conn, scenario_id, lock=True)
        if row is None:
            raise NotFoundError(f"scenario {scenario_id} not found")
        return row

    async def _check_capacity(self, conn: Conn) -> None:
        alive, with_room = await repo.capacity(conn, agent_timeout_s=self._settings.agent_timeout_s)
        # No live agent at all is not an error: the start waits in the outbox until one appears.
        if alive and not with_room:
            raise ResourceExhaustedError(
                f"no decoder capacity: all {alive} live decoder agents run their MAX_WORKERS channels"
            )

    async def _enqueue_start(self, conn: Conn, row: ScenarioRow, change: status.Change) -> None:
        await placement.enqueue_start(conn, row, self._settings, change)

    async def _enqueue_stop(self, conn: Conn, row: ScenarioRow) -> None:
        await outbox_repo.cancel_pending_starts(conn, row.id)
        await repo.bump_revision(conn, row)
        await outbox_repo.enqueue_config(conn, placement.scenario_config(row, self._settings, active=False))
        await outbox_repo.enqueue_stop(
            conn, row.id, placement.stop_command(row, self._settings), row.agent_id
        )

    # --- use cases ------------------------------------------------------------------------------------------

    async def create(self, req: control_pb2.CreateScenarioRequest) -> control_pb2.CreateScenarioResponse:
        validation.client_request_id(req.client_request_id)
        s = req.scenario
        validation.scenario(s, known_models=await self._known_models(s.pipeline.model))
        crid = req.client_request_id or None
        async with self._pool.connection() as conn, conn.transaction():
            if crid is not None:
                existing = await repo.get_by_request_id(conn, crid)
                if existing is not None:
                    return control_pb2.CreateScenarioResponse(scenario=repo.to_proto(existing), created=False)
            if req.start:
                await self._check_capacity(conn)
            sid = uuid.uuid4()
            inserted = await repo.insert(
                conn,
                scenario_id=sid,
                client_request_id=crid,
                channel_id=str(sid),
                source=seal_url(self._keys, s.source.url),
                spec=repo.settings_only(s),
                status=lifecycle.INACTIVE,
            )
            if not inserted:  # a concurrent create with the same key won the race
                assert crid is not None
                existing = await repo.get_by_request_id(conn, crid)
                assert existing is not None
                return control_pb2.CreateScenarioResponse(scenario=repo.to_proto(existing), created=False)
            row = await self._locked(conn, sid)
            if req.start:
                await self._enqueue_start(conn, row, status.start_requested(row.status_value))
            row = await self._locked(conn, sid)
        _log.info("scenario created", scenario=str(sid), source=redact_url(s.source.url), start=req.start)
        return control_pb2.CreateScenarioResponse(scenario=repo.to_proto(row), created=True)

    async def get(self, scenario_id: uuid.UUID) -> scenario_pb2.Scenario:
        async with self._pool.connection() as conn:
            row = await repo.get(conn, scenario_id)
        if row is None:
            raise NotFoundError(f"scenario {scenario_id} not found")
        return repo.to_proto(row)

    async def list(self, req: control_pb2.ListScenariosRequest) -> control_pb2.ListScenariosResponse:
        size = validation.page_size(req.page_size, default=DEFAULT_PAGE)
        statuses = sorted({int(s) for s in req.statuses if s != scenario_pb2.SCENARIO_STATUS_UNSPECIFIED})
        key = pagetokens.decode(req, req.page_token)
        after = None
        if key is not None:
            try:
                after = (datetime.fromisoformat(str(key[0])), uuid.UUID(str(key[1])))
            except (IndexError, ValueError):
                raise InvalidArgumentError("page_token", "not a page token of this call") from None
        async with self._pool.connection() as conn:
            rows = await repo.list_page(conn, statuses=statuses, after=after, limit=size + 1)
            total = await repo.count(conn, statuses=statuses)
        response = control_pb2.ListScenariosResponse(total_size=total)
        response.scenarios.extend(repo.to_proto(r) for r in rows[:size])
        if len(rows) > size:
            last = rows[size - 1]
            response.next_page_token = pagetokens.encode(req, [last.create_time.isoformat(), str(last.id)])
        return response

    async def start(self, scenario_id: uuid.UUID) -> scenario_pb2.Scenario:
        async with self._pool.connection() as conn, conn.transaction():
            row = await self._locked(conn, scenario_id)
            try:
                change = status.start_requested(row.status_value)
            except lifecycle.IllegalTransitionError as exc:
                raise FailedPreconditionError(f"cannot start scenario {scenario_id}: {exc}") from None
            if change:
                await self._check_capacity(conn)
                await self._enqueue_start(conn, row, change)
                row = await self._locked(conn, scenario_id)
        return repo.to_proto(row)

    async def stop(self, scenario_id: uuid.UUID) -> scenario_pb2.Scenario:
        async with self._pool.connection() as conn, conn.transaction():
            row = await self._locked(conn, scenario_id)
            try:
                change = status.stop_requested(row.status_value)
            except lifecycle.IllegalTransitionError as exc:
                raise FailedPreconditionError(f"cannot stop scenario {scenario_id}: {exc}") from None
            if change:
                await repo.apply_change(conn, row, change)
                await self._enqueue_stop(conn, row)
                row = await self._locked(conn, scenario_id)
        return repo.to_proto(row)

    async def delete(self, scenario_id: uuid.UUID, *, force: bool) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            row = await self._locked(conn, scenario_id)
            at_rest = row.status_value in lifecycle.AT_REST
            if not at_rest and not force:
                raise FailedPreconditionError(
                    f"scenario {scenario_id} is {lifecycle.name(row.status_value)}:"
                    " stop it first or set force"
                )
            # A running scenario (or a FAILED one that still has a process) gets its stop; the outbox row
            # outlives the scenario.
            if not at_rest or row.agent_id is not None:
                await self._enqueue_stop(conn, row)
            else:
                await outbox_repo.cancel_pending_starts(conn, row.id)
                if row.status_value == lifecycle.FAILED:  # consumers may still hold its settings
                    await repo.bump_revision(conn, row)
                    await outbox_repo.enqueue_config(
                        conn, placement.scenario_config(row, self._settings, active=False)
                    )
            await repo.delete(conn, scenario_id)
        _log.info("scenario deleted", scenario=str(scenario_id))

    async def update(self, req: control_pb2.UpdateScenarioRequest) -> scenario_pb2.Scenario:
        given = req.scenario
        scenario_id = validation.scenario_id(given.id, "scenario.id")
        paths = _mask_paths(req.update_mask)
        async with self._pool.connection() as conn, conn.transaction():
            row = await self._locked(conn, scenario_id)
            if req.HasField("expected_revision") and req.expected_revision != row.revision:
                raise AbortedError(
                    f"scenario {scenario_id} is at revision {row.revision}, not {req.expected_revision}"
                )
            current = row.spec_proto()  # its source.url is empty: the stored URL is sealed
            new = scenario_pb2.Scenario()
            new.CopyFrom(current)
            field_mask_pb2.FieldMask(paths=paths).MergeMessage(
                given, new, replace_message_field=True, replace_repeated_field=True
            )
            new.source.redacted_url = ""
            # Write-only: clients see an empty url and send it back empty, which keeps the stored one. A url
            # given is a new one (control does not open the stored URL to compare).
            if row.status_value not in lifecycle.AT_REST:
                _check_live_change(current, new, lifecycle.name(row.status_value))
            if new == current:
                return repo.to_proto(row)
            models = (
                await self._known_models(new.pipeline.model)
                if new.pipeline.model != current.pipeline.model
                else None
            )
            validation.scenario(new, known_models=models, require_url=False)
            source = seal_url(self._keys, new.source.url) if new.source.url else None
            await repo.update_settings(conn, scenario_id, spec=repo.settings_only(new), source=source)
            row = await self._locked(conn, scenario_id)
            if row.status_value in lifecycle.RUNNING:
                # Rule and threshold changes reach the running pipeline as a new ScenarioConfig revision.
                await outbox_repo.enqueue_config(
                    conn, placement.scenario_config(row, self._settings, active=True)
                )
        return repo.to_proto(row)


def _mask_paths(mask: field_mask_pb2.FieldMask) -> list[str]:
    if not mask.paths:
        return list(MUTABLE_FIELDS)
    for path in mask.paths:
        top = path.split(".", 1)[0]
        if top in OUTPUT_ONLY or top == "client_request_id":
            raise InvalidArgumentError(
                "update_mask", f"{path!r} cannot be changed (output only or immutable)"
            )
    if not mask.IsValidForDescriptor(scenario_pb2.Scenario.DESCRIPTOR):
        bad = [
            p
            for p in mask.paths
            if not field_mask_pb2.FieldMask(paths=[p]).IsValidForDescriptor(scenario_pb2.Scenario.DESCRIPTOR)
        ]
        raise InvalidArgumentError("update_mask", f"unknown field path(s): {', '.join(bad)}")
    return list(mask.paths)


def _check_live_change(old: scenario_pb2.Scenario, new: scenario_pb2.Scenario, status: str) -> None:
    """While running only names, labels, analytics and some pipeline fields may change (a source url given
    is a change: it is write-only, and the stored one is sealed)."""
    if old.source != new.source:
        raise FailedPreconditionError(
            f"scenario.source cannot change while the scenario is {status}; stop it first"
            + (" (source.url is write-only: leave it empty to keep the camera)" if new.source.url else "")
        )
    for field in scenario_pb2.PipelineSettings.DESCRIPTOR.fields:
        if field.name in LIVE_PIPELINE_FIELDS:
            continue
        presence_differs = field.has_presence and (
            old.pipeline.HasField(field.name) != new.pipeline.HasField(field.name)  # type: ignore[arg-type]
        )
        if presence_differs or getattr(old.pipeline, field.name) != getattr(new.pipeline, field.name):
            raise FailedPreconditionError(
                f"scenario.pipeline.{field.name} cannot change while the scenario is {status}; stop it first"
            )
