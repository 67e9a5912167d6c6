"""Session archives (blocking; callers run these off the event loop): write, verify, extract.

One ZIP per session: each chunk file under its stored name (audio stored, since opus does not
compress) and a deflated `metadata.json`. Every member is checked against the sha256 recorded at
ingest; Deflate64 members (as some ZIP tools repack them) are read through zipfile-deflate64.

Where archives live is an ArchivePlace: a local directory (ARCHIVE_STORAGE_PATH), or an object store
(scribeai.objectstore.ObjectArchives). Either way a ZIP is written and verified as a local file first
and only then takes its final name (rename, or PUT), so a bad archive never replaces a good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Protocol

import zipfile_deflate64  # noqa: F401  (patches zipfile so Deflate64 members can be read)
from sqlalchemy.engine import Row

from scribeai.errors import ScribeError
from scribeai.models import RecordingSession, Tier
from scribeai.storage import fsync_dir

if TYPE_CHECKING:
    from scribeai.settings import Settings

METADATA_NAME = "metadata.json"
ARCHIVE_FORMAT = 1
COPY_BLOCK = 1024 * 1024
READ_ERRORS = (OSError, KeyError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)
COMPRESSION_NAMES = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", 9: "deflate64"}
ChunkRow = Row[Any]
log = logging.getLogger(__name__)


class ArchiveFailed(ScribeError):
    """One session could not be archived, verified or restored; the others are not affected."""

    code = "archive_failed"
    http_status = 500


class Unreadable(ArchiveFailed):
    """A chunk file or archive member could not be read (missing, damaged, bad CRC)."""


@dataclass(frozen=True)
class Member:
    """One chunk inside an archive, with where its bytes come from while the archive is written."""

    name: str
    size: int
    sha256: str
    seq: int
    source: str | None = None           # a raw chunk in hot storage (its key in the chunk store)
    from_archive: bool = False          # or the same member of the session's previous archive

    @property
    def label(self) -> str:
        return f"chunk {self.seq} ({self.name})"


@dataclass(frozen=True)
class ArchiveFile:
    name: str
    sha256: str
    bytes: int
    adopted: bool = False


@dataclass
class ArchiveCheck:
    """The result of reading an archive back member by member."""

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    members_checked: int = 0
    compression: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def member_name(chunk_path: str) -> str:
    """A chunk's member name: its stored file name (`<sessionId>_<seq>.<ext>`)."""
    return PurePosixPath(chunk_path).name


def in_archive(chunk: ChunkRow, session: RecordingSession) -> bool:
    """Is this chunk's audio in the session's current archive? Chunks deleted by the time the session
    last went cold are gone for good (cold_at is never cleared); later ones are late chunks archived since."""
    if chunk.deleted_at is None or session.tier != Tier.WARM:
        return False
    return session.cold_at is None or chunk.deleted_at > session.cold_at


def archive_name(session_id: str) -> str:
    return f"{session_id}.zip"


def copy_hashed(src: IO[bytes], dst: IO[bytes] | None, label: str) -> tuple[str, int]:
    """sha256 and size of `src`, copied to `dst` on the way; read failures become Unreadable(label)."""
    digest, size = hashlib.sha256(), 0
    while True:
        try:
            block = src.read(COPY_BLOCK)
        except READ_ERRORS as exc:  # zipfile raises BadZipFile here when a member's CRC-32 is wrong
            raise Unreadable(f"{label} is unreadable: {exc}") from exc
        if not block:
            return digest.hexdigest(), size
        digest.update(block)
        size += len(block)
        if dst is not None:
            dst.write(block)


def _open_source(stack: contextlib.ExitStack, member: Member, previous: zipfile.ZipFile | None,
                 read_chunk: Callable[[str], bytes]) -> IO[bytes]:
    try:
        if member.source is not None:
            return io.BytesIO(read_chunk(member.source))
        if previous is None:
            raise FileNotFoundError("no previous archive")
        return stack.enter_context(previous.open(member.name))
    except READ_ERRORS as exc:
        raise Unreadable(f"{member.label} is unreadable: {exc}", seq=member.seq) from exc


def _zip_time(when: datetime | None) -> tuple[int, int, int, int, int, int]:
    when = (when or datetime(1980, 1, 1, tzinfo=timezone.utc)).astimezone(timezone.utc)
    return (max(when.year, 1980), when.month, when.day, when.hour, when.minute, when.second)


