"""Who may connect to VAP's NATS and what each may publish and subscribe: one user per service role.

Every VAP process connects as the user of its role (``vap-<role>``) with a random password; the server
refuses anonymous connections. Each role's permissions name exactly the subjects that role publishes and
subscribes, derived from ``vap_common.subjects`` (the one table of subjects), plus:

- its reply inbox ``_INBOX.<user>.>`` (VAP clients use the inbox prefix ``_INBOX.<user>``, so one role cannot
  read the replies another role receives, e.g. JetStream API answers or agent replies);
- the JetStream API subjects it needs: control owns the streams (``$JS.API.>``, acks); inference, the
  tracker and dataset capture read the stored scenario configs (consumers on ``CONFIG_STREAM`` only).

A subject missing from a permission list is refused by the server (the client gets a "permissions
violation" error, the message is dropped). An empty list is rendered as ``deny: [">"]``: NATS reads an empty
``allow`` as "no restriction".

Credentials reach a process as settings (``VAP_NATS_USER`` with ``VAP_NATS_PASSWORD`` or
``VAP_NATS_PASSWORD_FILE``, see ``vap_common.settings``) or as the user info of ``NATS_URL``
(``nats://user:password@host:4222``); ``NatsAuth.resolve`` turns either into nats-py's options.
``vap up`` and the embedded server keep generated ones in ``nats-credentials.json`` (0600); docker-compose
takes them from an env file (``password_env``: one variable per role).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import ssl
import string
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from vap_common import subjects
from vap_common.nats_urls import nats_servers

__all__ = [
    "CREDENTIALS_FILE",
    "CREDENTIAL_ENVS",
    "SERVICE_ROLES",
    "ClientOptions",
    "NatsAuth",
    "NatsAuthError",
    "NatsCredentials",
    "NatsTls",
    "Permissions",
    "Role",
    "authorization_config",
    "ensure_credentials_file",
    "generate_credentials",
    "inbox_prefix",
    "is_authorization_violation",
    "is_permissions_violation",
    "load_credentials_file",
    "new_password",
    "password_env",
    "refusal_message",
    "role_permissions",
    "strip_credentials",
    "user_name",
    "write_private_file",
]

CREDENTIALS_FILE: Final = "nats-credentials.json"
# The settings every service reads its credentials from (vap_common.settings.ServiceSettings).
USER_ENV: Final = "VAP_NATS_USER"
PASSWORD_ENV: Final = "VAP_NATS_PASSWORD"  # noqa: S105 - a variable name
PASSWORD_FILE_ENV: Final = "VAP_NATS_PASSWORD_FILE"  # noqa: S105 - a variable name
TLS_CA_ENV: Final = "VAP_NATS_TLS_CA"
TLS_CERT_ENV: Final = "VAP_NATS_TLS_CERT"
TLS_KEY_ENV: Final = "VAP_NATS_TLS_KEY"
CREDENTIAL_ENVS: Final = (USER_ENV, PASSWORD_ENV, PASSWORD_FILE_ENV)
_FILE_VERSION: Final = 1
_JS_API: Final = "$JS.API"
_ALL: Final = ">"


class Role(StrEnum):
    """A kind of VAP process; each connects to NATS as its own user."""

    DECODER_AGENT = "decoder-agent"
    DECODER_CHANNEL = "decoder-channel"  # a decoder process (one per camera), started by the agent
    INFERENCE = "inference"
    TRACKER = "tracker"
    CONTROL = "control"
    WEB = "web"
    DATASET = "dataset"
    ADMIN = "admin"  # tools and tests: everything


SERVICE_ROLES: Final = tuple(role for role in Role if role is not Role.ADMIN)


class NatsAuthError(ConnectionError):
    """The server refused the credentials (or none were given where the server requires them)."""


def user_name(role: Role) -> str:
    """The NATS user of a role: ``vap-<role>``."""
    return f"vap-{role.value}"


def password_env(role: Role) -> str:
    """The environment variable that holds a role's password in docker-compose's env file,
    e.g. ``VAP_NATS_DECODER_AGENT_PASSWORD``."""
    return f"VAP_NATS_{role.value.upper().replace('-', '_')}_PASSWORD"


def inbox_prefix(user: str) -> str:
    """Reply subjects of ``user``'s requests (``_INBOX.<user>.<id>``): each user reads only its own."""
    return f"_INBOX.{subjects.token(user)}"


# --- permissions -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects (wildcards allowed) a user may publish to and subscribe to. ``allow_responses``: it may also
    answer requests it received (publish once to their reply subject), as the decoder agent does."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False


