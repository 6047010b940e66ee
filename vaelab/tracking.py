"""MLflow: one run per variant per training; train opens and closes it, the later stages add to it.

The later stages find the run by the trained model's content hash, a tag of the run, not by an id
stored in the model: the model file stays the same bytes whoever trained it, and a clone whose
store lacks the run (pulled from a DVC remote, pointed at another store) still logs its figures.
Each later stage records its settings as params of the run; results under other settings (a sweep
over assess.iwae_k) go to a new run nested under the training run, never over the first ones.
The judge has its own experiment: its loss and params are not a VAE's.
"""

import hashlib
import os
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import mlflow
import pandas as pd
from filelock import FileLock
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from torchvision.datasets import MNIST

from vaelab import paths
from vaelab.data import DATA_ROOT
from vaelab.errors import server_unreachable, uninterruptible
from vaelab.params import MlflowParams, Params

MODEL_DIGEST_TAG = "model_sha256"  # the sha256 of the models/<variant>.pt a training run wrote
# MLflow 3.17's UI opens every experiment in its GenAI view unless the browser has chosen "Model training"
# (localStorage) or the address says so; this tag, which its code reads when a feature flag is off, says
# what vaelab's experiments are should a later UI honour it
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
# the user's store, read before mlflow.set_tracking_uri writes ours into the same variable
USER_STORE = os.environ.get("MLFLOW_TRACKING_URI")
# the code that decides results; params are logged, and the pipeline rewrites its outputs as it runs
CODE_PATHS = ["vaelab", "stages", "dvc.yaml"]


def repo_root() -> Path:
    """The real repository, also when DVC runs a queued experiment in a temporary copy."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def judge_experiment(opts: MlflowParams) -> str:
    return f"{opts.experiment}-judge"


def use_store(opts: MlflowParams, experiment: str | None = None) -> None:
    """Point MLflow at the project's store and experiment (opts.experiment unless named).

    MLFLOW_TRACKING_URI wins; otherwise the store is mlflow.db at the repository root with
    artifacts in mlruns/ beside it, which is what `mlflow ui` started there shows. Both paths
    are absolute, so runs of queued experiments outlive DVC's temporary copies.

    Parallel experiments share that SQLite file: writers wait for each other (up to
    mlflow.busy_timeout_seconds) instead of failing with "database is locked", and a file lock lets one process at a time
    create or migrate the schema and the experiment.
    """
    custom_uri = USER_STORE
    database = repo_root() / "mlflow.db"
    mlflow.set_tracking_uri(custom_uri or f"sqlite:///{database}?timeout={opts.busy_timeout_seconds:g}")
    experiment = experiment or opts.experiment
    with FileLock(f"{database}.lock"):
        if mlflow.get_experiment_by_name(experiment) is None:
            artifacts = None if custom_uri else (database.parent / "mlruns").as_uri()
            try:
                mlflow.create_experiment(experiment, artifact_location=artifacts, tags=EXPERIMENT_KIND)
            except MlflowException as err:
                # a shared server: another machine's stage created it first (the lock is only this machine's)
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        mlflow.set_experiment(experiment)


def runs_table_url(opts: MlflowParams) -> str:
    """The address of the experiment's runs table in MLflow's UI, in its "Model training" view, and
    how to start that UI."""
    use_store(opts)
    experiment_id = mlflow.get_experiment_by_name(opts.experiment).experiment_id
    store = USER_STORE or ""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if store.startswith(("http://", "https://")):
        return f"{store.rstrip('/')}/{page}"
    start = f"mlflow ui --backend-store-uri {store}" if store else "mlflow ui"
    return f"{UI_ADDRESS}/{page} (after `{start}`)"


def _git(*args: str) -> str | None:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def source_tags() -> dict[str, str]:
    """What a reader needs to rebuild a run: the commit, whether the code differed from it, and the DVC experiment."""
    changes = _git("status", "--porcelain", "--", *CODE_PATHS)
    tags = {"git_commit": _git("rev-parse", "HEAD") or "unknown", "git_dirty": "unknown" if changes is None else str(bool(changes)).lower()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
        tags["dvc_baseline_rev"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    return tags


def run_name(variant: str) -> str:
    return " ".join(filter(None, [variant, os.environ.get("DVC_EXP_NAME")]))


@contextmanager
def training_run(params: Params, variant: str, run_params: dict, note: str, resume_run_id: str | None = None, experiment: str | None = None):
    """A trained model's run: a new one with its params, tags and note (the description the run's
    page shows first), or the interrupted one to resume.

    It ends FINISHED, KILLED on Ctrl-C or SIGTERM, FAILED on any other error.
    """
    use_store(params.mlflow, experiment)
    if resume_run_id:
        with _run(run_id=resume_run_id) as run:
            yield run
        return
    tags = {"variant": variant, **source_tags(), MLFLOW_RUN_NOTE: note}
    with _run(run_name=run_name(variant), tags=tags) as run:
        mlflow.log_params(run_params)
        yield run


def log_mnist_inputs(train_images: int, test_images: int) -> None:
    """The MNIST files the run trained and tested on, each dataset with the sha256 of its two files."""
    raw = DATA_ROOT / "MNIST" / "raw"
    for prefix, context, n in [("train", "training", train_images), ("t10k", "testing", test_images)]:
        files = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
        sha256 = {name: hashlib.sha256((raw / name).read_bytes()).hexdigest() for name in files}
        digest = hashlib.sha256("".join(sha256.values()).encode()).hexdigest()[:16]
        dataset = MetaDataset(HTTPDatasetSource(MNIST.mirrors[0] + files[0]), name=f"MNIST {prefix} ({n} images)", digest=digest)
        mlflow.log_input(dataset, context=context, tags={f"sha256 {name}": value for name, value in sha256.items()})


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
    return paths.sha256(paths.model_file(variant))


def tag_trained_model(variant: str, run_id: str) -> None:
    """Mark the training run as the one that wrote the variant's model file: its sha256, the md5 that
    dvc.lock records for it, and the earlier training runs that wrote the very same bytes (a rerun
    that reproduced them: the later stages add to the newest)."""
    model = paths.model_file(variant).read_bytes()
    digest = hashlib.sha256(model).hexdigest()
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    earlier = [r.info.run_id for r in _runs_of_model(client, experiment_id, digest) if _is_training_run(r)]
    tags = {MODEL_DIGEST_TAG: digest, "dvc_model_md5": hashlib.md5(model).hexdigest()}
    if earlier:
        tags["same_model_as"] = ",".join(earlier)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def _runs_of_model(client: MlflowClient, experiment_id: str, digest: str) -> list:
    """Newest first."""
    return client.search_runs([experiment_id], f"tags.{MODEL_DIGEST_TAG} = '{digest}'", order_by=["attributes.start_time DESC"])


def _runs_of_variant_model(params: Params, variant: str) -> tuple[MlflowClient, str, str, list]:
    """The store's client, the project's experiment, the variant's model hash and its runs, newest first."""
    use_store(params.mlflow)
    digest = model_digest(variant)
    client = MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(params.mlflow.experiment).experiment_id
    return client, experiment_id, digest, _runs_of_model(client, experiment_id, digest)


