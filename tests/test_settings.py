"""Settings: every variable documented in the README, environment parsing, flags win."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scribeai.settings import SettingError, Settings, documented_settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_table_matches_the_settings_class() -> None:
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", README, re.MULTILINE)}
    expected = {env: default for env, default, _ in documented_settings()}
    assert rows == expected


def test_from_env_converts_types_and_overrides_win() -> None:
    settings = Settings.from_env({"PORT": "4000", "MEMORY_THRESHOLD": "0.5", "STORAGE_DIR": "/x", "TRANSCRIBER": "none", "HOST": ""},
                                 port=5000)
    assert (settings.port, settings.memory_threshold, settings.storage_dir, settings.transcriber, settings.host) == (
        5000, 0.5, Path("/x"), "none", "0.0.0.0")


def test_bad_number_is_a_clear_error() -> None:
    with pytest.raises(SettingError, match="MAX_QUEUE_SIZE='ten': expected int"):
        Settings.from_env({"MAX_QUEUE_SIZE": "ten"})


@pytest.mark.parametrize(("env", "message"), [
    ({"TRANSCRIBER": "bogus"}, "setting TRANSCRIBER='bogus': expected 'whisper' or 'openai' or 'none'"),
    ({"SCRIBEAI_AUTH": "bogus"}, "setting SCRIBEAI_AUTH='bogus': expected 'jwt' or 'none'"),
    ({"LOG_FORMAT": "xml"}, "setting LOG_FORMAT='xml': expected 'text' or 'json'"),
    ({"LOG_LEVEL": "loud"}, "setting LOG_LEVEL='loud': expected DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ({"PORT": "70000"}, "setting PORT=70000: expected 0 to 65535"),
    ({"WHISPER_MODEL": "/nonexistent"}, "setting WHISPER_MODEL='/nonexistent': no such model directory"),
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
    assert settings.engineio_max_message_bytes >= settings.max_chunk_bytes * 4 // 3 + 64 * 1024
