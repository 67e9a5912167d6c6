"""Wire payloads: parse and validate client events (pure, no I/O)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from scribeai.errors import Forbidden, InvalidInput, TooLarge

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SESSION_ROOM_PREFIX = "session:"
CAPTION_ROOM_PREFIX = "captions:"
MAX_SEQUENCE = 2**53 - 1  # the largest integer a JavaScript number carries exactly
ALLOWED_MIME = ("audio/webm", "audio/ogg", "audio/wav", "audio/mp4", "audio/mpeg")
_MIME = re.compile(r"^\s*([a-z0-9.+-]+/[a-z0-9.+-]+)\s*(;[\x20-\x7e]*)?$", re.IGNORECASE)
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_DURATION_MS = 3_600_000


@dataclass(frozen=True)
class IncomingChunk:
    session_id: str
    seq: int
    timestamp_ms: float
    mime_type: str
    audio: bytes
    sha256: str | None  # None: not hashed yet (no checksum was sent); the store hashes it
    duration_ms: int | None = None
    user_id: str | None = None

    def __repr__(self) -> str:  # never put audio bytes in logs
        return f"IncomingChunk({self.session_id!r}, seq={self.seq}, {len(self.audio)} bytes)"


def room_of(session_id: str) -> str:
    return f"{SESSION_ROOM_PREFIX}{session_id}"


def caption_room_of(session_id: str) -> str:
    """The sockets that joined a session with `interim: true`: they get its live captions."""
    return f"{CAPTION_ROOM_PREFIX}{session_id}"


def context_of(payload: Any) -> dict[str, Any]:
    """sessionId/sequence of a payload, when they are well formed, to label an error reply."""
    if not isinstance(payload, dict):
        return {}
    ctx: dict[str, Any] = {}
    sid = payload.get("sessionId")
    if isinstance(sid, str) and SESSION_ID.match(sid):
        ctx["sessionId"] = sid
    seq = payload.get("sequence", payload.get("seq"))
    if _is_int(seq):
        ctx["sequence"] = seq
    return ctx


def parse_session_id(value: Any, field: str = "sessionId") -> str:
    if not isinstance(value, str) or not SESSION_ID.match(value):
        raise InvalidInput(f"{field} must be 1-128 characters of A-Z a-z 0-9 _ -", field=field)
    return value


def parse_object(payload: Any, event: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidInput(f"{event} expects an object payload, got {_type_name(payload)}")
    return payload


def parse_optional_text(payload: dict[str, Any], field: str, limit: int) -> str | None:
    """An optional free-text field (title, source); NUL is refused since PostgreSQL text cannot store it."""
    value = payload.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise InvalidInput(f"{field} must be a string of at most {limit} characters, without NUL", field=field)
    return value


def parse_optional_seq(payload: dict[str, Any], field: str, minimum: int = 0) -> int | None:
    """An optional sequence number; joinSession's lastSeq also takes -1 ("nothing yet", an empty session's maxSeq)."""
    value = payload.get(field)
    if value is None:
        return None
    if not _is_int(value) or not minimum <= value <= MAX_SEQUENCE:
        raise InvalidInput(f"{field} must be an integer >= {minimum}", field=field)
    return int(value)


def parse_flag(payload: dict[str, Any], field: str) -> bool:
    """An optional boolean (absent is false)."""
    value = payload.get(field, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false, got {_type_name(value)}", field=field)
    return value


def check_user_id(value: Any, user_id: str) -> None:
    """The one rule for an event's optional `userId`: absent, or a string equal to the token's user."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidInput(f"userId must be a string, got {_type_name(value)}", field="userId")
    if value != user_id:
        raise Forbidden("userId does not match the token's user", field="userId")


