"""Chunks (and archives) in an S3-compatible object store: `STORAGE_URL=s3://bucket/prefix`.

The same interface as the local ChunkStore, so ingest and transcription do not know where chunks live.
The ack still means durable: a chunk's PUT has succeeded before its row commits, and a PUT whose row then
fails to commit is deleted again. Keys are the local store's relative paths (`<session>/<session>_<seq>.ext`)
under the prefix. Endpoint, region and credentials come from the usual AWS variables (AWS_ENDPOINT_URL,
AWS_REGION or AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
An unreachable or failing store refuses chunks with `unavailable`, reason `storage_unavailable`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from scribeai.errors import StorageUnavailable
from scribeai.storage import chunk_filename

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_AFTER_MS = 5000
COPY_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class PendingObject:
    """What a temporary file is to the local store: the bytes of a chunk not yet published under its key."""

    key: str
    data: bytes


def parse_storage_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix); anything else is a clear error."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"STORAGE_URL must look like s3://bucket/prefix, not {url!r}")
    return parsed.netloc, parsed.path.strip("/")


class ObjectChunkStore:
    def __init__(self, url: str, environ: Mapping[str, str] | None = None) -> None:
        from obstore.store import S3Store

        env = os.environ if environ is None else environ
        self.url = url
        self.bucket, self.prefix = parse_storage_url(url)
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        config: dict[str, Any] = {"region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
        for name, key in (("access_key_id", "AWS_ACCESS_KEY_ID"), ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                          ("token", "AWS_SESSION_TOKEN")):
            if env.get(key):
                config[name] = env[key]
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False  # MinIO, SeaweedFS and friends: path-style URLs
        self._store = S3Store(
            self.bucket, prefix=self.prefix or None, **config,
            client_options={"allow_http": bool(endpoint and endpoint.startswith("http://")),
                            "connect_timeout": "3s", "timeout": "30s"},
            retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=5),
                          "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1),
                                      "base": 2}},
        )

    def __repr__(self) -> str:
        return f"ObjectChunkStore({self.url!r})"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one store call; its failure (not a missing key) becomes the retryable storage_unavailable."""
        from obstore.exceptions import BaseError

        try:
            return fn()
        except FileNotFoundError:
            raise
        except BaseError as exc:
            detail = str(exc).strip().splitlines()[0][:300]
            raise StorageUnavailable(f"the object store cannot {what} now ({detail}); resend later",
                                     "storage_unavailable", RETRY_AFTER_MS) from exc

    # -- the Store interface (scribeai.store) -------------------------------------------------

    def relative_path(self, session_id: str, seq: int, mime_type: str) -> str:
        return f"{session_id}/{chunk_filename(session_id, seq, mime_type)}"

    def write_temp(self, relative: str, data: bytes) -> PendingObject:
        return PendingObject(relative, bytes(data))

    def write_temp_hashed(self, relative: str, data: bytes) -> tuple[PendingObject, str]:
        return PendingObject(relative, bytes(data)), hashlib.sha256(data).hexdigest()

    def write_new(self, relative: str, data: bytes, digest: str | None) -> None:
        """Objects are written by publish_many, after the row's INSERT: never straight away."""
        return None

    def unwrite(self, written: object) -> PendingObject:
        raise RuntimeError("ObjectChunkStore never writes a chunk before its publication")

    def publish(self, temp: PendingObject, relative: str) -> None:
        self.publish_many([(temp, relative)])

    def publish_many(self, items: list[tuple[PendingObject, str]]) -> None:
        """PUT each object; a PUT that returns has stored it (S3's PUT is atomic and durable when it answers)."""
        for temp, relative in items:
            self.write_atomic(relative, temp.data)

    def unpublish_many(self, items: list[tuple[PendingObject, str]]) -> None:
        """The rows did not commit: delete their objects again (the bytes stay in the pending handles)."""
        for _temp, relative in items:
            self.delete(relative)

    def discard(self, temp: PendingObject) -> None:
        """Nothing was written for a pending object: nothing to remove."""

    def discard_many(self, temps: list[PendingObject]) -> None:
        """As discard."""

    def size_of(self, relative: str) -> int | None:
        import obstore

        try:
            meta = self._call("look up a chunk", lambda: obstore.head(self._store, relative))
        except FileNotFoundError:
            return None
        return int(meta["size"])

    def write_atomic(self, relative: str, data: bytes) -> None:
        import obstore

        self._call("store a chunk", lambda: obstore.put(self._store, relative, data))

    def read(self, relative: str) -> bytes:
        import obstore

        result = self._call("read a chunk", lambda: obstore.get(self._store, relative).bytes())
        return bytes(result)

    def delete(self, relative: str) -> None:
        import obstore

        try:
            self._call("delete a chunk", lambda: obstore.delete(self._store, relative))
        except FileNotFoundError:
            pass

    def delete_many(self, relatives: list[str]) -> int:
        """Delete objects (missing ones are fine); how many were there.

        One LIST per session folder tells which of them exist and one DeleteObjects request per 1000 removes
        them, where a HEAD and a DELETE per chunk cost a session of 240 chunks 480 requests.
        """
        import obstore

        wanted = set(relatives)
        present = [relative for relative in wanted if "/" not in relative and self.size_of(relative) is not None]
        for folder in sorted({relative.rpartition("/")[0] for relative in wanted if "/" in relative}):
            present += [key for key, _ in self.files_in(folder) if key in wanted]
        if present:
            self._call("delete chunks", lambda: obstore.delete(self._store, present))
        return len(present)

    def files_in(self, folder: str) -> list[tuple[str, float]]:
        """Every object under `folder/` (a session's chunks): (key, last modified, epoch s)."""
        import obstore

        def listing() -> list[tuple[str, float]]:
            return [(meta["path"], meta["last_modified"].timestamp())
                    for batch in obstore.list(self._store, prefix=folder, chunk_size=1000) for meta in batch]

        return self._call("list chunks", listing)

    def download(self, relative: str, path: Path) -> None:
        """Stream an object into a new local file (FileNotFoundError when there is no such object)."""
        import obstore

        def copy() -> None:
            with open(path, "xb") as f:
                for piece in obstore.get(self._store, relative).stream(min_chunk_size=COPY_CHUNK):
                    f.write(piece)

        self._call("read an object", copy)

    def upload(self, relative: str, path: Path) -> None:
        """PUT a local file (multipart when it is large)."""
        import obstore

        self._call("store an object", lambda: obstore.put(self._store, relative, path))

    def folders(self) -> list[str]:
        """The session "folders" (first key segments) that hold chunks; `.probe/` and `.archives/` are not sessions."""
        import obstore

        listing = self._call("list sessions", lambda: obstore.list_with_delimiter(self._store))
        names = (prefix.rstrip("/").rsplit("/", 1)[-1] for prefix in listing["common_prefixes"])
        return [name for name in names if name and not name.startswith(".")]

    def probe(self) -> None:
        """Prove the store takes a write now: PUT, then DELETE, a probe object."""
        key = f".probe/{uuid.uuid4().hex}"
        self.write_atomic(key, b"scribeai storage probe\n")
        self.delete(key)

    def close(self) -> None:
        """Nothing to let go: the client's connections close with it."""

    def sweep_temporaries(self, older_than_s: float = 3600.0) -> int:
        """Pending objects live in memory only: a crash leaves nothing to sweep."""
        return 0


