"""One chunk store interface (scribeai.store.Store), two places that implement it, picked in one place, and no
import circle between them (storage.py and objectstore.py used to import each other)."""

from __future__ import annotations

import ast
from pathlib import Path

from scribeai import store
from scribeai.objectstore import ObjectChunkStore
from scribeai.storage import ChunkStore

PACKAGE = Path(store.__file__).parent


def _imports(module: str) -> set[str]:
    """Every scribeai module this one imports, at the top or inside a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scribeai"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("scribeai"))
    return found


def test_the_store_modules_import_one_way() -> None:
    assert _imports("storage") & {"scribeai.objectstore", "scribeai.store"} == set()
    assert "scribeai.store" not in _imports("objectstore")
    assert {"scribeai.storage", "scribeai.objectstore"} <= _imports("store")


def test_both_places_have_every_method_of_the_interface(tmp_path: Path) -> None:
    methods = {name for name in vars(store.Store) if not name.startswith("_")}
    assert "write_new" in methods and "publish_many" in methods
    assert methods <= set(dir(ChunkStore)) and methods <= set(dir(ObjectChunkStore))
    assert type(store.open_store(tmp_path)) is ChunkStore
