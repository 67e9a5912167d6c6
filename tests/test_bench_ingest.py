"""scripts/bench_ingest_vs_node.py at a tiny size: both servers run, every chunk is stored, the report is complete.

Speed is not checked here (that belongs in docs/performance.md); this keeps the benchmark itself working.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks" / "ingest"
RECORDERS, CHUNKS, BYTES = 2, 3, 10_000
RUN_FIELDS = {"chunksPerS", "mbPerS", "ackMs", "errors", "serverPeakRssMb", "serverCpuS", "serverCtxSwitches", "stored",
              "storedOk", "loadAvg1"}


def test_harness_runs_both_servers_and_checks_their_storage(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        if IN_CI:
            pytest.fail("Node.js is not installed (CI is set)")
        pytest.skip("Node.js is not installed")
    if not (BENCH_DIR / "node_modules" / "socket.io" / "package.json").exists():
        pytest.fail("benchmarks/ingest/node_modules is missing: run `npm ci --prefix benchmarks/ingest` (make js-deps)")
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_ingest_vs_node.py"), "--load", f"{RECORDERS}x{CHUNKS}x{BYTES}",
         "--rounds", "1", "--json-out", str(out), "--tmp-dir", str(tmp_path), "--settle-s", "0.1"],
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["nproc"] >= 1
    (load,) = report["loads"]
    assert load["load"] == {"recorders": RECORDERS, "chunks": CHUNKS, "bytes": BYTES, "window": 1}
    assert sorted(r["server"] for r in load["runs"]) == ["node", "scribeai"]
    expected = RECORDERS * CHUNKS
    for run in load["runs"]:
        assert RUN_FIELDS <= set(run), run["server"]
        assert set(run["ackMs"]) == {"p50", "p95", "p99", "max", "mean"}
        assert run["chunksAcked"] == expected and run["unacked"] == 0 and run["errors"] == {}
        assert run["stored"] == {"files": expected, "filesOfSize": expected, "records": expected, "temporaries": 0}
        assert run["storedOk"] is True
        assert run["chunksPerS"] > 0 and run["ackMs"]["p99"] >= run["ackMs"]["p50"] > 0
        assert run["serverCtxSwitches"] > 0  # every ack waited for at least one fsync
        assert run["serverPeakRssMb"] > 0
    assert set(load["ratio"]) == {"chunksPerS", "ackP99", "bar"}
    assert load["ratio"]["chunksPerS"]["best"] > 0
    assert list(tmp_path.glob("bench-ingest-*")) == []  # each run's data directory was removed
