"""`scribeai token create` and the secret generated once into DATA_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt


def run_cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "scribeai", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_token_create_with_configured_secret_and_ttl(tmp_path: Path) -> None:
    token = run_cli("token", "create", "--user", "alice", "--ttl", "600",
                    env={"SCRIBEAI_SECRET": "cli-secret-0123456789abcdef0123456789", "DATA_DIR": str(tmp_path)})
    claims = jwt.decode(token, "cli-secret-0123456789abcdef0123456789", algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert 590 <= claims["exp"] - int(time.time()) <= 600
    assert not (tmp_path / "secret.key").exists()


def test_secret_is_generated_once_and_reused(tmp_path: Path) -> None:
    env = {"SCRIBEAI_SECRET": "", "DATA_DIR": str(tmp_path)}
    first = run_cli("token", "create", "--user", "bob", env=env)
    secret = (tmp_path / "secret.key").read_text().strip()
    assert len(secret) >= 48
    assert oct((tmp_path / "secret.key").stat().st_mode & 0o777) == "0o600"
    second = run_cli("token", "create", "--user", "bob", env=env)
    assert (tmp_path / "secret.key").read_text().strip() == secret
    for token in (first, second):
        assert jwt.decode(token, secret, algorithms=["HS256"])["sub"] == "bob"
        assert "exp" not in jwt.decode(token, secret, algorithms=["HS256"])
