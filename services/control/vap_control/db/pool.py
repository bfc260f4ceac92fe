"""The control service's PostgreSQL connection pool (psycopg 3, async)."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]


async def open_pool(dsn: str, *, min_size: int, max_size: int, name: str = "vap-control") -> Pool:
    """Open a pool and wait until its first connections work, so a wrong DSN fails the start loudly."""
    pool: Pool = AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        # application_name shows in pg_stat_activity; short statement timeouts are set per query where needed.
        kwargs={"application_name": name, "autocommit": False},
        # A connection broken by a PostgreSQL restart is replaced instead of failing the next request.
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=True, timeout=30.0)
    return pool
