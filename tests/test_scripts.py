"""The scripts in scripts/ behave like tools: asking for help changes nothing, the ones that need no test
framework run without pytest, and every bench_*.py is a benchmark one can run (helpers are named otherwise)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
DEFLATE64 = ROOT / "tests" / "fixtures" / "deflate64" / "d64.zip"
# Runs a script as `python scripts/x.py ARGS` would, with pytest made unimportable.
WITHOUT_PYTEST = ("import runpy, sys; sys.modules['pytest'] = None; script = sys.argv[1]; sys.argv = sys.argv[1:]; "
                  "sys.path.insert(0, str(__import__('pathlib').Path(script).parent)); runpy.run_path(script, run_name='__main__')")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_help_of_the_deflate64_fixture_maker_rewrites_nothing() -> None:
    before = hashlib.sha256(DEFLATE64.read_bytes()).hexdigest()
    done = _run("scripts/make_deflate64_fixture.py", "--help")
    assert (done.returncode, done.stdout.splitlines()[0]) == (0, "usage: make_deflate64_fixture.py [-h] [--out OUT]")
    assert hashlib.sha256(DEFLATE64.read_bytes()).hexdigest() == before


def test_the_browser_fixture_recorder_needs_no_pytest() -> None:
    done = _run("-c", WITHOUT_PYTEST, "scripts/record_browser_fixtures.py", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: record_browser_fixtures.py")


def test_every_bench_script_is_a_benchmark_to_run() -> None:
    benches = sorted(SCRIPTS.glob("bench_*.py"))
    assert len(benches) >= 10
    assert [p.name for p in benches if 'if __name__ == "__main__":' not in p.read_text()] == []
