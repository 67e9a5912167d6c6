"""Prometheus metrics: one registry per app; live values are read at scrape time, latencies observed inline."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
_TRANSCRIBE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)


@dataclass
class LiveGauges:
    """Callables the collector reads on each scrape (set by create_app once the parts exist)."""

    connections: Callable[[], int] = lambda: 0
    queue_depth: Callable[[], int] = lambda: 0
    in_flight: Callable[[], int] = lambda: 0
    real_time_factor: Callable[[], float] = lambda: 0.0
    rss_bytes: Callable[[], int] = lambda: 0
    extra: dict[str, Callable[[], float]] = field(default_factory=dict)


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        g = self.metrics.live
        for name, doc, read in (
            ("scribeai_connections", "Connected Socket.IO clients on this node", g.connections),
            ("scribeai_transcription_queue_depth", "Chunks stored but not yet transcribed (all nodes)", g.queue_depth),
            ("scribeai_transcription_in_flight", "Chunks being transcribed on this node", g.in_flight),
            ("scribeai_transcription_real_time_factor", "Seconds of audio per second of worker time", g.real_time_factor),
            ("scribeai_process_rss_bytes", "Resident memory of this process (sampled)", g.rss_bytes),
            *((name, name, read) for name, read in g.extra.items()),
        ):
            yield GaugeMetricFamily(name, doc, value=float(read()))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.live = LiveGauges()
        r = self.registry
        self.connections_total = Counter("scribeai_connections_opened", "Accepted Socket.IO connections", registry=r)
        self.refused_total = Counter("scribeai_connections_refused", "Refused Socket.IO connections", ["code"], registry=r)
        self.chunks_total = Counter("scribeai_chunks", "Chunks answered, by result", ["result"], registry=r)
        self.chunk_errors_total = Counter("scribeai_chunk_errors", "Chunks rejected, by error code", ["code"], registry=r)
        self.chunk_bytes_total = Counter("scribeai_chunk_bytes", "Audio bytes stored (first copies only)", registry=r)
        self.ack_seconds = Histogram("scribeai_ack_latency_seconds", "Chunk received to ack sent", buckets=_ACK_BUCKETS, registry=r)
        self.backpressure_total = Counter("scribeai_backpressure_transitions", "Backpressure state changes, by new state", ["state"], registry=r)
        self.slowdown_total = Counter("scribeai_slowdown", "slowDown signals sent", registry=r)
        self.transcribe_seconds = Histogram("scribeai_transcription_seconds", "Time to transcribe one chunk",
                                            buckets=_TRANSCRIBE_BUCKETS, registry=r)
        self.transcriptions_total = Counter("scribeai_transcriptions", "Transcription attempts, by outcome", ["outcome"], registry=r)
        self.captions_total = Counter("scribeai_captions", "Live caption updates of watched sessions, by outcome: sent, "
                                      "unchanged, failed, or not made (over_budget, chunk_waiting)", ["outcome"], registry=r)
        self.retention_runs_total = Counter("scribeai_retention_runs", "Retention runs, by result", ["result"], registry=r)
        self.retention_sessions_total = Counter("scribeai_retention_sessions", "Sessions moved by retention, by action", ["action"], registry=r)
        r.register(_LiveCollector(self))
        ProcessCollector(registry=r)
        # The per-chunk counters, resolved once: labels() takes a lock and a dict lookup on every call.
        self._stored = self.chunks_total.labels("stored")
        self._duplicate = self.chunks_total.labels("duplicate")

    def chunk_stored(self, size: int, duplicate: bool) -> None:
        """Count one answered chunk (its bytes only the first time)."""
        if duplicate:
            self._duplicate.inc()
        else:
            self._stored.inc()
            self.chunk_bytes_total.inc(size)

    def __repr__(self) -> str:
        return f"Metrics({len(list(self.registry.collect()))} families)"

    def render(self) -> bytes:
        return generate_latest(self.registry)
