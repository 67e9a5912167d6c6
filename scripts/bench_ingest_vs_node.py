"""ScribeAI against a minimal Node.js socket.io 4.8 server doing the same durable work, one Node.js client.

    npm ci --prefix benchmarks/ingest      # once
    .venv/bin/python scripts/bench_ingest_vs_node.py --rounds 4 \
        --load 20x50x250000 --load 100x10x250000 --load 1x200x250000 [--json-out report.json]

A load is RECORDERSxCHUNKSxBYTES[xWINDOW] (window 1 unless given). For every load and round, each server
(`scribeai serve` with TRANSCRIBER=none on SQLite; `node benchmarks/ingest/server.mjs`) is started in turn
on a free port with a fresh temporary data directory, the same load generator
(`benchmarks/ingest/loadgen.mjs`, socket.io-client 4.8, websocket) runs against it, and the server is
stopped; the order of the two servers alternates from round to round, so both see the same background
noise. After each run the storage is checked: one file of the right size per acked chunk, and one row
(ScribeAI) or index line (Node) per chunk. Per run: chunks/s, MB/s, ack p50/p95/p99/max, the server's CPU
seconds and peak RSS (VmHWM), the load average. Then per load: best-of and median for each server, and
the ratios ScribeAI / Node (chunks/s: above 1 is better; ack p99: below 1 is better).

Prints a table and one JSON line (also written to --json-out). Exit status 1 when a chunk went unacked or
a stored-chunk check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks" / "ingest"
SERVERS = ("scribeai", "node", "scribeai-base")  # scribeai-base: another checkout (--base-tree), for before/after
DEFAULT_LOADS = ("20x50x250000", "100x10x250000", "1x200x250000")


@dataclass(frozen=True)
class Load:
    recorders: int
    chunks: int
    bytes: int
    window: int = 1

    @classmethod
    def parse(cls, text: str) -> Load:
        match = re.fullmatch(r"(\d+)x(\d+)x(\d+)(?:x(\d+))?", text.strip())
        if not match:
            raise argparse.ArgumentTypeError(f"expected RECORDERSxCHUNKSxBYTES[xWINDOW], got {text!r}")
        values = [int(v) for v in match.groups() if v is not None]
        if min(values) < 1:
            raise argparse.ArgumentTypeError(f"every number of {text!r} must be >= 1")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.recorders}x{self.chunks}x{self.bytes}, window {self.window}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpuModel": model, "python": sys.version.split()[0],
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()}


class _ExitedEarly(RuntimeError):
    """The server process ended before it answered /healthz."""


class ServerRun:
    """One server process on a fresh directory: started, measured, stopped, its storage checked."""

    def __init__(self, kind: str, workdir: Path, secret: str, args: argparse.Namespace) -> None:
        self.kind = kind
        self.workdir = workdir
        self.secret = secret
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.storage = workdir / "chunks"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PORT", "STORAGE_DIR")}
        if self.kind == "node":
            cmd = ["node", str(BENCH_DIR / "server.mjs"), "--port", str(self.port), "--storage", str(self.storage),
                   "--secret", self.secret]
            return cmd + (["--fsync-dir"] if self.args.node_fsync_dir else []), env
        env.update(DATA_DIR=str(self.workdir / "data"), STORAGE_DIR=str(self.storage),
                   ARCHIVE_STORAGE_PATH=str(self.workdir / "archives"), SCRIBEAI_SECRET=self.secret,
                   SCRIBEAI_AUTH="jwt", TRANSCRIBER="none", HOST="127.0.0.1", RETENTION_SCHEDULE="off",
                   PYTHONUNBUFFERED="1")
        if self.kind == "scribeai-base":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.args.base_tree, env.get("PYTHONPATH")]))
        for item in self.args.scribeai_env:
            key, _, value = item.partition("=")
            env[key] = value
        return [self.args.python, "-m", "scribeai", "serve", "--port", str(self.port)], env

    def start(self, timeout_s: float = 60.0, attempts: int = 3) -> None:
        """Start and wait for /healthz; a server that exits at once (its free port taken meanwhile by another
        process on a shared machine) is started again on another port."""
        for attempt in range(attempts):
            try:
                self._start_once(timeout_s)
                return
            except _ExitedEarly:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"

    def _start_once(self, timeout_s: float) -> None:
        cmd, env = self.command()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise _ExitedEarly(f"{self.kind} server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} server did not answer /healthz within {timeout_s:g} s:\n{self.log()}")

    def cpu_s(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server so far."""
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user), float(times.system)

    def context_switches(self) -> int:
        """Voluntary + involuntary context switches of all the server's threads so far (Linux /proc; 0 elsewhere).

        Each thread hand-off or contended lock (the GIL, a pool's queue) costs a switch: a count that the
        machine's noise moves far less than it moves wall-clock rates."""
        assert self.proc is not None
        total = 0
        for status in Path(f"/proc/{self.proc.pid}/task").glob("*/status"):
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        return total

    def peak_rss_mb(self) -> float | None:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 1e6, 1)
        return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stored(self, session_ids: list[str], size: int) -> dict[str, Any]:
        """Chunk files of the right size, and records (rows or index lines), of this run's sessions."""
        files = [p for sid in session_ids for p in (self.storage / sid).glob(f"{sid}_*") if not p.name.startswith(".")]
        right_size = sum(1 for p in files if p.stat().st_size == size)
        temporaries = sum(1 for sid in session_ids for _ in (self.storage / sid).glob(".*.tmp"))
        wanted = set(session_ids)
        if self.kind == "node":
            lines = (self.storage / "index.jsonl").read_text().splitlines()
            keys = {(r["sessionId"], r["seq"]) for r in map(json.loads, lines) if r["sessionId"] in wanted}
            records = len(keys)
        else:
            with contextlib.closing(sqlite3.connect(self.workdir / "data" / "scribeai.db")) as db:
                marks = ",".join("?" * len(session_ids))
                records = int(db.execute(f"SELECT count(*) FROM chunk WHERE session_id IN ({marks}) AND size = ?",
                                         [*session_ids, size]).fetchone()[0])
        return {"files": len(files), "filesOfSize": right_size, "records": records, "temporaries": temporaries}


