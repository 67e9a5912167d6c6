"""Ingest benchmark: N recorders x C chunks x B bytes against a running ScribeAI server.

    .venv/bin/python scripts/bench_ingest.py --url http://127.0.0.1:3001 --secret "$SCRIBEAI_SECRET" \
        --recorders 20 --chunks 50 --bytes 250000 --window 1 --server-pid "$(pgrep -n -f 'scribeai serve')"

Each recorder is one python-socketio AsyncClient on its own session (ids unique per run) that
sends `audio-chunk` with an ack callback, keeping at most `--window` chunks in flight. Ack latency
is measured from just before `emit` to the ack callback. A chunk refused with `overloaded` is resent
after its `retryAfterMs` (as a recorder would); every error is counted by its code. With
`--server-pid`, the server's RSS is sampled (peak) and its CPU time measured through psutil.

Prints a table and one JSON line (also written to `--json-out`). Exit status 1 when any chunk
ended without an ack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil
import socketio


@dataclass
class RecorderResult:
    acked: int = 0
    duplicates: int = 0
    bytes_acked: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    trace: list[tuple[int, float, float]] = field(default_factory=list)  # (seq, sent at s, latency ms)
    errors: Counter[str] = field(default_factory=Counter)
    unacked: int = 0
    resends: int = 0


@dataclass
class ProcessSampler:
    """Peak RSS and CPU seconds of one process while the run lasts."""

    pid: int | None
    interval_s: float = 0.05
    peak_rss: int = 0
    start_rss: int = 0
    end_rss: int = 0
    cpu_s: float = 0.0
    _cpu0: float = 0.0
    _task: asyncio.Task[None] | None = None

    def _rss(self, proc: psutil.Process) -> int:
        rss = int(proc.memory_info().rss)
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def start(self) -> None:
        if self.pid is None:
            return
        proc = psutil.Process(self.pid)
        self.start_rss = self._rss(proc)
        times = proc.cpu_times()
        self._cpu0 = times.user + times.system
        self._task = asyncio.get_running_loop().create_task(self._run(proc))

    async def _run(self, proc: psutil.Process) -> None:
        while True:
            try:
                self._rss(proc)
            except psutil.Error:
                return
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is None or self.pid is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        try:
            proc = psutil.Process(self.pid)
            self.end_rss = self._rss(proc)
            times = proc.cpu_times()
            self.cpu_s = times.user + times.system - self._cpu0
        except psutil.Error:
            pass


def _busy_cpu_s(times: Any) -> float:
    # guest time is already inside user time on Linux, so only these fields add up to "busy"
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    return sum(getattr(times, f, 0.0) for f in fields)


def mint_token(secret: str, user: str) -> str:
    import jwt

    return jwt.encode({"sub": user, "iat": int(time.time())}, secret, algorithm="HS256")


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Recorder:
    def __init__(self, args: argparse.Namespace, index: int, session_id: str, token: str, start: asyncio.Event) -> None:
        self.args = args
        self.index = index
        self.session_id = session_id
        self.token = token
        self.start = start
        self.result = RecorderResult()
        extra = {"compress": 15} if args.deflate else None
        self.client = socketio.AsyncClient(reconnection=False, websocket_extra_options=extra)
        self.base = os.urandom(args.bytes)

    async def connect(self) -> None:
        await self.client.connect(self.args.url, auth={"token": self.token}, transports=[self.args.transport],
                                  namespaces=[self.args.namespace], wait_timeout=self.args.connect_timeout)

    def payload(self, seq: int) -> dict[str, Any]:
        audio = seq.to_bytes(8, "big") + self.base[8:]  # distinct bytes per chunk, cheap to make
        return {"sessionId": self.session_id, "sequence": seq, "timestamp": 1_700_000_000_000 + seq * 1000,
                "mimeType": "audio/webm;codecs=opus", "size": len(audio), "audio": audio}

    async def send(self, seq: int) -> None:
        loop = asyncio.get_running_loop()
        payload = self.payload(seq)
        attempts = 0
        while True:
            reply_box: asyncio.Future[Any] = loop.create_future()

            def on_ack(*data: Any, box: asyncio.Future[Any] = reply_box) -> None:
                if not box.done():
                    box.set_result(data[0] if data else None)

            t0 = time.perf_counter()
            try:
                await self.client.emit("audio-chunk", payload, namespace=self.args.namespace, callback=on_ack)
                reply = await asyncio.wait_for(reply_box, self.args.ack_timeout)
            except TimeoutError:
                self.result.errors["timeout"] += 1
                self.result.unacked += 1
                return
            except socketio.exceptions.SocketIOError as exc:
                self.result.errors[f"client:{type(exc).__name__}"] += 1
                self.result.unacked += 1
                return
            latency_ms = (time.perf_counter() - t0) * 1000
            if isinstance(reply, dict) and "error" in reply:
                code = str(reply["error"].get("code", "?"))
                self.result.errors[code] += 1
                if code == "overloaded" and attempts < self.args.max_resends:
                    attempts += 1
                    self.result.resends += 1
                    await asyncio.sleep(float(reply["error"].get("retryAfterMs", 1000)) / 1000)
                    continue
                self.result.unacked += 1
                return
            if not isinstance(reply, dict) or reply.get("sequence") != seq:
                self.result.errors["bad_ack"] += 1
                self.result.unacked += 1
                return
            self.result.acked += 1
            self.result.duplicates += bool(reply.get("duplicate"))
            self.result.bytes_acked += len(payload["audio"])
            self.result.latencies_ms.append(latency_ms)
            self.result.trace.append((seq, t0, latency_ms))
            return

    async def run(self) -> None:
        await self.start.wait()
        window = asyncio.Semaphore(self.args.window)
        tasks: list[asyncio.Task[None]] = []

        async def one(seq: int) -> None:
            try:
                await self.send(seq)
            finally:
                window.release()

        for seq in range(self.args.chunks):
            await window.acquire()
            if not self.client.connected:
                window.release()
                self.result.errors["disconnected"] += self.args.chunks - seq
                self.result.unacked += self.args.chunks - seq
                break
            tasks.append(asyncio.create_task(one(seq)))
        await asyncio.gather(*tasks)

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    start = asyncio.Event()
    tokens: dict[str, str] = {}

    def token_for(i: int) -> str:
        if args.token:
            return str(args.token)
        user = f"{args.user}{i % args.users}" if args.users > 1 else args.user
        if user not in tokens:
            tokens[user] = mint_token(args.secret, user)
        return tokens[user]

    recorders = [Recorder(args, i, f"bench-{run_id}-{i:03d}", token_for(i), start) for i in range(args.recorders)]
    connect_errors: Counter[str] = Counter()
    results = await asyncio.gather(*(r.connect() for r in recorders), return_exceptions=True)
    live = []
    for recorder, outcome in zip(recorders, results):
        if isinstance(outcome, BaseException):
            connect_errors[f"connect:{type(outcome).__name__}"] += 1
            recorder.result.unacked = args.chunks
        else:
            live.append(recorder)

    # What the websocket handshake agreed on (0: no permessage-deflate), as seen by the first live client.
    ws = getattr(live[0].client.eio, "ws", None) if live else None
    negotiated = getattr(ws, "compress", None) if args.transport == "websocket" else None
    server = ProcessSampler(args.server_pid)
    me = psutil.Process()
    client_cpu0 = sum(me.cpu_times()[:2])
    system0 = psutil.cpu_times()
    load_before = os.getloadavg()[0]
    server.start()
    tasks = [asyncio.create_task(r.run()) for r in live]
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    await server.stop()
    client_cpu = sum(me.cpu_times()[:2]) - client_cpu0
    system1 = psutil.cpu_times()
    # CPU seconds used by every process on the machine: what is neither server nor client competed with them.
    system_busy = _busy_cpu_s(system1) - _busy_cpu_s(system0)
    await asyncio.gather(*(r.close() for r in recorders), return_exceptions=True)

    if args.trace_out:
        with open(args.trace_out, "w") as f:
            f.write("recorder,seq,sent_ms,ack_ms\n")
            for r in recorders:
                for seq, sent, lat in r.result.trace:
                    f.write(f"{r.index},{seq},{(sent - t0) * 1000:.1f},{lat:.2f}\n")
    latencies = sorted(x for r in recorders for x in r.result.latencies_ms)
    # The first chunk of each recorder also creates its session; all recorders start together, so
    # those creations queue behind each other: report the rest too, labelled as such.
    steady = sorted(lat for r in recorders for seq, _, lat in r.result.trace if seq > 0)
    errors: Counter[str] = Counter(connect_errors)
    for r in recorders:
        errors.update(r.result.errors)
    acked = sum(r.result.acked for r in recorders)
    mb = sum(r.result.bytes_acked for r in recorders) / 1e6

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "runId": run_id,
        "url": args.url,
        "transport": args.transport,
        "namespace": args.namespace,
        "deflate": bool(args.deflate),
        "deflateNegotiated": negotiated,
        "recorders": args.recorders,
        "chunksPerRecorder": args.chunks,
        "bytesPerChunk": args.bytes,
        "window": args.window,
        "chunksSent": args.recorders * args.chunks,
        "chunksAcked": acked,
        "duplicates": sum(r.result.duplicates for r in recorders),
        "unacked": sum(r.result.unacked for r in recorders),
        "resends": sum(r.result.resends for r in recorders),
        "wallS": round(wall, 3),
        "chunksPerS": round(acked / wall, 1) if wall > 0 else None,
        "mbPerS": round(mb / wall, 2) if wall > 0 else None,
        "ackMs": {"p50": ms(percentile(latencies, 50)), "p95": ms(percentile(latencies, 95)),
                  "p99": ms(percentile(latencies, 99)), "max": ms(latencies[-1] if latencies else None),
                  "mean": ms(sum(latencies) / len(latencies)) if latencies else None},
        "ackMsAfterFirstChunk": {"p50": ms(percentile(steady, 50)), "p95": ms(percentile(steady, 95)),
                                 "p99": ms(percentile(steady, 99)), "max": ms(steady[-1] if steady else None)},
        "errors": dict(sorted(errors.items())),
        "serverPid": args.server_pid,
        "serverRssMb": {"start": round(server.start_rss / 1e6, 1), "peak": round(server.peak_rss / 1e6, 1),
                        "end": round(server.end_rss / 1e6, 1)} if args.server_pid else None,
        "serverCpuS": round(server.cpu_s, 2) if args.server_pid else None,
        "clientCpuS": round(client_cpu, 2),
        "otherCpuS": round(system_busy - client_cpu - (server.cpu_s if args.server_pid else 0.0), 2),
        "machineBusyPct": round(100 * system_busy / (wall * (os.cpu_count() or 1)), 1) if wall > 0 else None,
        "loadAvg1Before": round(load_before, 2),
        "cpuCount": os.cpu_count(),
    }


def table(report: dict[str, Any]) -> str:
    a = report["ackMs"]
    rows = [
        ("run", f"{report['runId']}  {report['transport']}{' +deflate' if report['deflate'] else ''}"
                f" (negotiated compress={report['deflateNegotiated']})  ns={report['namespace']}"),
        ("load", f"{report['recorders']} recorders x {report['chunksPerRecorder']} chunks x {report['bytesPerChunk']} B, window {report['window']}"),
        ("acked", f"{report['chunksAcked']} / {report['chunksSent']}  (duplicates {report['duplicates']}, resends {report['resends']}, unacked {report['unacked']})"),
        ("wall", f"{report['wallS']} s"),
        ("throughput", f"{report['chunksPerS']} chunks/s   {report['mbPerS']} MB/s"),
        ("ack ms", f"p50 {a['p50']}   p95 {a['p95']}   p99 {a['p99']}   max {a['max']}   mean {a['mean']}"),
        ("ack ms, seq>0", f"p50 {report['ackMsAfterFirstChunk']['p50']}   p95 {report['ackMsAfterFirstChunk']['p95']}"
                          f"   p99 {report['ackMsAfterFirstChunk']['p99']}   max {report['ackMsAfterFirstChunk']['max']}"
                          "   (without each session's first chunk)"),
        ("errors", ", ".join(f"{k}={v}" for k, v in report["errors"].items()) or "none"),
    ]
    if report["serverRssMb"]:
        r = report["serverRssMb"]
        rows.append(("server RSS", f"start {r['start']} MB   peak {r['peak']} MB   end {r['end']} MB"))
        rows.append(("server CPU", f"{report['serverCpuS']} s  ({100 * report['serverCpuS'] / report['wallS']:.0f}% of one core)"))
    rows.append(("client CPU", f"{report['clientCpuS']} s  ({100 * report['clientCpuS'] / report['wallS']:.0f}% of one core)"))
    rows.append(("machine", f"{report['cpuCount']} cores {report['machineBusyPct']}% busy; other processes {report['otherCpuS']} CPU s;"
                            f" load avg before {report['loadAvg1Before']}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:3001", help="server base URL")
    p.add_argument("--token", help="access token for every recorder")
    p.add_argument("--secret", default=os.environ.get("SCRIBEAI_SECRET"), help="HS256 secret to mint tokens (default $SCRIBEAI_SECRET)")
    p.add_argument("--user", default="bench", help="token subject (with --secret)")
    p.add_argument("--users", type=int, default=1, help="spread recorders over this many users (<user>0, <user>1, ...)")
    p.add_argument("--recorders", type=int, default=20)
    p.add_argument("--chunks", type=int, default=50, help="chunks per recorder")
    p.add_argument("--bytes", type=int, default=250_000, help="bytes per chunk")
    p.add_argument("--window", type=int, default=1, help="chunks in flight per recorder")
    p.add_argument("--transport", choices=("websocket", "polling"), default="websocket")
    p.add_argument("--namespace", default="/")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate on websocket, as browsers do")
    p.add_argument("--server-pid", type=int, help="sample this process's RSS (peak) and CPU time")
    p.add_argument("--ack-timeout", type=float, default=30.0, help="seconds to wait for one ack")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--max-resends", type=int, default=20, help="resends of one chunk refused as overloaded")
    p.add_argument("--json-out", help="also write the JSON report to this file")
    p.add_argument("--trace-out", help="write every ack as CSV: recorder, seq, sent_ms (from the start), ack_ms")
    args = p.parse_args(argv)
    if not args.token and not args.secret:
        p.error("give --token, or --secret (or $SCRIBEAI_SECRET) to mint one")
    if min(args.recorders, args.chunks, args.bytes, args.window, args.users) < 1:
        p.error("--recorders, --chunks, --bytes, --window and --users must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(bench(args))
    print(table(report))
    line = json.dumps(report, sort_keys=True)
    print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line + "\n")
    return 0 if report["unacked"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
