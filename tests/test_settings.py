"""Settings: every variable documented in the README, environment parsing, flags win."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scribeai.settings import Settings, documented_settings

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
    with pytest.raises(SystemExit, match="MAX_QUEUE_SIZE='ten': expected int"):
        Settings.from_env({"MAX_QUEUE_SIZE": "ten"})


def test_engineio_limit_leaves_room_for_a_base64_chunk() -> None:
    settings = Settings()
    assert settings.engineio_max_message_bytes >= settings.max_chunk_bytes * 4 // 3 + 64 * 1024
