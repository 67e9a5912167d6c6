"""Chunk files on disk: atomic, fsync'd writes under STORAGE_DIR/<session>/<session>_<seq>.<ext>."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import sys
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_EXTENSIONS = {
    "audio/webm": "webm",
    "audio/ogg": "ogg",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/mp4": "m4a",
    "audio/mpeg": "mp3",
}


def extension_for(mime_type: str) -> str:
    return _EXTENSIONS.get(mime_type.split(";")[0].strip().lower(), "bin")


def chunk_filename(session_id: str, seq: int, mime_type: str) -> str:
    return f"{session_id}_{seq:04d}.{extension_for(mime_type)}"


@dataclass(frozen=True)
class Written:
    """A chunk file written straight under its final name (write_new): durable, but no row names it yet."""

    path: Path
    digest: str
    identity: tuple[int, int]  # (st_dev, st_ino): unwrite moves it only while the name still holds this file


class ChunkStore:
    """Blocking file operations; callers run them off the event loop."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = os.path.abspath(root)
        self._made: set[str] = set()  # session directories known to exist (a cache; a miss only costs a mkdir)
        # Session folders made since their parent was last fsync'd: the next publish into one fsyncs the
        # parent too (beside the folder's own fsync, in parallel), so a new folder costs its first chunk no flush.
        self._fresh: set[str] = set()
        self._making = threading.Lock()  # a folder's making and its _fresh mark are one step for other threads
        self._handles = _FolderHandles()

    def __repr__(self) -> str:
        return f"ChunkStore({str(self.root)!r})"

    def relative_path(self, session_id: str, seq: int, mime_type: str) -> str:
        return f"{session_id}/{chunk_filename(session_id, seq, mime_type)}"

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"path escapes the storage directory: {relative!r}")
        return path

    def _hot(self, relative: str) -> str:
        """`absolute` for the ingest path without resolving symlinks (several lstat calls per chunk):
        a lexical check, which is enough for the names this server builds from validated session ids."""
        final = os.path.normpath(os.path.join(self._root, relative))
        if not final.startswith(self._root + os.sep):
            raise ValueError(f"path escapes the storage directory: {relative!r}")
        return final

    def write_temp(self, relative: str, data: bytes) -> Path:
        """Write `data` to a unique temporary file beside its final place and fsync it."""
        return Path(self._write_temp(self._hot(relative), data))

    def write_temp_hashed(self, relative: str, data: bytes) -> tuple[Path, str]:
        """write_temp, and the sha256 of `data` (hashed here, off the event loop: hashlib releases the GIL)."""
        digest = hashlib.sha256(data).hexdigest()
        return Path(self._write_temp(self._hot(relative), data)), digest

    def write_new(self, relative: str, data: bytes, digest: str | None) -> Written | None:
        """Write a chunk straight under its final name if no file has it, fsync the file and its folder: None if taken.

        No temporary file, no rename and no folder fsync left for the commit. Until a row names it the file is
        nobody's: a crash leaves at most an unnamed file at that name, which the chunk's resend replaces.
        """
        final = self._hot(relative)
        directory, name = os.path.split(final)
        self._make_folder(directory)
        try:
            folder = self._handles.acquire(directory)
        except FileNotFoundError:  # the folder went away (retention) since it was cached
            self._folder_gone(directory)
            return None
        try:
            return self._write_new_in(folder, final, name, data, digest)
        finally:
            self._handles.release(folder)

    def _write_new_in(self, folder: _Folder, final: str, name: str, data: bytes, digest: str | None) -> Written | None:
        """write_new in an open session folder: the file is made in that very folder (by its descriptor), so
        the folder fsync'd after it is the one that holds its name."""
        directory = folder.path
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=folder.fd)
        except FileExistsError:
            return None
        except FileNotFoundError:  # the folder was removed (retention) since its descriptor was opened
            self._folder_gone(directory)
            return None
        identity: tuple[int, int] | None = None
        try:
            try:
                stat = os.fstat(fd)
                identity = (stat.st_dev, stat.st_ino)
                _write_all(fd, data)
                if not digest:
                    # Hashed while the disk writes: the fsync then waits for less (a lone 250 kB chunk's
                    # write-hash-fsync went from ~0.95 to ~0.6 ms). Only once the name is ours: a taken name goes
                    # the temporary way, which hashes for itself.
                    start_writeback(fd)
                    digest = hashlib.sha256(data).hexdigest()
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(folder.fd)
            if directory in self._fresh:  # made by this or a concurrent write: its own name must be durable too
                fsync_dir(os.path.dirname(directory))
                self._fresh.discard(directory)
        except BaseException:
            # A full disk or a failed fsync: the half-written file is nobody's (unless a publish replaced it).
            if identity is not None:
                with contextlib.suppress(OSError):
                    self.discard(self.unwrite(Written(Path(final), digest or "", identity)))
            raise
        return Written(Path(final), digest, identity)

    def unwrite(self, written: Written) -> Path:
        """Take a write_new file whose row did not commit back to a temporary name, and return that name: the
        group commit can publish it again, or discard it. If the final name now holds another file (a publish
        replaced it), that file stays and the returned name holds nothing."""
        final = str(written.path)
        temp = _temp_name(final)
        with contextlib.suppress(FileNotFoundError):
            stat = os.stat(final)
            if (stat.st_dev, stat.st_ino) == written.identity:
                os.replace(final, temp)
        return Path(temp)

    def _folder_gone(self, directory: str) -> None:
        """A session folder was (or may be) removed: forget that it exists and let go of its descriptor."""
        self._made.discard(directory)
        self._handles.forget(directory)

    def _make_folder(self, directory: str) -> None:
        if directory in self._made:
            return
        with self._making:
            if not os.path.isdir(directory):
                os.makedirs(directory, exist_ok=True)
                self._fresh.add(directory)  # its name must survive a crash: the next publish or write fsyncs the parent
            self._made.add(directory)

    def _write_temp(self, final: str, data: bytes, retry: bool = True) -> str:
        directory = os.path.dirname(final)
        temp = _temp_name(final)
        self._make_folder(directory)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # the folder went away (retention) since it was cached: make it again, once
            if not retry:
                raise
            self._folder_gone(directory)
            return self._write_temp(final, data, retry=False)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            # A full disk or a failed fsync: the half-written file is nobody's; leave nothing behind.
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return temp

    def publish(self, temp: Path, relative: str) -> None:
        """Rename the temporary file into place and fsync the directory, so the name survives a crash."""
        final = self.absolute(relative)
        os.replace(temp, final)
        self._sync_dirs([os.path.dirname(self._hot(relative))])

    def publish_many(self, items: list[tuple[Path, str]]) -> None:
        """Rename each temporary file into place, then fsync each directory once for all of them."""
        directories: dict[str, None] = {}
        for temp, relative in items:
            final = self._hot(relative)
            os.replace(temp, final)
            directories[os.path.dirname(final)] = None
        self._sync_dirs(list(directories))

    def _sync_dirs(self, directories: list[str]) -> None:
        """fsync these folders, and the parent of any made since its last fsync (owed before a commit names them)."""
        fresh = [d for d in directories if d in self._fresh] if self._fresh else []
        _fsync_dirs([*directories, *{os.path.dirname(d) for d in fresh}])
        self._fresh.difference_update(fresh)

    def unpublish_many(self, items: list[tuple[Path, str]]) -> None:
        """Undo publish_many for rows that were not committed: each final name goes back to its temporary one."""
        for temp, relative in items:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.absolute(relative), temp)

    def probe(self) -> None:
        """Prove the directory takes a durable write now: write, fsync and remove a probe file (raises OSError)."""
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".probe.{uuid.uuid4().hex}.tmp"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                os.write(fd, b"scribeai storage probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
        fsync_dir(self.root)

    def write_atomic(self, relative: str, data: bytes) -> None:
        self.publish(self.write_temp(relative, data), relative)

    def discard(self, temp: Path) -> None:
        temp.unlink(missing_ok=True)

    def discard_many(self, temps: list[Path]) -> None:
        for temp in temps:
            temp.unlink(missing_ok=True)

    def size_of(self, relative: str) -> int | None:
        try:
            return self.absolute(relative).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, relative: str) -> bytes:
        return self.absolute(relative).read_bytes()

    def delete(self, relative: str) -> None:
        self.absolute(relative).unlink(missing_ok=True)

    def delete_many(self, relatives: list[str]) -> int:
        """Remove chunk files (missing ones are fine) and their session folders once empty; how many were there."""
        removed, folders = 0, set()
        for relative in relatives:
            path = self.absolute(relative)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
            folders.add(path.parent)
            self._folder_gone(os.path.dirname(self._hot(relative)))  # the folder may go: ingest makes it again
        for folder in folders:
            with contextlib.suppress(FileNotFoundError, OSError):
                fsync_dir(folder)
                if not any(folder.iterdir()):
                    folder.rmdir()
        return removed

    def folders(self) -> list[str]:
        """The session folders that hold (or held) chunk files."""
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.is_dir()]

    def files_in(self, folder: str) -> list[tuple[str, float]]:
        """A session folder's chunk files (not its temporaries): (relative path, modification time, epoch s)."""
        try:
            with os.scandir(self.root / folder) as entries:
                return [(f"{folder}/{e.name}", e.stat().st_mtime) for e in entries
                        if not e.name.startswith(".") and e.is_file(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def close(self) -> None:
        """Close the session folders' descriptors that no write is using (a later write opens its folder again)."""
        self._handles.close_idle()

    def sweep_temporaries(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary files a crash left behind (none was ever acked); young ones may be another node's."""
        removed = 0
        cutoff = time.time() - older_than_s
        if self.root.is_dir():
            for temp in self.root.glob("*/.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if temp.stat().st_mtime < cutoff:
                        temp.unlink()
                        removed += 1
        return removed


class _Folder:
    """An open session folder: its path, its descriptor, and how many writes are using it."""

    __slots__ = ("path", "fd", "users")

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd, self.users = path, fd, 1


class _FolderHandles:
    """Descriptors of the session folders written to lately, at most `limit` kept open: a chunk's file is made
    relative to its folder's descriptor and the folder fsync'd through it, with no open and close of the folder
    per chunk (two system calls, each a GIL hand-off under load).

    A descriptor is closed only when no write uses it: a number closed under a write could be reused by another
    file meanwhile, and the folder fsync would go to that file. A folder removed since (retention) fails the
    next create with ENOENT and is forgotten; a new folder of the same name gets a descriptor of its own.
    """

    def __init__(self, limit: int = 128) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, _Folder] = OrderedDict()
        self._limit = limit

    def acquire(self, path: str) -> _Folder:
        with self._lock:
            folder = self._kept.get(path)
            if folder is not None:
                folder.users += 1
                self._kept.move_to_end(path)
                return folder
        opened = _Folder(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY))
        with self._lock:
            folder = self._kept.get(path)
            if folder is None:  # keep ours
                self._kept[path] = opened
                idle = self._drop_idle(len(self._kept) - self._limit)
            else:  # another thread kept its own meanwhile: use that one
                folder.users += 1
                self._kept.move_to_end(path)
                idle, opened = [opened.fd], folder
        _close_all(idle)
        return opened

    def release(self, folder: _Folder) -> None:
        with self._lock:
            folder.users -= 1
            last = folder.users == 0 and self._kept.get(folder.path) is not folder
        if last:
            os.close(folder.fd)

    def forget(self, path: str) -> None:
        """This folder may be gone: its descriptor is closed (by its last user, if one is writing)."""
        with self._lock:
            folder = self._kept.pop(path, None)
            idle = [folder.fd] if folder is not None and folder.users == 0 else []
        _close_all(idle)

    def close_idle(self) -> None:
        with self._lock:
            idle = self._drop_idle(len(self._kept))
        _close_all(idle)

    def _drop_idle(self, count: int) -> list[int]:
        """Under the lock: stop keeping up to `count` idle folders, least recently used first; their descriptors
        to close (a folder in use is closed by its last user)."""
        if count <= 0:
            return []
        idle = [f for f in self._kept.values() if f.users == 0][:count]
        for folder in idle:
            del self._kept[folder.path]
        return [f.fd for f in idle]


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _temp_name(final: str) -> str:
    """A unique hidden temporary name beside `final` (what sweep_temporaries removes after a crash)."""
    directory, name = os.path.split(final)
    return os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_dir_sync_pool: ThreadPoolExecutor | None = None
_dir_sync_pool_lock = threading.Lock()


def _fsync_dirs(directories: list[str]) -> None:
    """fsync every directory; several at once, since concurrent fsyncs share the filesystem's journal commits."""
    global _dir_sync_pool
    if len(directories) <= 1:
        for directory in directories:
            fsync_dir(directory)
        return
    with _dir_sync_pool_lock:
        if _dir_sync_pool is None:
            _dir_sync_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dir-fsync")
    list(_dir_sync_pool.map(fsync_dir, directories))  # one after another, ten directories cost ~3x as long


def _sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the range's dirty pages, do not wait


def start_writeback(fd: int) -> None:
    """Let the disk start on a file's written pages now (Linux sync_file_range), so that work done before its
    fsync overlaps the device write. Only a head start: durability is still the fsync's. Elsewhere nothing."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a failure only loses the head start


def fsync_dir(directory: Path | str) -> None:
    """Make a directory's entries (new, renamed or removed names) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
