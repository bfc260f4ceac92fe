"""The embedded NATS and PostgreSQL servers, against the real binaries."""

from __future__ import annotations

import hashlib
import os
import pwd
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig

from vap_common.embedded import EmbeddedServerError, EmbeddedServers, Endpoints, redact_dsn

pytestmark = pytest.mark.integration
# nats_client lives on the session loop (see conftest); tests using it run there too.
session_loop = pytest.mark.asyncio(loop_scope="session")


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------------------------------------------------
# Process inspection, independent of vap_common.embedded_proc so that a bug there cannot hide a leak.


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status waits to be collected


def _processes_using(directory: Path) -> list[int]:
    """Running processes whose working directory or command line is inside ``directory``."""
    needle = str(directory.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            argv = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (cwd.startswith(needle) or needle in argv) and _running(int(entry.name)):
            found.append(int(entry.name))
    return found


def _owner_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive


# ------------------------------------------------------------------------------------------------------------
# NATS


@session_loop
async def test_nats_pub_sub_round_trip(nats_client: NatsClient) -> None:
    subject = _unique("test.pubsub")
    sub = await nats_client.subscribe(subject)
    await nats_client.publish(subject, b"hello", headers={"k": "v"})
    msg = await sub.next_msg(timeout=20)
    assert msg.data == b"hello"
    assert msg.headers == {"k": "v"}


@session_loop
async def test_nats_request_reply(nats_client: NatsClient) -> None:
    subject = _unique("test.rpc")

    async def handler(msg: Any) -> None:
        await msg.respond(msg.data.upper())

    await nats_client.subscribe(subject, cb=handler)
    reply = await nats_client.request(subject, b"ping", timeout=20)
    assert reply.data == b"PING"


@session_loop
async def test_jetstream_durable_consumer_redelivers_unacked_message(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    stream, subject = _unique("TEST"), _unique("test.js")
    await js.add_stream(name=stream, subjects=[subject])
    try:
        await js.publish(subject, b"event-1")
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=0.3)
        sub = await js.pull_subscribe(subject, durable="worker", stream=stream, config=config)

        first = (await sub.fetch(1, timeout=20))[0]
        assert (first.data, first.metadata.num_delivered) == (b"event-1", 1)
        # Not acked: after ack_wait the server hands the same message out again.
        again = (await sub.fetch(1, timeout=20))[0]
        assert (again.data, again.metadata.num_delivered) == (b"event-1", 2)
        await again.ack_sync()

        info = await js.consumer_info(stream, "worker")
        assert (info.num_ack_pending, info.num_pending) == (0, 0)
    finally:
        await js.delete_stream(stream)


@session_loop
async def test_twenty_megabyte_message_goes_through(nats_client: NatsClient) -> None:
    assert nats_client.max_payload == 64 * 1024 * 1024
    subject = _unique("test.big")
    payload = os.urandom(20 * 1024 * 1024)
    sub = await nats_client.subscribe(subject)
    await nats_client.publish(subject, payload)
    msg = await sub.next_msg(timeout=10)
    assert hashlib.sha256(msg.data).digest() == hashlib.sha256(payload).digest()


# ------------------------------------------------------------------------------------------------------------
# PostgreSQL


def test_postgres_create_insert_query(pg_conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    table = _unique("events")
    with pg_conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, camera text NOT NULL, n int NOT NULL)")
        cur.executemany(f"INSERT INTO {table} (camera, n) VALUES (%s, %s)", [("cam-1", 3), ("cam-2", 5)])
        cur.execute(f"SELECT camera, n FROM {table} WHERE n > %s ORDER BY id", (1,))
        assert cur.fetchall() == [("cam-1", 3), ("cam-2", 5)]
        cur.execute("SELECT current_database(), current_setting('server_encoding')")
        assert cur.fetchone() == ("vap", "UTF8")
        cur.execute(f"DROP TABLE {table}")
    pg_conn.commit()


def test_postgres_transaction_rollback(pg_conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    table = _unique("counts")
    pg_conn.execute(f"CREATE TABLE {table} (n int)")
    pg_conn.commit()
    try:
        with pytest.raises(RuntimeError), pg_conn.transaction():
            pg_conn.execute(f"INSERT INTO {table} VALUES (1)")
            raise RuntimeError("abort")
        row = pg_conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row == (0,)
    finally:
        pg_conn.execute(f"DROP TABLE {table}")
        pg_conn.commit()


def test_postgres_requires_its_password(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("DATABASE_URL names an external server; its authentication is not ours")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    user, password = urlsplit(database_url).username, urlsplit(database_url).password
    assert user == "postgres" and password
    without_password = database_url.replace(f":{password}@", "@")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(without_password, passfile=os.devnull, connect_timeout=5)
    assert password not in redact_dsn(database_url)
    assert password not in repr(Endpoints(nats_url=None, database_url=database_url))


# ------------------------------------------------------------------------------------------------------------
# Resolution and lifecycle


def test_env_override_starts_nothing(
    embedded_endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert embedded_endpoints.nats_url and embedded_endpoints.database_url
    monkeypatch.setenv("NATS_URL", embedded_endpoints.nats_url)
    monkeypatch.setenv("DATABASE_URL", embedded_endpoints.database_url)
    with EmbeddedServers() as servers:
        assert servers.start(tmp_path) == embedded_endpoints
        assert servers.spawned_pids() == {}
        assert _processes_using(tmp_path) == []
        assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def used_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with an initialised cluster, stopped: what a previous run leaves behind."""
    data_dir = tmp_path_factory.mktemp("used")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("NATS_URL", raising=False)
        mp.delenv("DATABASE_URL", raising=False)
        with EmbeddedServers() as servers:
            servers.start(data_dir, durable=False)
    return data_dir


@pytest.fixture
def no_env_urls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    yield


@pytest.mark.usefixtures("no_env_urls")
def test_stop_leaves_no_process_behind(used_data_dir: Path) -> None:
    with EmbeddedServers() as servers:
        endpoints = servers.start(used_data_dir, durable=False)
        assert endpoints.database_url and endpoints.nats_url
        with psycopg.connect(endpoints.database_url) as conn:  # a backend process, too
            assert conn.execute("SELECT 1").fetchone() == (1,)
            pids = _processes_using(used_data_dir)
        spawned = servers.spawned_pids()
        assert set(spawned) == {"nats", "postgres"}
        assert set(spawned.values()) <= set(pids)
        assert len(pids) > 2  # postmaster + its background processes + nats-server
        # Root: PostgreSQL refuses to run as root, so it runs as nobody; otherwise as ourselves.
        expected_uid = os.getuid() if os.getuid() != 0 else pwd.getpwnam("nobody").pw_uid
        assert _owner_uid(spawned["postgres"]) == expected_uid
    assert [pid for pid in pids if _running(pid)] == []
    assert _processes_using(used_data_dir) == []


@pytest.mark.usefixtures("no_env_urls")
def test_data_dir_in_use_is_refused(used_data_dir: Path) -> None:
    with EmbeddedServers() as servers:
        servers.start(used_data_dir, need_postgres=False)
        with (
            pytest.raises(EmbeddedServerError, match="in use by another process"),
            EmbeddedServers() as other,
        ):
            other.start(used_data_dir, need_postgres=False)


@pytest.mark.usefixtures("no_env_urls")
def test_postgres_start_failure_quotes_server_log(used_data_dir: Path) -> None:
    conf = used_data_dir / "postgres" / "pgdata" / "postgresql.auto.conf"
    original = conf.read_bytes()
    conf.write_text("shared_buffers = 'lots'\n")
    try:
        with pytest.raises(EmbeddedServerError) as excinfo, EmbeddedServers() as servers:
            servers.start(used_data_dir, need_nats=False)
        assert 'invalid value for parameter "shared_buffers"' in str(excinfo.value)
    finally:
        conf.write_bytes(original)
    assert _processes_using(used_data_dir) == []


def _start_cli(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in {"NATS_URL", "DATABASE_URL"}}
    cli = subprocess.Popen(
        [sys.executable, "-m", "vap_common.embedded", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert cli.stdout is not None
    urls = dict(cli.stdout.readline().strip().split("=", 1) for _ in range(2))
    assert set(urls) == {"NATS_URL", "DATABASE_URL"}, urls
    return cli, urls


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0])


@pytest.mark.parametrize("pid_in_file", ["dead", "reused by another process"])
@pytest.mark.usefixtures("no_env_urls")
async def test_stale_data_dir_after_sigkill_is_recovered(used_data_dir: Path, pid_in_file: str) -> None:
    """A crash: servers SIGKILLed, then their parent. The pid files stay, backends may linger, and the
    postmaster.pid may name a pid the OS has since given to an unrelated process."""
    cli, urls = _start_cli(used_data_dir)
    table, stream = _unique("survives"), _unique("SURVIVES")
    with psycopg.connect(urls["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} AS SELECT 42 AS answer")
    nc = await nats.connect(urls["NATS_URL"])
    await nc.jetstream().add_stream(name=stream, subjects=[stream.lower()])
    await nc.jetstream().publish(stream.lower(), b"kept")
    await nc.close()

    postmaster = _postmaster_pid(used_data_dir)
    nats_pid = int((used_data_dir / "nats" / "nats-server.pid").read_text())
    os.kill(postmaster, signal.SIGKILL)
    os.kill(nats_pid, signal.SIGKILL)
    cli.kill()
    cli.wait()
    assert _wait_dead([postmaster, nats_pid]) == []
    pid_file = used_data_dir / "postgres" / "pgdata" / "postmaster.pid"
    assert pid_file.exists()
    if pid_in_file != "dead":
        lines = pid_file.read_text().split("\n")
        pid_file.write_text("\n".join([str(os.getpid()), *lines[1:]]))

    with EmbeddedServers() as servers:
        endpoints = servers.start(used_data_dir, durable=False)
        assert endpoints.database_url and endpoints.nats_url
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            assert conn.execute(f"SELECT answer FROM {table}").fetchone() == (42,)
            conn.execute(f"DROP TABLE {table}")
        nc = await nats.connect(endpoints.nats_url)
        msg = await nc.jetstream().get_last_msg(stream, stream.lower())
        assert msg.data == b"kept"
        await nc.jetstream().delete_stream(stream)
        await nc.close()
    assert _processes_using(used_data_dir) == []


@pytest.mark.usefixtures("no_env_urls")
def test_servers_left_running_by_a_vanished_owner_are_replaced(used_data_dir: Path) -> None:
    """The owner vanished without its servers noticing (e.g. it died before the death signal was armed):
    the next start must stop those servers, which hold the data directories, and start its own."""
    old = EmbeddedServers()
    old.start(used_data_dir, durable=False)
    left_running = old.spawned_pids()
    for server in (old.nats, old.postgres):  # what the owner's death does: locks dropped, processes forgotten
        assert server is not None and server._lock is not None
        server._lock.release()
        server._proc = None
    assert all(_running(pid) for pid in left_running.values())

    with EmbeddedServers() as servers:
        endpoints = servers.start(used_data_dir, durable=False)
        assert [pid for pid in left_running.values() if _running(pid)] == []
        assert set(servers.spawned_pids().values()).isdisjoint(left_running.values())
        assert endpoints.database_url is not None
        with psycopg.connect(endpoints.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _processes_using(used_data_dir) == []


@pytest.mark.usefixtures("no_env_urls")
def test_cli_stops_servers_on_sigterm(used_data_dir: Path) -> None:
    cli, urls = _start_cli(used_data_dir)
    with psycopg.connect(urls["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("vap",)
    servers = _processes_using(used_data_dir)
    assert servers
    cli.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=20) == 0
    assert _wait_dead(servers, timeout=5.0) == []


@pytest.mark.usefixtures("no_env_urls")
def test_servers_die_with_their_parent(used_data_dir: Path) -> None:
    """A crashed parent (SIGKILL: no cleanup code runs) takes its servers with it (PR_SET_PDEATHSIG)."""
    cli, _urls = _start_cli(used_data_dir)
    servers = _processes_using(used_data_dir)
    cli.kill()
    cli.wait()
    assert _wait_dead(servers) == []


def test_redact_dsn_hides_passwords() -> None:
    assert redact_dsn("postgresql://vap:s3cret@db:5432/vap") == "postgresql://***@db:5432/vap"
    assert (
        redact_dsn("host=db user=vap password=s3cret dbname=vap")
        == "host=db user=vap password=*** dbname=vap"
    )
    assert redact_dsn("nats://tok3n@nats:4222") == "nats://***@nats:4222"
    assert redact_dsn("postgresql://postgres@127.0.0.1:5432/vap") == "postgresql://***@127.0.0.1:5432/vap"
