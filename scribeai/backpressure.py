"""The admission decision and its hysteresis (pure): metric readings in, state and signals out."""

from __future__ import annotations

import math
from dataclasses import dataclass

OK = "ok"
BUFFERING = "buffering"
OVERLOADED = "overloaded"

HIGH_WATERMARK = 0.85
LOW_WATERMARK = 0.70


@dataclass(frozen=True)
class Limits:
    max_queue_size: int = 10
    memory_threshold: float = 0.8
    max_socket_buffer: int = 5 * 1024 * 1024
    max_latency_ms: float = 5000.0
    overload_retry_ms: int = 2000


@dataclass(frozen=True)
class Reading:
    """One sample of a connection's load; memory_fraction is process memory over its budget (0..1)."""

    queue_size: int = 0
    memory_fraction: float = 0.0
    socket_buffer_bytes: int = 0
    latency_ms: float = 0.0


@dataclass(frozen=True)
class Decision:
    state: str
    admit: bool            # store this chunk (False only when overloaded)
    can_accept: bool       # the client may keep sending without waiting
    changed: bool          # the state differs from the previous one: tell the client once
    reason: str            # the metric with the highest ratio
    fill_ratio: float
    queue_size: int
    credits: int
    retry_after_ms: int | None = None

    def wire(self) -> dict[str, object]:
        body: dict[str, object] = {
            "canAccept": self.can_accept,
            "state": self.state,
            "reason": self.reason,
            "queueSize": self.queue_size,
            "fillRatio": round(self.fill_ratio, 3),
        }
        if self.retry_after_ms is not None:
            body["retryAfterMs"] = self.retry_after_ms
        return body


def ratios(reading: Reading, limits: Limits) -> dict[str, float]:
    return {
        "queue": reading.queue_size / max(limits.max_queue_size, 1),
        "memory": reading.memory_fraction / limits.memory_threshold if limits.memory_threshold > 0 else 0.0,
        "socket_buffer": reading.socket_buffer_bytes / max(limits.max_socket_buffer, 1),
        "latency": reading.latency_ms / limits.max_latency_ms if limits.max_latency_ms > 0 else 0.0,
    }


def _hard_limit_hit(r: dict[str, float]) -> bool:
    # The queue may run to twice its limit before chunks are refused; latency alone never refuses.
    return r["memory"] >= 1.0 or r["socket_buffer"] >= 1.0 or r["queue"] >= 2.0


class BackpressureState:
    """Per-connection hysteresis: up at 0.85, back to ok only below 0.70, overloaded at a hard limit."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.state = OK
        self.episodes = {BUFFERING: 0, OVERLOADED: 0}

    def __repr__(self) -> str:
        return f"BackpressureState({self.state}, episodes={self.episodes})"

    def update(self, reading: Reading) -> Decision:
        r = ratios(reading, self.limits)
        reason = max(r, key=lambda k: r[k])
        fill = r[reason]
        if _hard_limit_hit(r):
            new = OVERLOADED
        elif fill >= HIGH_WATERMARK or (self.state != OK and fill >= LOW_WATERMARK):
            new = BUFFERING
        else:
            new = OK
        changed = new != self.state
        if changed and new in self.episodes:
            self.episodes[new] += 1
        self.state = new
        return Decision(
            state=new,
            admit=new != OVERLOADED,
            can_accept=new == OK,
            changed=changed,
            reason=reason,
            fill_ratio=fill,
            queue_size=reading.queue_size,
            credits=self._credits(reading) if new == OK else 0,
            retry_after_ms=self.limits.overload_retry_ms if new == OVERLOADED else None,
        )

    def _credits(self, reading: Reading) -> int:
        # Chunks that fit before the queue reaches the high watermark; at least one while ok.
        room = math.floor(HIGH_WATERMARK * self.limits.max_queue_size) - reading.queue_size
        return max(room, 1)
