"""PostgreSQL housekeeping for the benchmarks (a helper they import, not a benchmark): a database of their own,
dropped afterwards."""

from __future__ import annotations

import uuid


async def admin_sql(url: str, sql: str) -> None:
    """Run one statement with asyncpg on the server of `url` (an asyncpg SQLAlchemy URL is fine)."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(url: str, prefix: str) -> str:
    """A fresh database beside the one in `url`; the same URL pointing at it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await admin_sql(url, f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"


async def drop_database(url: str, database_url: str) -> None:
    await admin_sql(url, f'DROP DATABASE IF EXISTS "{database_url.rsplit("/", 1)[1]}" WITH (FORCE)')
