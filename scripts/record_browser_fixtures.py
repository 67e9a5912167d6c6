"""Record real Chromium MediaRecorder timeslice blobs into tests/fixtures/audio/chromium/ (run by hand, rarely).

    .venv/bin/python scripts/record_browser_fixtures.py            # ts1000/ and ts5000/ + manifest.json

espeak-ng + sox speak SENTENCES into a 48 kHz mono WAV that Chromium's fake microphone plays;
tests/js/browser_driver.mjs records it with `MediaRecorder.start(timeslice)` in tests/browser/recorder.html
and sends every blob to a real server started here (TRANSCRIBER=none, a temporary directory), and the
blobs, byte for byte as MediaRecorder gave them, land in ts<timeslice>/blob_NNNN.webm. Needs what
tests/test_browser.py needs: /usr/bin/chromium, espeak-ng, sox and `npm ci --prefix tests/js`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scribeai.app import create_app  # noqa: E402
from scribeai.auth import create_token  # noqa: E402
from scribeai.settings import Settings  # noqa: E402
from tests.speech import JS_DIR, make_speech_wav, missing_browser_tools  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "The train to London leaves at seven.",
]
PAUSE_S = 1.0
RATE = 48000
TIMESLICES = (1000, 5000)
RECORD_S = 8  # the WAV is 8.5 s, its speech ends at 7.5 s
OUT = ROOT / "tests" / "fixtures" / "audio" / "chromium"
SECRET = "record-browser-fixtures-only-0123456789"


async def record(out: Path, seconds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="browser-fixtures-") as tmp_dir:
        tmp = Path(tmp_dir)
        wav = tmp / "speech.wav"
        wav_s = make_speech_wav(SENTENCES, wav, pause_s=PAUSE_S, rate=RATE)
        settings = Settings(host="127.0.0.1", port=0, data_dir=tmp / "data", storage_dir=tmp / "chunks",
                            archive_storage_path=tmp / "archives", secret=SECRET, transcriber="none",
                            retention_schedule="off")
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            args = ["node", str(JS_DIR / "browser_driver.mjs"), "--server", f"http://127.0.0.1:{port}",
                    "--token", create_token(SECRET, "fixtures"), "--wav", str(wav), "--seconds", str(seconds),
                    "--out", str(tmp / "driver"), "--save-blobs", "--no-transcript", "--session-prefix", "fixtures"]
            for timeslice in TIMESLICES:
                args += ["--page", str(timeslice)]
            proc = await asyncio.create_subprocess_exec(*args, cwd=JS_DIR, stdout=asyncio.subprocess.PIPE)
            stdout, _ = await proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"browser_driver.mjs exited with {proc.returncode}")
        finally:
            await runner.cleanup()
        result = json.loads(stdout.decode().strip().splitlines()[-1])
        manifest: dict[str, Any] = {
            "text": " ".join(SENTENCES),
            "sentences": SENTENCES,
            "speech": f"espeak-ng -v en-us -s 150, {PAUSE_S} s pause after each sentence, 0.5 s lead-in; "
                      f"sox to {RATE} Hz mono 16-bit WAV, {wav_s:.2f} s (Chromium's fake microphone loops it)",
            "recorded_s": seconds,
            "browser": f"{result['chromium']} --headless=new, --use-fake-device-for-media-stream "
                       "--use-file-for-fake-audio-capture=speech.wav",
            "recorder": "tests/browser/recorder.html: new MediaRecorder(stream, {mimeType: 'audio/webm;codecs=opus'})"
                        ".start(timeslice); stop = requestData() + stop()",
            "made_by": "scripts/record_browser_fixtures.py",
        }
        sets: dict[str, Any] = {}
        for page in result["pages"]:
            name = f"ts{page['timeslice']}"
            target = out / name
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            blobs = []
            for blob in page["blobs"]:
                file = f"blob_{blob['seq']:04d}.webm"
                data = (tmp / "driver" / page["name"] / file).read_bytes()
                assert hashlib.sha256(data).hexdigest() == blob["sha256"], file
                (target / file).write_bytes(data)
                blobs.append({"file": file, "bytes": len(data), "sha256": blob["sha256"], "head": blob["head"]})
            sets[name] = {"timeslice_ms": page["timeslice"], "mime_type": page["mimeType"], "blobs": blobs}
        manifest["sets"] = sets
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seconds", type=int, default=RECORD_S)
    args = parser.parse_args()
    missing = missing_browser_tools()
    if missing:
        raise SystemExit("missing: " + ", ".join(missing))
    manifest = asyncio.run(record(args.out, args.seconds))
    for name, entry in manifest["sets"].items():
        print(f"{name}: {len(entry['blobs'])} blobs, {sum(b['bytes'] for b in entry['blobs'])} bytes")
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {total} bytes in all")


if __name__ == "__main__":
    main()
