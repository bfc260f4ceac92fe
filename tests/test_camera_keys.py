"""Camera keys (vap_common.camera_secrets): where they come from, sealing and opening, rotation, and `vap up`
giving control and the decoder agent the same key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vap_common.camera_secrets import (
    KEY_FILE_ENV,
    KEYS_ENV,
    CameraKeyError,
    CameraKeys,
    generate_key,
    load_camera_keys,
    parse_keys,
)

URL = "rtsp://viewer:Sup3r:secret@cam/1?token=abc"


def test_seal_and_open_round_trip_without_plaintext() -> None:
    keys = CameraKeys([generate_key()], source="test")
    sealed = keys.seal(URL)
    assert b"Sup3r" not in sealed and b"secret" not in sealed
    assert keys.seal(URL) != sealed  # a random IV each time
    assert keys.open(sealed) == URL
    assert "Sup3r" not in repr(keys)


def test_rotation_old_tokens_open_and_reseal_under_the_first_key() -> None:
    old, new = generate_key(), generate_key()
    sealed_old = CameraKeys([old], source="old").seal(URL)
    both = CameraKeys([new, old], source="rotating")
    assert both.open(sealed_old) == URL  # a new key added first: what the old one sealed still opens
    assert both.needs_reseal(sealed_old)
    resealed = both.reseal(sealed_old)
    assert not both.needs_reseal(resealed)
    only_new = CameraKeys([new], source="new")
    assert only_new.open(resealed) == URL  # the old key can go
    with pytest.raises(CameraKeyError, match="none of the 1 camera key"):
        only_new.open(sealed_old)
    with pytest.raises(CameraKeyError):
        only_new.reseal(sealed_old)


def test_a_bad_key_is_named_by_position_never_quoted() -> None:
    bad = "not-a-fernet-key-Sup3rSecret"
    with pytest.raises(CameraKeyError) as error:
        CameraKeys([generate_key(), bad], source=KEYS_ENV)
    assert "camera key 2 in VAP_CAMERA_KEYS" in str(error.value) and bad not in str(error.value)


def test_parse_keys_takes_commas_lines_and_comments() -> None:
    assert parse_keys("a, b,,\n# comment\nc\n\n") == ["a", "b", "c"]


def test_keys_come_from_the_environment_then_a_key_file_then_the_data_dir(tmp_path: Path) -> None:
    k1, k2 = generate_key(), generate_key()
    sealed = CameraKeys([k2], source="x").seal(URL)
    given = tmp_path / "given.key"
    given.write_text(f"# keys\n{k2}\n")
    assert load_camera_keys(tmp_path, create=False, env={KEYS_ENV: f"{k1},{k2}"}).open(sealed) == URL
    from_file = load_camera_keys(tmp_path, create=False, env={KEY_FILE_ENV: str(given)})
    assert from_file.open(sealed) == URL and from_file.source == str(given)
    # Nothing given: the data dir's key file, which only a service that seals may create.
    with pytest.raises(CameraKeyError, match="no camera key"):
        load_camera_keys(tmp_path, create=False, env={})
    made = load_camera_keys(tmp_path, create=True, env={})
    path = tmp_path / "secrets" / "camera.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_camera_keys(tmp_path, create=True, env={})  # kept, never replaced
    assert again.open(made.seal(URL)) == URL
    assert load_camera_keys(tmp_path, create=False, env={}).open(made.seal(URL)) == URL


def test_vap_up_gives_control_and_the_agent_one_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vap_stack.up import camera_key_env

    monkeypatch.delenv(KEYS_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    env = camera_key_env(tmp_path)
    path = Path(env[KEY_FILE_ENV])
    assert path == (tmp_path / "secrets" / "camera.key").resolve()
    text = path.read_text()
    assert camera_key_env(tmp_path) == env and path.read_text() == text  # the next `vap up` keeps it
    # What control (data dir <data>/control) and the agent (<data>/decoder-agent) load from that env.
    control = load_camera_keys(tmp_path / "control", create=True, env=env)
    agent = load_camera_keys(tmp_path / "decoder-agent", create=False, env=env)
    assert agent.open(control.seal(URL)) == URL
    # Keys in the environment are passed on as they are.
    monkeypatch.setenv(KEYS_ENV, generate_key())
    assert camera_key_env(tmp_path) == {}
