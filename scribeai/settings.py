"""Settings: one frozen object, read from the environment in one place, each value checked against its range."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
MAX_DAYS = 36_500  # a retention period longer than a century overflows the dates it is subtracted from
_NODE_ID_MAX = 128  # the job claim column's length


class SettingError(ValueError):
    """A setting's value is unusable; the CLI prints it as one line and exits with status 2."""


@dataclass(frozen=True)
class Valid:
    """What a setting accepts: `text` for the README's table and the error line, `admits` to check a value,
    `why` (when given) to tell more about a refused one."""

    text: str
    admits: Callable[[Any], bool]
    why: Callable[[Any], str] | None = None

    def problem(self, value: Any) -> str | None:
        if self.admits(value):
            return None
        more = self.why(value) if self.why else ""
        return f"expected {self.text}" + (f"; {more}" if more else "")


def _numbers(low: float, high: float = math.inf, *, above: bool = False) -> Valid:
    """low to high; `above`: more than low (low itself refused). NaN and infinities never."""
    def admits(value: Any) -> bool:
        return (isinstance(value, int | float) and math.isfinite(value)
                and (value > low if above else value >= low) and value <= high)
    if math.isfinite(high):
        text = f"more than {low:g}, at most {high:g}" if above else f"{low:g} to {high:g}"
    else:
        text = f"more than {low:g}" if above else f"{low:g} or more"
    return Valid(text, admits)


def _one_of(*choices: str) -> Valid:
    return Valid(" or ".join(map(repr, choices)), lambda value: value in choices)


def _matches(text: str, pattern: str) -> Valid:
    return Valid(text, lambda value: isinstance(value, str) and re.fullmatch(pattern, value) is not None)


def _is_host(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    labels = value.removesuffix(".").split(".")
    if ":" in value or labels[-1].isdigit():  # an address, not a name (no top-level domain is all digits)
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return False
        return True
    return len(value) <= 253 and all(re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label) for label in labels)


def _file_in_the_way(path: Any) -> Path | None:
    """The first part of `path` that exists and is no directory (a directory that is missing is made at start)."""
    for part in (Path(path), *Path(path).parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def _is_schedule(value: Any) -> bool:
    try:
        parse_schedule(value)
    except ValueError:
        return False
    return True


def parse_schedule(value: str) -> time | None:
    """RETENTION_SCHEDULE: local 'HH:MM' (or 'HH:MM:SS'); 'off' or empty disables the daily run."""
    if value.strip().lower() in ("", "off", "none", "disabled"):
        return None
    try:
        hour, minute, *second = (int(p) for p in value.strip().split(":"))
        if len(second) > 1:
            raise ValueError
        return time(hour, minute, second[0] if second else 0)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"RETENTION_SCHEDULE must be HH:MM (local time) or 'off', not {value!r}") from exc


# The spellings of a database URL this server takes, and the async driver each one means.
_DATABASE_DRIVERS = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg", "postgresql+asyncpg": "postgresql+asyncpg",
                     "sqlite": "sqlite+aiosqlite", "sqlite+aiosqlite": "sqlite+aiosqlite"}


def async_database_url(url: str) -> str:
    """DATABASE_URL with the driver this server uses: postgresql:// and postgres:// mean asyncpg, sqlite:/// aiosqlite."""
    scheme, _, rest = url.partition("://")
    return f"{_DATABASE_DRIVERS.get(scheme.lower(), scheme)}://{rest}"


def _sqlite_path(url: str) -> str | None:
    scheme, _, rest = url.partition("://")
    return rest[1:].split("?")[0] if _DATABASE_DRIVERS.get(scheme.lower(), "").startswith("sqlite") else None


def _is_database_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    if not url:
        return True
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _DATABASE_DRIVERS:
        return False
    path = _sqlite_path(url)
    if path is not None:  # sqlite:///relative.db or sqlite:////absolute.db; an in-memory database would lose every chunk
        return rest.startswith("/") and path not in ("", ":memory:") and _file_in_the_way(Path(path).parent) is None
    return re.fullmatch(r"[^\s/?#]*(/[^\s/?#]*)?(\?\S*)?", rest) is not None and _has_valid_port(rest)


