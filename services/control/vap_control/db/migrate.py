"""Apply the versioned migrations under ``vap_control/db/migrations`` (``NNNN_name.sql``), in order, once.

A ``schema_migrations`` table records what was applied. A session-level advisory lock serialises migrators,
so two control instances starting together cannot race; the second one waits and then finds nothing to do.
Each migration runs in its own transaction together with its ``schema_migrations`` row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from psycopg import AsyncConnection

from vap_common.logs import get_logger

_log = get_logger("vap.control.migrate")

# Any fixed 64-bit number unique to this purpose ("vapctrl" in ASCII).
ADVISORY_LOCK_ID = 0x76617063747266
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with this package, by version; duplicate versions are a packaging bug."""
    found: dict[int, Migration] = {}
    for entry in resources.files("vap_control.db.migrations").iterdir():
        match = _NAME_RE.match(entry.name)
        if match is None:
            continue
        version = int(match[1])
        if version in found:
            raise RuntimeError(f"two migrations with version {version}: {found[version].name}, {match[2]}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def migrate(dsn: str) -> list[int]:
    """Bring the database at ``dsn`` up to date; returns the versions applied now."""
    applied_now: list[int] = []
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_ID,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for migration in available():
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied_now.append(migration.version)
                _log.info("applied migration", version=migration.version, name=migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_ID,))
    return applied_now