class ObjectArchives:
    """The warm tier's ZIPs in an object store (ARCHIVE_STORAGE_URL, or `.archives/` under STORAGE_URL).

    ZIPs are written and verified as local files in `scratch` (under DATA_DIR), then PUT (multipart when large);
    reading one back downloads it to `scratch` for as long as it is needed."""

    def __init__(self, url: str, scratch: Path) -> None:
        self.objects = ObjectChunkStore(url)
        self.scratch = scratch

    def __repr__(self) -> str:
        return f"ObjectArchives({self.objects.url!r}, scratch={str(self.scratch)!r})"

    def describe(self, name: str) -> str:
        return f"{self.objects.url.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return self.objects.size_of(name) is not None

    @contextlib.contextmanager
    def fetch(self, name: str) -> Iterator[Path]:
        """The archive as a local file; a missing one is a path that does not exist (verify reports it missing)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        local = self.scratch / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            try:
                self.objects.download(name, local)
            except FileNotFoundError:
                local.unlink(missing_ok=True)
            yield local
        finally:
            local.unlink(missing_ok=True)

    def publish(self, temp: Path, name: str) -> None:
        self.objects.upload(name, temp)

    def delete(self, name: str) -> None:
        self.objects.delete(name)

    def local_dir(self) -> Path | None:
        return None
