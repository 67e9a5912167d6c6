"""The pure backpressure state machine over sequences of metric readings."""

from __future__ import annotations

import pytest

from scribeai.backpressure import BUFFERING, OK, OVERLOADED, BackpressureState, Limits, Reading

LIMITS = Limits(max_queue_size=10, memory_threshold=0.8, max_socket_buffer=1000, max_latency_ms=5000)


def run(readings: list[Reading]) -> list[tuple[str, bool, bool]]:
    state = BackpressureState(LIMITS)
    return [(d.state, d.can_accept, d.changed) for d in map(state.update, readings)]


def queue(n: int) -> Reading:
    return Reading(queue_size=n)


def test_hysteresis_up_at_085_down_below_070() -> None:
    assert run([queue(n) for n in (0, 5, 8, 9, 8, 7, 6, 9, 5)]) == [
        (OK, True, False),
        (OK, True, False),
        (OK, True, False),          # 0.8 < 0.85
        (BUFFERING, False, True),   # 0.9 >= 0.85: one signal
        (BUFFERING, False, False),  # 0.8: still above the low watermark, no spam
        (BUFFERING, False, False),  # 0.7 is not below 0.70
        (OK, True, True),           # 0.6 < 0.70: one resume signal
        (BUFFERING, False, True),   # a new episode
        (OK, True, True),
    ]


def test_queue_overloads_only_at_twice_its_limit() -> None:
    state = BackpressureState(LIMITS)
    decisions = [state.update(queue(n)) for n in (9, 19, 20, 25, 12, 6)]
    assert [d.state for d in decisions] == [BUFFERING, BUFFERING, OVERLOADED, OVERLOADED, BUFFERING, OK]
    assert [d.admit for d in decisions] == [True, True, False, False, True, True]
    assert decisions[2].retry_after_ms == LIMITS.overload_retry_ms
    assert decisions[1].retry_after_ms is None
    assert state.episodes == {BUFFERING: 2, OVERLOADED: 1}


@pytest.mark.parametrize(("reading", "reason"), [
    (Reading(memory_fraction=0.8), "memory"),
    (Reading(socket_buffer_bytes=1000), "socket_buffer"),
])
def test_hard_limits_refuse_chunks(reading: Reading, reason: str) -> None:
    decision = BackpressureState(LIMITS).update(reading)
    assert (decision.state, decision.admit, decision.can_accept, decision.reason) == (OVERLOADED, False, False, reason)
    assert decision.fill_ratio == pytest.approx(1.0)
    assert decision.wire()["retryAfterMs"] == LIMITS.overload_retry_ms


def test_latency_alone_buffers_but_never_refuses() -> None:
    state = BackpressureState(LIMITS)
    decisions = [state.update(Reading(latency_ms=ms)) for ms in (1000, 4500, 20000, 3000)]
    assert [(d.state, d.admit) for d in decisions] == [(OK, True), (BUFFERING, True), (BUFFERING, True), (OK, True)]
    assert decisions[2].reason == "latency"


def test_fill_ratio_is_the_highest_ratio_and_credits_shrink() -> None:
    state = BackpressureState(LIMITS)
    decision = state.update(Reading(queue_size=2, memory_fraction=0.4, socket_buffer_bytes=100, latency_ms=100))
    assert (decision.reason, decision.fill_ratio) == ("memory", pytest.approx(0.5))
    assert [BackpressureState(LIMITS).update(queue(n)).credits for n in (0, 3, 7, 8, 9)] == [8, 5, 1, 1, 0]
    assert decision.wire() == {"canAccept": True, "state": OK, "reason": "memory", "queueSize": 2, "fillRatio": 0.5}
