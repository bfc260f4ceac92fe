"""Camera credentials sealed at rest and on the bus (issue 23), with the real control service, a real decoder
agent (and its decoder processes), NATS and PostgreSQL:

- for every odd URL shape (user info with and without a scheme, percent-encoded, in the query string, IPv6,
  a raw '@' in the password) the password appears in no API response or error, no log line of control or
  of the decoder agent and its decoder processes, no metric, no NATS message, no live-view payload and
  nowhere in the database, while the decoders really tried those URLs;
- StartChannel crosses NATS with the URL sealed only, and a camera behind credentials streams;
- rotation: URLs sealed under an old key open once a new key is added, control's start-up re-seals them
  (scenarios and outbox) under the new key, and the old key can go;
- rows written before sealing existed (plaintext in the old column and in outbox payloads) are sealed at
  start-up.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from cryptography.fernet import Fernet, InvalidToken
from google.protobuf import field_mask_pb2
from prometheus_client import REGISTRY, generate_latest
from psycopg import sql

from vap_common.camera_secrets import KEYS_ENV, generate_key
from vap_control.db.migrate import available
from vap_control.testing import (
    RunningControl,
    control_settings,
    running_control,
    temporary_database,
    wait_for,
)
from vap_proto.v1 import agent_pb2, control_pb2, health_pb2, scenario_pb2, source_pb2

S, CS = scenario_pb2.ScenarioStatus, health_pb2.ChannelState
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def agent_overrides() -> dict[str, Any]:
    return {"max_workers": 10}  # every accepted shape decodes at once


def _pw(tag: str) -> str:
    """A password unique to this run and shape: found anywhere means leaked."""
    return f"Pw{tag}{RUN}"


# One shape a line: name, whether the API accepts it, the URL ({pw}: that shape's password). Accepted shapes
# are started: nothing listens on port 9, so each decoder's FFmpeg fails and quotes the URL in its errors.
# Refused ones: the error names the field, never the password.
_SHAPES = """
userinfo           yes  rtsp://viewer:{pw}@127.0.0.1:9/cam
percent            yes  rtsp://us%40er:{pw}%3A%2F%40@127.0.0.1:9/cam
query-password     yes  rtsp://127.0.0.1:9/cam?user=admin&password={pw}
query-pwd          yes  http://127.0.0.1:9/video.mjpg?user=admin&pwd={pw}
query-pass-token   yes  http://127.0.0.1:9/v.mjpg?pass={pw}&token={pw}T
ipv6               yes  rtsp://viewer:{pw}@[::1]:9/cam
raw-at             yes  rtsp://viewer:{pw}@x@127.0.0.1:9/cam
no-scheme          no   viewer:{pw}@127.0.0.1
no-scheme-ipv6     no   viewer:{pw}@[::1]:8554/cam
slash-in-password  no   rtsp://viewer:{pw}/x@127.0.0.1/cam
bad-port           no   rtsp://viewer:{pw}@127.0.0.1:99999/cam
ftp                no   ftp://viewer:{pw}@127.0.0.1/cam
no-host            no   rtsp://viewer:{pw}@/cam
"""
SHAPES = [line.split() for line in _SHAPES.strip().splitlines()]
PASSWORDS = {shape: _pw(shape.replace("-", "")) for shape, _, _ in SHAPES}
ACCEPTED = [(shape, url.format(pw=PASSWORDS[shape])) for shape, ok, url in SHAPES if ok == "yes"]
REFUSED = [(shape, url.format(pw=PASSWORDS[shape])) for shape, ok, url in SHAPES if ok == "no"]
ALL_PASSWORDS = list(PASSWORDS.values())


def _leaks(text: str | bytes) -> list[str]:
    blob = text.encode() if isinstance(text, str) else text
    return [pw for pw in ALL_PASSWORDS if pw.encode() in blob]


def _db_leaks(db: str, needles: list[str]) -> list[str]:
    """Every table.column of the database whose content (text, bytea, JSON) holds one of ``needles``."""
    found: list[str] = []
    with psycopg.connect(db) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            ).fetchall()
        ]
        assert {"scenarios", "outbox", "scenario_transitions"} <= set(tables)
        for table in tables:
            cur = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            names = [d.name for d in cur.description or ()]
            for row in cur.fetchall():
                for name, value in zip(names, row, strict=True):
                    blob = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                    found.extend(f"{table}.{name}" for n in needles if n.encode() in blob)
    return found


def _scenario(url: str, name: str, **labels: str) -> scenario_pb2.Scenario:
    spec = source_pb2.SourceSpec(url=url)
    spec.open_timeout.FromSeconds(1)
    spec.read_timeout.FromSeconds(1)
    spec.backoff_max.FromSeconds(1)
    return scenario_pb2.Scenario(name=name, source=spec, node_selector=labels)


async def _get(control: RunningControl, sid: str) -> scenario_pb2.Scenario:
    return (await control.stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=sid))).scenario


async def _wait_status(
    control: RunningControl, sid: str, status: scenario_pb2.ScenarioStatus.ValueType, timeout: float = 30.0
) -> Any:
    async def reached() -> scenario_pb2.Scenario | None:
        s = await _get(control, sid)
        return s if s.status == status else None

    return await wait_for(reached, timeout, f"scenario {sid} {S.Name(status)}")


@asynccontextmanager
async def _capture_nats(nats_client: Any) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Every message on the session's NATS while inside: (subject, payload)."""
    seen: list[tuple[str, bytes]] = []

    async def on_msg(msg: Any) -> None:
        seen.append((msg.subject, bytes(msg.data)))

    sub = await nats_client.subscribe(">", cb=on_msg)
    try:
        yield seen
    finally:
        await nats_client.flush()
        await sub.unsubscribe()