def parse_chunk(args: tuple[Any, ...], *, max_bytes: int, now_ms: float) -> IncomingChunk:
    """Validate an audio-chunk event: `(payload)` or the two-argument form `(metadata, audio)`."""
    if len(args) == 2 and isinstance(args[0], dict) and "audio" not in args[0]:
        payload = {**args[0], "audio": args[1]}
    elif len(args) <= 1:
        payload = parse_object(args[0] if args else None, "audio-chunk")
    else:
        raise InvalidInput(f"audio-chunk expects (payload) or (metadata, audio), got {len(args)} arguments")

    session_id = parse_session_id(payload.get("sessionId"))
    seq = _parse_sequence(payload)
    timestamp = _parse_number(payload, "timestamp", default=float(round(now_ms)))  # whole ms, as clients send them
    mime_type = _parse_mime(payload.get("mimeType"))
    audio = _parse_audio(payload.get("audio"), max_bytes)
    size = payload.get("size")
    if size is not None:
        if not _is_int(size) or size < 0:
            raise InvalidInput("size must be an integer >= 0", field="size")
        if size != len(audio):
            raise InvalidInput(f"size {size} does not match the audio length {len(audio)}", field="size")
    # Without a checksum to verify, the storage thread hashes the audio while it writes it (off the event loop).
    digest = None
    checksum = payload.get("checksum")
    if checksum is not None:
        if not isinstance(checksum, str) or not _SHA256_HEX.match(checksum):
            raise InvalidInput("checksum must be 64 hex characters (sha256)", field="checksum")
        digest = hashlib.sha256(audio).hexdigest()
        if checksum.lower() != digest:
            raise InvalidInput("checksum does not match the audio's sha256", field="checksum")
    duration = payload.get("durationMs")
    if duration is not None:
        duration = _parse_number(payload, "durationMs", default=0)
        if not 0 < duration <= MAX_DURATION_MS:
            raise InvalidInput(f"durationMs must be in (0, {MAX_DURATION_MS}]", field="durationMs")
        duration = int(duration)
    user_id = payload.get("userId")
    if user_id is not None and not isinstance(user_id, str):
        raise InvalidInput(f"userId must be a string, got {_type_name(user_id)}", field="userId")
    return IncomingChunk(
        session_id=session_id,
        seq=seq,
        timestamp_ms=timestamp,
        mime_type=mime_type,
        audio=audio,
        sha256=digest,
        duration_ms=duration,
        user_id=user_id,
    )


def _parse_sequence(payload: dict[str, Any]) -> int:
    value = payload.get("sequence", payload.get("seq"))
    if value is None:
        raise InvalidInput("sequence is required", field="sequence")
    if not _is_int(value) or not 0 <= value <= MAX_SEQUENCE:
        raise InvalidInput("sequence must be an integer >= 0", field="sequence")
    return int(value)


def _parse_number(payload: dict[str, Any], field: str, default: float) -> float:
    value = payload.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{field} must be a number >= 0", field=field)
    return float(value)


def _parse_mime(value: Any) -> str:
    if value is None or value == "":
        return "audio/webm"
    if not isinstance(value, str) or len(value) > 128:
        raise InvalidInput("mimeType must be a string", field="mimeType")
    match = _MIME.match(value)
    if not match or match.group(1).lower() not in ALLOWED_MIME:
        raise InvalidInput(f"mimeType must be one of {', '.join(ALLOWED_MIME)}", field="mimeType")
    return value.strip()


def _parse_audio(value: Any, max_bytes: int) -> bytes:
    if value is None:
        raise InvalidInput("audio is required", field="audio")
    if isinstance(value, (bytes, bytearray, memoryview)):
        audio = bytes(value)
    elif isinstance(value, str):
        if len(value) > max_bytes * 4 // 3 + 128:
            raise TooLarge(f"audio exceeds MAX_CHUNK_BYTES ({max_bytes} bytes)", limit=max_bytes)
        encoded = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            audio = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput("audio string is not valid base64", field="audio") from exc
    else:
        raise InvalidInput(f"audio must be binary or a base64 string, got {_type_name(value)}", field="audio")
    if not audio:
        raise InvalidInput("audio is empty", field="audio")
    if len(audio) > max_bytes:
        raise TooLarge(f"audio of {len(audio)} bytes exceeds MAX_CHUNK_BYTES ({max_bytes})", limit=max_bytes, size=len(audio))
    return audio


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", type(None): "null", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


def gaps(seqs: list[int], last_seq: int | None = None, limit: int = 10_000) -> list[int]:
    """Sequences missing below the highest stored one (and up to `last_seq`), at most `limit`; `seqs` sorted."""
    top = max(seqs[-1] if seqs else -1, -1 if last_seq is None else last_seq)
    missing: list[int] = []
    expected = 0
    for seq in [*seqs, top + 1]:
        while expected < seq and len(missing) < limit:
            missing.append(expected)
            expected += 1
        if len(missing) >= limit:
            break
        expected = max(expected, seq + 1)
    return missing
