"""Are nginx's upstream connections reused? deploy/nginx/scribeai.conf in front of one `scribeai serve` node
(SQLite, TRANSCRIBER=none), then C clients each sending R requests one after another through nginx (REST
`/healthz` and Engine.IO polling handshakes, alternating). Counts the TCP connections nginx opened to the node
(from /proc/net/tcp: every connection with the node's port at one end, TIME_WAIT included) and the request
latency seen by the clients; `--close` runs the site as it was before, sending `Connection: close` upstream.

    .venv/bin/python scripts/bench_upstream.py                     # the site as committed
    .venv/bin/python scripts/bench_upstream.py --close             # the same with Connection: close upstream
    .venv/bin/python scripts/bench_upstream.py --clients 20 --requests 100 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.processes import Processes, free_port, nginx_site, start_nginx  # noqa: E402  (the tests' process helpers)

SECRET = "bench-upstream-secret-0123456789abcdef"


def connections_to(port: int) -> int:
    """TCP connections with `port` at one end, any state but listening (closed ones linger in TIME_WAIT)."""
    peers = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        ends = (int(local.split(":")[1], 16), int(remote.split(":")[1], 16))
        if state != "0A" and port in ends:
            peers.add(ends[1] if ends[0] == port else ends[0])
    return len(peers)


async def client(url: str, requests: int, latencies: list[float]) -> None:
    async with aiohttp.ClientSession() as http:  # one keep-alive connection to nginx per client
        for i in range(requests):
            path = "/healthz" if i % 2 else "/socket.io/?EIO=4&transport=polling"
            started = time.perf_counter()
            async with http.get(url + path) as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"{path}: HTTP {response.status}")
            latencies.append((time.perf_counter() - started) * 1000)


async def run(clients: int, requests: int, close: bool) -> dict[str, Any]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx is not installed (Debian package nginx)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-upstream-"))
    procs = Processes(tmp, {**os.environ, "SCRIBEAI_SECRET": SECRET, "TRANSCRIBER": "none", "DEMO": "off",
                            "RETENTION_SCHEDULE": "off", "LOG_LEVEL": "WARNING", "REDIS_URL": "",
                            "DATA_DIR": str(tmp / "data"), "STORAGE_DIR": str(tmp / "chunks")})
    node, listen = free_port(), free_port()
    try:
        await procs.spawn("serve-a", sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1", "--port",
                          str(node), ready=node, env={"NODE_ID": "serve-a"})
        site = nginx_site(listen, {"serve-a": node})
        if close:
            site = site.replace("    ''      '';", "    ''      close;")
        await start_nginx(procs, nginx, tmp, site, listen)
        before = connections_to(node)  # the readiness probe's
        latencies: list[float] = []
        started = time.perf_counter()
        await asyncio.gather(*(client(f"http://127.0.0.1:{listen}", requests, latencies) for _ in range(clients)))
        wall = time.perf_counter() - started
        latencies.sort()
        return {"connection_header": "close" if close else "(none)", "clients": clients, "requests": len(latencies),
                "upstream_connections": connections_to(node) - before, "requests_per_s": round(len(latencies) / wall, 1),
                "latency_ms_p50": round(statistics.median(latencies), 2),
                "latency_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 2)}
    finally:
        for process in procs.processes:
            if process.returncode is None:
                process.kill()
            await process.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100, help="per client, one after another")
    parser.add_argument("--close", action="store_true", help="send Connection: close upstream (the site before)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = asyncio.run(run(args.clients, args.requests, args.close))
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
