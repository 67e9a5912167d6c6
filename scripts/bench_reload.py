"""Audio lost per reload of the demo page in real Chromium, at random points of a blob (issue 24, goal <= 1.2 s).

    .venv/bin/python scripts/bench_reload.py                      # 10 reloads at the page's default timeslice (1 s)
    .venv/bin/python scripts/bench_reload.py --reloads 20 --seed 7 --timeslice 5000 --json out.json
    .venv/bin/python scripts/bench_reload.py --dialog-ms 1500       # the leave-page prompt answered after 1.5 s
    .venv/bin/python scripts/bench_reload.py --exit close           # close the tab, open the page in a new one

A server runs in this process (TRANSCRIBER=none, a temporary directory); tests/js/demo_driver.mjs (its `loss`
scenario) opens the demo page in Debian's Chromium with the fake microphone playing espeak-ng speech, records
2-4 s, waits for a blob, waits a random part of a timeslice and reloads (the page's leave-page prompt is
accepted); the page comes back, resends its outbox and says what was lost; the session is stopped and the next
reload records a new one. Lost per reload = wall time from MediaRecorder's start to the page's pagehide, less the
audio the server stored for that session (decoded). Needs /usr/bin/chromium, espeak-ng, sox and
`npm ci --prefix tests/js` (what tests/test_demo.py needs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scribeai.app import create_app  # noqa: E402
from scribeai.auth import create_token  # noqa: E402
from scribeai.settings import Settings  # noqa: E402
from tests.reload_loss import ReloadLoss, measure, stored_chunks, summary  # noqa: E402
from tests.speech import JS_DIR, make_speech_wav, missing_browser_tools  # noqa: E402

SENTENCES = [
    "Welcome to the weekly project meeting.",
    "The new office opens on the first of March.",
    "Please call Stella and ask her to bring these things from the store.",
    "The train to London leaves from platform seven.",
]
SECRET = "bench-reload-only-0123456789abcdef"
GOAL_S = 1.2


async def run(reloads: int, seed: int | None, timeslice: int | None, dialog_ms: int,
              exit_: str) -> tuple[dict[str, Any], list[ReloadLoss]]:
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp_dir:
        tmp = Path(tmp_dir)
        wav = tmp / "speech.wav"
        make_speech_wav(SENTENCES, wav)
        settings = Settings(host="127.0.0.1", port=0, data_dir=tmp / "data", storage_dir=tmp / "chunks",
                            archive_storage_path=tmp / "archives", secret=SECRET, transcriber="none",
                            retention_schedule="off")
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            args = ["node", str(JS_DIR / "demo_driver.mjs"), "--wav", str(wav), "--out", str(tmp / "driver"),
                    "--token", create_token(SECRET, "bench"), "--loss", f"http://127.0.0.1:{port}",
                    "--reloads", str(reloads), "--dialog-ms", str(dialog_ms), "--exit", exit_]
            args += ["--seed", str(seed)] if seed is not None else []
            args += ["--loss-timeslice", str(timeslice)] if timeslice else []
            proc = await asyncio.create_subprocess_exec(*args, cwd=JS_DIR, stdout=asyncio.subprocess.PIPE)
            stdout, _ = await proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"demo_driver.mjs exited with {proc.returncode}")
            result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
            page = result["scenarios"]["loss"]
            if page.get("failure"):
                raise SystemExit(f"the loss scenario failed:\n{page['failure']}")
            database = settings.data_dir / "scribeai.db"
            losses = [measure(r, stored_chunks(database, settings.storage_dir, r["sessionId"])) for r in page["reloads"]]
        finally:
            await runner.cleanup()
    return {"chromium": result["chromium"], "seed": page["seed"], "timeslice_ms": page["reloads"][0]["timesliceMs"],
            "dialog_ms": dialog_ms, "exit": exit_}, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None, help="the driver's random seed (default: from the clock)")
    parser.add_argument("--timeslice", type=int, default=None, help="ms; default: the demo page's own (1000)")
    parser.add_argument("--dialog-ms", type=int, default=0, help="accept the leave-page prompt after this long")
    parser.add_argument("--exit", choices=["reload", "close"], default="reload", help="reload the tab, or close it")
    parser.add_argument("--json", type=Path, default=None, help="also write every reload and the summary here")
    args = parser.parse_args()
    missing = missing_browser_tools()
    if missing:
        raise SystemExit("missing: " + ", ".join(missing))
    run_info, losses = asyncio.run(run(args.reloads, args.seed, args.timeslice, args.dialog_ms, args.exit))
    print(f"{run_info['chromium']}, {args.exit} at timeslice {run_info['timeslice_ms']} ms, seed {run_info['seed']}, "
          f"prompt accepted after {args.dialog_ms} ms")
    print(f"{'offset ms':>9} {'recorded s':>10} {'stored s':>9} {'lost s':>7} {'page says':>9}  flushed  "
          f"{'going ms':>8} {'flush ms':>8}  dialog")
    for x in losses:
        said = "?" if x.page_lost_s is None else f"{x.page_lost_s:.3f}"
        print(f"{x.offset_ms:>9} {x.recorded_s:>10.3f} {x.stored_s:>9.3f} {x.lost_s:>7.3f} {said:>9}  "
              f"{'yes' if x.flushed else 'no':<7}  {x.going_ms if x.going_ms is not None else '-':>8} "
              f"{x.flush_ms if x.flush_ms is not None else '-':>8}  {','.join(x.dialogs) or '-'}")
    stats = summary(losses)
    verdict = "met" if stats["max_s"] <= GOAL_S else "missed"
    print(f"lost per reload over {stats['reloads']} reloads: p50 {stats['p50_s']:.2f} s, max {stats['max_s']:.2f} s "
          f"(goal <= {GOAL_S} s: {verdict}); the beforeunload blob was stored in {stats['flushed']} of {stats['reloads']}")
    if args.json:
        args.json.write_text(json.dumps({**run_info, "summary": stats, "reloads": [asdict(x) for x in losses]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
