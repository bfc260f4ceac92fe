"""Camera credentials never survive redaction, whatever the URL looks like."""

from __future__ import annotations

import io
import json
import logging
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vap_common.logs import configure_logging, get_logger
from vap_common.redact import (
    redact_text,
    redact_url,
    remember_url_secrets,
    url_has_credentials,
    url_secrets,
)

# Printable credentials; '/', '@', '?', '#' cannot appear unescaped in a URL's user info.
_secret = st.text(
    alphabet=[c for c in string.printable if not c.isspace() and c not in "/@?#&="], min_size=4, max_size=20
)


def test_rtsp_url_keeps_host_port_path() -> None:
    assert (
        redact_url("rtsp://admin:hunter2@10.0.0.5:554/Streaming/101")
        == "rtsp://***@10.0.0.5:554/Streaming/101"
    )


def test_url_without_credentials_is_unchanged() -> None:
    url = "rtsp://10.0.0.5:554/live?channel=1"
    assert redact_url(url) == url
    assert not url_has_credentials(url)


def test_secret_query_parameters_are_hidden() -> None:
    assert (
        redact_url("http://cam/video.mjpg?user=a&password=s3cr3t")
        == "http://cam/video.mjpg?user=a&password=***"
    )


def test_ipv6_host_survives() -> None:
    assert redact_url("rtsp://u:p@[::1]:8554/cam") == "rtsp://***@[::1]:8554/cam"


@given(user=_secret, password=_secret, scheme=st.sampled_from(["rtsp", "rtsps", "http", "https"]))
def test_password_never_survives(user: str, password: str, scheme: str) -> None:
    url = f"{scheme}://{user}:{password}@camera.local:554/stream"
    assert password not in redact_url(url).replace("camera.local:554/stream", "")
    text = f"could not open {url}: Connection refused"
    assert password not in redact_text(text).replace("camera.local:554/stream", "")


def test_log_lines_are_json_and_redacted() -> None:
    stream = io.StringIO()
    configure_logging("test-service", level="INFO", fmt="json")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    get_logger("vap.test").info("source opened", url="rtsp://admin:topsecret@cam/1", attempt=2)
    logging.getLogger("ffmpeg").error("failed on rtsp://root:pw12345@10.1.1.1/live")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "source opened"
    assert lines[0]["url"] == "rtsp://***@cam/1"
    assert lines[0]["service"] == "test-service"
    assert "topsecret" not in stream.getvalue()
    assert "pw12345" not in stream.getvalue()


# --- odd URL shapes (issue 23): the password never survives, whatever the URL looks like ------------------

ODD_URLS = [
    # (url, the redacted form)
    ("user:Zq9-secret@127.0.0.1", "***@127.0.0.1"),
    ("user:Zq9-secret@[::1]:8554/x", "***@[::1]:8554/x"),
    ("rtsp://us%40er:Zq9-secret%3A@host/x", "rtsp://***@host/x"),
    ("rtsp://host/x?user=admin&password=Zq9-secret", "rtsp://host/x?user=admin&password=***"),
    ("http://host/x?pwd=Zq9-secret&channel=1", "http://host/x?pwd=***&channel=1"),
    ("http://host/x?pass=Zq9-secret", "http://host/x?pass=***"),
    ("http://host/x?token=Zq9-secret#top", "http://host/x?token=***#top"),
    ("http://host/x?api_key=Zq9-secret&x-api-key=Zq9-secret", "http://host/x?api_key=***&x-api-key=***"),
    ("rtsp://host/x;password=Zq9-secret", "rtsp://host/x;password=***"),
    ("rtsp://user:Zq9-secret@[::1]:8554/x", "rtsp://***@[::1]:8554/x"),
    ("rtsp://user:Zq9@secret@host/x", "rtsp://***@host/x"),  # a raw '@' in the password
    ("rtsp://user:Zq9/secret@host/x", "rtsp://***@host/x"),  # a raw '/' in the password
    ("rtsp:/user:Zq9-secret@host/x", "rtsp:/***@host/x"),
    ("//user:Zq9-secret@host/x", "//***@host/x"),
    ("RTSP://user:Zq9-secret@host:554", "RTSP://***@host:554"),
]


@pytest.mark.parametrize(("url", "redacted"), ODD_URLS)
def test_odd_url_shapes_lose_their_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert url_has_credentials(url)
    for text in (f"could not open {url}: refused", f"url={url!r}", f'{{"source": "{url}"}}', f"({url})"):
        out = redact_text(text)
        assert "Zq9" not in out and "secret" not in out, out


@pytest.mark.parametrize(
    "text",
    [
        "rtsp://10.0.0.5:554/live?channel=1",
        "/videos/a@b.mp4",
        "file:///data/cam@1.mp4",
        "mail ops@example.com now",
        "keyframe=3 signal=9 passes=2",
        "0",
        "/dev/video0",
    ],
)
def test_text_without_credentials_is_left_alone(text: str) -> None:
    assert redact_text(text) == text
    if " " not in text:  # a URL or path (redact_url takes any '@' in a URL's authority for user info)
        assert redact_url(text) == text


@given(
    user=st.text(alphabet=string.ascii_letters + string.digits + "%._-", min_size=1, max_size=10),
    password=st.text(
        alphabet=[c for c in string.printable if not c.isspace() and c not in "?#"], min_size=6, max_size=20
    ),
    head=st.sampled_from(["rtsp://", "http://", "", "//", "rtsp:/"]),
    host=st.sampled_from(["cam.local", "127.0.0.1", "[::1]:8554", "[fe80::1%25eth0]"]),
)
def test_any_password_in_any_shape_is_hidden(user: str, password: str, head: str, host: str) -> None:
    url = f"{head}{user}:{password}@{host}/stream"
    out = redact_url(url)
    assert out == f"{head}***@{host}/stream"
    assert redact_text(f"failed: {url}").endswith(f"***@{host}/stream")


def test_known_secrets_are_hidden_in_any_text() -> None:
    """A process that opens a camera registers its URL: then even a shape no pattern knows (the password
    alone, percent-decoded, split by a space) is hidden."""
    remember_url_secrets("rtsp://viewer:Kx7%24known@cam/1?token=Tk-42-known")
    text = "auth failed for Kx7$known / Kx7%24known; token Tk-42-known"
    assert redact_text(text) == "auth failed for *** / ***; token ***"
    assert "Kx7" not in redact_url("rtsp://other:x@cam/Kx7$known")
    assert url_secrets("/videos/a.mp4") == []
