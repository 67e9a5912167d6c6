"""The running server's parts, built once per app by `create_app` and reached through one AppKey."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import socketio
from aiohttp import web

from scribeai.auth import Authenticator
from scribeai.db import Database
from scribeai.idempotency import ChunkIngest
from scribeai.metrics import Metrics
from scribeai.monitor import ProcessMonitor
from scribeai.sessions import SessionService
from scribeai.settings import Settings
from scribeai.store import Store

if TYPE_CHECKING:
    from scribeai.realtime import Realtime
    from scribeai.transcription.pipeline import Pipeline


@dataclass
class Services:
    settings: Settings
    db: Database
    store: Store
    auth: Authenticator
    sessions: SessionService
    ingest: ChunkIngest
    monitor: ProcessMonitor
    sio: socketio.AsyncServer
    pipeline: Pipeline
    realtime: Realtime
    metrics: Metrics

    @staticmethod
    def new_session_id() -> str:
        return uuid.uuid4().hex


services_key = web.AppKey("services", Services)