def _config_stream_reader(stream: str) -> tuple[str, ...]:
    """What ``scenario_configs.fetch_latest_scenario_configs`` requests: find the stream by subject, then an
    ephemeral consumer on it (create, info, fetch, delete). Nothing on any other stream."""
    return (
        f"{_JS_API}.STREAM.NAMES",
        f"{_JS_API}.CONSUMER.CREATE.{stream}",
        f"{_JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{_JS_API}.CONSUMER.INFO.{stream}.*",
        f"{_JS_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{_JS_API}.CONSUMER.DELETE.{stream}.*",
    )


def role_permissions(
    role: Role, user: str | None = None, *, config_stream: str = subjects.CONFIG_STREAM
) -> Permissions | None:
    """The permissions of ``role`` (for its ``user``, default ``user_name(role)``: the inbox is per user);
    None for ADMIN (no restriction). ``config_stream``: control's ``config_stream`` setting."""
    if role is Role.ADMIN:
        return None
    inbox = f"{inbox_prefix(user or user_name(role))}.>"
    frames = subjects.all_frames_every_node()
    configs = subjects.all_scenario_configs()
    reader = _config_stream_reader(config_stream)
    match role:
        case Role.DECODER_AGENT:
            # Its decoder processes run with its credentials unless given their own: it may publish what
            # they publish (it hands them its password anyway).
            return Permissions(
                publish=(
                    subjects.all_agent_replies(),
                    subjects.all_agent_status(),
                    subjects.all_channel_health(),
                    frames,
                ),
                subscribe=(subjects.all_agent_commands(), subjects.all_channel_health(), inbox),
                allow_responses=True,  # the reply to control's command request
            )
        case Role.DECODER_CHANNEL:
            return Permissions(publish=(frames, subjects.all_channel_health()), subscribe=(inbox,))
        case Role.INFERENCE:
            return Permissions(
                publish=(subjects.all_detections(), *reader), subscribe=(frames, configs, inbox)
            )
        case Role.TRACKER:
            return Permissions(
                publish=(
                    subjects.all_tracks(),
                    subjects.all_events(),
                    subjects.all_counts(),
                    subjects.all_tracker_status(),
                    *reader,
                ),
                subscribe=(subjects.all_detections(), configs, subjects.all_tracker_status(), inbox),
            )
        case Role.DATASET:
            return Permissions(publish=reader, subscribe=(subjects.all_detections(), configs, inbox))
        case Role.WEB:
            return Permissions(publish=(), subscribe=(frames, inbox))
        case Role.CONTROL:
            return Permissions(
                publish=(
                    subjects.all_agent_commands(),
                    configs,
                    f"{_JS_API}.>",  # it creates and updates the streams and its inbox consumer
                    "$JS.ACK.>",  # acknowledges what its inbox consumer delivered
                ),
                subscribe=(
                    subjects.all_detections(),
                    subjects.all_tracks(),
                    subjects.all_events(),
                    subjects.all_channel_health(),
                    subjects.all_agent_replies(),
                    subjects.all_agent_status(),
                    inbox,
                ),
            )
    raise ValueError(f"no permissions for role {role!r}")  # pragma: no cover - every role is above


