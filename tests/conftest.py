"""Shared fixtures: a small generated MNIST mirror, and throwaway copies of the project."""

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

PROJECT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "vaelab", "team", "plots", ".gitignore", ".dvcignore"]
N_TRAIN, N_TEST = 320, 100
# where the device-dependent tests compute; bench/gpu_check.sh runs them with VAELAB_TEST_DEVICE=cuda
TEST_DEVICE = torch.device(os.environ.get("VAELAB_TEST_DEVICE", "cpu"))


@pytest.fixture
def device() -> torch.device:
    return TEST_DEVICE


def pytest_collection_modifyitems(items):
    """A test that takes the `device` fixture is device-dependent: `pytest -m device` selects it."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


def _idx_images(images: torch.Tensor) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.numpy().tobytes()


def _idx_labels(labels: torch.Tensor) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.to(torch.uint8).numpy().tobytes()


def write_mirror(directory: Path, seed: int = 0) -> dict[str, str]:
    """Write a small MNIST in the official IDX .gz format; return each file's md5.

    Each digit class is a fixed random stroke pattern plus noise, so a model has something to learn.
    """
    generator = torch.Generator().manual_seed(seed)
    templates = (torch.rand(10, 28, 28, generator=generator) > 0.8).float()
    directory.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for prefix, n in [("train", N_TRAIN), ("t10k", N_TEST)]:
        labels = torch.arange(n) % 10
        noise = torch.rand(n, 28, 28, generator=generator) * 0.3
        images = ((templates[labels] * 0.7 + noise).clamp(0, 1) * 255).to(torch.uint8)
        for kind, payload in [("images-idx3", _idx_images(images)), ("labels-idx1", _idx_labels(labels))]:
            filename = f"{prefix}-{kind}-ubyte.gz"
            data = gzip.compress(payload, mtime=0)
            (directory / filename).write_bytes(data)
            md5[filename] = hashlib.md5(data).hexdigest()
    return md5


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("mirror")
    return directory, write_mirror(directory)


def small_params(md5: dict[str, str], epochs: int = 1) -> dict:
    """The project's params.yaml, shrunk to run in seconds on the generated mirror."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["data"]["md5"] = md5
    params["batch_size"] = 64
    params["latent_dim"] = 4
    params["evaluate"]["batch_size"] = 50
    for variant in params["variants"].values():
        variant["epochs"] = epochs
        variant["kl_warmup_epochs"] = min(variant.get("kl_warmup_epochs", 0), 1)
        variant["hidden"] = [32] * len(variant["hidden"])
        if "train_images" in variant:
            variant["train_images"] = N_TRAIN - 20
    params["judge"].update(epochs=2, batch_size=32, lr=0.01, channels=[8, 16], hidden=32, max_shift=0)
    params["assess"].update(iwae_k=8, samples_per_digit=20, prior_samples=200)
    params["traversal"]["dims"] = 3
    return params


def make_repo(path: Path, params: dict) -> Path:
    """A fresh git + DVC repository holding the project's code and the given params."""
    path.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, path / name)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.name", "vaelab tests"],
        ["git", "config", "user.email", "tests@vaelab.invalid"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "project"],
    ):
        run(command, path)
    return path


def run(command: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command as a user would, with the project's interpreter first on PATH."""
    result = subprocess.run(command, cwd=cwd, env=user_env(env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def user_env(env: dict | None = None) -> dict:
    """A user's environment: the project's interpreter first on PATH, no store or debug setting
    leaking in from the caller's, then env."""
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    full_env.pop("VAELAB_DEBUG", None)
    return {**full_env, **(env or {})}
