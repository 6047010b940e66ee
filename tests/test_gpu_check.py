"""bench/gpu_check.sh in its short mode on the CPU: the GPU run is never the script's first run."""

import json
import math
import os
import shutil
import sys

import yaml

from tests.conftest import PROJECT, run, small_params


def test_the_gpu_check_runs_its_short_mode_on_the_cpu_and_reports_every_section(mirror, tmp_path):
    directory, md5 = mirror
    project = tmp_path / "project"
    for name in ["bench", "stages", "tests", "vaelab"]:
        shutil.copytree(PROJECT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.copy(PROJECT / "pyproject.toml", project)
    (project / "params.yaml").write_text(yaml.safe_dump(small_params(md5), sort_keys=False))
    out = tmp_path / "out"

    result = run(
        ["bash", "bench/gpu_check.sh", "--cpu", str(out)],
        project,
        env={"MNIST_MIRROR": str(directory), "PYTHON": sys.executable, "VAELAB_TEST_DEVICE": "cpu"},
    )

    assert "passed" in (out / "device_tests.txt").read_text()
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "short (CPU)" and report["cpu_reference"] is None
    assert set(report["variants"]) == {"vae", "vae_deep", "cvae", "vae_anneal"}
    for name, figures in report["variants"].items():
        assert "error" not in figures, (name, figures)
        assert figures["graphs_used"] is False  # no CUDA here: the eager steps
        assert math.isfinite(figures["first_epoch_loss"]) and figures["first_epoch_loss"] > 0
        assert figures["epoch_seconds"] > 0 and figures["gemm_floor_seconds"] > 0
    iwae = report["iwae"]
    assert iwae["k"] == 10 and iwae["elbo"] < iwae["bound"] < 0
    # one thread in the short mode's repeated runs: the same seed gives the same bits on the CPU
    for setting in ("default", "deterministic"):
        assert report["determinism"][setting]["records_identical"] is True
        assert report["determinism"][setting]["weights_identical"] is True
    assert "epoch_over_floor=" in result.stdout
    assert os.path.getsize(out / "gpu_check.txt") > 0
