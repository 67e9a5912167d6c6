"""The real `scribeai` command: tokens and the secret, fast startup, one-line errors, a graceful stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest


def run_cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "scribeai", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_token_create_with_configured_secret_and_ttl(tmp_path: Path) -> None:
    env = {"SCRIBEAI_SECRET": "cli-secret-0123456789abcdef0123456789", "DATA_DIR": str(tmp_path)}
    done = run_failing("token", "create", "--user", "alice", "--ttl", "600", env=env)
    assert (done.returncode, done.stderr) == (0, "scribeai: signed with SCRIBEAI_SECRET\n")
    claims = jwt.decode(done.stdout.strip(), "cli-secret-0123456789abcdef0123456789", algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert 590 <= claims["exp"] - int(time.time()) <= 600
    assert "role" not in claims
    assert not (tmp_path / "secret.key").exists()
    admin = run_cli("token", "create", "--user", "ops", "--admin", env=env)
    assert jwt.decode(admin, "cli-secret-0123456789abcdef0123456789", algorithms=["HS256"])["role"] == "admin"


def _without_secret_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "SCRIBEAI_SECRET")}


def test_token_create_never_makes_a_secret(tmp_path: Path) -> None:
    """Run from another folder it once made a secret.key there and printed a token the server refused."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "scribeai", "token", "create", "--user", "alice"], env=_without_secret_settings(),
                          cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip().splitlines() == [
        f"scribeai: no token secret: SCRIBEAI_SECRET is not set and {elsewhere / 'storage' / 'secret.key'} does not exist; "
        "start the server once (it creates that file), or set SCRIBEAI_SECRET, or DATA_DIR to the server's data directory"]
    assert list(elsewhere.iterdir()) == []
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "secret.key").write_text("\n")
    done = run_failing("token", "create", "--user", "alice", env={"DATA_DIR": str(elsewhere / "data"), "SCRIBEAI_SECRET": ""})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"scribeai: no token secret: SCRIBEAI_SECRET is not set and {elsewhere / 'data' / 'secret.key'} "
                                  "is empty; start the server once")