def _has_valid_port(rest: str) -> bool:
    host = rest.split("/")[0].rpartition("@")[2]
    port = host.rpartition("]")[2].rpartition(":")
    return not port[1] or (port[2].isdigit() and 0 < int(port[2]) <= 65535)


def _database_url_why(url: Any) -> str:
    path = _sqlite_path(url) if isinstance(url, str) else None
    blocked = _file_in_the_way(Path(path).parent) if path else None
    return f"{blocked} is a file" if blocked else ""


def redacted(url: str) -> str:
    """A URL with its password (user:password@) replaced by ***, fit for an error line or a log."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://[^/@:]*:)[^/@]*@", r"\1***@", url, flags=re.IGNORECASE)


def _is_origin_list(value: Any) -> bool:
    origins = [o.strip() for o in value.split(",") if o.strip()] if isinstance(value, str) else []
    return origins == ["*"] or bool(origins) and all(
        re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s*]+", origin) for origin in origins)


_ANY = Valid("any", lambda value: True)
_NOT_EMPTY = Valid("not empty", lambda value: isinstance(value, str) and value.strip() != "")
_HOST = Valid("an IP address or host name", _is_host)
_DIRECTORY = Valid("a directory (made if missing)", lambda value: _file_in_the_way(value) is None,
                   lambda value: f"{_file_in_the_way(value)} is a file")
_S3_URL = _matches("empty or s3://bucket/prefix", r"(s3://[A-Za-z0-9.\-_]{3,63}(/[^\s]*)?)?")
_DATABASE_URL = Valid("empty, postgresql://user@host/database or postgres://… (asyncpg), or sqlite:///path (aiosqlite)",
                      _is_database_url, _database_url_why)
_REDIS_URL = _matches("empty, or a redis://, rediss:// or unix:// URL", r"((rediss?|unix)://\S+)?")
_ORIGINS = Valid("'*', or comma-separated origins such as https://app.example.com (scheme and host, no path)", _is_origin_list)
_WHISPER_MODEL = Valid("empty, a size name or Hugging Face repo id (checked when it loads), or a model directory",
                       lambda value: isinstance(value, str))
_HTTP_URL = _matches("an http:// or https:// URL", r"https?://[^\s/?#]+(/\S*)?")
_OPTIONAL_HTTP_URL = _matches("empty, or an http:// or https:// URL", r"(https?://[^\s/?#]+(/\S*)?)?")
_SCHEDULE = Valid("HH:MM or HH:MM:SS (00:00 to 23:59:59), or 'off'", _is_schedule)
_LOG_LEVEL = Valid("DEBUG, INFO, WARNING, ERROR or CRITICAL",
                   lambda value: isinstance(logging.getLevelName(str(value).upper()), int))
_NODE_ID = Valid(f"at most {_NODE_ID_MAX} characters", lambda value: isinstance(value, str) and len(value) <= _NODE_ID_MAX)


def _setting(default: Any, env: str, valid: Valid, help: str) -> Any:
    return field(default=default, metadata={"env": env, "valid": valid, "help": help})


@dataclass(frozen=True)
class Settings:
    """Every knob of the server; `Settings.from_env()` reads them, tests build them directly."""

    host: str = _setting("0.0.0.0", "HOST", _HOST, "Interface to listen on.")
    port: int = _setting(3001, "PORT", _numbers(0, 65535), "TCP port of the Socket.IO and REST server.")
    data_dir: Path = _setting(Path("./storage"), "DATA_DIR", _DIRECTORY, "Directory for the secret key and the default SQLite database.")
    storage_dir: Path = _setting(Path("./storage/audio-chunks"), "STORAGE_DIR", _DIRECTORY, "Hot tier: raw chunk files, one folder per session.")
    storage_url: str = _setting("", "STORAGE_URL", _S3_URL, "s3://bucket/prefix: chunks in an S3-compatible store (AWS_* variables for endpoint and keys) instead of STORAGE_DIR.")
    archive_storage_path: Path = _setting(Path("./archives"), "ARCHIVE_STORAGE_PATH", _DIRECTORY, "Warm tier: one verified ZIP per session.")
    archive_storage_url: str = _setting("", "ARCHIVE_STORAGE_URL", _S3_URL, "s3://bucket/prefix for the warm tier's ZIPs instead of ARCHIVE_STORAGE_PATH; with STORAGE_URL set and this empty, they go under its .archives/.")
    database_url: str = _setting("", "DATABASE_URL", _DATABASE_URL, "PostgreSQL (driven by asyncpg) or SQLite (by aiosqlite); empty: sqlite:///<DATA_DIR>/scribeai.db.")
    db_busy_timeout_ms: int = _setting(30_000, "DB_BUSY_TIMEOUT_MS", _numbers(0), "SQLite: how long a write waits for a lock another process holds before the chunk is refused (unavailable).")
    redis_url: str = _setting("", "REDIS_URL", _REDIS_URL, "Redis for multi-node rooms (empty: single node).")
    redis_channel: str = _setting("scribeai", "REDIS_CHANNEL", _NOT_EMPTY, "Pub/sub channel the nodes of one deployment share.")
    secret: str = _setting("", "SCRIBEAI_SECRET", _ANY, "JWT HS256 secret; empty: generated once into DATA_DIR/secret.key.")
    auth: str = _setting("jwt", "SCRIBEAI_AUTH", _one_of("jwt", "none"), "'jwt' (default) or 'none' (every connection is user 'anonymous').")
    admin_users: str = _setting("", "ADMIN_USERS", _ANY, "Comma-separated user ids that see the whole server's figures (stats, storage); tokens with role admin do too.")
    cors_origins: str = _setting("*", "CORS_ORIGINS", _ORIGINS, "Comma-separated allowed browser origins for Socket.IO and REST, or '*'.")
    max_chunk_bytes: int = _setting(10 * MIB, "MAX_CHUNK_BYTES", _numbers(1), "Largest accepted audio chunk; larger ones get chunk-error too_large.")
    chunk_duration_ms: int = _setting(15000, "CHUNK_DURATION_MS", _numbers(1), "Assumed chunk length when neither durationMs nor the audio tells.")
    max_queue_size: int = _setting(10, "MAX_QUEUE_SIZE", _numbers(1), "Per connection: untranscribed chunks before backpressure.")
    memory_threshold: float = _setting(0.8, "MEMORY_THRESHOLD", _numbers(0, 1, above=True), "Fraction of MEMORY_BUDGET_BYTES (or machine RAM) that counts as full.")
    memory_budget_bytes: int = _setting(0, "MEMORY_BUDGET_BYTES", _numbers(0), "Process memory budget for backpressure; 0 means the machine's RAM.")
    max_socket_buffer: int = _setting(5 * MIB, "MAX_SOCKET_BUFFER", _numbers(1), "Per connection: bytes waiting to be sent before backpressure.")
    max_processing_latency_ms: int = _setting(5000, "MAX_PROCESSING_LATENCY_MS", _numbers(1), "Recent transcription latency that counts as full.")
    global_queue_limit: int = _setting(1000, "GLOBAL_QUEUE_LIMIT", _numbers(1), "Whole-server transcription backlog that triggers slowDown.")
    max_concurrency: int = _setting(3, "MAX_CONCURRENCY", _numbers(0), "Transcription workers in this process; each whisper worker gets cores/workers threads.")
    transcriber: str = _setting("whisper", "TRANSCRIBER", _one_of("whisper", "openai", "none"), "Engine: whisper, openai or none.")
    whisper_model: str = _setting("", "WHISPER_MODEL", _WHISPER_MODEL, "faster-whisper model path or size name; empty: bundled tiny.en.")
    whisper_beam_size: int = _setting(5, "WHISPER_BEAM_SIZE", _numbers(1, 10), "Beam search width of the final transcripts (live captions are greedy); 1 is greedy: about 15 % less CPU, about 2-5 points more WER at 1 s blobs.")
    whisper_threads: int = _setting(0, "WHISPER_THREADS", _numbers(0), "CPU threads per whisper worker; 0 means the cores this process is given (its CPU affinity, capped by a cgroup CPU quota) / MAX_CONCURRENCY (at least 1).")
    openai_base_url: str = _setting("https://api.openai.com", "OPENAI_BASE_URL", _HTTP_URL, "OpenAI-compatible endpoint for TRANSCRIBER=openai.")
    openai_api_key: str = _setting("", "OPENAI_API_KEY", _ANY, "API key for TRANSCRIBER=openai.")
    transcribe_model: str = _setting("whisper-1", "TRANSCRIBE_MODEL", _NOT_EMPTY, "Model name sent to the OpenAI-compatible endpoint.")
    summary_base_url: str = _setting("", "SUMMARY_BASE_URL", _OPTIONAL_HTTP_URL, "OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp's server, OpenAI) that writes session summaries; empty: extractive summaries, no model.")
    summary_model: str = _setting("", "SUMMARY_MODEL", _ANY, "Model name sent to SUMMARY_BASE_URL (needed when it is set).")
    summary_api_key: str = _setting("", "SUMMARY_API_KEY", _ANY, "API key for SUMMARY_BASE_URL, if it wants one.")
    summary_context_tokens: int = _setting(4096, "SUMMARY_CONTEXT_TOKENS", _numbers(1024, 262_144), "Context window of SUMMARY_MODEL in tokens: longer transcripts are summarised in pieces that fit, then combined.")
    summary_timeout_s: float = _setting(120.0, "SUMMARY_TIMEOUT_S", _numbers(1, 3600), "Seconds one request to SUMMARY_BASE_URL may take before the extractive summary is served instead.")
    gap_wait_s: float = _setting(15.0, "GAP_WAIT_S", _numbers(0), "Seconds transcription waits for a missing chunk before it goes on without it.")
    window_min_s: float = _setting(3.0, "WINDOW_MIN_S", _numbers(1, 30), "Shortest transcription window cut at a pause: longer gives the model more context and the words later.")
    window_target_s: float = _setting(8.0, "WINDOW_TARGET_S", _numbers(1, 30), "Window length whose nearest pause is preferred for a cut (at least WINDOW_MIN_S); windows never pass 30 s.")
    caption_cpu_budget: float = _setting(0.5, "CAPTION_CPU_BUDGET", _numbers(0), "Live captions (joinSession interim: true): seconds of caption decoding per second allowed to this process, all sessions together; 0 turns them off.")
    window_wait_s: float = _setting(1.5, "WINDOW_WAIT_S", _numbers(0), "Seconds held audio waits for a pause nearer WINDOW_TARGET_S before the best pause so far closes its window.")
    idle_flush_s: float = _setting(40.0, "IDLE_FLUSH_S", _numbers(0), "Seconds without a new chunk after which a session's held audio is transcribed to its end, even mid-word (audio that ends in a pause goes after 2 s, or two of the recorder's chunk lengths); keep it above the recorders' timeslice.")
    transcribe_lease_s: float = _setting(120.0, "TRANSCRIBE_LEASE_S", _numbers(0, above=True), "Seconds a worker's claim on a session's stream lasts unless renewed (its process renews it while it lives); a killed worker's streams are taken over after it, or sooner (TRANSCRIBE_TAKEOVER_S).")
    transcribe_takeover_s: float = _setting(20.0, "TRANSCRIBE_TAKEOVER_S", _numbers(1), "Seconds after a transcribing process's last heartbeat (it sends four in this time, and in TRANSCRIBE_LEASE_S) at which another node may take over its session streams without waiting out their leases.")
    transcribe_retry_base_s: float = _setting(1.0, "TRANSCRIBE_RETRY_BASE_S", _numbers(0), "First retry delay of a failed transcription; then x4, x16, then failed.")
    retention_days: int = _setting(7, "RETENTION_DAYS", _numbers(0, MAX_DAYS), "Days a session stays hot after its last activity.")
    archive_retention_days: int = _setting(30, "ARCHIVE_RETENTION_DAYS", _numbers(0, MAX_DAYS), "Days a session's archive is kept before only the transcript remains.")
    retention_schedule: str = _setting("02:00", "RETENTION_SCHEDULE", _SCHEDULE, "Local time of the daily retention run, or 'off'.")
    event_loop: str = _setting("auto", "EVENT_LOOP", _one_of("auto", "uvloop", "asyncio"), "serve and worker: uvloop (installed with the server on Linux and macOS), asyncio, or auto (uvloop when installed).")
    shutdown_timeout: float = _setting(10.0, "SHUTDOWN_TIMEOUT", _numbers(0), "Seconds a graceful stop waits for in-flight chunks.")
    ping_interval: float = _setting(25.0, "PING_INTERVAL", _numbers(0, above=True), "Engine.IO ping interval in seconds.")
    ping_timeout: float = _setting(20.0, "PING_TIMEOUT", _numbers(0, above=True), "Engine.IO ping timeout in seconds.")
    metrics_token: str = _setting("", "METRICS_TOKEN", _ANY, "When set, /metrics requires 'Authorization: Bearer <token>'.")
    log_format: str = _setting("text", "LOG_FORMAT", _one_of("text", "json"), "'text' or 'json' (one object a line).")
    log_level: str = _setting("INFO", "LOG_LEVEL", _LOG_LEVEL, "Python logging level.")
    node_id: str = _setting("", "NODE_ID", _NODE_ID, "Name of this node in logs, job claims and its Engine.IO session ids (unique per node); empty: the host name.")
    demo: str = _setting("on", "DEMO", _one_of("on", "off"), "'on' (default): the demo recorder page at /demo/ (and / redirects there); 'off': neither.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = f.metadata["valid"].problem(value)
            if problem is not None:
                raise SettingError(f"setting {f.metadata['env']}={_shown(f.name, value)}: {problem}")
        if self.window_target_s < self.window_min_s:
            raise SettingError(f"setting WINDOW_TARGET_S={self.window_target_s:g}: expected at least WINDOW_MIN_S "
                               f"({self.window_min_s:g})")
        if self.summary_base_url and not self.summary_model.strip():
            raise SettingError(f"setting SUMMARY_MODEL={self.summary_model!r}: expected a model name when SUMMARY_BASE_URL is set")
        model = self.whisper_model
        # A path (not a size name such as tiny.en or a Hugging Face repo id such as Systran/faster-whisper-tiny) must exist.
        if self.transcriber == "whisper" and model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
            raise SettingError(f"setting WHISPER_MODEL={model!r}: no such model directory")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from environment variables; keyword overrides (CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def effective_database_url(self) -> str:
        return async_database_url(self.database_url) if self.database_url else f"sqlite+aiosqlite:///{self.data_dir / 'scribeai.db'}"

    @property
    def engineio_max_message_bytes(self) -> int:
        # Polling carries binaries as base64 (x4/3): a chunk of too_large_answer_bytes fits with its envelope and the
        # other packets the POST may carry. A larger message closes its connection (with a protocol-error that says so).
        return self.too_large_answer_bytes * 4 // 3 + MIB

    @property
    def too_large_answer_bytes(self) -> int:
        """The largest chunk that is answered chunk-error too_large on either transport (1.5 x MAX_CHUNK_BYTES)."""
        return self.max_chunk_bytes * 3 // 2

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def admin_user_ids(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.admin_users.split(",") if u.strip())


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError as exc:
        number = "a whole number" if kind == "int" else "a number"
        raise SettingError(f"setting {f.metadata['env']}={raw!r}: expected {number}, {f.metadata['valid'].text}") from exc
    return raw


def _shown(name: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    return repr(redacted(value) if name in ("database_url", "redis_url") else str(value))


def documented_settings() -> list[tuple[str, str, str, str]]:
    """(ENV_NAME, default, valid values, help) for each setting, as the README's table lists them."""
    return [(f.metadata["env"], str(f.default), f.metadata["valid"].text, f.metadata["help"]) for f in dataclasses.fields(Settings)]