def _agent_metrics(agent: Any) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5) as r:
        return str(r.read().decode())


@pytest.mark.asyncio(loop_scope="session")
async def test_no_password_in_any_shape_reaches_responses_logs_metrics_bus_or_database(
    control: RunningControl, decoder_agent: Any, control_db: str, nats_client: Any
) -> None:
    from vap_web import payloads  # the live view's JSON, made from what control answers

    responses: list[str] = []
    errors: list[str] = []

    def keep(message: Any) -> None:
        responses.append(str(message))
        responses.append(message.SerializeToString().decode("latin-1"))

    async with _capture_nats(nats_client) as bus:
        # Refused shapes: on create, and on update of an existing scenario.
        holder = await control.stub.CreateScenario(
            control_pb2.CreateScenarioRequest(scenario=_scenario("rtsp://127.0.0.1:9/x", "holder"))
        )
        keep(holder)
        for shape, url in REFUSED:
            for call in (
                control.stub.CreateScenario(
                    control_pb2.CreateScenarioRequest(scenario=_scenario(url, shape))
                ),
                control.stub.UpdateScenario(
                    control_pb2.UpdateScenarioRequest(
                        scenario=scenario_pb2.Scenario(
                            id=holder.scenario.id, source=source_pb2.SourceSpec(url=url)
                        )
                    )
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, shape
                assert "scenario.source.url" in str(refused.value.details()), shape
                errors.append(f"{refused.value.details()} {refused.value.debug_error_string()}")

        # Accepted shapes: created and started; each decoder process tries its URL and fails.
        ids: dict[str, str] = {}
        for shape, url in ACCEPTED:
            created = await control.stub.CreateScenario(
                control_pb2.CreateScenarioRequest(scenario=_scenario(url, shape), start=True)
            )
            keep(created)
            ids[shape] = created.scenario.id

        async def tried(*sids: str) -> bool:
            for sid in sids:
                s = await _get(control, sid)
                bad = s.health.state in (CS.CHANNEL_STATE_RECONNECTING, CS.CHANNEL_STATE_FAILED)
                if not (bad and s.health.reason):
                    return False
            return True

        await wait_for(lambda: tried(*ids.values()), 60.0, "every decoder reporting its failed source")
        await asyncio.sleep(1.5)  # a reconnect or two more: more FFmpeg errors quoting the URLs

        # Every read the API offers, and the live view's JSON made from them.
        listed = await control.stub.ListScenarios(control_pb2.ListScenariosRequest(page_size=100))
        channels = await control.stub.ListChannels(control_pb2.ListChannelsRequest())
        keep(listed)
        keep(channels)
        by_scenario = {c.scenario_id: c for c in channels.channels}
        for scenario in listed.scenarios:
            keep(await _get(control, scenario.id))
            view = payloads.camera_detail(scenario, by_scenario.get(scenario.id))
            responses.append(json.dumps(view))
            if scenario.id in ids.values():
                assert scenario.source.redacted_url and not scenario.source.url

        # Stop, change the source while stopped (a new URL, sealed anew), start again, stop.
        first, second = ids["userinfo"], ids["ipv6"]
        keep(await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=first)))
        await _wait_status(control, first, S.SCENARIO_STATUS_INACTIVE)
        keep(
            await control.stub.UpdateScenario(
                control_pb2.UpdateScenarioRequest(
                    scenario=scenario_pb2.Scenario(id=first, source=_scenario(ACCEPTED[2][1], "x").source),
                    update_mask=field_mask_pb2.FieldMask(paths=["source"]),
                )
            )
        )
        # A url given while running is a change of source: refused, without echoing it.
        with pytest.raises(grpc.aio.AioRpcError) as running:
            await control.stub.UpdateScenario(
                control_pb2.UpdateScenarioRequest(
                    scenario=scenario_pb2.Scenario(id=second, source=_scenario(ACCEPTED[5][1], "x").source),
                    update_mask=field_mask_pb2.FieldMask(paths=["source"]),
                )
            )
        assert running.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        errors.append(str(running.value.details()))
        keep(await control.stub.StartScenario(control_pb2.StartScenarioRequest(scenario_id=first)))
        await wait_for(lambda: tried(first), 30.0, "the updated source tried")
        for sid in ids.values():
            keep(await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid)))
        for sid in ids.values():
            await _wait_status(control, sid, S.SCENARIO_STATUS_INACTIVE)

    # StartChannel crossed NATS with the URL sealed only; the sealed URL is the camera's URL.
    starts = []
    for subject, data in bus:
        if subject.endswith(".commands"):
            command = agent_pb2.AgentCommand.FromString(data)
            if command.WhichOneof("command") == "start_channel":
                starts.append(command.start_channel)
    assert len(starts) >= len(ACCEPTED) + 1
    fernet = Fernet(os.environ[KEYS_ENV].encode())
    urls = {url for _, url in ACCEPTED}
    for start in starts:
        assert start.source.url == "" and start.sealed_url
        assert fernet.decrypt(start.sealed_url).decode() in urls

    agent_log = decoder_agent.log_text()
    assert "decoder process started" in agent_log  # the decoders ran (their log is in the agent's)
    assert "opening" in agent_log or "RECONNECTING" in agent_log or "reconnect" in agent_log.lower()
    places = {
        "API responses": "\n".join(responses),
        "API errors": "\n".join(errors),
        "control log": control.log_text(),
        "decoder agent and decoder process logs": agent_log,
        "control metrics": generate_latest(REGISTRY).decode(),
        "decoder agent metrics": await asyncio.to_thread(_agent_metrics, decoder_agent),
        "NATS messages": "\n".join(data.decode("latin-1") for _, data in bus),
    }
    assert all(places.values())
    leaked = {where: _leaks(text) for where, text in places.items() if _leaks(text)}
    assert not leaked, f"passwords leaked: {leaked}"

    # The database holds no password anywhere (the scan itself finds what is there: the scenario ids).
    assert _db_leaks(control_db, [first])
    assert _db_leaks(control_db, ALL_PASSWORDS) == []


