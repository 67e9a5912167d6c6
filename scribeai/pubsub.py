"""The Redis channel the Socket.IO nodes and the workers of one deployment share (REDIS_URL, REDIS_CHANNEL)."""

from __future__ import annotations

import asyncio

from scribeai.errors import StartupCheckFailed
from scribeai.settings import redacted

CHECK_TIMEOUT_S = 5


async def check_redis(url: str) -> None:
    """At start (serve and worker): a Redis that does not answer a PING is one line (StartupCheckFailed), not a node
    that looks ready while every publish to the rooms fails."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        await asyncio.wait_for(client.ping(), CHECK_TIMEOUT_S)
    except Exception as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise StartupCheckFailed(f"cannot reach REDIS_URL {redacted(url)}: {detail}", reason="redis_unavailable") from exc
    finally:
        await client.aclose()
