"""Where each stage's outputs live (dvc.yaml names the same paths), and how they are written."""

import errno
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from vaelab.errors import VaelabError

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


# apart from reports/: the report stage depends on the whole of reports/, whatever variants params.yaml names
COMPARISON = Path("comparison")


def report_file() -> Path:
    return COMPARISON / "README.md"


def report_figures_dir() -> Path:
    return COMPARISON / "figures"


def report_metrics_file() -> Path:
    return COMPARISON / "metrics.json"


# Inside a DVC repository (where every stage runs), files are written here first: DVC's own
# temporary folder, which neither git nor DVC lists.
SCRATCH = Path(".dvc") / "tmp" / "vaelab"
SCRATCH_PREFIX = ".vaelab-"


def scratch_path(path: Path) -> Path:
    """A temporary name for `path`, on its file system so that renaming it into place is atomic:
    in SCRATCH when that is on the same file system, else beside `path`. It names this process,
    so that clean_scratch() can tell an abandoned one from one in use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent
    if SCRATCH.parent.parent.is_dir():
        SCRATCH.mkdir(parents=True, exist_ok=True)
        if os.stat(SCRATCH).st_dev == os.stat(path.parent).st_dev:
            folder = SCRATCH
    return folder / f"{SCRATCH_PREFIX}{os.getpid()}-{path.name}"


def clean_scratch(*folders: Path) -> None:
    """Remove the temporary files and folders of processes that died before renaming them (SIGKILL)."""
    for folder in (SCRATCH, *folders):
        for entry in folder.glob(f"{SCRATCH_PREFIX}*") if folder.is_dir() else []:
            pid = entry.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path for `path`; rename it into place only if the block succeeds.

    A crash mid-write leaves the previous file (or none), never a truncated one. A full disk
    stops the stage with one line saying so, and the previous file is kept.
    """
    tmp = scratch_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if _disk_full(err, tmp.parent):
            kept = f"the previous {path} is kept" if path.exists() else f"{path} was not written"
            raise VaelabError(
                f"no space left on the disk holding {path.parent.resolve()} while writing {path.name} "
                f"({shutil.disk_usage(tmp.parent).free // 2**20} MiB free): free some space, then run again; {kept}"
            ) from None
        raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)


def _disk_full(err: BaseException, folder: Path) -> bool:
    """ENOSPC, or torch.save's writer failing where the disk has (almost) nothing left.

    torch.save reports a full disk as `[enforce fail at inline_container.cc] . unexpected pos ...`.
    """
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, RuntimeError) and "inline_container" in str(err) and shutil.disk_usage(folder).free < 2**20


def save_torch(obj, path: Path) -> None:
    """torch.save, atomically. Through an open file: given a file name, torch names the archive's
    root folder after it (here the scratch name, which holds the pid), so identical saves would differ."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