# --- rotation and sealing of old rows ------------------------------------------------------------------


@pytest.fixture
def rotation_db(database_url: str) -> Iterator[str]:
    with temporary_database(database_url) as url:
        yield url


@asynccontextmanager
async def _control_with_keys(
    nats_url: str, db: str, keys: str, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningControl]:
    """A control service that reads ``keys`` (VAP_CAMERA_KEYS) at start-up, as after a restart."""
    with monkeypatch.context() as env:
        env.setenv(KEYS_ENV, keys)
        settings = control_settings(
            nats_url, db, "t-" + uuid.uuid4().hex, inbox_consumer=f"rot-{uuid.uuid4().hex[:8]}"
        )
        async with running_control(settings, log_path) as running:
            env.setenv(KEYS_ENV, os.environ[KEYS_ENV])  # only start-up reads the keys
            yield running


def _agent(nats_url: str, log: Path, label: str, **key_env: str) -> Any:
    """A decoder agent for scenarios that select ``k=label``, its camera keys from ``key_env`` only."""
    from vap_decoder.testing import AgentProcess

    agent = AgentProcess(
        nats_url,
        log,
        max_workers=2,
        status_interval_s=0.5,
        stop_grace_s=3,
        node_labels=json.dumps({"k": label}),
    )
    agent.env.pop(KEYS_ENV, None)
    agent.env.update(key_env)
    return agent.start()


