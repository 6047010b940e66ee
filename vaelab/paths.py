"""Where each stage's outputs live (dvc.yaml names the same paths), and how they are written."""

import json
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

MODELS = Path("models")
REPORTS = Path("reports")


def model_file(variant: str) -> Path:
    return MODELS / f"{variant}.pt"


def checkpoint_file(variant: str) -> Path:
    return Path("checkpoints") / f"{variant}.pt"


def curves_file(variant: str) -> Path:
    return REPORTS / variant / "curves.csv"


def train_metrics_file(variant: str) -> Path:
    return REPORTS / variant / "train.json"


def test_metrics_file(variant: str) -> Path:
    return REPORTS / variant / "test.json"


def images_dir(variant: str) -> Path:
    return REPORTS / variant / "images"


def assess_metrics_file(variant: str) -> Path:
    return REPORTS / variant / "assess.json"


def kl_per_dim_file(variant: str) -> Path:
    return REPORTS / variant / "kl_per_dim.csv"


def judge_model_file() -> Path:
    return MODELS / "judge.pt"


def judge_metrics_file() -> Path:
    return REPORTS / "judge" / "metrics.json"


def report_file() -> Path:
    return REPORTS / "README.md"


def report_figures_dir() -> Path:
    return REPORTS / "figures"


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    A crash mid-write leaves the previous file (or none), never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