def run_once(kind: str, load: Load, round_no: int, secret: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-ingest-{kind}-", dir=args.tmp_dir))
    server = ServerRun(kind, workdir, secret, args)
    try:
        server.start()
        load_before = os.getloadavg()
        cpu0, switches0 = server.cpu_s(), server.context_switches()
        cmd = ["node", str(BENCH_DIR / "loadgen.mjs"), "--url", server.url, "--token", token,
               "--recorders", str(load.recorders), "--chunks", str(load.chunks), "--bytes", str(load.bytes),
               "--window", str(load.window), "--transport", "websocket", "--ack-timeout", str(args.ack_timeout_ms)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout)
        if not out.stdout.strip():
            raise RuntimeError(f"load generator failed ({out.returncode}):\n{out.stderr[-3000:]}\n{server.log()}")
        report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        cpu1, switches1 = server.cpu_s(), server.context_switches()
        report["serverCtxSwitches"] = switches1 - switches0
        report["serverCpuS"] = round(sum(cpu1) - sum(cpu0), 2)
        report["serverCpuSystemS"] = round(cpu1[1] - cpu0[1], 2)
        report["serverPeakRssMb"] = server.peak_rss_mb()
        report["loadAvg1"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
        server.stop()
        report["stored"] = server.stored(report["sessionIds"], load.bytes)
        expected = load.recorders * load.chunks
        stored = report["stored"]
        report["storedOk"] = (report["chunksAcked"] == expected and stored["files"] == expected
                              and stored["filesOfSize"] == expected and stored["records"] == expected)
        report.update(server=kind, round=round_no)
        del report["sessionIds"]
        return report
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        settle(args.settle_s)


def settle(seconds: float) -> None:
    """Let the last run's aftermath pass before the next server starts: its freed blocks (a filesystem mounted
    with `discard` trims them in the journal commit that the next run's first fsyncs would wait for), its
    dirty pages, the kernel threads writing them back."""
    if seconds > 0:
        os.sync()
        time.sleep(seconds)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for kind in SERVERS:
        mine = [r for r in runs if r["server"] == kind]
        if not mine:
            continue
        rates = [r["chunksPerS"] for r in mine if r["chunksPerS"] is not None]
        p99s = [r["ackMs"]["p99"] for r in mine if r["ackMs"]["p99"] is not None]
        rss = [r["serverPeakRssMb"] for r in mine if r["serverPeakRssMb"] is not None]
        cpu = [1000 * r["serverCpuS"] / r["chunksAcked"] for r in mine if r["chunksAcked"]]
        switches = [r["serverCtxSwitches"] / r["chunksAcked"] for r in mine if r["chunksAcked"]]
        per[kind] = {
            "chunksPerS": {"best": max(rates, default=None), "median": _median(rates)},
            "ackP99Ms": {"best": min(p99s, default=None), "median": _median(p99s)},
            "peakRssMb": {"max": max(rss, default=None), "median": _median(rss)},
            "cpuSPer1000Chunks": {"median": _median(cpu)},
            "ctxSwitchesPerChunk": {"median": _median(switches)},
        }
    ratio: dict[str, Any] = {}
    if {"scribeai", "node"} <= set(per):
        ratio = _ratio(per["scribeai"], per["node"])
    ratio_base = _ratio(per["scribeai-base"], per["node"]) if {"scribeai-base", "node"} <= set(per) else {}
    return {"servers": per, "ratio": ratio, **({"ratioBase": ratio_base} if ratio_base else {})}


def _ratio(s: dict[str, Any], n: dict[str, Any]) -> dict[str, Any]:
    """ScribeAI over Node: chunks/s (>= 1 is better) and ack p99 (<= 1 is better), best-of and median."""

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    ratio: dict[str, Any] = {"chunksPerS": {k: div(s["chunksPerS"][k], n["chunksPerS"][k]) for k in ("best", "median")},
                             "ackP99": {k: div(s["ackP99Ms"][k], n["ackP99Ms"][k]) for k in ("best", "median")}}
    ratio["bar"] = bool(ratio["chunksPerS"]["best"] is not None and ratio["chunksPerS"]["best"] >= 1.0
                        and ratio["ackP99"]["best"] is not None and ratio["ackP99"]["best"] <= 1.0)
    return ratio


def table(load: Load, runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [f"== {load}", f"{'round':>5} {'server':<13} {'chunks/s':>9} {'MB/s':>7} {'p50':>7} {'p95':>7} {'p99':>7} "
             f"{'max':>7} {'cpu s':>6} {'RSS MB':>7} {'load':>11} stored"]
    for r in runs:
        a = r["ackMs"]
        lines.append(f"{r['round']:>5} {r['server']:<13} {r['chunksPerS']:>9} {r['mbPerS']:>7} {a['p50']:>7} {a['p95']:>7} "
                     f"{a['p99']:>7} {a['max']:>7} {r['serverCpuS']:>6} {r['serverPeakRssMb']!s:>7} "
                     f"{r['loadAvg1'][0]:>5}-{r['loadAvg1'][1]:<5} {'ok' if r['storedOk'] else 'FAILED'} "
                     f"{'' if not r['errors'] else r['errors']}")
    for kind, s in summary["servers"].items():
        lines.append(f"{kind:<13} chunks/s best {s['chunksPerS']['best']} median {s['chunksPerS']['median']}; "
                     f"ack p99 best {s['ackP99Ms']['best']} median {s['ackP99Ms']['median']} ms; "
                     f"peak RSS max {s['peakRssMb']['max']} MB; CPU {s['cpuSPer1000Chunks']['median']} s per 1000 chunks; "
                     f"{s['ctxSwitchesPerChunk']['median']} context switches per chunk")
    for label, key in (("ScribeAI / Node", "ratio"), ("ScribeAI base / Node", "ratioBase")):
        ratio = summary.get(key)
        if ratio:
            lines.append(f"{label}: chunks/s best {ratio['chunksPerS']['best']} median {ratio['chunksPerS']['median']}"
                         f" (>= 1 is better); ack p99 best {ratio['ackP99']['best']} median {ratio['ackP99']['median']}"
                         f" (<= 1 is better); bar {'MET' if ratio['bar'] else 'NOT MET'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", type=Load.parse, action="append", help=f"RxCxB[xW]; repeatable (default {', '.join(DEFAULT_LOADS)})")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per load")
    p.add_argument("--servers", default="scribeai,node", help="comma-separated: scribeai, node, scribeai-base")
    p.add_argument("--base-tree", help="for scribeai-base: a directory holding another version's scribeai/ package "
                                       "(e.g. `git archive <commit> scribeai | tar -x -C DIR`), put first on PYTHONPATH")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs `-m scribeai serve`")
    p.add_argument("--scribeai-env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for ScribeAI")
    p.add_argument("--node-fsync-dir", action="store_true", help="the Node server also fsyncs the directory after the rename")
    p.add_argument("--ack-timeout-ms", type=int, default=30000)
    p.add_argument("--run-timeout", type=float, default=600.0, help="seconds one load generator run may take")
    p.add_argument("--tmp-dir", help="parent of the per-run data directories (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep each run's data directory")
    p.add_argument("--settle-s", type=float, default=2.0,
                   help="after each run: sync, then wait this long before the next server starts (0: no pause)")
    p.add_argument("--json-out", help="also write the JSON report to this file")
    args = p.parse_args(argv)
    args.load = args.load or [Load.parse(x) for x in DEFAULT_LOADS]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.servers or any(s not in SERVERS for s in args.servers):
        p.error("--servers takes scribeai, node and/or scribeai-base")
    if "scribeai-base" in args.servers and not args.base_tree:
        p.error("scribeai-base needs --base-tree")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (BENCH_DIR / "node_modules" / "socket.io" / "package.json").exists():
        print(f"{BENCH_DIR / 'node_modules'} is missing: run `npm ci --prefix benchmarks/ingest`", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from scribeai.auth import create_token

    secret = secrets.token_urlsafe(32)
    token = create_token(secret, "bench")
    report: dict[str, Any] = {"machine": machine(), "rounds": args.rounds, "loads": []}
    ok = True
    for load in args.load:
        runs = []
        for round_no in range(1, args.rounds + 1):
            order = args.servers if round_no % 2 else list(reversed(args.servers))
            for kind in order:
                run = run_once(kind, load, round_no, secret, token, args)
                print(f"  round {round_no} {kind}: {run['chunksPerS']} chunks/s, p99 {run['ackMs']['p99']} ms",
                      file=sys.stderr, flush=True)
                ok = ok and run["storedOk"] and run["unacked"] == 0
                runs.append(run)
        summary = summarize(runs)
        print(table(load, runs, summary), flush=True)
        report["loads"].append({"load": vars(load), "runs": runs, **summary})
    line = json.dumps(report, sort_keys=True)
    print(line)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