def _is_training_run(run) -> bool:
    return MLFLOW_PARENT_RUN_ID not in run.data.tags and "trained_elsewhere" not in run.data.tags


def _choose(runs: list, settings: dict[str, str]):
    """The newest run that holds results computed with `settings`, or may take them: its params agree
    with every setting it has, and it lacks some only if it belongs to this very DVC experiment (or,
    outside one, to none). So parallel experiments never add to one another's runs. Returns the run
    and the settings it lacks, or None."""
    experiment = os.environ.get("DVC_EXP_NAME")
    for run in runs:
        logged = run.data.params
        if any(logged.get(key, value) != value for key, value in settings.items()):
            continue
        missing = {key: value for key, value in settings.items() if key not in logged}
        if not missing or run.data.tags.get("dvc_experiment") == experiment:
            return run, missing
    return None


def model_run(params: Params, variant: str, settings: dict) -> "ExistingRun":
    """The run of the variant's trained model in the current store, for a later stage to add its
    results to, with the stage's `settings` (flat params) recorded as params of that run.

    Runs are found by the model file's hash (two identical trainings write the same file) and
    chosen by _choose. When none will do (this stage ran before with other settings), the results
    go to a new run nested under the newest training run. A store without any run of the model, as
    in a clone that pulled it from a DVC remote and points at another store or at none, gets a new
    finished run with the variant's params. Either new run is announced in one line.
    """
    client, experiment_id, digest, found = _runs_of_variant_model(params, variant)
    as_logged = {key: str(value) for key, value in settings.items()}
    chosen = _choose(found, as_logged)
    if chosen:
        run, missing = chosen
        existing = ExistingRun(run.info.run_id)
        existing.log_params(missing)
        return existing
    tags = {"variant": variant, MODEL_DIGEST_TAG: digest, **source_tags()}
    if found:
        parent = next((r for r in found if _is_training_run(r)), found[0])
        tags[MLFLOW_PARENT_RUN_ID] = parent.info.run_id
        changed = ", ".join(f"{k} {parent.data.params[k]} -> {v}" for k, v in as_logged.items() if parent.data.params.get(k, v) != v)
        why = f"other settings than run {parent.info.run_id} ({changed or 'another DVC experiment'}): its results go to a new run under it"
    else:
        tags["trained_elsewhere"] = "true"
        why = f"no run in this MLflow store trained {paths.model_file(variant)} (sha256 {digest[:12]}): its results go to a new run"
    run = client.create_run(experiment_id, run_name=run_name(variant), tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in {**params.run_params(variant), **as_logged}.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    print(f"{variant}: {why}, {run.info.run_id}", file=sys.stderr)
    return ExistingRun(run.info.run_id)


def report_run(params: Params, variant: str, settings: dict) -> "ExistingRun | None":
    """The run model_run would add to, for an artifact made from its results; None rather than a new run."""
    chosen = _choose(_runs_of_variant_model(params, variant)[3], {k: str(v) for k, v in settings.items()})
    return ExistingRun(chosen[0].info.run_id) if chosen else None


class ExistingRun:
    """Adds results to a finished run, through MLflow's client.

    The run is never reopened: its status and end time stay as its training left them, so a
    stage killed while adding to it (even by SIGKILL) cannot leave it RUNNING.
    """

    def __init__(self, run_id: str):
        self.client, self.run_id = MlflowClient(), run_id

    def metrics(self) -> dict[str, float]:
        return self.client.get_run(self.run_id).data.metrics

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Figures of the run's model, also listed on the logged model's page when the run logged one."""
        now = int(time.time() * 1000)
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        models = self.client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{self.run_id}'")
        model_id = models[0].model_id if models else None
        batch = [Metric(key, float(value), now, step, model_id=model_id) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, params=[Param(key, value) for key, value in params.items()])

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """Rows of figures, shown as a table in the run's artifacts and comparable across runs.

        Once per run: MLflow appends to a table already there, and a run holds results of one model
        under one set of settings, so a stage run again on it computes the same rows."""
        folder = os.path.dirname(artifact_file) or None
        if artifact_file not in {a.path for a in self.client.list_artifacts(self.run_id, folder)}:
            self.client.log_table(self.run_id, pd.DataFrame(rows), artifact_file)

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
