"""vap_framebus against real nats-server processes (the session's embedded one, plus private ones for
reconnect, server PINGs, authorization and max_payload). No mocks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from vap_common.embedded_nats import EmbeddedNats, nats_server_binary
from vap_common.ports import free_tcp_port
from vap_framebus import (
    AsyncFrameSubscriber,
    AuthorizationError,
    FrameBusConnectionError,
    FramePublisher,
    Parser,
    PayloadTooLargeError,
    UnsupportedURLError,
    parse_servers,
)

pytestmark = pytest.mark.timeout(60)

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "reconnect_wait_max": 0.2}


def subject() -> str:
    return f"test.framebus.{uuid.uuid4().hex}"


# Delivery waits, not latency checks: generous so a loaded CI machine (the suite shares 2 cores with every
# server it starts) never turns a slow delivery into a failure. A message that never comes still fails.
DELIVERY_TIMEOUT = 20.0


async def until(predicate: Callable[[], bool], timeout: float = DELIVERY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.fixture
def publisher(nats_url: str) -> Iterator[FramePublisher]:
    pub = FramePublisher(**FAST)
    pub.connect(nats_url, "test-pub")
    yield pub
    pub.close()


@pytest.fixture
async def subscriber(nats_url: str) -> AsyncIterator[AsyncFrameSubscriber]:
    sub = AsyncFrameSubscriber(**FAST)
    await sub.connect(nats_url, "test-sub")
    yield sub
    await sub.close()


class Collect:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, subject: str, payload: bytes) -> None:
        self.messages.append((subject, payload))

    @property
    def payloads(self) -> list[bytes]:
        return [p for _, p in self.messages]


# --- round trips and interop ----------------------------------------------------------------------------


async def test_round_trip(publisher: FramePublisher, subscriber: AsyncFrameSubscriber) -> None:
    subj, got = subject(), Collect()
    await subscriber.subscribe(subj, got)
    assert publisher.publish(subj, b"hello")
    assert publisher.publish(subj, b"")
    assert publisher.flush(DELIVERY_TIMEOUT)
    await until(lambda: len(got.messages) == 2)
    assert got.messages == [(subj, b"hello"), (subj, b"")]
    assert publisher.published == 2 and publisher.dropped == 0
    assert subscriber.received == 2 and subscriber.handler_errors == 0
    assert publisher.server_info["max_payload"] == publisher.max_payload > 1_000_000


async def test_nats_py_to_framebus(nats_client: NatsClient, subscriber: AsyncFrameSubscriber) -> None:
    subj, got = subject(), Collect()
    await subscriber.subscribe(subj, got)
    await nats_client.publish(subj, b"from nats-py")
    await nats_client.publish(subj, b"with headers", headers={"X-Trace": "abc", "t0": "123"})
    await nats_client.flush()
    await until(lambda: len(got.messages) == 2)
    assert got.payloads == [b"from nats-py", b"with headers"]  # HMSG: headers skipped


async def live_subscription(nats_client: NatsClient, subj: str) -> Any:
    """A nats-py subscription proven live at the server: its own message came back through it (a flush alone
    once left CI waiting 20 s for a message that never came, so the test now knows which side lost it)."""
    sub = await nats_client.subscribe(subj)
    await nats_client.publish(subj, b"ready")
    await nats_client.flush()
    assert (await sub.next_msg(timeout=DELIVERY_TIMEOUT)).data == b"ready"
    return sub


async def test_framebus_to_nats_py(nats_client: NatsClient, publisher: FramePublisher) -> None:
    subj = subject()
    sub = await live_subscription(nats_client, subj)
    assert publisher.publish(subj, b"from framebus")
    assert publisher.flush(DELIVERY_TIMEOUT)
    msg: Msg = await sub.next_msg(timeout=DELIVERY_TIMEOUT)
    assert msg.data == b"from framebus" and msg.subject == subj


async def test_subscriber_publish(
    subscriber: AsyncFrameSubscriber, nats_client: NatsClient, publisher: FramePublisher
) -> None:
    """The subscriber's own publish() (acknowledgements) reaches nats-py and itself."""
    subj, got = subject(), Collect()
    sub = await live_subscription(nats_client, subj)
    await subscriber.subscribe(subj, got)
    assert subscriber.publish(subj, b"ack")
    assert await subscriber.flush(DELIVERY_TIMEOUT)
    assert (await sub.next_msg(timeout=DELIVERY_TIMEOUT)).data == b"ack"
    await until(lambda: got.payloads == [b"ack"])


