"""NATS authentication and authorization (vap_common.nats_auth) against a real nats-server of our own.

The expectations below are written out by hand from the architecture (who publishes and reads what), not
computed from the permission table: a table that drifted from the services would fail here (and in the
end-to-end tests, where every service runs as its own user).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from vap_common import subjects
from vap_common.bus import connect_nats
from vap_common.embedded import Endpoints
from vap_common.embedded_nats import EmbeddedNats, ServerTls
from vap_common.nats_auth import (
    NatsAuth,
    NatsAuthError,
    NatsCredentials,
    NatsTls,
    Role,
    authorization_config,
    load_credentials_file,
    role_permissions,
    strip_credentials,
)
from vap_common.ports import free_tcp_port
from vap_common.scenario_configs import fetch_latest_scenario_configs
from vap_common.settings import ServiceSettings, SettingsError
from vap_framebus import AsyncFrameSubscriber, AuthorizationError, FrameBusConnectionError, FramePublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# One concrete subject of every kind VAP uses.
PROBES = {
    "frames": subjects.frames("cam-1"),
    "node frames": subjects.frames("cam-1", "node-1"),
    "detections": subjects.detections("cam-1"),
    "tracks": subjects.tracks("cam-1"),
    "events": subjects.events("cam-1"),
    "counts": subjects.counts("cam-1"),
    "health": subjects.channel_health("cam-1"),
    "config": subjects.scenario_config("scenario-1"),
    "agent commands": subjects.agent_commands("agent-1"),
    "agent replies": subjects.agent_replies("agent-1"),
    "agent status": subjects.agent_status("agent-1"),
    "tracker status": subjects.tracker_status("tracker-1"),
}

# What each role publishes in the architecture, and nothing else.
PUBLISHES = {
    Role.DECODER_AGENT: {"frames", "node frames", "health", "agent replies", "agent status"},
    Role.DECODER_CHANNEL: {"frames", "node frames", "health"},
    Role.INFERENCE: {"detections"},
    Role.TRACKER: {"tracks", "events", "counts", "tracker status"},
    Role.CONTROL: {"config", "agent commands"},
    Role.WEB: set(),
    Role.DATASET: set(),
}
# What each role reads.
RECEIVES = {
    Role.DECODER_AGENT: {"agent commands", "health"},
    Role.DECODER_CHANNEL: set(),
    Role.INFERENCE: {"frames", "node frames", "config"},
    Role.TRACKER: {"detections", "config", "tracker status"},
    Role.CONTROL: {"detections", "tracks", "events", "health", "agent replies", "agent status"},
    Role.WEB: {"frames", "node frames"},
    Role.DATASET: {"detections", "config"},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tmp_path_factory.mktemp("nats-auth")) as srv:
        srv.start()
        yield srv


@pytest_asyncio.fixture(loop_scope="session")
async def admin(server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    assert server.url is not None
    client = await nats.connect(server.url, name="test-admin", max_reconnect_attempts=0)
    try:
        yield client
    finally:
        await client.close()


class Errors:
    """nats-py's error callback: what the server refused."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, exc: Exception) -> None:
        self.seen.append(str(exc))


async def _as(server: EmbeddedNats, role: Role, errors: Errors | None = None) -> NatsClient:
    assert server.address is not None
    return await connect_nats(server.address, name=f"test-{role}", auth=server.auth(role), error_cb=errors)


# --- who may connect ---------------------------------------------------------------------------------------


async def test_anonymous_clients_are_refused(server: EmbeddedNats) -> None:
    assert server.address is not None
    # (Plain nats-py retries a refused connect until its caller gives up: connect_nats stops at once.)
    started = time.monotonic()
    with pytest.raises(NatsAuthError, match="refused an anonymous connection"):
        await connect_nats(server.address, name="test-anonymous")
    assert time.monotonic() - started < 5.0, "refused credentials must not be retried until a timeout"
    with pytest.raises(AuthorizationError):
        FramePublisher().connect(server.address, "test-anonymous")
    subscriber = AsyncFrameSubscriber()
    with pytest.raises(AuthorizationError):
        await subscriber.connect(server.address, "test-anonymous")
    await subscriber.close()


