"""Build tests/fixtures/deflate64/d64.zip: a session archive repacked with Deflate64, as 7-Zip writes it.

    apt-get install p7zip-full   # only to rebuild the fixture; the tests only read the committed ZIP
    .venv/bin/python scripts/make_deflate64_fixture.py                 # rebuild tests/fixtures/deflate64/d64.zip
    .venv/bin/python scripts/make_deflate64_fixture.py --out /tmp/d64.zip

The archive holds the four timeslice fixtures under the names ScribeAI stores them by for session
`d64` (`d64_0000.webm` …) and a metadata.json in the archive format of scribeai/retention.py, all
compressed with method 9 (Deflate64) by `7z a -tzip -mm=Deflate64`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT / "tests" / "fixtures" / "audio"
OUT = ROOT / "tests" / "fixtures" / "deflate64" / "d64.zip"
SESSION = "d64"
SOURCES = [f"timeslice_{i:04d}.webm" for i in range(4)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the ZIP goes (default {OUT.relative_to(ROOT)})")
    out = parser.parse_args().out.resolve()
    seven_zip = shutil.which("7z") or shutil.which("7za") or shutil.which("7zz")
    if seven_zip is None:
        print("7z not found: apt-get install p7zip-full", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chunks = []
        for seq, source in enumerate(SOURCES):
            data = (AUDIO / source).read_bytes()
            name = f"{SESSION}_{seq:04d}.webm"
            (work / name).write_bytes(data)
            chunks.append({"seq": seq, "name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                           "mimeType": "audio/webm;codecs=opus"})
        metadata = {"format": 1, "session": {"id": SESSION}, "chunks": chunks, "transcript": []}
        (work / "metadata.json").write_text(json.dumps(metadata, indent=1))
        built = work / "d64.zip"  # the committed fixture is replaced only by a finished, checked ZIP
        names = ["metadata.json"] + [c["name"] for c in chunks]
        subprocess.run([seven_zip, "a", "-tzip", "-mm=Deflate64", "-mx=9", str(built), *names], cwd=work, check=True,
                       stdout=subprocess.DEVNULL)
        with zipfile.ZipFile(built) as zf:
            methods = {i.filename: i.compress_type for i in zf.infolist()}
        if set(methods.values()) != {9}:
            print(f"expected Deflate64 (method 9) for every member, got {methods}", file=sys.stderr)
            return 1
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(built, out)
    print(f"wrote {out} ({out.stat().st_size} bytes): {methods}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
