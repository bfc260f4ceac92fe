"""Camera URLs sealed with the deployment's camera keys (Fernet: AES-128-CBC with HMAC-SHA256), so that the
credentials they carry are never stored or sent in the clear.

The control service seals a scenario's source URL when it is created or changed, stores only the sealed URL
(and a redacted copy for display), and sends only the sealed URL in ``StartChannel.sealed_url``; the decoder
agent opens it just before starting the decoder process. The plaintext lives in the memory of the control
request that carried it and of the decoder that opens the camera, nowhere else.

Keys, first found wins:

1. ``VAP_CAMERA_KEYS``: Fernet keys separated by commas;
2. ``VAP_CAMERA_KEY_FILE``: a file of Fernet keys, one a line (``#`` comments allowed);
3. ``<data_dir>/secrets/camera.key`` of the service, created (mode 0600, one new key) on first use by the
   control service when it does not exist.

The first key seals, every key opens (``MultiFernet``). Rotation: put a new key first (keep the old ones),
restart control and the decoder agents; control re-seals every stored URL under the first key at start-up
(``needs_reseal``/``reseal``); then drop the old key and restart again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from vap_common.settings import SettingsError

KEYS_ENV = "VAP_CAMERA_KEYS"
KEY_FILE_ENV = "VAP_CAMERA_KEY_FILE"
DEFAULT_KEY_FILE = Path("secrets") / "camera.key"


class CameraKeyError(SettingsError):
    """No usable camera key, or a sealed URL that none of the keys opens (a settings problem: the keys do not
    match). The message holds no secret."""


def generate_key() -> str:
    """A new random Fernet key (url-safe base64 of 32 bytes), as text."""
    return Fernet.generate_key().decode("ascii")


class CameraKeys:
    """Seal and open camera URLs with an ordered list of Fernet keys (the first seals, all open)."""

    def __init__(self, keys: Sequence[str], *, source: str) -> None:
        if not keys:
            raise CameraKeyError(f"no camera key in {source}")
        fernets: list[Fernet] = []
        for i, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.strip().encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                # Never quote the key: say which one (by position) and where it came from.
                raise CameraKeyError(
                    f"camera key {i} in {source} is not a Fernet key (32 url-safe base64-encoded bytes)"
                ) from None
        self.source = source
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)
        self.count = len(fernets)

    def __repr__(self) -> str:
        return f"CameraKeys({self.count} key(s) from {self.source})"

    def seal(self, url: str) -> bytes:
        """``url`` sealed under the first key (a Fernet token: random IV, so sealing twice differs)."""
        return self._primary.encrypt(url.encode("utf-8"))

    def open(self, sealed: bytes) -> str:
        try:
            return self._all.decrypt(sealed).decode("utf-8")
        except (InvalidToken, UnicodeDecodeError):
            raise CameraKeyError(
                f"a sealed camera URL opens with none of the {self.count} camera key(s) from {self.source}"
                " (the keys must be those of the control service that sealed it)"
            ) from None

    def needs_reseal(self, sealed: bytes) -> bool:
        """Whether ``sealed`` was sealed under another key than the first (rotation pending)."""
        try:
            self._primary.decrypt(sealed)
        except InvalidToken:
            return True
        return False

    def reseal(self, sealed: bytes) -> bytes:
        """``sealed`` sealed again under the first key (CameraKeyError when no key opens it)."""
        try:
            return self._all.rotate(sealed)
        except InvalidToken:
            raise CameraKeyError(
                f"a sealed camera URL opens with none of the {self.count} camera key(s) from {self.source}"
            ) from None


def parse_keys(text: str) -> list[str]:
    """Keys from a comma- or newline-separated text; blank entries and ``#`` comment lines are skipped."""
    keys: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        keys.extend(part.strip() for part in line.split(",") if part.strip())
    return keys


def _write_new_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        # O_EXCL: of two services creating it together, one writes and the other reads that key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(
            "# VAP camera keys (Fernet), one a line: the first seals camera URLs, every one opens them.\n"
            "# Rotate: add a new key as the first line, restart control and the decoder agents,\n"
            "# then drop the old key and restart them again.\n" + generate_key() + "\n"
        )


def _read_key_file(path: Path) -> list[str]:
    for _ in range(100):  # another process may have created it an instant ago and be writing it
        keys = parse_keys(path.read_text(encoding="utf-8"))
        if keys:
            return keys
        time.sleep(0.01)
    return []


def key_file_for(data_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """The key file a service with ``data_dir`` uses when ``VAP_CAMERA_KEYS`` is not set."""
    environ = os.environ if env is None else env
    given = environ.get(KEY_FILE_ENV, "").strip()
    return Path(given) if given else data_dir / DEFAULT_KEY_FILE


def load_camera_keys(data_dir: Path, *, create: bool, env: Mapping[str, str] | None = None) -> CameraKeys:
    """The camera keys of a service (see the module docstring for where they come from). ``create``: write
    a key file with a new key when there is none (the control service, which seals); the decoder agent only
    reads."""
    environ = os.environ if env is None else env
    inline = environ.get(KEYS_ENV, "").strip()
    if inline:
        return CameraKeys(parse_keys(inline), source=KEYS_ENV)
    path = key_file_for(data_dir, environ)
    if not path.exists():
        if not create:
            raise CameraKeyError(
                f"no camera key: set {KEYS_ENV}, or {KEY_FILE_ENV} to the control service's key file"
                f" (looked for {path})"
            )
        _write_new_key_file(path)
    try:
        keys = _read_key_file(path)
    except OSError as exc:
        raise CameraKeyError(f"cannot read camera key file {path}: {exc.strerror}") from None
    return CameraKeys(keys, source=str(path))