# --- credentials ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class NatsCredentials:
    """A user name and its password; ``repr`` hides the password."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"NatsCredentials(user={self.user!r}, password='***')"


_ALNUM: Final = string.ascii_letters + string.digits


def new_password() -> str:
    """A random password: a letter, then 43 letters or digits (over 256 bits). Safe anywhere it goes: as user
    info of a NATS URL, in an env file, and as an environment variable nats-server reads into its config
    (it parses such a value like config text: ``-5a``, ``1kb``, ``true`` or ``123`` are no strings there)."""
    return "v" + "".join(secrets.choice(_ALNUM) for _ in range(43))


def generate_credentials(roles: Iterable[Role] = tuple(Role)) -> dict[Role, NatsCredentials]:
    return {role: NatsCredentials(user_name(role), new_password()) for role in roles}


def load_credentials_file(path: Path) -> dict[Role, NatsCredentials]:
    """The credentials kept in ``path`` (as ``ensure_credentials_file`` writes them); NatsAuthError naming
    the file when it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise NatsAuthError(f"cannot read NATS credentials file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise NatsAuthError(f"NATS credentials file {path} is not JSON: {exc}") from exc
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise NatsAuthError(
            f"NATS credentials file {path}: expected {{'users': {{role: {{user, password}}}}}}"
        )
    out: dict[Role, NatsCredentials] = {}
    for key, entry in users.items():
        try:
            role = Role(key)
        except ValueError:
            continue  # a role of a newer version
        if not (isinstance(entry, dict) and entry.get("user") and entry.get("password")):
            raise NatsAuthError(f"NATS credentials file {path}: role {key!r} needs a user and a password")
        out[role] = NatsCredentials(str(entry["user"]), str(entry["password"]))
    return out


def ensure_credentials_file(path: Path) -> dict[Role, NatsCredentials]:
    """The credentials in ``path``, with any role missing from it generated and the file (re)written with
    mode 0600. Existing passwords are kept, so services and the server agree across restarts."""
    existing = load_credentials_file(path) if path.exists() else {}
    missing = [role for role in Role if role not in existing]
    if not missing:
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        return existing
    creds = existing | generate_credentials(missing)
    write_private_file(
        path,
        json.dumps(
            {
                "version": _FILE_VERSION,
                "users": {role.value: {"user": c.user, "password": c.password} for role, c in creds.items()},
            },
            indent=2,
        )
        + "\n",
    )
    return creds


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- server configuration --------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return json.dumps(value)  # NATS config strings accept JSON escaping


def _subject_list(kind: str, subjects_: Sequence[str]) -> str:
    if not subjects_:
        return f'{kind}: {{deny: ["{_ALL}"]}}'  # an empty allow list would mean "anything"
    return f"{kind}: {{allow: [{', '.join(_quote(s) for s in subjects_)}]}}"


def _user_entry(role: Role, user: str, password: str, config_stream: str) -> str:
    perms = role_permissions(role, user, config_stream=config_stream)
    entry = f"{{user: {_quote(user)}, password: {password}"
    if perms is not None:
        parts = [_subject_list("publish", perms.publish), _subject_list("subscribe", perms.subscribe)]
        if perms.allow_responses:
            parts.append("allow_responses: true")
        entry += f",\n     permissions: {{{', '.join(parts)}}}"
    return entry + "}"


def authorization_config(
    credentials: Mapping[Role, NatsCredentials] | None = None,
    *,
    roles: Iterable[Role] = tuple(Role),
    config_stream: str = subjects.CONFIG_STREAM,
) -> str:
    """The server's ``authorization { users = [...] }`` block: one user per role with its permissions, no
    anonymous user. With ``credentials`` their users and passwords are written literally (a file only its
    owner reads); without, each password is a reference to its environment variable (``password_env``),
    resolved by nats-server when it reads the file, and the users are ``user_name(role)``."""
    entries = []
    for role in roles:
        if credentials is None:
            user, password = user_name(role), f"${password_env(role)}"
        else:
            cred = credentials[role]
            user, password = cred.user, _quote(cred.password)
        entries.append("    " + _user_entry(role, user, password, config_stream))
    return "authorization {\n  users = [\n" + "\n".join(entries) + "\n  ]\n}\n"


# --- clients ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsTls:
    """TLS towards the server: the CA that signed its certificate (default: the system's) and, where the
    server verifies clients, this client's certificate and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
        )
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx


@dataclass(frozen=True, slots=True, repr=False)
class ClientOptions:
    """Everything a NATS client needs from a URL plus ``NatsAuth``: servers without user info (nats-py
    would otherwise add servers it discovers in a cluster without the credentials), who to be, TLS."""

    servers: list[str]
    user: str = ""
    password: str = ""
    token: str = ""
    tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"ClientOptions(servers={self.servers!r}, user={self.user!r}, tls={self.tls is not None})"

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.user) if self.user else "_INBOX"

    def nats_py(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        kwargs: dict[str, Any] = {"servers": self.servers, "inbox_prefix": self.inbox_prefix}
        if self.user:
            kwargs |= {"user": self.user, "password": self.password}
        elif self.token:
            kwargs["token"] = self.token
        if self.tls is not None:
            kwargs["tls"] = self.tls
        return kwargs


@dataclass(frozen=True, slots=True, repr=False)
class NatsAuth:
    """How a process authenticates to NATS. Empty = whatever the URL says (its user info, else anonymous).
    ``repr`` hides the password."""

    user: str = ""
    password: str = ""
    tls: NatsTls | None = field(default=None)

    def __repr__(self) -> str:
        return f"NatsAuth(user={self.user!r}, password={'***' if self.password else ''!r}, tls={self.tls!r})"

    @classmethod
    def of(cls, credentials: NatsCredentials, tls: NatsTls | None = None) -> NatsAuth:
        return cls(credentials.user, credentials.password, tls)

    def environment(self) -> dict[str, str]:
        """The settings variables that make a child process connect like this (see ``vap_common.settings``);
        a child environment should drop any other ``VAP_NATS_*`` it inherited."""
        env = {USER_ENV: self.user, PASSWORD_ENV: self.password} if self.user else {}
        if self.tls is not None:
            for name, path in (
                (TLS_CA_ENV, self.tls.ca_file),
                (TLS_CERT_ENV, self.tls.cert_file),
                (TLS_KEY_ENV, self.tls.key_file),
            ):
                if path is not None:
                    env[name] = str(path)
        return env

    def resolve(self, url: str) -> ClientOptions:
        """The servers of ``url`` without user info, and the credentials to send: this object's user when
        set, else the user info of the first server naming one (``user:password`` or a token)."""
        servers: list[str] = []
        user, password, token = self.user, self.password, ""
        for server in nats_servers(url):
            bare, info_user, info_password = _split_userinfo(server)
            servers.append(bare)
            if not self.user and not (user or token) and info_user:
                if info_password is None:
                    token = info_user
                else:
                    user, password = info_user, info_password
        tls = self.tls.context() if self.tls is not None else None
        return ClientOptions(servers, user, password, token, tls)


def _split_userinfo(server: str) -> tuple[str, str, str | None]:
    """(server without user info, user, password or None)."""
    if "@" not in server:
        return server, "", None
    text = server if "://" in server else f"nats://{server}"
    parts = urlsplit(text)
    hostport = parts.netloc.rsplit("@", 1)[1]
    bare = f"{parts.scheme}://{hostport}{parts.path}"
    password = unquote(parts.password) if parts.password is not None else None
    return bare, unquote(parts.username or ""), password


def strip_credentials(url: str) -> str:
    """``url`` (one server or a comma-separated list) without any user info."""
    return ",".join(_split_userinfo(server)[0] for server in nats_servers(url))


def refusal_message(user: str, error: BaseException | str, *, token: bool = False, where: str = "") -> str:
    """What to say when the server refused a connection's credentials: who, and where they come from."""
    who = "the token of NATS_URL" if token else f"user {user!r}" if user else "an anonymous connection"
    hint = (
        "check VAP_NATS_USER and VAP_NATS_PASSWORD (or VAP_NATS_PASSWORD_FILE, or the user info of NATS_URL)"
        if user or token
        else "the server requires credentials: set VAP_NATS_USER and VAP_NATS_PASSWORD"
    )
    at = f" at {where}" if where else ""
    return f"NATS refused {who}{at} ({str(error).removeprefix('nats: ').strip(chr(39))}); {hint}"


def is_authorization_violation(error: BaseException | str) -> bool:
    """The server refused the connection's credentials (nats-py and vap_framebus report it this way)."""
    text = str(error).lower()
    return "authorization violation" in text or "authentication" in text


def is_permissions_violation(error: BaseException | str) -> bool:
    """The server refused a publish or subscribe of an authenticated connection."""
    return "permissions violation" in str(error).lower()


# --- command line ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vap_common.nats_auth",
        description="NATS users and permissions of VAP's service roles",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser(
        "server-config",
        help="print the nats-server authorization block (passwords as $VAP_NATS_<ROLE>_PASSWORD references)",
    )
    config.add_argument(
        "--credentials", type=Path, help="write these users and passwords literally (nats-credentials.json)"
    )
    config.add_argument("--config-stream", default=subjects.CONFIG_STREAM, help="control's config_stream")
    sub.add_parser("roles", help="print each role's user and password variable")
    args = parser.parse_args(argv)
    if args.command == "roles":
        for role in Role:
            sys.stdout.write(f"{role.value}\t{user_name(role)}\t{password_env(role)}\n")
        return 0
    try:
        creds = load_credentials_file(args.credentials) if args.credentials else None
    except NatsAuthError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    roles = tuple(creds) if creds is not None else tuple(Role)
    sys.stdout.write(
        "# VAP's NATS users, one per service role, and their permissions (vap_common.nats_auth, from\n"
        "# vap_common.subjects). Generated by `python -m vap_common.nats_auth server-config`: do not edit.\n"
        + ("" if creds else "# Each password comes from the environment variable it names (`vap secrets`).\n")
        + authorization_config(creds, roles=roles, config_stream=args.config_stream)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