def test_token_create_signs_with_the_secret_the_server_made(tmp_path: Path) -> None:
    env = {**_without_secret_settings(), "DATA_DIR": str(tmp_path / "data"), "STORAGE_DIR": str(tmp_path / "chunks"),
           "TRANSCRIBER": "none", "RETENTION_SCHEDULE": "off"}
    server = subprocess.Popen([sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1", "--port", "0"],
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "ScribeAI listening on" in line:
                break
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    finally:
        server.kill()
    path = tmp_path / "data" / "secret.key"
    secret = path.read_text().strip()
    assert len(secret) >= 48
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "scribeai", "token", "create", "--user", "bob"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr) == (0, f"scribeai: signed with the secret in {path}\n")
        assert jwt.decode(done.stdout.strip(), secret, algorithms=["HS256"]) == {"sub": "bob", "iat": pytest.approx(time.time(), abs=60)}
    assert path.read_text().strip() == secret


@pytest.mark.parametrize("user", ["", "   ", "\t", "u" * 257])
def test_token_create_refuses_a_user_id_the_server_would_not_take(user: str, tmp_path: Path) -> None:
    done = run_failing("token", "create", "--user", user, env={"SCRIBEAI_SECRET": "s" * 40, "DATA_DIR": str(tmp_path)})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip("\n").splitlines() == [
        f"scribeai: token create --user {user!r}: expected a user id of 1 to 256 characters, not blank"]


def run_failing(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scribeai", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


HEAVY_MODULES = ("av", "numpy", "faster_whisper", "ctranslate2", "socketio", "aiohttp", "sqlalchemy", "sqlmodel", "scribeai.app")


@pytest.mark.parametrize("args", [["--help"], ["token", "create", "--user", "alice"]])
def test_light_commands_import_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    probe = ("import sys\nfrom scribeai.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, *args],
                          env={**os.environ, "DATA_DIR": str(tmp_path), "SCRIBEAI_SECRET": "light-secret-0123456789abcdef01234567"},
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("env", "message"), [
    ({"PORT": "abc"}, "scribeai: setting PORT='abc': expected a whole number, 0 to 65535"),
    ({"TRANSCRIBER": "bogus"}, "scribeai: setting TRANSCRIBER='bogus': expected 'whisper' or 'openai' or 'none'"),
    ({"SCRIBEAI_AUTH": "bogus"}, "scribeai: setting SCRIBEAI_AUTH='bogus': expected 'jwt' or 'none'"),
    ({"LOG_FORMAT": "xml"}, "scribeai: setting LOG_FORMAT='xml': expected 'text' or 'json'"),
    ({"EVENT_LOOP": "trio"}, "scribeai: setting EVENT_LOOP='trio': expected 'auto' or 'uvloop' or 'asyncio'"),
    ({"WHISPER_MODEL": "/nonexistent"}, "scribeai: setting WHISPER_MODEL='/nonexistent': no such model directory"),
    ({"RETENTION_SCHEDULE": "25:00"},
     "scribeai: setting RETENTION_SCHEDULE='25:00': expected HH:MM or HH:MM:SS (00:00 to 23:59:59), or 'off'"),
    ({"HOST": "256.1.1.1"}, "scribeai: setting HOST='256.1.1.1': expected an IP address or host name"),
    ({"MAX_CHUNK_BYTES": "-5"}, "scribeai: setting MAX_CHUNK_BYTES=-5: expected 1 or more"),
    ({"MEMORY_THRESHOLD": "2"}, "scribeai: setting MEMORY_THRESHOLD=2: expected more than 0, at most 1"),
    ({"DATABASE_URL": "mysql://ops:hunter2@db/scribe"}, "scribeai: setting DATABASE_URL='mysql://ops:***@db/scribe': "
     "expected empty, postgresql://user@host/database or postgres://… (asyncpg), or sqlite:///path (aiosqlite)"),
])
def test_bad_setting_is_one_line_and_status_2(env: dict[str, str], message: str, tmp_path: Path) -> None:
    done = run_failing("serve", env={**env, "DATA_DIR": str(tmp_path), "STORAGE_DIR": str(tmp_path / "chunks")})
    assert (done.returncode, done.stderr.strip(), done.stdout) == (2, message, "")


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["token", "create", "--user", "alice"], ["retention", "run"],
                                     ["storage", "metrics"], ["transcripts", "retry-failed"]])
def test_every_command_refuses_a_data_dir_that_is_a_file(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    done = run_failing(*command, env={"DATA_DIR": str(tmp_path / "data"), "STORAGE_DIR": str(tmp_path / "chunks")})
    assert (done.returncode, done.stderr.strip(), done.stdout) == (
        2, f"scribeai: setting DATA_DIR='{tmp_path / 'data'}': expected a directory (made if missing); {tmp_path / 'data'} is a file", "")


def test_whisper_model_that_is_no_name_is_one_line_and_status_2(tmp_path: Path) -> None:
    done = run_failing("serve", "--port", "0", env={"WHISPER_MODEL": "not a model!", "DATA_DIR": str(tmp_path),
                                                   "STORAGE_DIR": str(tmp_path / "chunks")})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "scribeai: setting WHISPER_MODEL='not a model!': Invalid model size 'not a model!'")


def test_port_in_use_is_one_line_and_status_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_failing("serve", "--host", "127.0.0.1", "--port", str(port),
                           env={"TRANSCRIBER": "none", "DATA_DIR": str(tmp_path), "STORAGE_DIR": str(tmp_path / "chunks")})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"scribeai: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in done.stderr


