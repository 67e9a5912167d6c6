"""ChunkStore on a real directory: which directories are fsync'd before a chunk may be committed."""

from __future__ import annotations

from pathlib import Path

import pytest

from scribeai import storage
from scribeai.storage import ChunkStore


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every directory fsync'd from now on (the real fsync still runs)."""
    calls: list[str] = []
    real = storage.fsync_dir

    def spy(directory: Path | str) -> None:
        calls.append(str(directory))
        real(directory)
    monkeypatch.setattr(storage, "fsync_dir", spy)
    return calls


def test_a_new_session_folder_is_made_durable_by_its_first_publish(tmp_path: Path, synced: list[str]) -> None:
    store = ChunkStore(tmp_path)
    root, folder = str(tmp_path), str(tmp_path / "s1")
    temp = store.write_temp("s1/s1_0000.webm", b"first")
    assert synced == []  # the write itself flushes only the file
    store.publish_many([(temp, "s1/s1_0000.webm")])
    assert sorted(synced) == sorted([folder, root])  # the new folder's entry in the root too, before any commit
    synced.clear()
    store.publish_many([(store.write_temp("s1/s1_0001.webm", b"second"), "s1/s1_0001.webm")])
    assert synced == [folder]  # owed once only
    assert (tmp_path / "s1" / "s1_0000.webm").read_bytes() == b"first"


def test_a_folder_made_again_after_retention_is_made_durable_again(tmp_path: Path, synced: list[str]) -> None:
    store = ChunkStore(tmp_path)
    store.write_atomic("s2/s2_0000.webm", b"a")
    store.delete_many(["s2/s2_0000.webm"])
    assert not (tmp_path / "s2").exists()
    synced.clear()
    store.write_atomic("s2/s2_0001.webm", b"b")
    assert sorted(synced) == sorted([str(tmp_path / "s2"), str(tmp_path)])
