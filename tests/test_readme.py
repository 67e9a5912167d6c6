"""The README's Layout names every module of the package, so a reader finds a thing by its name."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = re.search(r"^## Layout\n\n```\n(.*?)```", readme, re.MULTILINE | re.DOTALL)
    assert layout is not None
    text = layout.group(1)
    missing = []
    for path in sorted((ROOT / "scribeai").rglob("*.py")):
        relative = path.relative_to(ROOT / "scribeai")
        if path.name == "__init__.py" and len(relative.parts) == 1:
            continue
        if len(relative.parts) == 1:
            named = re.search(rf"(?<![\w.]){re.escape(path.name)}\b", text) is not None
        else:  # a package's modules: the package's line and each module's name in it
            named = f"scribeai/{relative.parts[0]}/" in text and (path.name == "__init__.py" or re.search(rf"\b{path.stem}\b", text) is not None)
        if not named:
            missing.append(str(relative))
    assert missing == [], "add these to the README's Layout"
