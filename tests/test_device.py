"""Processes computing at once split the cores between them, and take them back when alone."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaelab.device import CpuShare

PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to share")
def test_each_process_counts_the_others_and_takes_the_cores_back_when_they_finish(tmp_path):
    # flock treats each open file as its own holder, so two shares in one process act as two processes
    first = CpuShare(tmp_path)
    assert first.sharers() == 1
    second = CpuShare(tmp_path)
    assert first.sharers() == second.sharers() == 2
    second.held.close()
    assert first.sharers() == 1


def test_every_thread_of_a_stage_flushes_subnormal_numbers_to_zero():
    # a fresh process, as a stage is: its worker threads are created after pick_device()
    script = (
        "import torch\n"
        "from vaelab.device import pick_device\n"
        "pick_device()\n"
        "tiny = torch.full((4_000_000,), 1e-39)\n"  # subnormal in float32; split across the threads
        "print(torch.get_num_threads(), int((tiny * 1.5).count_nonzero()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=PROJECT)
    threads, nonzero = map(int, result.stdout.split())
    assert threads >= 1 and nonzero == 0
