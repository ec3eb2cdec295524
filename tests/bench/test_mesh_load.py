"""The hop and capacity benchmarks' own accounting: what a stream's client
saw, the profile's offered rate, CPU read from /proc, and a launch that
exits reported at once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench import mesh
from bench.capacity import offered_tokens_per_s
from bench.mesh_load import Stream, cpu_seconds
from services.inference.sim_profiles import PROFILES


def test_a_stream_counts_its_first_message_as_ttft_and_the_rest_as_inter_token() -> None:
    stream = Stream(start=10.0, times=[10.5, 10.7, 11.1], sizes=[1, 2, 2], messages=4)
    assert stream.tokens == 5
    assert stream.ttft == pytest.approx(0.5)
    # 4 tokens after the first message, over 0.6 s.
    assert stream.itl == pytest.approx(0.15)
    assert Stream(start=0.0, times=[1.0], sizes=[1]).itl is None


def test_offered_rate_follows_the_profile_step_and_splits_over_replicas() -> None:
    profile = PROFILES["llama-3.1-8b-h100"]
    one = 1 / (profile.step_base_s + profile.step_per_seq_s)
    assert offered_tokens_per_s(profile, 1, 1) == pytest.approx(one)
    # Four streams on four replicas: each a batch of one.
    assert offered_tokens_per_s(profile, 4, 4) == pytest.approx(4 * one)
    # Past the batch limit the waiting streams add nothing.
    full = offered_tokens_per_s(profile, profile.max_num_seqs, 1)
    assert offered_tokens_per_s(profile, 2 * profile.max_num_seqs, 1) == pytest.approx(full)


def test_cpu_seconds_of_a_busy_process_grow() -> None:
    spin = "import time\nend = time.time() + 2\nwhile time.time() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        before = cpu_seconds(proc.pid)
        time.sleep(1.0)
        assert cpu_seconds(proc.pid) > before
    finally:
        proc.kill()
        proc.wait()


async def test_a_launch_that_exits_raises_instead_of_waiting_for_health() -> None:
    # Before, this waited out the health deadline and raised DEADLINE_EXCEEDED.
    with pytest.raises(RuntimeError, match="exited with 3"):
        async with mesh.process(
            ["-c", "import sys; sys.exit(3)"], "exits.log", "127.0.0.1:9", "maas.v1.Nothing"
        ):
            pass
