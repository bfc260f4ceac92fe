"""Camera credentials never survive redaction, whatever the URL looks like."""

from __future__ import annotations

import io
import json
import logging
import string

from hypothesis import given
from hypothesis import strategies as st

from vap_common.logs import configure_logging, get_logger
from vap_common.redact import redact_text, redact_url, url_has_credentials

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