def _sealed(db: str) -> tuple[list[bytes], list[bytes]]:
    """The sealed URLs of the scenarios and of the outbox StartChannels."""
    with psycopg.connect(db) as conn:
        rows = [bytes(r[0]) for r in conn.execute("SELECT sealed_url FROM scenarios").fetchall()]
        payloads = conn.execute("SELECT payload FROM outbox WHERE kind = 'start_channel'").fetchall()
    starts = [agent_pb2.AgentCommand.FromString(bytes(p[0])).start_channel for p in payloads]
    assert all(not s.source.url for s in starts)
    return rows, [s.sealed_url for s in starts]


def _opens(key: str, token: bytes) -> bool:
    try:
        Fernet(key.encode()).decrypt(token)
    except InvalidToken:
        return False
    return True


@pytest.mark.asyncio(loop_scope="session")
async def test_rotation_old_sealed_urls_open_then_start_up_reseals_under_the_new_key(
    nats_url: str,
    rotation_db: str,
    rtsp_camera: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = generate_key(), generate_key()
    label = uuid.uuid4().hex[:8]
    password = f"rot-{RUN}-pw"
    cam = rtsp_camera(user="viewer", password=password)
    agents: list[Any] = []

    # 1. Sealed under the old key. Rotation step 1: agents get "new,old" first; they still open it.
    agents.append(_agent(nats_url, tmp_path / "agent-1.log", label, VAP_CAMERA_KEYS=f"{new},{old}"))
    try:
        async with _control_with_keys(nats_url, rotation_db, old, tmp_path / "c1.log", monkeypatch) as c:
            created = await c.stub.CreateScenario(
                control_pb2.CreateScenarioRequest(scenario=_scenario(cam.url, "rot", k=label), start=True)
            )
            sid = created.scenario.id
            await _wait_status(c, sid, S.SCENARIO_STATUS_ACTIVE)  # a camera behind credentials streams
            await c.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid))
            await _wait_status(c, sid, S.SCENARIO_STATUS_INACTIVE)
        rows, starts = _sealed(rotation_db)
        assert rows and starts and all(_opens(old, t) and not _opens(new, t) for t in rows + starts)

        # 2. Control restarts with "new,old": start-up re-seals scenarios and outbox under the new key.
        async with _control_with_keys(
            nats_url, rotation_db, f"{new},{old}", tmp_path / "c2.log", monkeypatch
        ):
            rows, starts = _sealed(rotation_db)
            assert all(_opens(new, t) and not _opens(old, t) for t in rows + starts)
    finally:
        agents[0].stop()

    # 3. The old key dropped everywhere: the scenario still starts and streams.
    agents.append(_agent(nats_url, tmp_path / "agent-2.log", label, VAP_CAMERA_KEYS=new))
    try:
        async with _control_with_keys(nats_url, rotation_db, new, tmp_path / "c3.log", monkeypatch) as c:
            await c.stub.StartScenario(control_pb2.StartScenarioRequest(scenario_id=sid))
            await _wait_status(c, sid, S.SCENARIO_STATUS_ACTIVE)
            await c.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid))
            await _wait_status(c, sid, S.SCENARIO_STATUS_INACTIVE)
    finally:
        agents[1].stop()
    texts = [(tmp_path / f"c{i}.log").read_text() for i in (1, 2, 3)] + [a.log_text() for a in agents]
    assert "camera URLs sealed" in texts[1]  # the start-up re-seal of step 2, logged without secrets
    assert all(password not in text for text in texts)
    assert _db_leaks(rotation_db, [password]) == []


