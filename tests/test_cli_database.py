"""The real `scribeai` commands against a database or a Redis they cannot use: one line on stderr, exit status 2,
for every command that opens the database (and serve and worker for Redis); the common spellings of a DATABASE_URL work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import POSTGRES_URL, fresh_postgres_database, require_service
from tests.processes import free_port

SECRET = "cli-database-secret-0123456789abcdef0123"
# Every command that opens the database, and how its failure line begins.
COMMANDS = [(["serve", "--host", "127.0.0.1", "--port", "0"], "not starting: "), (["worker"], "not starting: "),
            (["retention", "run"], ""), (["storage", "metrics"], ""), (["transcripts", "retry-failed"], ""),
            (["archive", "verify", "s1"], ""), (["archive", "restore", "s1"], "")]


def run(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "STORAGE_DIR": str(tmp_path / "chunks"), "SCRIBEAI_SECRET": SECRET,
            "TRANSCRIBER": "none", "RETENTION_SCHEDULE": "off", "LOG_LEVEL": "WARNING", "REDIS_URL": ""}
    if args[0] == "worker":  # what a worker checks before the database (it tries REDIS_URL after it)
        full.update(TRANSCRIBER="openai", OPENAI_API_KEY="k", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    full.update(env)
    return subprocess.run([sys.executable, "-m", "scribeai", *args], env=full, capture_output=True, text=True, timeout=60)


def postgres_with(*, user: str | None = None, database: str | None = None, scheme: str = "postgresql") -> tuple[str, str]:
    """(a DATABASE_URL with this user or database, the URL the error line shows)."""
    parts = urlsplit(POSTGRES_URL)
    rest = f"{user or parts.username}@{parts.hostname}:{parts.port or 5432}/{database or parts.path.lstrip('/')}"
    return f"{scheme}://{rest}", f"postgresql+asyncpg://{rest}"


@pytest.mark.parametrize(("command", "starting"), COMMANDS)
@pytest.mark.parametrize("missing", ["database", "role"])
def test_a_database_or_role_that_does_not_exist_is_one_line(command: list[str], starting: str, missing: str,
                                                            tmp_path: Path) -> None:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    name = f"no_such_{missing}_{uuid.uuid4().hex[:8]}"
    given, shown = postgres_with(**{"database" if missing == "database" else "user": name},
                                 scheme="postgres" if missing == "role" else "postgresql")
    done = run(*command, env={"DATABASE_URL": given}, tmp_path=tmp_path)
    assert (done.returncode, done.stderr.strip(), done.stdout) == (
        2, f'scribeai: {starting}cannot open the database {shown} (DATABASE_URL): {missing} "{name}" does not exist', "")


@pytest.mark.parametrize(("command", "starting"), [COMMANDS[0], COMMANDS[3]])
def test_a_database_that_refuses_connections_is_one_line(command: list[str], starting: str, tmp_path: Path) -> None:
    port = free_port()
    done = run(*command, env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/test"}, tmp_path=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"scribeai: {starting}cannot open the database postgresql+asyncpg://postgres@127.0.0.1:{port}/test "
                           "(DATABASE_URL): ")
    assert "Connect call failed" in line or "Connection refused" in line


@pytest.mark.parametrize(("command", "starting"), [COMMANDS[0], COMMANDS[4]])
def test_a_sqlite_file_that_cannot_be_opened_is_one_line(command: list[str], starting: str, tmp_path: Path) -> None:
    (tmp_path / "taken.db").mkdir()  # a directory where the database file should be
    done = run(*command, env={"DATABASE_URL": f"sqlite:///{tmp_path}/taken.db"}, tmp_path=tmp_path)
    assert (done.returncode, done.stderr.strip(), done.stdout) == (
        2, f"scribeai: {starting}cannot open the database sqlite+aiosqlite:///{tmp_path}/taken.db (DATABASE_URL or DATA_DIR): "
           "unable to open database file", "")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
async def test_postgres_spellings_open_the_database(scheme: str, tmp_path: Path) -> None:
    async with fresh_postgres_database("cli") as url:
        given = url.replace("postgresql+asyncpg://", f"{scheme}://")
        done = run("storage", "metrics", "--json", env={"DATABASE_URL": given}, tmp_path=tmp_path)
        assert (done.returncode, done.stderr) == (0, "")
        assert '"tiers"' in done.stdout


def test_sqlite_spelling_opens_the_database(tmp_path: Path) -> None:
    done = run("transcripts", "retry-failed", env={"DATABASE_URL": f"sqlite:///{tmp_path}/plain.db"}, tmp_path=tmp_path)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "requeued 0 failed chunk(s)\n")
    assert (tmp_path / "plain.db").is_file()


async def test_serve_runs_on_a_postgres_url(tmp_path: Path) -> None:
    async with fresh_postgres_database("cli") as url:
        env = {**os.environ, "DATABASE_URL": url.replace("postgresql+asyncpg://", "postgres://"), "DATA_DIR": str(tmp_path),
               "STORAGE_DIR": str(tmp_path / "chunks"), "SCRIBEAI_SECRET": SECRET, "TRANSCRIBER": "none",
               "RETENTION_SCHEDULE": "off"}
        server = subprocess.Popen([sys.executable, "-m", "scribeai", "serve", "--host", "127.0.0.1", "--port", str(free_port())],
                                  env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert server.stderr is not None
            for line in server.stderr:
                if "ScribeAI listening on" in line:
                    break
            else:
                pytest.fail(f"serve exited with {server.wait()} before it listened")
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=30)
        finally:
            server.kill()
        assert server.returncode == 0


@pytest.mark.parametrize("command", [["serve", "--host", "127.0.0.1", "--port", "0"], ["worker"]])
def test_an_unreachable_redis_is_one_line(command: list[str], tmp_path: Path) -> None:
    port = free_port()
    done = run(*command, env={"REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}, tmp_path=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"scribeai: not starting: cannot reach REDIS_URL redis://:***@127.0.0.1:{port}/0: ")
    assert "Connection refused" in line
