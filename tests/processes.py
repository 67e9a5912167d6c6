"""Real processes for the multi-process tests (`scribeai serve`, `scribeai worker`, nginx): each logs to a file,
is waited for until ready, and is killed at the end, its log printed (pytest shows it when the test failed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from pathlib import Path

ROOT = Path(__file__).parent.parent
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


async def wait_healthy(url: str, process: asyncio.subprocess.Process | None = None,
                       timeout_s: float = START_TIMEOUT_S) -> None:
    """Until `url`/healthz answers 200; RuntimeError if `process` exits first or `timeout_s` passes."""
    import aiohttp

    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as http:
        while asyncio.get_running_loop().time() < deadline:
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"the server exited ({process.returncode}) before it was healthy")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} was not healthy after {timeout_s:.0f} s")


class Processes:
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.processes: list[asyncio.subprocess.Process] = []
        self.logs: list[Path] = []

    async def spawn(self, name: str, *args: str, ready: str | int, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
        """Start a process; ready once its log says `ready` (a text) or its port `ready` (a number) takes connections."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            process = await asyncio.create_subprocess_exec(*args, env={**self.env, **(env or {})}, cwd=ROOT,
                                                           stdout=out, stderr=out)
        self.processes.append(process)
        self.logs.append(log)
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not (listening(ready) if isinstance(ready, int) else ready in log.read_text(errors="replace")):
            assert process.returncode is None, f"{name} exited:\n{log.read_text(errors='replace')}"
            assert asyncio.get_running_loop().time() < deadline, f"{name} did not start:\n{log.read_text(errors='replace')}"
            await asyncio.sleep(0.1)
        return process

    async def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        for log in self.logs:
            if log.exists():
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


NGINX_SITE = ROOT / "deploy" / "nginx" / "scribeai.conf"


SITE_NODES = ("serve-a", "serve-b")  # the nodes the site names


def nginx_site(listen: int, nodes: dict[str, int], site: str | None = None) -> str:
    """deploy/nginx/scribeai.conf with its placeholders filled: nginx on `listen`, each node (serve-a, serve-b) on
    its port; a node not given is left out (its map line, its server line and its own upstream)."""
    text = NGINX_SITE.read_text() if site is None else site
    for name in SITE_NODES:
        key = name.upper().replace("-", "_")
        if name in nodes:
            text = text.replace(f"__{key}__", f"127.0.0.1:{nodes[name]}")
        else:
            text = re.sub(rf"\nupstream scribeai_{key.lower()} \{{[^}}]*\}}\n", "", text)
            text = "".join(line for line in text.splitlines(keepends=True) if key not in line.upper())
    return text.replace("__LISTEN__", f"127.0.0.1:{listen}")


async def start_nginx(processes: Processes, nginx: str, folder: Path, site: str, port: int) -> None:
    """nginx in the foreground with its files under `folder`, the site included in its http block."""
    temp = folder / "nginx-temp"
    temp.mkdir(parents=True, exist_ok=True)
    (folder / "scribeai.conf").write_text(site)
    (folder / "nginx.conf").write_text(
        f"worker_processes 1;\ndaemon off;\npid {folder}/nginx.pid;\nerror_log {folder}/nginx-error.log info;\n"
        + ("user root;\n" if os.geteuid() == 0 else "")
        + f"events {{ worker_connections 512; }}\nhttp {{\n  access_log {folder}/nginx-access.log;\n"
        + "".join(f"  {kind}_temp_path {temp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  include {folder}/scribeai.conf;\n}}\n")
    await processes.spawn("nginx", nginx, "-c", str(folder / "nginx.conf"), "-p", str(folder), ready=port)
    processes.logs.append(folder / "nginx-error.log")