async def test_many_messages_in_order(publisher: FramePublisher, subscriber: AsyncFrameSubscriber) -> None:
    subj, got = subject(), Collect()
    await subscriber.subscribe(subj, got)
    count = 10_000
    for i in range(count):
        assert publisher.publish(subj, i.to_bytes(4, "little") + b"x" * (i % 200))
    assert publisher.flush(DELIVERY_TIMEOUT)
    await until(lambda: len(got.messages) >= count)
    indexes = [int.from_bytes(p[:4], "little") for p in got.payloads]
    assert indexes == list(range(count))
    assert all(len(p) == 4 + i % 200 for i, p in enumerate(got.payloads))


async def test_large_payloads_split_across_reads(
    publisher: FramePublisher, subscriber: AsyncFrameSubscriber
) -> None:
    subj, got = subject(), Collect()
    await subscriber.subscribe(subj, got)
    big = [os.urandom(5 * 1024 * 1024) for _ in range(3)]
    expected: list[bytes] = []
    for i, payload in enumerate(big):
        for j in range(50):  # small ones in between: many messages per read on both sides of a big one
            small = b"%d-%d\r\nMSG fake 1 3\r\n" % (i, j)
            publisher.publish(subj, small)
            expected.append(small)
        assert publisher.publish(subj, memoryview(payload))
        expected.append(payload)
    assert publisher.flush(DELIVERY_TIMEOUT)
    await until(lambda: len(got.messages) == len(expected))
    assert got.payloads == expected


async def test_wildcards(publisher: FramePublisher, subscriber: AsyncFrameSubscriber) -> None:
    base = subject()
    star, tail = Collect(), Collect()
    await subscriber.subscribe(f"{base}.*.frame", star)
    await subscriber.subscribe(f"{base}.>", tail)
    for s in (f"{base}.cam1.frame", f"{base}.cam2.frame", f"{base}.cam1.meta.x"):
        publisher.publish(s, s.encode())
    assert publisher.flush(DELIVERY_TIMEOUT)
    await until(lambda: len(tail.messages) == 3)
    assert [s for s, _ in star.messages] == [f"{base}.cam1.frame", f"{base}.cam2.frame"]
    assert all(s.encode() == p for s, p in tail.messages)


async def test_queue_groups(nats_url: str, publisher: FramePublisher) -> None:
    subj = subject()
    members = [AsyncFrameSubscriber(), AsyncFrameSubscriber()]
    everyone = AsyncFrameSubscriber()
    got = [Collect(), Collect()]
    all_got = Collect()
    try:
        for member, collect in zip(members, got, strict=True):
            await member.connect(nats_url, "queue-member")
            await member.subscribe(subj, collect, queue="workers")
        await everyone.connect(nats_url, "no-queue")
        await everyone.subscribe(subj, all_got)
        for i in range(200):
            publisher.publish(subj, b"%d" % i)
        assert publisher.flush(DELIVERY_TIMEOUT)
        await until(lambda: len(all_got.messages) == 200 and sum(len(c.messages) for c in got) == 200)
        assert all(c.messages for c in got)  # both members got a share
        shared = sorted(int(p) for c in got for p in c.payloads)
        assert shared == list(range(200))  # each message to exactly one member
    finally:
        for s in (*members, everyone):
            await s.close()