def _write_zip(temp: Path, members: list[Member], metadata: bytes, when: datetime, read_chunk: Callable[[str], bytes],
               previous_path: Path | None) -> None:
    """Stream every member into `temp` (audio stored, metadata deflated), checking each source's sha256."""
    with contextlib.ExitStack() as stack:
        previous = _open_previous(stack, previous_path) if previous_path else None
        raw = stack.enter_context(open(temp, "xb"))
        with zipfile.ZipFile(raw, "w", allowZip64=True) as zf:
            info = zipfile.ZipInfo(METADATA_NAME, _zip_time(when))
            info.external_attr = 0o644 << 16
            zf.writestr(info, metadata, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
            for member in members:
                info = zipfile.ZipInfo(member.name, _zip_time(when))
                info.compress_type = zipfile.ZIP_STORED  # opus does not compress; do not spend CPU on it
                info.file_size = member.size  # lets zipfile choose ZIP64 up front for huge members
                info.external_attr = 0o644 << 16
                with contextlib.ExitStack() as member_stack:
                    src = _open_source(member_stack, member, previous, read_chunk)
                    dst = member_stack.enter_context(zf.open(info, "w"))
                    digest, size = copy_hashed(src, dst, member.label)
                if (digest, size) != (member.sha256, member.size):
                    raise ArchiveFailed(
                        f"{member.label} does not match its checksum: {size} bytes with sha256 {digest[:12]}… on disk, "
                        f"{member.size} bytes with sha256 {member.sha256[:12]}… recorded", seq=member.seq)
        raw.flush()
        os.fsync(raw.fileno())


def _open_previous(stack: contextlib.ExitStack, path: Path) -> zipfile.ZipFile:
    try:
        return stack.enter_context(zipfile.ZipFile(path))
    except READ_ERRORS as exc:
        raise Unreadable(f"the session's previous archive is unreadable: {exc}") from exc


def verify_archive(path: Path, members: Iterable[Member], session_id: str, *, exact: bool = False) -> ArchiveCheck:
    """Read `path` back: every expected member present with its size and sha256, and a metadata.json for `session_id`."""
    check = ArchiveCheck(path)
    expected = {m.name: m for m in members}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            for info in infos.values():
                kind = COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
                check.compression[kind] = check.compression.get(kind, 0) + 1
            check.metadata = _read_metadata(zf, infos, session_id, check)
            for name, member in expected.items():
                _check_member(zf, infos.get(name), member, check)
            extra = sorted(set(infos) - set(expected) - {METADATA_NAME})
            if extra:
                (check.problems if exact else check.notes).append(f"members not in the database's list: {', '.join(extra[:5])}")
    except FileNotFoundError:
        check.problems.append("archive file is missing")
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        check.problems.append(f"archive is unreadable: {exc}")
    return check


def _read_metadata(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], session_id: str, check: ArchiveCheck) -> dict[str, Any] | None:
    if METADATA_NAME not in infos:
        check.problems.append("metadata.json is missing")
        return None
    try:
        metadata = json.loads(zf.read(METADATA_NAME))
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        check.problems.append(f"metadata.json is unreadable: {exc}")
        return None
    found = metadata.get("session", {}).get("id") if isinstance(metadata, dict) else None
    if found != session_id:
        check.problems.append(f"metadata.json is for session {found!r}")
    return metadata if isinstance(metadata, dict) else None


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo | None, member: Member, check: ArchiveCheck) -> None:
    if info is None:
        check.problems.append(f"{member.label} is missing")
        return
    try:
        with zf.open(info) as f:
            digest, size = copy_hashed(f, None, member.label)
    except Unreadable as exc:
        check.problems.append(exc.message)
        return
    except READ_ERRORS as exc:
        check.problems.append(f"{member.label} is unreadable: {exc}")
        return
    if (digest, size) != (member.sha256, member.size):
        check.problems.append(f"{member.label} does not match its checksum")
        return
    check.members_checked += 1


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ArchivePlace(Protocol):
    """Where the warm tier's ZIPs live. Blocking, like everything in this module."""

    scratch: Path  # a local directory for temporary ZIPs (`.<name>.<uuid>.tmp`), swept under the retention lock

    def describe(self, name: str) -> str: ...
    def exists(self, name: str) -> bool: ...
    def fetch(self, name: str) -> contextlib.AbstractContextManager[Path]: ...
    def publish(self, temp: Path, name: str) -> None: ...
    def delete(self, name: str) -> None: ...
    def local_dir(self) -> Path | None: ...