async def test_a_wrong_password_is_refused_naming_the_user_not_the_password(server: EmbeddedNats) -> None:
    assert server.address is not None
    wrong = NatsAuth("vap-tracker", "not-the-password-" + uuid.uuid4().hex)
    with pytest.raises(NatsAuthError) as refused:
        await connect_nats(server.address, name="test-wrong", auth=wrong)
    assert "'vap-tracker'" in str(refused.value) and "VAP_NATS_PASSWORD" in str(refused.value)
    assert wrong.password not in str(refused.value)
    with pytest.raises(AuthorizationError) as framebus:
        FramePublisher().connect(server.address, "test-wrong", auth=wrong)
    assert "'vap-tracker'" in str(framebus.value) and wrong.password not in str(framebus.value)
    # The same refusal through the URL's user info.
    host = server.address.removeprefix("nats://")
    with pytest.raises(NatsAuthError, match="'vap-tracker'"):
        await connect_nats(f"nats://vap-tracker:{wrong.password}@{host}", name="test-wrong-url")


async def test_a_url_with_user_info_still_works(server: EmbeddedNats) -> None:
    assert server.address is not None
    creds = server.credentials[Role.TRACKER]
    host = server.address.removeprefix("nats://")
    client = await connect_nats(f"nats://{creds.user}:{creds.password}@{host}", name="test-url-userinfo")
    await client.close()
    pub = FramePublisher()
    pub.connect(f"nats://{creds.user}:{creds.password}@{host}", "test-url-userinfo")
    pub.close()


@pytest.mark.parametrize(
    "module", ["vap_tracker", "vap_web"], ids=["nats-py service (tracker)", "framebus service (web)"]
)
def test_a_service_with_a_wrong_password_exits_with_one_clear_line(
    server: EmbeddedNats, tmp_path: Path, module: str
) -> None:
    """Not a crash loop without a message: exit status 2 (as for a settings error), one line naming the
    user and where the credentials come from, no traceback, no password."""
    assert server.address is not None
    prefix = {"vap_tracker": "VAP_TRACKER_", "vap_web": "VAP_WEB_"}[module]
    password = "wrong-" + uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAP_NATS_", "VAP_CONFIG"))} | {
        "NATS_URL": server.address,
        "VAP_NATS_USER": f"vap-{module.removeprefix('vap_')}",
        "VAP_NATS_PASSWORD": password,
        f"{prefix}DATA_DIR": str(tmp_path),
        f"{prefix}HEALTH_PORT": str(free_tcp_port()),
        "VAP_WEB_LISTEN": f"127.0.0.1:{free_tcp_port()}",
    }
    done = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output and password not in output, output
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{module}: NATS refused user 'vap-{module.removeprefix('vap_')}'"), last
    assert last.count("\n") == 0 and "Authorization Violation" in last
    assert "VAP_NATS_PASSWORD" in last


