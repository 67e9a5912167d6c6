"""Session archives (blocking; callers run these off the event loop): write, verify, extract.

One ZIP per session: each chunk file under its stored name (audio stored, since opus does not
compress) and a deflated `metadata.json`. Every member is checked against the sha256 recorded at
ingest; Deflate64 members (as some ZIP tools repack them) are read through zipfile-deflate64.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any

import zipfile_deflate64  # noqa: F401  (patches zipfile so Deflate64 members can be read)
from sqlalchemy.engine import Row

from scribeai.errors import ScribeError
from scribeai.models import RecordingSession, Tier
from scribeai.storage import fsync_dir

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
    source: Path | None = None          # a raw chunk file in hot storage
    from_archive: Path | None = None    # or the same member of the session's previous archive

    @property
    def label(self) -> str:
        return f"chunk {self.seq} ({self.name})"


@dataclass(frozen=True)
class ArchiveFile:
    path: Path
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


def _open_source(stack: contextlib.ExitStack, member: Member, previous: zipfile.ZipFile | None) -> IO[bytes]:
    try:
        if member.source is not None:
            return stack.enter_context(open(member.source, "rb"))
        if previous is None:
            raise FileNotFoundError("no previous archive")
        return stack.enter_context(previous.open(member.name))
    except READ_ERRORS as exc:
        raise Unreadable(f"{member.label} is unreadable: {exc}", seq=member.seq) from exc


def _zip_time(when: datetime | None) -> tuple[int, int, int, int, int, int]:
    when = (when or datetime(1980, 1, 1, tzinfo=timezone.utc)).astimezone(timezone.utc)
    return (max(when.year, 1980), when.month, when.day, when.hour, when.minute, when.second)


def _write_zip(temp: Path, members: list[Member], metadata: bytes, when: datetime) -> None:
    """Stream every member into `temp` (audio stored, metadata deflated), checking each source's sha256."""
    previous_path = next((m.from_archive for m in members if m.from_archive is not None), None)
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
                    src = _open_source(member_stack, member, previous)
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
        raise Unreadable(f"the session's previous archive {path.name} is unreadable: {exc}") from exc


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


def write_archive(archive_dir: Path, session_id: str, members: list[Member], metadata: bytes, when: datetime) -> ArchiveFile:
    """`<sessionId>.zip`, or adopt a verified one left by an interrupted run.

    Written to a temporary name and fsync'd, then read back and verified member by member *before*
    it takes the final name, so a bad archive can never replace a good one; then renamed, dir fsync'd.
    """
    archive_dir.mkdir(parents=True, exist_ok=True)
    final = archive_dir / archive_name(session_id)
    if final.exists() and not any(m.from_archive for m in members):
        if verify_archive(final, members, session_id, exact=True).ok:
            return ArchiveFile(final, file_sha256(final), final.stat().st_size, adopted=True)
        log.warning("archive %s does not match session %s: writing it again", final, session_id)
    temp = archive_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        _write_zip(temp, members, metadata, when)
        check = verify_archive(temp, members, session_id, exact=True)
        if not check.ok:
            raise ArchiveFailed(f"the archive did not verify after writing: {'; '.join(check.problems)}")
        sha256, size = file_sha256(temp), temp.stat().st_size
        os.replace(temp, final)
        fsync_dir(archive_dir)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return ArchiveFile(final, sha256, size)


def extract_members(archive: Path, members: list[Member], destinations: dict[str, Path]) -> None:
    """Unpack members back to their hot paths: temp file beside each, sha256 checked, fsync, rename, dir fsync."""
    with zipfile.ZipFile(archive) as zf:
        for member in members:
            final = destinations[member.name]
            final.parent.mkdir(parents=True, exist_ok=True)
            temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")  # ChunkStore.sweep_temporaries' pattern
            try:
                with zf.open(member.name) as src, open(temp, "xb") as dst:
                    digest, size = copy_hashed(src, dst, member.label)
                    dst.flush()
                    os.fsync(dst.fileno())
                if (digest, size) != (member.sha256, member.size):
                    raise ArchiveFailed(f"{member.label} does not match its checksum", seq=member.seq)
                os.replace(temp, final)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        for directory in {destinations[m.name].parent for m in members}:
            fsync_dir(directory)


def delete_files(paths: Iterable[Path]) -> int:
    """Remove raw chunk files (missing ones are fine) and their session folders once empty."""
    removed, folders = 0, set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
        folders.add(path.parent)
    for folder in folders:
        with contextlib.suppress(FileNotFoundError, OSError):
            fsync_dir(folder)
            if not any(folder.iterdir()):
                folder.rmdir()
    return removed


def sweep_archive_temporaries(archive_dir: Path) -> int:
    """Temporary ZIPs of interrupted runs; only called under the retention lock, so none is in use."""
    if not archive_dir.is_dir():
        return 0
    removed = 0
    for temp in archive_dir.glob(".*.zip.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed += 1
    return removed
