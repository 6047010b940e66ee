"""MLflow: one run per variant per training; train opens and closes it, the later stages add to it.

The later stages find the run by the trained model's content hash, a tag of the run, not by an id
stored in the model: the model file stays the same bytes whoever trained it, and a clone whose
store lacks the run (pulled from a DVC remote, pointed at another store) still logs its figures.
"""

import hashlib
import os
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vaelab import paths
from vaelab.errors import server_unreachable, uninterruptible
from vaelab.params import MlflowParams, Params

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MODEL_DIGEST_TAG = "model_sha256"  # the sha256 of the models/<variant>.pt a training run wrote


def repo_root() -> Path:
    """The real repository, also when DVC runs a queued experiment in a temporary copy."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def use_store(opts: MlflowParams) -> None:
    """Point MLflow at the project's store and experiment.

    MLFLOW_TRACKING_URI wins; otherwise the store is mlflow.db at the repository root with
    artifacts in mlruns/ beside it, which is what `mlflow ui` started there shows. Both paths
    are absolute, so runs of queued experiments outlive DVC's temporary copies.

    Parallel experiments share that SQLite file: writers wait for each other (up to
    mlflow.busy_timeout_seconds) instead of failing with "database is locked", and a file lock lets one process at a time
    create or migrate the schema and the experiment.
    """
    custom_uri = os.environ.get("MLFLOW_TRACKING_URI")
    database = repo_root() / "mlflow.db"
    mlflow.set_tracking_uri(custom_uri or f"sqlite:///{database}?timeout={opts.busy_timeout_seconds:g}")
    with FileLock(f"{database}.lock"):
        if mlflow.get_experiment_by_name(opts.experiment) is None:
            artifacts = None if custom_uri else (database.parent / "mlruns").as_uri()
            mlflow.create_experiment(opts.experiment, artifact_location=artifacts)
        mlflow.set_experiment(opts.experiment)


def _git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


@contextmanager
def training_run(params: Params, variant: str, run_params: dict, resume_run_id: str | None = None):
    """A trained model's run: a new one with its params and tags, or the interrupted one to resume.

    It ends FINISHED, KILLED on Ctrl-C or SIGTERM, FAILED on any other error.
    """
    use_store(params.mlflow)
    if resume_run_id:
        with _run(run_id=resume_run_id) as run:
            yield run
        return
    dvc_experiment = os.environ.get("DVC_EXP_NAME")
    tags = {"variant": variant, "git_commit": _git_commit()}
    if dvc_experiment:
        tags["dvc_experiment"] = dvc_experiment
        tags["dvc_baseline_rev"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    name = f"{variant} {dvc_experiment}" if dvc_experiment else variant
    with _run(run_name=name, tags=tags) as run:
        mlflow.log_params(run_params)
        yield run


def log_epochs(run_id: str, records: list[dict]) -> None:
    """Log the epochs of `records` that the run does not have yet, each at its epoch as step.

    After a crash between a checkpoint and its MLflow call, this fills the gap without
    logging any epoch twice.
    """
    with uninterruptible():
        logged = {m.step for m in MlflowClient().get_metric_history(run_id, "train_loss")}
        for record in records:
            if record["epoch"] not in logged:
                mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])


def close_abandoned_run(params: Params, run_id: str) -> None:
    """Mark KILLED a run whose process died (SIGKILL) and whose checkpoint is not resumed."""
    use_store(params.mlflow)
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
    except MlflowException:
        pass  # the run is in another store or was deleted: nothing to close


def model_digest(variant: str) -> str:
    return hashlib.sha256(paths.model_file(variant).read_bytes()).hexdigest()


def tag_trained_model(variant: str) -> None:
    """Mark the active training run as the one that wrote the variant's model file."""
    mlflow.set_tag(MODEL_DIGEST_TAG, model_digest(variant))


def model_run(params: Params, variant: str) -> "ExistingRun":
    """The run of the variant's trained model in the current store, for a later stage to add to.

    It is the latest run tagged with the model file's hash (two identical trainings write the
    same file). A store without one, as in a clone that pulled the model from a DVC remote and
    points at another store or at none, gets a new finished run with that tag and the variant's
    params, and the stage says so in one line.
    """
    use_store(params.mlflow)
    digest = model_digest(variant)
    client = MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(params.mlflow.experiment).experiment_id
    found = client.search_runs(
        [experiment_id], f"tags.{MODEL_DIGEST_TAG} = '{digest}'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if found:
        return ExistingRun(found[0].info.run_id)
    tags = {"variant": variant, MODEL_DIGEST_TAG: digest, "git_commit": _git_commit(), "trained_elsewhere": "true"}
    run = client.create_run(experiment_id, run_name=variant, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.run_params(variant).items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    print(
        f"{variant}: no run in this MLflow store trained {paths.model_file(variant)} (sha256 {digest[:12]}); "
        f"its results go to a new run, {run.info.run_id}",
        file=sys.stderr,
    )
    return ExistingRun(run.info.run_id)


class ExistingRun:
    """Adds results to a finished run, through MLflow's client.

    The run is never reopened: its status and end time stay as its training left them, so a
    stage killed while adding to it (even by SIGKILL) cannot leave it RUNNING.
    """

    def __init__(self, run_id: str):
        self.client, self.run_id = MlflowClient(), run_id

    def log_metrics(self, metrics: dict, prefix: str = "") -> None:
        """Log a nested dict of figures as metrics named like a/b/c."""
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, 0) for key, value in flatten(metrics, prefix).items()]
        for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + MAX_METRICS_PER_BATCH])

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_artifacts(self, directory: str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, directory, artifact_path)


@contextmanager
def _run(**start_args):
    """An MLflow run that ends FINISHED, KILLED on Ctrl-C, or FAILED on any other error."""
    run = mlflow.start_run(**start_args)
    try:
        yield run
    except KeyboardInterrupt:
        with uninterruptible():
            mlflow.end_run("KILLED")
        raise
    except BaseException as err:
        if server_unreachable(err):
            # the server is gone or stalled: one brief try to mark the run FAILED (the resumed training
            # reopens it), not another wait through MLflow's retries, here or in its exit hook
            os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
            with suppress(Exception):
                mlflow.end_run("FAILED")
            raise
        with uninterruptible():
            mlflow.end_run("FAILED")
        raise
    with uninterruptible():
        mlflow.end_run("FINISHED")


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """A nested dict of figures as one dict of metrics named like a/b/c."""
    flat = {}

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}/{key}" if path else str(key))
        else:
            flat[path] = float(node)

    walk(metrics, prefix)
    return flat