async def test_control_keeps_retrying_refused_credentials_and_says_so(
    server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    """Control serves its API while NATS is unusable: refused credentials are an error in its log, retried
    (they may be fixed on the server), never a crash."""
    from structlog.testing import capture_logs

    from vap_control.bus import NatsConnection

    assert server.address is not None
    password = "wrong-" + uuid.uuid4().hex
    conn = NatsConnection(server.address, auth=NatsAuth("vap-control", password))
    with capture_logs() as logs:
        conn.start()
        await asyncio.sleep(1.0)
        assert not conn.connected
        await conn.close()
    # Through structlog's own output, or the standard library's once a test configured VAP's logging.
    refusals = [str(e) for e in logs if e["event"] == "NATS refused the credentials; retrying"]
    assert all(e["log_level"] == "error" for e in logs if str(e) in refusals)
    refusals += [
        r.getMessage()
        for r in caplog.records
        if "NATS refused the credentials; retrying" in r.getMessage() and r.levelname == "ERROR"
    ]
    assert len(refusals) >= 2 and "'vap-control'" in refusals[0]
    assert password not in str(logs) + caplog.text


# --- what each role may do ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(PUBLISHES), ids=str)
async def test_each_role_publishes_only_its_own_subjects(
    server: EmbeddedNats, admin: NatsClient, role: Role
) -> None:
    """The tracker's and inference's users cannot forge agent commands, scenario configs or each other's
    results; every role is refused every subject it does not own, and its own ones go through."""
    received: list[str] = []

    async def record(msg: Any) -> None:
        if msg.data == role.value.encode():
            received.append(msg.subject)

    sub = await admin.subscribe("vap.>", cb=record)
    await admin.flush()
    errors = Errors()
    client = await _as(server, role, errors)
    try:
        for subject in PROBES.values():
            await client.publish(subject, role.value.encode())
        await client.flush()
        await asyncio.sleep(0.3)  # refusals arrive as -ERR after the PONG
    finally:
        await client.close()
        await sub.unsubscribe()
    names = {name for name, subject in PROBES.items() if subject in received}
    assert names == PUBLISHES[role]
    refused = {name for name, subject in PROBES.items() if any(f'"{subject}"' in e for e in errors.seen)}
    assert refused == set(PROBES) - PUBLISHES[role], errors.seen


@pytest.mark.parametrize("role", list(RECEIVES), ids=str)
async def test_each_role_reads_only_what_it_consumes(
    server: EmbeddedNats, admin: NatsClient, role: Role
) -> None:
    client = await _as(server, role)
    received: list[str] = []

    async def record(msg: Any) -> None:
        received.append(msg.subject)

    try:
        for subject in PROBES.values():
            await client.subscribe(subject, cb=record)
        # Wildcards too: a reader of everything would see every probe.
        await client.subscribe("vap.>", cb=record)
        await client.flush()
        for subject in PROBES.values():
            await admin.publish(subject, b"probe")
        await admin.flush()
        await asyncio.sleep(0.3)
    finally:
        await client.close()
    assert {name for name, subject in PROBES.items() if subject in received} == RECEIVES[role]
    assert len(received) == len(RECEIVES[role]), "the wildcard subscription must have been refused"


async def test_replies_reach_only_the_requester(server: EmbeddedNats) -> None:
    """Control's command to an agent is answered (the agent may answer requests it received), nobody else
    reads the answer (inboxes are per user), and the agent cannot send control unsolicited 'replies'."""
    agent = await _as(server, Role.DECODER_AGENT)
    control = await _as(server, Role.CONTROL)
    snoop = await _as(server, Role.TRACKER)
    try:
        commands = subjects.agent_commands("agent-" + uuid.uuid4().hex[:6])

        async def answer(msg: Any) -> None:
            await msg.respond(b"reply:" + msg.data)

        await agent.subscribe(commands, cb=answer)
        await agent.flush()
        overheard: list[str] = []

        async def overhear(msg: Any) -> None:
            overheard.append(msg.subject)

        await snoop.subscribe("_INBOX.>", cb=overhear)
        await snoop.subscribe("_INBOX.vap-control.>", cb=overhear)
        await snoop.flush()
        reply = await control.request(commands, b"start", timeout=5)
        assert reply.data == b"reply:start"
        assert reply.subject.startswith("_INBOX.vap-control.")
        unsolicited: list[bytes] = []

        async def keep(msg: Any) -> None:
            unsolicited.append(msg.data)

        await control.subscribe("_INBOX.vap-control.forged", cb=keep)
        await control.flush()
        await agent.publish("_INBOX.vap-control.forged", b"forged")
        await agent.flush()
        await asyncio.sleep(0.3)
        assert overheard == [] and unsolicited == []
    finally:
        for client in (agent, control, snoop):
            await client.close()


async def test_jetstream_control_owns_the_streams_readers_read_only_configs(server: EmbeddedNats) -> None:
    from nats.js.errors import Error as JetStreamError

    from vap_control.settings import ControlSettings
    from vap_control.streams import config_stream_config, ensure_stream, results_stream_config

    settings = ControlSettings(inbox_storage="memory")
    control = await _as(server, Role.CONTROL)
    tracker = await _as(server, Role.TRACKER)
    web = await _as(server, Role.WEB)
    try:
        js = control.jetstream()
        assert await ensure_stream(js, config_stream_config(settings))
        assert await ensure_stream(js, results_stream_config(settings))
        subject = subjects.scenario_config(f"s-{uuid.uuid4().hex[:6]}")
        await js.publish(subject, b"config")
        assert (subject, b"config") in await fetch_latest_scenario_configs(tracker)
        assert await fetch_latest_scenario_configs(web) == []  # the web view has no use for them
        tjs = tracker.jetstream(timeout=2)
        for attempt in (
            tjs.delete_stream(settings.config_stream),
            tjs.add_consumer(settings.inbox_stream, durable_name="intruder"),
            tjs.publish(subject, b"forged config"),
        ):
            with pytest.raises((JetStreamError, nats.errors.Error, TimeoutError)):
                await attempt
        assert (subject, b"config") in await fetch_latest_scenario_configs(tracker)
    finally:
        with contextlib.suppress(Exception):
            await control.jetstream().delete_stream(settings.inbox_stream)
        for client in (control, tracker, web):
            await client.close()


async def test_framebus_publisher_is_held_to_its_subjects(server: EmbeddedNats, admin: NatsClient) -> None:
    """The decoder processes' user (framebus, one syscall per publish): frames and health go through, an
    agent command is refused (and logged once, not per frame)."""
    received: list[str] = []

    async def record(msg: Any) -> None:
        received.append(msg.subject)

    await admin.subscribe("vap.>", cb=record)
    await admin.flush()
    assert server.address is not None
    pub = FramePublisher()
    pub.connect(server.address, "test-channel", auth=server.auth(Role.DECODER_CHANNEL))
    try:
        for _ in range(3):
            pub.publish(PROBES["agent commands"], b"forged")
        pub.publish(PROBES["node frames"], b"frame")
        assert await asyncio.to_thread(pub.flush, 2.0)
        await asyncio.sleep(0.3)
        assert pub.connected and "Permissions Violation" in pub.last_error
    finally:
        pub.close()
    assert received == [PROBES["node frames"]]


# --- the server's configuration and credentials ------------------------------------------------------------


def test_credentials_and_config_are_private_and_kept_across_restarts(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path)
    with first:
        first.start()
        creds = load_credentials_file(first.credentials_file)
    for path in (first.credentials_file, tmp_path / "nats-server.conf"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    again = EmbeddedNats(tmp_path)
    with again:
        again.start()
        assert again.credentials == creds
    assert set(creds) == set(Role)
    log = (tmp_path / "nats-server.log").read_text()
    assert not any(c.password in log for c in creds.values())


def test_a_role_without_subjects_is_denied_everything() -> None:
    """NATS reads an empty allow list as 'anything': it must never be rendered."""
    config = authorization_config({role: NatsCredentials(f"u-{role}", "pw") for role in Role})
    assert "allow: []" not in config
    assert 'publish: {deny: [">"]}' in config
    perms = role_permissions(Role.WEB)
    assert perms is not None and perms.publish == ()


def test_credentials_from_settings_files_and_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("VAP_NATS_") or k == "NATS_URL"]:
        monkeypatch.delenv(name)
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("VAP_NATS_USER", "vap-tracker")
    monkeypatch.setenv("VAP_NATS_PASSWORD_FILE", str(secret))
    settings = ServiceSettings.load()
    assert settings.nats_auth() == NatsAuth("vap-tracker", "s3cret")
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(settings.nats_auth())
    monkeypatch.setenv("VAP_NATS_TLS_CA", str(secret))
    assert ServiceSettings.load().nats_auth().tls == NatsTls(ca_file=secret)
    monkeypatch.setenv("VAP_NATS_TLS_CERT", str(secret))
    with pytest.raises(SettingsError, match="nats_tls_cert and nats_tls_key"):
        ServiceSettings.load()
    monkeypatch.delenv("VAP_NATS_TLS_CERT")
    monkeypatch.delenv("VAP_NATS_TLS_CA")
    monkeypatch.setenv("VAP_NATS_PASSWORD", "other")
    with pytest.raises(SettingsError, match="not both"):
        ServiceSettings.load()
    monkeypatch.delenv("VAP_NATS_PASSWORD_FILE")
    monkeypatch.delenv("VAP_NATS_USER")
    with pytest.raises(SettingsError, match="nats_user"):
        ServiceSettings.load()
    # A URL's user info: taken off the server list (a cluster's discovered servers carry none), sent as
    # credentials; an explicit user wins over it.
    url = "nats://u:p%40ss@a:4222,nats://b:4222"
    options = NatsAuth().resolve(url)
    assert options.servers == ["nats://a:4222", "nats://b:4222"]
    assert (options.user, options.password, options.inbox_prefix) == ("u", "p@ss", "_INBOX.u")
    assert NatsAuth("vap-web", "x").resolve(url).user == "vap-web"
    assert strip_credentials(url) == "nats://a:4222,nats://b:4222"
    endpoints = Endpoints(nats_url=url, database_url=None, nats_auth=NatsAuth("vap-web", "x"))
    assert "p%40ss" not in repr(endpoints) and "'x'" not in repr(endpoints)


def test_decoder_processes_get_their_own_credentials_not_the_agents() -> None:
    from vap_decoder.process import child_environment
    from vap_decoder.settings import DecoderSettings

    settings = DecoderSettings(
        agent_id="a",
        nats_url="nats://127.0.0.1:4222",
        nats_user="vap-decoder-agent",
        nats_password="agent-secret",
        channel_nats_user="vap-decoder-channel",
        channel_nats_password="channel-secret",
    )
    base = {"VAP_NATS_PASSWORD": "agent-secret", "VAP_DECODER_CHANNEL_NATS_PASSWORD": "channel-secret"}
    env = child_environment(settings, base=base)
    assert env["VAP_NATS_USER"] == "vap-decoder-channel" and env["VAP_NATS_PASSWORD"] == "channel-secret"
    assert "agent-secret" not in env.values()
    assert not any(k.startswith(("VAP_DECODER_CHANNEL_NATS", "VAP_DECODER_NATS")) for k in env)
    # Without a channel user the processes connect as their agent.
    env = child_environment(settings.model_copy(update={"channel_nats_user": ""}), base={})
    assert env["VAP_NATS_USER"] == "vap-decoder-agent"


# --- TLS ---------------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA, a certificate for 127.0.0.1 signed by it, and a client certificate (openssl CLI)."""
    d = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *key,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=vap-ca",
        cwd=d,
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=vap-{name}", cwd=d
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return {name: d / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, Path]
) -> Iterator[EmbeddedNats]:
    """A server that requires TLS and a client certificate signed by the CA (mutual TLS)."""
    tls = ServerTls(tls_files["server.pem"], tls_files["server.key"], ca_file=tls_files["ca.pem"])
    with EmbeddedNats(tmp_path_factory.mktemp("nats-tls"), tls=tls) as srv:
        srv.start()
        yield srv