class LocalArchives:
    """ARCHIVE_STORAGE_PATH: temporary ZIPs beside their final names, renamed into place, directory fsync'd."""

    def __init__(self, directory: Path) -> None:
        self.scratch = Path(directory)

    def __repr__(self) -> str:
        return f"LocalArchives({str(self.scratch)!r})"

    def describe(self, name: str) -> str:
        return str(self.scratch / name)

    def exists(self, name: str) -> bool:
        return (self.scratch / name).exists()

    @contextlib.contextmanager
    def fetch(self, name: str) -> Iterator[Path]:
        yield self.scratch / name

    def publish(self, temp: Path, name: str) -> None:
        os.replace(temp, self.scratch / name)
        fsync_dir(self.scratch)

    def delete(self, name: str) -> None:
        (self.scratch / name).unlink(missing_ok=True)
        if self.scratch.is_dir():
            fsync_dir(self.scratch)

    def local_dir(self) -> Path | None:
        return self.scratch


def open_archives(settings: Settings) -> ArchivePlace:
    """ARCHIVE_STORAGE_URL; else `.archives/` under STORAGE_URL when chunks are in an object store; else the directory."""
    url = settings.archive_storage_url or (f"{settings.storage_url.rstrip('/')}/.archives" if settings.storage_url else "")
    if url:
        from scribeai.objectstore import ObjectArchives

        return ObjectArchives(url, Path(settings.data_dir) / "archive-work")
    return LocalArchives(Path(settings.archive_storage_path))


def write_archive(place: ArchivePlace, session_id: str, members: list[Member], metadata: bytes, when: datetime,
                  read_chunk: Callable[[str], bytes]) -> ArchiveFile:
    """`<sessionId>.zip`, or adopt a verified one left by an interrupted run.

    Written to a temporary file and fsync'd, then read back and verified member by member *before*
    it takes the final name, so a bad archive can never replace a good one. Members already archived
    (late chunks merge in) are copied from the session's current archive, which the new one replaces.
    """
    place.scratch.mkdir(parents=True, exist_ok=True)
    name = archive_name(session_id)
    merging = any(m.from_archive for m in members)
    if not merging and place.exists(name):
        with place.fetch(name) as existing:
            if verify_archive(existing, members, session_id, exact=True).ok:
                return ArchiveFile(name, file_sha256(existing), existing.stat().st_size, adopted=True)
        log.warning("archive %s does not match session %s: writing it again", place.describe(name), session_id)
    temp = place.scratch / f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        with place.fetch(name) if merging else contextlib.nullcontext(None) as previous:
            _write_zip(temp, members, metadata, when, read_chunk, previous)
        check = verify_archive(temp, members, session_id, exact=True)
        if not check.ok:
            raise ArchiveFailed(f"the archive did not verify after writing: {'; '.join(check.problems)}")
        sha256, size = file_sha256(temp), temp.stat().st_size
        place.publish(temp, name)
    finally:
        temp.unlink(missing_ok=True)
    return ArchiveFile(name, sha256, size)


def extract_members(archive: Path, members: list[Member], keys: dict[str, str], write: Callable[[str, bytes], None]) -> None:
    """Put members back into hot storage under their keys, each sha256-checked before `write` (atomic, durable) stores it."""
    with zipfile.ZipFile(archive) as zf:
        for member in members:
            buffer = io.BytesIO()
            with zf.open(member.name) as src:
                digest, size = copy_hashed(src, buffer, member.label)
            if (digest, size) != (member.sha256, member.size):
                raise ArchiveFailed(f"{member.label} does not match its checksum", seq=member.seq)
            write(keys[member.name], buffer.getvalue())


def sweep_archive_temporaries(scratch: Path) -> int:
    """Temporary ZIPs of interrupted runs; only called under the retention lock, so none is in use."""
    if not scratch.is_dir():
        return 0
    removed = 0
    for temp in scratch.glob(".*.zip.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed += 1
    return removed