async def test_handler_exception_does_not_stop_delivery(
    publisher: FramePublisher, subscriber: AsyncFrameSubscriber
) -> None:
    subj, got = subject(), Collect()

    def handler(s: str, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        got(s, payload)

    await subscriber.subscribe(subj, handler)
    for payload in (b"1", b"boom", b"2", b"boom", b"3"):
        publisher.publish(subj, payload)
    assert publisher.flush(DELIVERY_TIMEOUT)
    await until(lambda: len(got.messages) == 3)
    assert got.payloads == [b"1", b"2", b"3"]
    assert subscriber.handler_errors == 2
    assert subscriber.connected


async def test_unsubscribe(publisher: FramePublisher, subscriber: AsyncFrameSubscriber) -> None:
    subj, got = subject(), Collect()
    sid = await subscriber.subscribe(subj, got)
    publisher.publish(subj, b"1")
    assert publisher.flush(DELIVERY_TIMEOUT)
    await until(lambda: len(got.messages) == 1)
    await subscriber.unsubscribe(sid)
    publisher.publish(subj, b"2")
    assert publisher.flush(DELIVERY_TIMEOUT)
    assert await subscriber.flush(DELIVERY_TIMEOUT)
    assert got.payloads == [b"1"]


# --- errors -------------------------------------------------------------------------------------------------


async def test_invalid_subjects(publisher: FramePublisher, subscriber: AsyncFrameSubscriber) -> None:
    for bad in ("", "a b", "a..b", ".a", "a.", "a\r\nPUB x 1"):
        with pytest.raises(ValueError, match="invalid NATS subject"):
            publisher.publish(bad, b"x")
        with pytest.raises(ValueError, match="invalid NATS subject"):
            await subscriber.subscribe(bad, Collect())
    for wildcard in ("a.*", "a.>"):
        with pytest.raises(ValueError, match="subscriptions only"):
            publisher.publish(wildcard, b"x")
    for misplaced in ("a.>.b", "a.b*", "a.>x"):
        with pytest.raises(ValueError, match="misplaced wildcard"):
            await subscriber.subscribe(misplaced, Collect())
    with pytest.raises(ValueError, match="queue group"):
        await subscriber.subscribe("a", Collect(), queue="a b")
    assert publisher.connected and subscriber.connected


async def test_websocket_and_bad_urls_are_refused() -> None:
    # (TLS works: tests/test_nats_auth.py, against a server requiring it.)
    for url in ("ws://127.0.0.1:4222", "nats://127.0.0.1:1, wss://h:443"):
        with pytest.raises(UnsupportedURLError, match="NATS over TCP"):
            FramePublisher().connect(url)
        with pytest.raises(UnsupportedURLError, match="NATS over TCP"):
            await AsyncFrameSubscriber().connect(url)
    assert parse_servers("tls://h:1")[0].tls and str(parse_servers("tls://h:1")[0]) == "tls://h:1"
    with pytest.raises(UnsupportedURLError, match="scheme"):
        parse_servers("http://h:1")
    assert parse_servers("h1, nats://u:p%40ss@h2:5, tok@h3:6") == [
        parse_servers("nats://h1:4222")[0],
        parse_servers("nats://u:p%40ss@h2:5")[0],
        parse_servers("nats://tok@h3:6")[0],
    ]
    servers = parse_servers("nats://u:p%40ss@h2:5, tok@h3:6")
    assert (servers[0].user, servers[0].password, servers[1].token) == ("u", "p@ss", "tok")
    assert "p@ss" not in str(servers[0])


async def test_unreachable_then_fallback_url(nats_url: str) -> None:
    dead = f"nats://127.0.0.1:{free_tcp_port()}"
    with pytest.raises(FrameBusConnectionError, match="could not connect"):
        FramePublisher(connect_timeout=1).connect(dead)
    with pytest.raises(FrameBusConnectionError, match="could not connect"):
        await AsyncFrameSubscriber(connect_timeout=1).connect(dead)
    with FramePublisher() as pub:
        pub.connect(f"{dead},{nats_url}")
        assert pub.connected
    sub = AsyncFrameSubscriber()
    await sub.connect(f"{dead}, {nats_url}")
    assert sub.connected
    await sub.close()


# --- private servers: authorization, max_payload, server PINGs ----------------------------------------


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server with credentials, max_payload 1 KiB and a server PING every 100 ms (at most one
    unanswered): a client that does not answer PINGs is cut after ~0.2 s."""
    directory = tmp_path_factory.mktemp("strict-nats")
    port = free_tcp_port()
    config = directory / "nats.conf"
    config.write_text(
        f'host: "127.0.0.1"\nport: {port}\nping_interval: "100ms"\nping_max: 1\nmax_payload: 1024\n'
        'authorization { user: "vap", password: "s3cret" }\n'
    )
    with (directory / "log").open("wb") as log:
        proc = subprocess.Popen([str(nats_server_binary()), "-c", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert time.monotonic() < deadline and proc.poll() is None, (directory / "log").read_text()
            time.sleep(0.02)
        yield f"nats://vap:s3cret@127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_authorization_violation_is_clear(strict_server: str) -> None:
    wrong = strict_server.replace("s3cret", "wrong")
    with pytest.raises(AuthorizationError, match="NATS refused user 'vap'"):
        FramePublisher().connect(wrong)
    with pytest.raises(AuthorizationError, match="NATS refused user 'vap'"):
        await AsyncFrameSubscriber().connect(wrong)
    anonymous = "nats://" + strict_server.rsplit("@", 1)[1]
    with pytest.raises(AuthorizationError):
        FramePublisher().connect(anonymous)


async def test_max_payload_exceeded_is_clear(strict_server: str) -> None:
    with FramePublisher() as pub:
        pub.connect(strict_server)
        assert pub.max_payload == 1024
        assert pub.publish("big", b"x" * 1024)
        with pytest.raises(PayloadTooLargeError, match="exceeds the server's max_payload of 1024"):
            pub.publish("big", b"x" * 1025)
        assert pub.flush(DELIVERY_TIMEOUT) and pub.connected
    sub = AsyncFrameSubscriber()
    await sub.connect(strict_server)
    with pytest.raises(PayloadTooLargeError):
        sub.publish("big", b"x" * 1025)
    await sub.close()


async def test_server_pings_are_answered(strict_server: str) -> None:
    host, port = strict_server.rsplit("@", 1)[1].rsplit(":", 1)
    # Control: a connection that never answers PINGs is closed by this server within ~0.3 s.
    with socket.create_connection((host, int(port))) as raw:
        raw.recv(4096)
        raw.sendall(b'CONNECT {"verbose":false,"user":"vap","pass":"s3cret"}\r\n')
        raw.settimeout(3)
        seen = b""
        with contextlib.suppress(OSError):
            while chunk := raw.recv(4096):
                seen += chunk
        assert b"PING" in seen and b"Stale Connection" in seen
    pub = FramePublisher(ping_interval=60, **FAST)
    pub.connect(strict_server, "ping-pub")
    sub = AsyncFrameSubscriber(ping_interval=60, **FAST)
    await sub.connect(strict_server, "ping-sub")
    try:
        got = Collect()
        await sub.subscribe("pinged", got)
        await asyncio.sleep(1.0)  # ~10 server PINGs
        assert pub.connected and sub.connected
        assert pub.reconnects == 0 and sub.reconnects == 0
        assert pub.publish("pinged", b"still here") and pub.flush(DELIVERY_TIMEOUT)
        await until(lambda: got.payloads == [b"still here"])
    finally:
        pub.close()
        await sub.close()


async def test_reconnect_after_server_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", monitoring=False, port=free_tcp_port())
    url = server.start()
    pub = FramePublisher(**FAST)
    sub = AsyncFrameSubscriber(**FAST)
    got = Collect()
    try:
        pub.connect(url, "reconnect-pub")
        await sub.connect(url, "reconnect-sub")
        await sub.subscribe("frames.cam1", got)
        assert pub.publish("frames.cam1", b"before") and pub.flush(DELIVERY_TIMEOUT)
        await until(lambda: got.payloads == [b"before"])

        server.stop()
        await until(lambda: not pub.connected and not sub.connected)
        assert not pub.publish("frames.cam1", b"lost")  # returns at once, frame dropped
        assert pub.dropped == 1
        assert not pub.flush(timeout=0.1)
        assert not sub.publish("acks", b"lost") and sub.dropped == 1

        assert server.start() == url
        await until(lambda: pub.connected and sub.connected)
        assert pub.reconnects == 1 and sub.reconnects == 1
        assert await sub.flush(DELIVERY_TIMEOUT)  # the resubscription reached the server before this PONG
        assert pub.publish("frames.cam1", b"after") and pub.flush(DELIVERY_TIMEOUT)
        await until(lambda: got.payloads == [b"before", b"after"])
    finally:
        pub.close()
        await sub.close()
        server.stop()


# --- the parser ---------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_msg(self, subject: str, sid: int, reply: str, payload: bytes) -> None:
        self.events.append(("MSG", subject, sid, reply, payload))

    def on_ping(self) -> None:
        self.events.append(("PING",))

    def on_pong(self) -> None:
        self.events.append(("PONG",))

    def on_info(self, info: dict[str, Any]) -> None:
        self.events.append(("INFO", info))

    def on_ok(self) -> None:
        self.events.append(("OK",))

    def on_err(self, message: str) -> None:
        self.events.append(("ERR", message))


_tokens = st.text(alphabet="abcXYZ019-_", min_size=1, max_size=6)
_subjects = st.lists(_tokens, min_size=1, max_size=4).map(".".join)
_msg = st.tuples(_subjects, st.integers(1, 10**6), st.one_of(st.just(""), _subjects), st.binary(max_size=300))
_hmsg = st.tuples(_msg, st.binary(max_size=40).map(lambda h: b"NATS/1.0\r\n" + h.replace(b"\r\n", b"")))
_frame = st.one_of(
    _msg.map(lambda m: ("MSG", m)),
    _hmsg.map(lambda m: ("HMSG", m)),
    st.sampled_from([("PING", None), ("PONG", None), ("OK", None), ("ERR", None), ("INFO", None)]),
)


def _encode(frame: tuple[str, Any]) -> tuple[bytes, tuple[Any, ...]]:
    kind, value = frame
    if kind == "MSG":
        subj, sid, reply, payload = value
        line = f"MSG {subj} {sid} {reply + ' ' if reply else ''}{len(payload)}\r\n".encode()
        return line + payload + b"\r\n", ("MSG", subj, sid, reply, payload)
    if kind == "HMSG":
        (subj, sid, reply, payload), headers = value
        headers += b"\r\n\r\n"
        total = len(headers) + len(payload)
        line = f"HMSG {subj} {sid} {reply + ' ' if reply else ''}{len(headers)} {total}\r\n".encode()
        return line + headers + payload + b"\r\n", ("MSG", subj, sid, reply, payload)
    return {
        "PING": (b"PING\r\n", ("PING",)),
        "PONG": (b"PONG\r\n", ("PONG",)),
        "OK": (b"+OK\r\n", ("OK",)),
        "ERR": (b"-ERR 'Slow Consumer'\r\n", ("ERR", "Slow Consumer")),
        "INFO": (
            b'INFO {"max_payload":1024,"headers":true}\r\n',
            ("INFO", {"max_payload": 1024, "headers": True}),
        ),
    }[kind]


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frame, max_size=25), data=st.data())
def test_parser_any_split_gives_same_messages(frames: list[tuple[str, Any]], data: st.DataObject) -> None:
    encoded = [_encode(f) for f in frames]
    stream = b"".join(e for e, _ in encoded)
    expected = [event for _, event in encoded]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    recorder = Recorder()
    parser = Parser(recorder)
    for chunk in chunks:
        parser.feed(chunk if len(chunk) % 2 else bytearray(chunk))  # both input types
    assert recorder.events == expected
    assert parser.buffered == 0
