"""``vap secrets ENV_FILE``: the env file docker-compose takes its secrets from, made or completed.

docker-compose.yml names every secret as a required variable (``${NAME:?...}``): the control API token, the
camera key, the PostgreSQL and Grafana passwords, one NATS password per service role
(vap_common.nats_auth.password_env) and the NATS cluster's route password. This writes each missing one as
a random value into the file (mode 0600; values already there are kept, other lines untouched), so

    vap secrets .env && docker compose up -d

starts a deployment in which nothing works without them. ``deploy/compose.env.example`` lists the same names.
On the hosts of a multi-host deployment each service needs only its own line (``VAP_NATS_USER`` is fixed per
role, see README "Security").
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Final

from vap_common.camera_secrets import generate_key
from vap_common.nats_auth import Role, new_password, password_env, write_private_file

API_TOKEN: Final = "VAP_API_TOKEN"  # noqa: S105 - a variable name
CAMERA_KEYS: Final = (
    "VAP_CAMERA_KEYS"  # the Fernet key camera URLs are sealed with (vap_common.camera_secrets)
)
ROUTE_PASSWORD: Final = "VAP_NATS_ROUTE_PASSWORD"  # noqa: S105 - a variable name

# Every secret docker-compose.yml requires, in the order the env file lists them.
COMPOSE_SECRETS: Final = (
    API_TOKEN,
    CAMERA_KEYS,
    "VAP_POSTGRES_PASSWORD",
    "VAP_GRAFANA_PASSWORD",
    *(password_env(role) for role in Role),
    ROUTE_PASSWORD,
)

_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines of an env file (comments and blank lines skipped; quotes around a value removed)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if m := _ASSIGNMENT.match(line):
            value = m[2]
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[m[1]] = value
    return values


def complete_env_file(path: Path, names: tuple[str, ...] = COMPOSE_SECRETS) -> list[str]:
    """Add a random value for each of ``names`` that ``path`` lacks (or has empty); returns the names added.
    The file ends up with mode 0600 whether or not anything was added."""
    text = path.read_text() if path.exists() else ""
    present = {name for name, value in read_env_file(path).items() if value} if path.exists() else set()
    added = [name for name in names if name not in present]
    lines = (
        [text.rstrip("\n")]
        if text.strip()
        else ["# Secrets of VAP's docker-compose deployment (vap secrets)."]
    )
    # An empty assignment left in the file would be read after ours: drop it.
    lines = [line for line in "\n".join(lines).splitlines() if not _empty_assignment(line, added)]
    for name in added:
        if name == API_TOKEN:
            value = secrets.token_urlsafe(32)
        elif name == CAMERA_KEYS:
            value = generate_key()
        else:
            value = new_password()
        lines.append(f"{name}={value}")
    write_private_file(path, "\n".join(lines) + "\n")
    return added


def _empty_assignment(line: str, names: list[str]) -> bool:
    m = _ASSIGNMENT.match(line)
    return bool(m and m[1] in names and m[2] in ("", "''", '""'))
