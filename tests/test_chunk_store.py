"""ChunkStore on a real directory: which directories are fsync'd before a chunk may be committed."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scribeai import storage
from scribeai.storage import ChunkStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads descriptors' paths in /proc/self/fd")


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every directory fsync'd from now on, by the path its descriptor really names (the real fsync still runs)."""
    calls: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(storage.os, "fsync", spy)
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


def test_write_new_puts_a_chunk_under_its_final_name_durably_and_only_once(tmp_path: Path, synced: list[str]) -> None:
    store = ChunkStore(tmp_path)
    folder = tmp_path / "s3"
    written = store.write_new("s3/s3_0000.webm", b"first", None)
    assert written is not None and written.path == folder / "s3_0000.webm"
    assert written.digest == hashlib.sha256(b"first").hexdigest()
    assert sorted(p.name for p in folder.iterdir()) == ["s3_0000.webm"]  # no temporary file
    assert sorted(synced) == sorted([str(folder), str(tmp_path)])  # its name, and its new folder's name
    synced.clear()
    assert store.write_new("s3/s3_0001.webm", b"second", "given") is not None
    assert synced == [str(folder)]
    assert store.write_new("s3/s3_0000.webm", b"other", None) is None  # taken: the caller goes the temporary way
    assert (folder / "s3_0000.webm").read_bytes() == b"first"
    assert sorted(p.name for p in folder.iterdir()) == ["s3_0000.webm", "s3_0001.webm"]


def test_write_new_into_a_folder_retention_removed_declines_and_the_temporary_way_makes_it_again(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.write_atomic("s4/s4_0000.webm", b"a")
    (tmp_path / "s4" / "s4_0000.webm").unlink()
    (tmp_path / "s4").rmdir()  # removed behind the store's back: its folder cache is stale
    assert store.write_new("s4/s4_0001.webm", b"b", None) is None
    store.write_atomic("s4/s4_0001.webm", b"b")
    assert (tmp_path / "s4" / "s4_0001.webm").read_bytes() == b"b"
    assert store.write_new("s4/s4_0002.webm", b"c", None) is not None


def test_unwrite_takes_the_file_back_unless_a_publish_replaced_it(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    written = store.write_new("s5/s5_0000.webm", b"mine", None)
    assert written is not None
    temp = store.unwrite(written)
    assert not written.path.exists() and temp.read_bytes() == b"mine" and temp.name.startswith(".")
    store.discard(temp)

    written = store.write_new("s5/s5_0000.webm", b"mine", None)
    assert written is not None
    store.publish_many([(store.write_temp("s5/s5_0000.webm", b"theirs"), "s5/s5_0000.webm")])  # another writer's commit
    temp = store.unwrite(written)
    assert written.path.read_bytes() == b"theirs" and not temp.exists()
    assert sorted(p.name for p in (tmp_path / "s5").iterdir()) == ["s5_0000.webm"]


def test_write_new_never_writes_into_a_removed_folder_whose_descriptor_it_kept(tmp_path: Path, synced: list[str]) -> None:
    store = ChunkStore(tmp_path)
    folder = tmp_path / "s5"
    assert store.write_new("s5/s5_0000.webm", b"a", None) is not None  # its folder's descriptor is kept
    (folder / "s5_0000.webm").unlink()
    folder.rmdir()
    folder.mkdir()  # another process (the retention CLI, a new session) made a folder of that name again
    synced.clear()
    assert store.write_new("s5/s5_0001.webm", b"b", None) is None  # declined: the kept folder is gone
    assert list(folder.iterdir()) == [] and synced == []
    written = store.write_new("s5/s5_0002.webm", b"c", None)
    assert written is not None and (folder / "s5_0002.webm").read_bytes() == b"c"
    assert synced == [str(folder)]  # the folder that holds the name, not the removed one


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_kept_folder_descriptors_are_bounded_and_closed_with_the_store(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store._handles._limit = 4
    before = _open_descriptors()
    for i in range(10):
        assert store.write_new(f"f{i}/f{i}_0000.webm", b"x", None) is not None
    assert _open_descriptors() == before + 4
    assert store.write_new("f9/f9_0001.webm", b"y", None) is not None  # a kept one: nothing more opened
    assert _open_descriptors() == before + 4
    store.close()
    assert _open_descriptors() == before
    assert store.write_new("f0/f0_0001.webm", b"z", None) is not None  # opened again when needed
    store.close()
    assert _open_descriptors() == before


def test_retention_removing_a_folder_lets_go_of_its_descriptor(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    before = _open_descriptors()
    assert store.write_new("s6/s6_0000.webm", b"a", None) is not None
    assert _open_descriptors() == before + 1
    assert store.delete_many(["s6/s6_0000.webm"]) == 1
    assert not (tmp_path / "s6").exists() and _open_descriptors() == before


def test_threads_sharing_and_evicting_folder_descriptors_write_every_chunk(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store._handles._limit = 2  # fewer kept folders than folders in use: eviction runs while others write
    before = _open_descriptors()

    def write(worker: int) -> list[str]:
        names = []
        for i in range(40):
            relative = f"t{(worker + i) % 5}/w{worker}_{i:04d}.webm"
            if store.write_new(relative, b"%d" % i, None) is not None:
                names.append(relative)
        return names

    with ThreadPoolExecutor(8) as pool:
        written = [name for names in pool.map(write, range(8)) for name in names]
    assert len(written) == 8 * 40
    assert all((tmp_path / name).is_file() for name in written)
    store.close()
    assert _open_descriptors() == before
