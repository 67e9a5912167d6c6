"""Settings: every variable documented in the README with its valid values, environment parsing, flags win,
every value outside its range refused with one line naming the variable, the value and the range."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from scribeai.settings import SettingError, Settings, documented_settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_table_matches_the_settings_class() -> None:
    rows = [(m.group(1), m.group(2), m.group(3), m.group(4)) for m in re.finditer(
        r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \| (.*?) \| (.*) \|$", README, re.MULTILINE)]
    assert rows == documented_settings()


def test_from_env_converts_types_and_overrides_win() -> None:
    settings = Settings.from_env({"PORT": "4000", "MEMORY_THRESHOLD": "0.5", "STORAGE_DIR": "/x", "TRANSCRIBER": "none", "HOST": ""},
                                 port=5000)
    assert (settings.port, settings.memory_threshold, settings.storage_dir, settings.transcriber, settings.host) == (
        5000, 0.5, Path("/x"), "none", "0.0.0.0")


def test_bad_number_is_a_clear_error() -> None:
    with pytest.raises(SettingError) as caught:
        Settings.from_env({"MAX_QUEUE_SIZE": "ten"})
    assert str(caught.value) == "setting MAX_QUEUE_SIZE='ten': expected a whole number, 1 or more"
    with pytest.raises(SettingError) as caught:
        Settings.from_env({"GAP_WAIT_S": "soon"})
    assert str(caught.value) == "setting GAP_WAIT_S='soon': expected a number, 0 or more"


@pytest.mark.parametrize(("env", "message"), [
    ({"TRANSCRIBER": "bogus"}, "setting TRANSCRIBER='bogus': expected 'whisper' or 'openai' or 'none'"),
    ({"SCRIBEAI_AUTH": "bogus"}, "setting SCRIBEAI_AUTH='bogus': expected 'jwt' or 'none'"),
    ({"LOG_FORMAT": "xml"}, "setting LOG_FORMAT='xml': expected 'text' or 'json'"),
    ({"LOG_LEVEL": "loud"}, "setting LOG_LEVEL='loud': expected DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ({"PORT": "70000"}, "setting PORT=70000: expected 0 to 65535"),
    ({"WHISPER_MODEL": "/nonexistent"}, "setting WHISPER_MODEL='/nonexistent': no such model directory"),
    ({"DATABASE_URL": "mysql://ops:hunter2@db/scribe"},  # the password stays out of the line
     "setting DATABASE_URL='mysql://ops:***@db/scribe': expected empty, postgresql://user@host/database or "
     "postgres://… (asyncpg), or sqlite:///path (aiosqlite)"),
    ({"RETENTION_SCHEDULE": "7pm"}, "setting RETENTION_SCHEDULE='7pm': expected HH:MM or HH:MM:SS (00:00 to 23:59:59), or 'off'"),
    ({"MEMORY_THRESHOLD": "2"}, "setting MEMORY_THRESHOLD=2: expected more than 0, at most 1"),
    ({"WINDOW_MIN_S": "10", "WINDOW_TARGET_S": "5"}, "setting WINDOW_TARGET_S=5: expected at least WINDOW_MIN_S (10)"),
    ({"WINDOW_MIN_S": "0.5"}, "setting WINDOW_MIN_S=0.5: expected 1 to 30"),
])
def test_unusable_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message


def test_accepted_values(tmp_path: Path) -> None:
    settings = Settings.from_env({"LOG_FORMAT": "json", "LOG_LEVEL": "debug", "SCRIBEAI_AUTH": "none", "TRANSCRIBER": "openai"})
    assert (settings.log_format, settings.log_level, settings.auth, settings.transcriber) == ("json", "debug", "none", "openai")
    # Size names and Hugging Face repo ids are checked when the model loads; only a path must exist now.
    assert Settings(whisper_model="Systran/faster-whisper-tiny").whisper_model == "Systran/faster-whisper-tiny"
    assert Settings(whisper_model=str(tmp_path)).whisper_model == str(tmp_path)
    assert Settings(transcriber="none", whisper_model="/nonexistent").whisper_model == "/nonexistent"


def test_engineio_limit_leaves_room_for_a_base64_chunk() -> None:
    settings = Settings()
    assert settings.too_large_answer_bytes == settings.max_chunk_bytes * 3 // 2
    # the largest chunk answered too_large still fits one polling POST as base64, with room for its envelope
    assert settings.engineio_max_message_bytes >= settings.too_large_answer_bytes * 4 // 3 + 64 * 1024


# Values out of each setting's range (the README's "valid values") and just past each boundary:
# (variable, value given, the value as the error line shows it). Each is refused with "expected <valid values>".
REFUSED = [
    ("HOST", "256.1.1.1", "'256.1.1.1'"), ("HOST", "bad host", "'bad host'"), ("HOST", "1.2.3", "'1.2.3'"),
    ("PORT", "-1", "-1"), ("PORT", "65536", "65536"),
    ("STORAGE_URL", "s3:/bucket", "'s3:/bucket'"), ("ARCHIVE_STORAGE_URL", "/srv/archives", "'/srv/archives'"),
    ("DATABASE_URL", "postgresql+psycopg2://u@h/db", "'postgresql+psycopg2://u@h/db'"),
    ("DATABASE_URL", "sqlite://", "'sqlite://'"), ("DATABASE_URL", "sqlite:///:memory:", "'sqlite:///:memory:'"),
    ("DATABASE_URL", "postgres://u@h:99999/db", "'postgres://u@h:99999/db'"), ("DATABASE_URL", "scribeai.db", "'scribeai.db'"),
    ("DB_BUSY_TIMEOUT_MS", "-1", "-1"),
    ("REDIS_URL", "localhost:6379", "'localhost:6379'"), ("REDIS_URL", "http://u:pw@h:6379", "'http://u:***@h:6379'"),
    ("REDIS_CHANNEL", " ", "' '"),
    ("CORS_ORIGINS", "https://app.example.com/", "'https://app.example.com/'"), ("CORS_ORIGINS", "app.example.com", "'app.example.com'"),
    ("CORS_ORIGINS", "*,https://a.example", "'*,https://a.example'"), ("CORS_ORIGINS", ",", "','"),
    ("MAX_CHUNK_BYTES", "-5", "-5"), ("MAX_CHUNK_BYTES", "0", "0"),
    ("CHUNK_DURATION_MS", "0", "0"),
    ("MAX_QUEUE_SIZE", "-3", "-3"), ("MAX_QUEUE_SIZE", "0", "0"),
    ("MEMORY_THRESHOLD", "-0.5", "-0.5"), ("MEMORY_THRESHOLD", "0", "0"), ("MEMORY_THRESHOLD", "1.001", "1.001"),
    ("MEMORY_THRESHOLD", "nan", "nan"),
    ("MEMORY_BUDGET_BYTES", "-1", "-1"), ("MAX_SOCKET_BUFFER", "0", "0"), ("MAX_PROCESSING_LATENCY_MS", "0", "0"),
    ("GLOBAL_QUEUE_LIMIT", "-1", "-1"), ("GLOBAL_QUEUE_LIMIT", "0", "0"),
    ("MAX_CONCURRENCY", "-1", "-1"), ("WHISPER_THREADS", "-1", "-1"),
    ("OPENAI_BASE_URL", "api.openai.com", "'api.openai.com'"), ("TRANSCRIBE_MODEL", " ", "' '"),
    ("GAP_WAIT_S", "-1", "-1"), ("GAP_WAIT_S", "inf", "inf"), ("WINDOW_WAIT_S", "-0.1", "-0.1"), ("IDLE_FLUSH_S", "-1", "-1"),
    ("TRANSCRIBE_LEASE_S", "0", "0"), ("TRANSCRIBE_RETRY_BASE_S", "-1", "-1"),
    ("RETENTION_DAYS", "-1", "-1"), ("RETENTION_DAYS", "36501", "36501"),
    ("ARCHIVE_RETENTION_DAYS", "-1", "-1"), ("ARCHIVE_RETENTION_DAYS", "36501", "36501"),
    ("RETENTION_SCHEDULE", "25:00", "'25:00'"), ("RETENTION_SCHEDULE", "23:60", "'23:60'"),
    ("RETENTION_SCHEDULE", "02:00:00:00", "'02:00:00:00'"),
    ("SHUTDOWN_TIMEOUT", "-1", "-1"),
    ("PING_INTERVAL", "0", "0"), ("PING_TIMEOUT", "-1", "-1"), ("PING_TIMEOUT", "0", "0"),
    ("NODE_ID", "n" * 129, repr("n" * 129)),
]
VALID = {env: valid for env, _, valid, _ in documented_settings()}


@pytest.mark.parametrize(("env", "value", "shown"), REFUSED)
def test_values_out_of_range_are_refused_naming_the_range(env: str, value: str, shown: str) -> None:
    with pytest.raises(SettingError) as caught:
        Settings.from_env({env: value})
    assert str(caught.value) == f"setting {env}={shown}: expected {VALID[env]}"


@pytest.mark.parametrize(("env", "value", "expected"), [
    ("HOST", "255.255.255.255", "255.255.255.255"), ("HOST", "::", "::"), ("HOST", "scribe-1.internal", "scribe-1.internal"),
    ("PORT", "0", 0), ("PORT", "65535", 65535), ("DB_BUSY_TIMEOUT_MS", "0", 0),
    ("REDIS_URL", "rediss://:pw@cache:6380/1", "rediss://:pw@cache:6380/1"),
    ("REDIS_URL", "unix:///run/redis.sock", "unix:///run/redis.sock"),
    ("CORS_ORIGINS", "https://app.example.com, http://localhost:5173", "https://app.example.com, http://localhost:5173"),
    ("MAX_CHUNK_BYTES", "1", 1), ("CHUNK_DURATION_MS", "1", 1), ("MAX_QUEUE_SIZE", "1", 1),
    ("MEMORY_THRESHOLD", "0.001", 0.001), ("MEMORY_THRESHOLD", "1", 1.0),
    ("MEMORY_BUDGET_BYTES", "0", 0), ("MAX_SOCKET_BUFFER", "1", 1), ("MAX_PROCESSING_LATENCY_MS", "1", 1),
    ("GLOBAL_QUEUE_LIMIT", "1", 1), ("MAX_CONCURRENCY", "0", 0), ("WHISPER_THREADS", "0", 0),
    ("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
    ("GAP_WAIT_S", "0", 0.0), ("WINDOW_WAIT_S", "0", 0.0), ("IDLE_FLUSH_S", "0", 0.0),
    ("TRANSCRIBE_LEASE_S", "0.001", 0.001), ("TRANSCRIBE_RETRY_BASE_S", "0", 0.0),
    ("RETENTION_DAYS", "0", 0), ("RETENTION_DAYS", "36500", 36500),
    ("ARCHIVE_RETENTION_DAYS", "0", 0), ("ARCHIVE_RETENTION_DAYS", "36500", 36500),
    ("RETENTION_SCHEDULE", "00:00", "00:00"), ("RETENTION_SCHEDULE", "23:59:59", "23:59:59"), ("RETENTION_SCHEDULE", "off", "off"),
    ("SHUTDOWN_TIMEOUT", "0", 0.0), ("PING_INTERVAL", "0.001", 0.001), ("PING_TIMEOUT", "0.001", 0.001),
    ("NODE_ID", "n" * 128, "n" * 128),
])
def test_range_boundaries_are_accepted(env: str, value: str, expected: object) -> None:
    name = next(f.name for f in dataclasses.fields(Settings) if f.metadata["env"] == env)
    assert getattr(Settings.from_env({env: value}), name) == expected


def test_a_directory_setting_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    for env in ("DATA_DIR", "STORAGE_DIR", "ARCHIVE_STORAGE_PATH"):
        for value in (tmp_path / "taken", tmp_path / "taken" / "below"):
            with pytest.raises(SettingError) as caught:
                Settings.from_env({env: str(value)})
            assert str(caught.value) == (f"setting {env}={str(value)!r}: expected a directory (made if missing); "
                                         f"{tmp_path / 'taken'} is a file")
    missing = tmp_path / "not" / "yet"
    assert Settings.from_env({"DATA_DIR": str(missing)}).data_dir == missing


def test_database_url_spellings_mean_the_async_drivers(tmp_path: Path) -> None:
    for given, used in [("postgresql://u:pw@db:5432/scribe", "postgresql+asyncpg://u:pw@db:5432/scribe"),
                        ("postgres://u@db/scribe", "postgresql+asyncpg://u@db/scribe"),
                        ("postgresql+asyncpg://u@db/scribe", "postgresql+asyncpg://u@db/scribe"),
                        (f"sqlite:///{tmp_path}/s.db", f"sqlite+aiosqlite:///{tmp_path}/s.db"),
                        ("sqlite+aiosqlite:///s.db", "sqlite+aiosqlite:///s.db"),
                        ("", f"sqlite+aiosqlite:///{tmp_path}/scribeai.db")]:
        assert Settings.from_env({"DATABASE_URL": given, "DATA_DIR": str(tmp_path)}).effective_database_url == used
    (tmp_path / "taken").write_text("")
    with pytest.raises(SettingError) as caught:
        Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/taken/s.db"})
    assert str(caught.value) == (f"setting DATABASE_URL='sqlite:///{tmp_path}/taken/s.db': expected empty, postgresql://user@host/"
                                 f"database or postgres://… (asyncpg), or sqlite:///path (aiosqlite); {tmp_path / 'taken'} is a file")
