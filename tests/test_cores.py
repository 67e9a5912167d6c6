"""Whisper's CPU threads are sized by the cores this process is given (affinity, cgroup quota), not the machine's:
several worker processes pinned to their own cores on one box do not each take every core."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scribeai.monitor import available_cores
from scribeai.transcription.engines import create_engine


@pytest.fixture
def one_core() -> object:
    """This thread pinned to one of its cores (taskset -c N, systemd CPUAffinity=N), the mask given back after."""
    mask = os.sched_getaffinity(0)
    if len(mask) < 2:
        pytest.skip("one core only: pinning to one changes nothing")
    os.sched_setaffinity(0, {min(mask)})
    yield
    os.sched_setaffinity(0, mask)


def test_a_process_pinned_to_one_core_gives_whisper_one_thread(one_core: object, tmp_path: Path) -> None:
    assert (os.cpu_count() or 1) >= 2
    assert available_cores(tmp_path / "no-cgroup") == 1
    assert create_engine("whisper", workers=1).cpu_threads == 1  # type: ignore[attr-defined]
    assert create_engine("whisper", whisper_threads=3).cpu_threads == 3  # type: ignore[attr-defined]  # the setting wins


@pytest.mark.parametrize(("cpu_max", "cores"), [
    ("max 100000\n", len(os.sched_getaffinity(0))),   # no quota
    ("100000 100000\n", 1),                            # CPUQuota=100%, docker --cpus 1
    ("150000 100000\n", min(2, len(os.sched_getaffinity(0)))),  # 1.5 cores: rounded up
    ("1000 100000\n", 1),                              # a sliver of a core is still one thread
    ("garbage", len(os.sched_getaffinity(0))),
])
def test_a_cgroup_quota_caps_the_cores(tmp_path: Path, cpu_max: str, cores: int) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert available_cores(tmp_path / "cpu.max") == cores