async def test_tls_for_nats_py_and_framebus(tls_server: EmbeddedNats, tls_files: dict[str, Path]) -> None:
    """With VAP_NATS_TLS_CA / _CERT / _KEY (NatsTls) every kind of VAP connection works over TLS: nats-py,
    the framebus publisher (decoders) and subscriber (inference, web); without TLS or without a client
    certificate the server refuses."""
    assert tls_server.address is not None
    tls = NatsTls(tls_files["ca.pem"], tls_files["client.pem"], tls_files["client.key"])
    address = tls_server.address
    control = await connect_nats(address, name="tls-control", auth=tls_server.auth(Role.CONTROL, tls))
    sub = AsyncFrameSubscriber()
    pub = FramePublisher()
    try:
        got: list[bytes] = []
        await sub.connect(address, "tls-inference", auth=tls_server.auth(Role.INFERENCE, tls))
        await sub.subscribe(subjects.all_frames(), lambda _s, payload: got.append(payload))
        pub.connect(address, "tls-decoder", auth=tls_server.auth(Role.DECODER_CHANNEL, tls))
        for i in range(20):
            assert pub.publish(subjects.frames("cam-tls"), b"frame %d" % i)
        assert await asyncio.to_thread(pub.flush, 2.0)  # a PONG read back through TLS
        for _ in range(50):
            if len(got) == 20:
                break
            await asyncio.sleep(0.05)
        assert got == [b"frame %d" % i for i in range(20)]
        # Idle: the reader thread's keep-alive PINGs and their PONGs cross TLS too.
        idle = FramePublisher(ping_interval=0.2)
        idle.connect(address, "tls-idle", auth=tls_server.auth(Role.DECODER_CHANNEL, tls))
        await asyncio.sleep(1.2)
        assert idle.connected and idle.reconnects == 0, idle.last_error
        idle.close()
        configs: list[bytes] = []
        await sub.subscribe(subjects.all_scenario_configs(), lambda _s, payload: configs.append(payload))
        await control.publish(subjects.scenario_config("s"), b"config")
        await control.flush()
        await asyncio.sleep(0.2)
        assert configs == [b"config"]
    finally:
        pub.close()
        await sub.close()
        await control.close()
    plain = FramePublisher()
    with pytest.raises(FrameBusConnectionError):  # the system CAs do not know ours
        plain.connect(address, "tls-plain", auth=tls_server.auth(Role.DECODER_CHANNEL))
    without_cert = NatsAuth.of(tls_server.credentials[Role.TRACKER], NatsTls(tls_files["ca.pem"]))
    with pytest.raises((OSError, nats.errors.Error)):
        await asyncio.wait_for(
            connect_nats(address, name="tls-no-cert", auth=without_cert, reconnect=False), 10
        )
