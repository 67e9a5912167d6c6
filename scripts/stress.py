"""Long-session stress test of a running ScribeAI server (the successor of scripts/test-long-session.js).

    .venv/bin/python scripts/stress.py --chunks=120 --fast --userId=test-user

The same as `scribeai stress`; the code lives in scribeai/stress.py (the CLI imports it), this file
only runs it. `--help` lists the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from scribeai.stress import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