@pytest.mark.asyncio(loop_scope="session")
async def test_agent_without_the_key_refuses_the_start_until_its_key_file_has_it(
    nats_url: str, rotation_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent whose keys do not open the sealed URL: the scenario FAILS with a reason that says so. Once
    the agent's key file holds the key (rotation on a key file), the next start opens it without a restart."""
    label, key = uuid.uuid4().hex[:8], generate_key()
    key_file = tmp_path / "agent.key"
    key_file.write_text(generate_key() + "\n")
    agent = _agent(nats_url, tmp_path / "agent.log", label, VAP_CAMERA_KEY_FILE=str(key_file))
    try:
        async with _control_with_keys(nats_url, rotation_db, key, tmp_path / "control.log", monkeypatch) as c:
            url = f"rtsp://viewer:{_pw('Wk')}@127.0.0.1:9/cam"
            created = await c.stub.CreateScenario(
                control_pb2.CreateScenarioRequest(scenario=_scenario(url, "wrong-key", k=label), start=True)
            )
            sid = created.scenario.id
            failed = await _wait_status(c, sid, S.SCENARIO_STATUS_FAILED)
            assert "camera key" in failed.status_reason, failed.status_reason
            assert _pw("Wk") not in str(failed) and _pw("Wk") not in c.log_text()

            key_file.write_text(f"{key}\n")
            await c.stub.StartScenario(control_pb2.StartScenarioRequest(scenario_id=sid))

            async def opened() -> bool:  # the decoder process tries the camera (nothing listens on port 9)
                s = await _get(c, sid)
                return s.health.state == CS.CHANNEL_STATE_RECONNECTING

            await wait_for(opened, 30.0, "the decoder trying the URL opened with the new key")
            await c.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid))
            await _wait_status(c, sid, S.SCENARIO_STATUS_INACTIVE)
    finally:
        agent.stop()
    assert _pw("Wk") not in agent.log_text()


@pytest.mark.asyncio(loop_scope="session")
async def test_rows_from_before_sealing_are_sealed_at_start_up(
    nats_url: str, rotation_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written by a control service from before migration 0004: the plaintext URL in
    scenarios.source_url and in an outbox StartChannel, a reason that quotes it in a shape the old redaction
    missed. Start-up applies 0004 and seals and redacts all of it."""
    password = _pw("Old")
    url = f"rtsp://viewer:{password}@127.0.0.1:9/cam"
    sid = uuid.uuid4()
    with psycopg.connect(rotation_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in available():
            if migration.version < 4:
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
        spec = scenario_pb2.Scenario(name="old", source=source_pb2.SourceSpec(url=""))
        conn.execute(
            "INSERT INTO scenarios (id, channel_id, source_url, spec, status, status_reason)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (
                sid,
                str(sid),
                url,
                spec.SerializeToString(),
                S.SCENARIO_STATUS_FAILED,
                f"failed: viewer:{password}@x",
            ),
        )
        start = agent_pb2.StartChannel(
            channel_id=str(sid), scenario_id=str(sid), source=source_pb2.SourceSpec(url=url)
        )
        conn.execute(
            "INSERT INTO outbox (command_id, scenario_id, kind, payload, state)"
            " VALUES (%s, %s, %s, %s, 'sent')",
            (
                uuid.uuid4(),
                sid,
                "start_channel",
                agent_pb2.AgentCommand(start_channel=start).SerializeToString(),
            ),
        )
    assert _db_leaks(rotation_db, [password])  # the scan sees the plaintext where it is

    key = generate_key()
    async with _control_with_keys(
        nats_url, rotation_db, key, tmp_path / "control.log", monkeypatch
    ) as control:
        got = await _get(control, str(sid))
        assert got.source.redacted_url == "rtsp://***@127.0.0.1:9/cam"
        assert password not in str(got)
        rows, starts = _sealed(rotation_db)
        assert [Fernet(key.encode()).decrypt(t).decode() for t in rows + starts] == [url, url]
        assert password not in control.log_text()
    assert _db_leaks(rotation_db, [password]) == []
