"""Settings: one frozen object, read from the environment in one place."""

from __future__ import annotations

import dataclasses
import logging
import re
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
# Settings with a fixed set of values; anything else is refused when Settings is built.
_CHOICES = {"transcriber": ("whisper", "openai", "none"), "auth": ("jwt", "none"), "log_format": ("text", "json"),
            "demo": ("on", "off"), "event_loop": ("auto", "uvloop", "asyncio")}


class SettingError(ValueError):
    """A setting's value is unusable; the CLI prints it as one line and exits with status 2."""


def _setting(default: Any, env: str, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    """Every knob of the server; `Settings.from_env()` reads them, tests build them directly."""

    host: str = _setting("0.0.0.0", "HOST", "Interface to listen on.")
    port: int = _setting(3001, "PORT", "TCP port of the Socket.IO and REST server.")
    data_dir: Path = _setting(Path("./storage"), "DATA_DIR", "Directory for the secret key and the default SQLite database.")
    storage_dir: Path = _setting(Path("./storage/audio-chunks"), "STORAGE_DIR", "Hot tier: raw chunk files, one folder per session.")
    storage_url: str = _setting("", "STORAGE_URL", "s3://bucket/prefix: chunks in an S3-compatible store (AWS_* variables for endpoint and keys) instead of STORAGE_DIR.")
    archive_storage_path: Path = _setting(Path("./archives"), "ARCHIVE_STORAGE_PATH", "Warm tier: one verified ZIP per session.")
    archive_storage_url: str = _setting("", "ARCHIVE_STORAGE_URL", "s3://bucket/prefix for the warm tier's ZIPs instead of ARCHIVE_STORAGE_PATH; with STORAGE_URL set and this empty, they go under its .archives/.")
    database_url: str = _setting("", "DATABASE_URL", "SQLAlchemy async URL; default sqlite+aiosqlite:///<DATA_DIR>/scribeai.db.")
    db_busy_timeout_ms: int = _setting(30_000, "DB_BUSY_TIMEOUT_MS", "SQLite: how long a write waits for a lock another process holds before the chunk is refused (unavailable).")
    redis_url: str = _setting("", "REDIS_URL", "Redis for multi-node rooms (empty: single node).")
    redis_channel: str = _setting("scribeai", "REDIS_CHANNEL", "Pub/sub channel the nodes of one deployment share.")
    secret: str = _setting("", "SCRIBEAI_SECRET", "JWT HS256 secret; empty: generated once into DATA_DIR/secret.key.")
    auth: str = _setting("jwt", "SCRIBEAI_AUTH", "'jwt' (default) or 'none' (every connection is user 'anonymous').")
    admin_users: str = _setting("", "ADMIN_USERS", "Comma-separated user ids that see the whole server's figures (stats, storage); tokens with role admin do too.")
    cors_origins: str = _setting("*", "CORS_ORIGINS", "Comma-separated allowed browser origins for Socket.IO and REST, or '*'.")
    max_chunk_bytes: int = _setting(10 * MIB, "MAX_CHUNK_BYTES", "Largest accepted audio chunk; larger ones get chunk-error too_large.")
    chunk_duration_ms: int = _setting(15000, "CHUNK_DURATION_MS", "Assumed chunk length when neither durationMs nor the audio tells.")
    max_queue_size: int = _setting(10, "MAX_QUEUE_SIZE", "Per connection: untranscribed chunks before backpressure.")
    memory_threshold: float = _setting(0.8, "MEMORY_THRESHOLD", "Fraction of MEMORY_BUDGET_BYTES (or machine RAM) that counts as full.")
    memory_budget_bytes: int = _setting(0, "MEMORY_BUDGET_BYTES", "Process memory budget for backpressure; 0 means the machine's RAM.")
    max_socket_buffer: int = _setting(5 * MIB, "MAX_SOCKET_BUFFER", "Per connection: bytes waiting to be sent before backpressure.")
    max_processing_latency_ms: int = _setting(5000, "MAX_PROCESSING_LATENCY_MS", "Recent transcription latency that counts as full.")
    global_queue_limit: int = _setting(1000, "GLOBAL_QUEUE_LIMIT", "Whole-server transcription backlog that triggers slowDown.")
    max_concurrency: int = _setting(3, "MAX_CONCURRENCY", "Transcription workers in this process; each whisper worker gets cores/workers threads.")
    transcriber: str = _setting("whisper", "TRANSCRIBER", "Engine: whisper, openai or none.")
    whisper_model: str = _setting("", "WHISPER_MODEL", "faster-whisper model path or size name; empty: bundled tiny.en.")
    whisper_threads: int = _setting(0, "WHISPER_THREADS", "CPU threads per whisper worker; 0 means cores / MAX_CONCURRENCY (at least 1).")
    openai_base_url: str = _setting("https://api.openai.com", "OPENAI_BASE_URL", "OpenAI-compatible endpoint for TRANSCRIBER=openai.")
    openai_api_key: str = _setting("", "OPENAI_API_KEY", "API key for TRANSCRIBER=openai.")
    transcribe_model: str = _setting("whisper-1", "TRANSCRIBE_MODEL", "Model name sent to the OpenAI-compatible endpoint.")
    gap_wait_s: float = _setting(15.0, "GAP_WAIT_S", "Seconds transcription waits for a missing chunk before it goes on without it.")
    window_wait_s: float = _setting(5.0, "WINDOW_WAIT_S", "Seconds held audio waits for a pause nearer 20 s before the best pause so far closes its window.")
    idle_flush_s: float = _setting(40.0, "IDLE_FLUSH_S", "Seconds without a new chunk after which a session's held audio is transcribed to its end; keep it above the recorders' timeslice, or every chunk's end cuts a window (mid-word).")
    transcribe_lease_s: float = _setting(120.0, "TRANSCRIBE_LEASE_S", "Seconds a worker's claim on a session's stream lasts unless renewed; a killed worker's streams are taken over after it.")
    transcribe_retry_base_s: float = _setting(1.0, "TRANSCRIBE_RETRY_BASE_S", "First retry delay of a failed transcription; then x4, x16, then failed.")
    retention_days: int = _setting(7, "RETENTION_DAYS", "Days a session stays hot after its last activity.")
    archive_retention_days: int = _setting(30, "ARCHIVE_RETENTION_DAYS", "Days a session's archive is kept before only the transcript remains.")
    retention_schedule: str = _setting("02:00", "RETENTION_SCHEDULE", "Local time of the daily retention run, or 'off'.")
    event_loop: str = _setting("auto", "EVENT_LOOP", "serve and worker: uvloop (installed with the server on Linux and macOS), asyncio, or auto (uvloop when installed).")
    shutdown_timeout: float = _setting(10.0, "SHUTDOWN_TIMEOUT", "Seconds a graceful stop waits for in-flight chunks.")
    ping_interval: float = _setting(25.0, "PING_INTERVAL", "Engine.IO ping interval in seconds.")
    ping_timeout: float = _setting(20.0, "PING_TIMEOUT", "Engine.IO ping timeout in seconds.")
    metrics_token: str = _setting("", "METRICS_TOKEN", "When set, /metrics requires 'Authorization: Bearer <token>'.")
    log_format: str = _setting("text", "LOG_FORMAT", "'text' or 'json' (one object a line).")
    log_level: str = _setting("INFO", "LOG_LEVEL", "Python logging level.")
    node_id: str = _setting("", "NODE_ID", "Name of this node in logs and job claims (unique per node); empty: the host name.")
    demo: str = _setting("on", "DEMO", "'on' (default): the demo recorder page at /demo/ (and / redirects there); 'off': neither.")

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise SettingError(f"setting {_env(name)}={getattr(self, name)!r}: expected {' or '.join(map(repr, choices))}")
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise SettingError(f"setting LOG_LEVEL={self.log_level!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if not 0 <= self.port <= 65535:
            raise SettingError(f"setting PORT={self.port}: expected 0 to 65535")
        for name in ("storage_url", "archive_storage_url"):
            url = getattr(self, name)
            if url and not re.fullmatch(r"s3://[A-Za-z0-9.\-_]{3,63}(/[^\s]*)?", url):
                raise SettingError(f"setting {_env(name)}={url!r}: expected s3://bucket/prefix")
        if self.max_concurrency < 0:
            raise SettingError(f"setting MAX_CONCURRENCY={self.max_concurrency}: expected 0 (no transcription here) or more")
        if self.transcribe_lease_s <= 0:
            raise SettingError(f"setting TRANSCRIBE_LEASE_S={self.transcribe_lease_s:g}: expected more than 0 seconds")
        if self.db_busy_timeout_ms < 0:
            raise SettingError(f"setting DB_BUSY_TIMEOUT_MS={self.db_busy_timeout_ms}: expected 0 or more milliseconds")
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
                values[f.name] = _convert(f.type, raw, f.metadata["env"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'scribeai.db'}"

    @property
    def engineio_max_message_bytes(self) -> int:
        # Polling carries binaries as base64 (x1.34) and may pack several packets into one POST.
        return int(self.max_chunk_bytes * 1.4) + MIB

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def admin_user_ids(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.admin_users.split(",") if u.strip())


def _convert(kind: Any, raw: str, name: str) -> Any:
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError as exc:
        raise SettingError(f"setting {name}={raw!r}: expected {kind}") from exc
    return raw


def _env(name: str) -> str:
    return str(next(f.metadata["env"] for f in dataclasses.fields(Settings) if f.name == name))


def documented_settings() -> list[tuple[str, str, str]]:
    """(ENV_NAME, default, help) for each setting, as the README's table lists them."""
    return [(f.metadata["env"], str(f.default), f.metadata["help"]) for f in dataclasses.fields(Settings)]
