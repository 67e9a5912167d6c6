#!/usr/bin/env python3
"""Ingest through nginx with one and with two `scribeai serve` processes (issue "Scale out").

Each run: a fresh PostgreSQL database, Redis, N `scribeai serve` processes (TRANSCRIBER=none: ingest only),
nginx with deploy/nginx/scribeai.conf in front, and the Node.js load generator (benchmarks/ingest/loadgen.mjs,
socket.io-client 4.8) through nginx. All load comes from one address, so `hash $remote_addr` would send it all
to one node: runs over websocket use the websocket-only variant of the site (`least_conn`, no stickiness needed,
see docs/deployment.md); a polling run keeps the sticky hash and so measures one node whatever N is.
Serve counts alternate within each round. Prints a table and the two-to-one ratio; --json-out keeps every run.

    .venv/bin/python scripts/bench_topology.py --serve 1 --serve 2 --load 20x50x250000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "benchmarks" / "ingest" / "loadgen.mjs"
SECRET = "bench-topology-secret-0123456789abcdef"

from pg_scratch import create_database, drop_database  # noqa: E402  (scripts/pg_scratch.py, beside this script)

sys.path.insert(0, str(ROOT))
from tests.processes import SITE_NODES, nginx_site  # noqa: E402  (deploy/nginx/scribeai.conf, filled in)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_port(port: int, process: asyncio.subprocess.Process, name: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise SystemExit(f"{name} exited:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"{name} did not listen on {port}")


async def run_once(serves: int, load: str, transport: str, postgres: str, redis: str, nginx: str) -> dict[str, Any]:
    recorders, chunks, size = load.split("x")
    database = await create_database(postgres, "bench_topology")
    name = database.rsplit("/", 1)[1]
    tmp = Path(tempfile.mkdtemp(prefix="bench-topology-"))
    processes: list[asyncio.subprocess.Process] = []
    env = {**os.environ, "DATABASE_URL": database, "STORAGE_DIR": str(tmp / "chunks"),
           "DATA_DIR": str(tmp / "data"), "REDIS_URL": redis, "REDIS_CHANNEL": f"bench-{name}", "SCRIBEAI_SECRET": SECRET,
           "TRANSCRIBER": "none", "MAX_CONCURRENCY": "0", "RETENTION_SCHEDULE": "off", "DEMO": "off", "LOG_LEVEL": "WARNING"}
    if not 1 <= serves <= len(SITE_NODES):
        raise SystemExit(f"--serve takes 1 or {len(SITE_NODES)}: the site names {len(SITE_NODES)} nodes")
    try:
        ports = []
        for i in range(serves):
            port = free_port()
            log = tmp / f"serve-{i}.log"
            with open(log, "wb") as out:
                p = await asyncio.create_subprocess_exec(sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1",
                                                         "--port", str(port), env={**env, "NODE_ID": SITE_NODES[i]},
                                                         cwd=ROOT, stdout=out, stderr=out)
            processes.append(p)
            await wait_port(port, p, f"serve-{i}", log)
            ports.append(port)
        listen = free_port()
        site = nginx_site(listen, dict(zip(NODES, ports)))
        if transport == "websocket":  # websocket-only: no stickiness needed, spread the connections
            site = site.replace("hash $remote_addr consistent;", "least_conn;")
        (tmp / "site.conf").write_text(site)
        (tmp / "temp").mkdir()
        (tmp / "nginx.conf").write_text(
            f"worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/nginx-error.log warn;\n"
            + ("user root;\n" if os.geteuid() == 0 else "")
            + "events { worker_connections 4096; }\nhttp {\n  access_log off;\n"
            + "".join(f"  {k}_temp_path {tmp}/temp/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  include {tmp}/site.conf;\n}}\n")
        log = tmp / "nginx.log"
        with open(log, "wb") as out:
            p = await asyncio.create_subprocess_exec(nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp), stdout=out, stderr=out)
        processes.append(p)
        await wait_port(listen, p, "nginx", log)
        gen = await asyncio.create_subprocess_exec(
            "node", str(LOADGEN), "--url", f"http://127.0.0.1:{listen}", "--secret", SECRET, "--recorders", recorders,
            "--chunks", chunks, "--bytes", size, "--window", "1", "--transport", transport,
            cwd=LOADGEN.parent, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out_b, err_b = await asyncio.wait_for(gen.communicate(), 900)
        if gen.returncode != 0:
            raise SystemExit(f"loadgen failed ({gen.returncode}):\n{err_b.decode()[-3000:]}")
        report: dict[str, Any] = json.loads(out_b.decode().strip().splitlines()[-1])
        return report
    finally:
        for p in processes:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        await drop_database(postgres, database)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", type=int, action="append", help="serve processes per run; repeatable (default 1 and 2)")
    p.add_argument("--load", default="20x50x250000", help="RECORDERSxCHUNKSxBYTES (window 1)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--transport", default="websocket", choices=["websocket", "polling"])
    p.add_argument("--postgres", default=os.environ.get("SCRIBEAI_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--json-out")
    args = p.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx is not installed (Debian package nginx)")
    if not (LOADGEN.parent / "node_modules").exists():
        raise SystemExit(f"run `npm ci --prefix {LOADGEN.parent}` first")
    counts = args.serve or [1, 2]
    runs: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        for serves in counts:
            report = await run_once(serves, args.load, args.transport, args.postgres, args.redis, nginx)
            row = {"round": round_no + 1, "serves": serves, "chunksPerS": float(report["chunksPerS"]),
                   "ackP50Ms": float(report["ackMs"]["p50"]), "ackP99Ms": float(report["ackMs"]["p99"]),
                   "unacked": report["unacked"], "errors": report["errors"], "report": report}
            runs.append(row)
            print(f"round {row['round']} serve×{serves}: {row['chunksPerS']:.1f} chunks/s, ack p50 {row['ackP50Ms']:.1f} ms, "
                  f"p99 {row['ackP99Ms']:.1f} ms, unacked {row['unacked']}, errors {row['errors']}", flush=True)
    print(f"\nload {args.load} over {args.transport}, {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    print("| serve processes | chunks/s (median, best) | ack p99 ms (median, best) |\n| --- | --- | --- |")
    best: dict[int, float] = {}
    for serves in counts:
        rows = [r for r in runs if r["serves"] == serves]
        rates, p99s = [r["chunksPerS"] for r in rows], [r["ackP99Ms"] for r in rows]
        best[serves] = max(rates)
        print(f"| {serves} | {statistics.median(rates):.1f}, {max(rates):.1f} | {statistics.median(p99s):.1f}, {min(p99s):.1f} |")
    if len(counts) == 2:
        a, b = counts
        print(f"\nchunks/s ratio serve×{b} / serve×{a} (best of rounds): {best[b] / best[a]:.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
