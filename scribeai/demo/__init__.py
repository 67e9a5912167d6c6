"""The demo recorder page: static files under /demo/, the recorder library from clients/js, and the page's config.

Not part of the REST API (no token, not in the OpenAPI document): the page is plain HTML/CSS/JS in this
folder; `/demo/lib/` serves the library's `.js` files from the repository's `clients/js/` and
`/demo/vendor/` socket.io-client's ESM build from `clients/js/node_modules`. Names are matched against
a strict pattern and resolved inside their folder, so no request reaches a file outside it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from scribeai.services import services_key
from scribeai.settings import Settings

log = logging.getLogger(__name__)
PAGE_DIR = Path(__file__).parent
CLIENT_DIR = PAGE_DIR.parent.parent / "clients" / "js"
VENDOR_NAMES = ("socket.io.esm.min.js", "socket.io.esm.min.js.map")
VENDOR_DIR = CLIENT_DIR / "node_modules" / "socket.io-client" / "dist"
PAGE_FILE = re.compile(r"[A-Za-z0-9_-]+\.(?:html|js|css|png|svg)")
# One or more path segments, none starting with a dot, ending in .js (the library may keep modules in folders)
LIB_FILE = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*\.js")
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate: an edited page or library is picked up on reload
INSTALL_HINT = "npm ci --prefix clients/js (make serve does it)"


@dataclass(frozen=True)
class DemoFiles:
    """Where the page's parts are on this machine; what is missing is said, never crashed on."""

    page_dir: Path = PAGE_DIR
    client_dir: Path = CLIENT_DIR
    vendor_dir: Path = VENDOR_DIR

    @property
    def library(self) -> bool:
        return (self.client_dir / "recorder.js").is_file()

    @property
    def vendor(self) -> bool:
        return (self.vendor_dir / VENDOR_NAMES[0]).is_file()

    def problems(self) -> list[str]:
        """What keeps the page from recording, one sentence each. Shown to any visitor (the page, /demo/config.json):
        named relative to the repository, never by the server's own paths."""
        if not self.client_dir.is_dir():
            return ["the recorder library (clients/js) is not beside this server: the demo page needs a checkout of the "
                    "ScribeAI repository, not an installed package"]
        if not self.library:
            return ["clients/js/recorder.js is missing: the recorder library is incomplete"]
        if not self.vendor:
            return [f"socket.io-client is not installed in clients/js/node_modules: {INSTALL_HINT}"]
        return []


demo_files_key = web.AppKey("demo_files", DemoFiles)


def add_demo(app: web.Application, settings: Settings, files: DemoFiles | None = None) -> None:
    """The demo routes and the startup warning; nothing when DEMO=off."""
    if settings.demo != "on":
        return
    app[demo_files_key] = files or DemoFiles()
    app.router.add_get("/", _to_demo)
    app.router.add_get("/demo", _to_demo)
    app.router.add_get("/demo/", _index)
    app.router.add_get("/demo/config.json", _config)
    app.router.add_get("/demo/lib/{name:.+}", _library)
    app.router.add_get("/demo/vendor/{name}", _vendor)
    app.router.add_get("/demo/{name}", _page_file)
    app.on_startup.append(_warn_if_incomplete)


def demo_url(host: str, port: int) -> str:
    """The page's address as a browser on this machine reaches it."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}/demo/"


async def _warn_if_incomplete(app: web.Application) -> None:
    files = app[demo_files_key]
    for problem in files.problems():
        log.warning("demo page: %s (looked in %s)", problem, files.client_dir)  # the log is the operator's: paths help


async def _to_demo(request: web.Request) -> web.StreamResponse:
    query = request.query_string
    raise web.HTTPFound(f"/demo/?{query}" if query else "/demo/")


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(request.app[demo_files_key].page_dir / "index.html", headers=NO_CACHE)


async def _config(request: web.Request) -> web.Response:
    """What the page needs before it can sign in: the auth mode, and what is missing to record."""
    files = request.app[demo_files_key]
    settings = request.app[services_key].settings
    return web.json_response({"auth": settings.auth, "transcriber": settings.transcriber, "library": files.library,
                              "socketIoClient": files.vendor, "problems": files.problems()}, headers=NO_CACHE)


async def _page_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if not PAGE_FILE.fullmatch(name):
        raise web.HTTPNotFound()
    return _file(request.app[demo_files_key].page_dir, name)


async def _library(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if not LIB_FILE.fullmatch(name) or "node_modules" in name.split("/"):
        raise web.HTTPNotFound()
    return _file(request.app[demo_files_key].client_dir, name)


async def _vendor(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in VENDOR_NAMES:
        raise web.HTTPNotFound()
    return _file(request.app[demo_files_key].vendor_dir, name)


def _file(root: Path, name: str) -> web.FileResponse:
    base = root.resolve()
    path = (base / name).resolve()
    # the patterns already rule out "..": this also refuses a symlink that leads out of the folder
    if not path.is_relative_to(base) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=NO_CACHE)
