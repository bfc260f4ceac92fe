"""Versioned schema migrations: applied once, in order, even when two control instances start together."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from vap_control.db.migrate import available, migrate
from vap_control.testing import drop_database, fresh_database

pytestmark = pytest.mark.integration


async def test_concurrent_migrators_apply_each_version_once(database_url: str) -> None:
    url = fresh_database(database_url)
    try:
        results = await asyncio.gather(*(migrate(url) for _ in range(3)))
        versions = [m.version for m in available()]
        # The advisory lock serialises them: exactly one applied everything, the others found nothing to do.
        assert sorted(results, key=len) == [[], [], versions]
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
            assert [r[0] for r in rows] == versions
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                ).fetchall()
            }
        assert {
            "scenarios",
            "outbox",
            "workers",
            "agents",
            "frames",
            "detections",
            "tracks",
            "events",
            "counts",
        } <= tables
        assert await migrate(url) == []  # idempotent at every later start
    finally:
        drop_database(database_url, url)
