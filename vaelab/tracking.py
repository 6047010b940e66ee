"""MLflow: one run per variant per pipeline run; train opens it, evaluate and render add to it."""

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from vaelab.params import Params


def repo_root() -> Path:
    """The real repository, also when DVC runs a queued experiment in a temporary copy."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def use_store(experiment: str) -> None:
    """Point MLflow at the project's store and experiment.

    MLFLOW_TRACKING_URI wins; otherwise the store is mlflow.db at the repository root with
    artifacts in mlruns/ beside it, which is what `mlflow ui` started there shows. Both paths
    are absolute, so runs of queued experiments outlive DVC's temporary copies.
    """
    custom_uri = os.environ.get("MLFLOW_TRACKING_URI")
    root = repo_root()
    mlflow.set_tracking_uri(custom_uri or f"sqlite:///{root / 'mlflow.db'}")
    if mlflow.get_experiment_by_name(experiment) is None:
        try:
            mlflow.create_experiment(experiment, artifact_location=None if custom_uri else (root / "mlruns").as_uri())
        except MlflowException:
            pass  # another process created it first
    mlflow.set_experiment(experiment)


def _git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


@contextmanager
def training_run(params: Params, variant: str):
    """Open the variant's new run with its params and tags; it ends FINISHED, or FAILED on error."""
    use_store(params.mlflow.experiment)
    dvc_experiment = os.environ.get("DVC_EXP_NAME")
    tags = {"variant": variant, "git_commit": _git_commit()}
    if dvc_experiment:
        tags["dvc_experiment"] = dvc_experiment
        tags["dvc_baseline_rev"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    name = f"{variant} {dvc_experiment}" if dvc_experiment else variant
    with _run(run_name=name, tags=tags) as run:
        mlflow.log_params(params.run_params(variant))
        yield run


@contextmanager
def continued_run(params: Params, run_id: str):
    """Reopen the run that the train stage opened, to add results to it."""
    use_store(params.mlflow.experiment)
    with _run(run_id=run_id) as run:
        yield run


@contextmanager
def _run(**start_args):
    """An MLflow run that ends FINISHED, KILLED on Ctrl-C, or FAILED on any other error."""
    run = mlflow.start_run(**start_args)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def log_flat_metrics(metrics: dict, prefix: str = "", step: int | None = None) -> None:
    """Log a nested dict of figures as metrics named like a/b/c."""
    flat = {}

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}/{key}" if path else str(key))
        else:
            flat[path] = float(node)

    walk(metrics, prefix)
    mlflow.log_metrics(flat, step=step)