def test_host_no_resolver_knows_is_one_line_and_status_2(tmp_path: Path) -> None:
    done = run_failing("serve", "--host", "nosuchhost.invalid", "--port", "0",
                       env={"TRANSCRIBER": "none", "DATA_DIR": str(tmp_path), "STORAGE_DIR": str(tmp_path / "chunks"),
                            "RETENTION_SCHEDULE": "off", "LOG_LEVEL": "WARNING"})
    assert (done.returncode, done.stdout) == (2, "")
    [line] = done.stderr.strip().splitlines()  # the resolver's words vary ("Name or service not known")
    assert line.startswith("scribeai: cannot listen on nosuchhost.invalid:0: ")
    assert line.endswith(" (HOST must be an address or a name of this machine)")


@pytest.mark.parametrize("ttl", ["-5", "0"])
def test_token_ttl_must_be_positive(ttl: str, tmp_path: Path) -> None:
    done = run_failing("token", "create", "--user", "alice", "--ttl", ttl, env={"DATA_DIR": str(tmp_path)})
    assert (done.returncode, done.stdout) == (2, "")
    assert f"argument --ttl: must be more than 0 seconds (a token with ttl {ttl} is expired at once)" in done.stderr


def test_unknown_arguments_are_refused_and_stress_has_its_options() -> None:
    done = run_failing("token", "create", "--user", "alice", "--bogus", env={})
    assert (done.returncode, done.stderr.strip().splitlines()[-1]) == (2, "scribeai: error: unrecognized arguments: --bogus")
    stress_help = run_cli("stress", "--help", env={})
    assert stress_help.startswith("usage: scribeai stress [-h] [--chunks CHUNKS]")
    assert "PROTOCOL.md" not in stress_help and "seed" not in stress_help


@pytest.mark.parametrize(("event_loop", "expected"), [(None, "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_sigterm_stops_the_server_and_says_so(event_loop: str | None, expected: str, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "TRANSCRIBER": "none", "DATA_DIR": str(tmp_path), "STORAGE_DIR": str(tmp_path / "chunks"),
           "RETENTION_SCHEDULE": "off"}
    env.pop("EVENT_LOOP", None)
    if event_loop is not None:
        env["EVENT_LOOP"] = event_loop
    server = subprocess.Popen([sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "ScribeAI listening on" in line:
                # the default (auto) takes uvloop, which the server's own requirements install
                assert line.rstrip().endswith(f"(event loop: {expected})")
                break
        server.send_signal(signal.SIGTERM)  # at once: a graceful stop from the first line that says it listens
        _, rest = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 0
    assert rest.strip().splitlines()[-1].endswith("INFO scribeai: ScribeAI stopped")


async def test_retry_failed_names_a_session_that_does_not_exist(tmp_path: Path) -> None:
    from scribeai.db import Database
    from scribeai.models import Chunk, ChunkStatus, RecordingSession

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'scribeai.db'}")
    await db.create_all()
    async with db.write() as s:
        s.add(RecordingSession(id="s1", user_id="alice"))
        s.add(RecordingSession(id="s2", user_id="alice"))
        await s.flush()
        s.add(Chunk(session_id="s1", seq=0, size=1, sha256="0" * 64, mime_type="audio/webm", path="s1/0.webm",
                    status=ChunkStatus.FAILED))
    await db.dispose()
    env = {"DATA_DIR": str(tmp_path), "SCRIBEAI_SECRET": "s" * 40, "LOG_LEVEL": "WARNING"}
    done = run_failing("transcripts", "retry-failed", "--session", "does-not-exist", env=env)
    assert (done.returncode, done.stderr, done.stdout) == (
        2, "scribeai: transcripts retry-failed --session 'does-not-exist': no such session\n", "")
    assert run_cli("transcripts", "retry-failed", "--session", "s2", env=env) == "requeued 0 failed chunk(s)"  # exists, none failed
    assert run_cli("transcripts", "retry-failed", "--session", "s1", env=env) == "requeued 1 failed chunk(s)"
