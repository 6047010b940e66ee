"""The team's tracking server: `mlflow server` on PostgreSQL with its artifacts in S3 (SeaweedFS),
all real, on loopback; the pipeline logs there through MLFLOW_TRACKING_URI alone."""

import subprocess
import time

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT, make_repo, run, small_params, user_env
from tests.servers import team_server

VARIANTS = ["vae", "vae_deep", "cvae", "vae_anneal"]


@pytest.fixture(scope="module")
def server():
    with team_server() as server:
        yield server


@pytest.fixture(scope="module")
def repo(server, tmp_path_factory, mirror):
    directory, md5 = mirror
    path = make_repo(tmp_path_factory.mktemp("team-server") / "repo", small_params(md5, epochs=2))
    run(["dvc", "repro"], path, env={"MNIST_MIRROR": str(directory), "MLFLOW_TRACKING_URI": server.uri})
    return path


def test_the_server_script_refuses_a_bare_postgresql_uri():
    result = subprocess.run(
        ["bash", str(PROJECT / "team/mlflow_server.sh")],
        env={"PATH": "/usr/bin:/bin", "VAELAB_DB_URI": "postgresql://u@127.0.0.1/mlflow", "VAELAB_ARTIFACTS": "s3://b/a"},
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "team/mlflow_server.sh: VAELAB_DB_URI must start with postgresql+psycopg2://, not postgresql://"
    ]


def test_every_variant_logs_everything_to_the_server_and_its_artifacts_to_s3(repo, server):
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("vaelab")
    runs = {r.data.tags["variant"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(VARIANTS)
    (judge,) = client.search_runs([client.get_experiment_by_name("vaelab-judge").experiment_id])
    assert judge.info.status == "FINISHED"
    assert not (repo / "mlflow.db").exists()  # nothing went to the embedded store
    keys = server.s3.keys()
    for name in VARIANTS:
        r = runs[name]
        assert r.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "train_loss")) == [1, 2]
        assert "test_elbo" in r.data.metrics and "active_units" in r.data.metrics
        assert {a.path for a in client.list_artifacts(r.info.run_id, "images")} >= {"images/samples.png"}
        assert any(k.endswith(f"{r.info.run_id}/artifacts/images/samples.png") for k in keys), name
    models = client.search_logged_models([experiment.experiment_id])
    assert {m.source_run_id for m in models} >= {runs[name].info.run_id for name in VARIANTS}
    assert any("/models/" in k and k.endswith("MLmodel") for k in keys)


def test_a_server_gone_mid_training_stops_the_stage_with_one_line_and_it_resumes_once_back(server, tmp_path, mirror):
    directory, md5 = mirror
    params = small_params(md5, epochs=300)
    repo = make_repo(tmp_path / "repo", params)
    # MLflow retries a failed request for minutes by default; the test lets it give up at once
    env = {"MNIST_MIRROR": str(directory), "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    run(["dvc", "repro", "download"], repo, env)
    training = subprocess.Popen(
        ["dvc", "repro", "--single-item", "train@vae"], cwd=repo, env=user_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoint = repo / "checkpoints/vae.pt"
    while not (checkpoint.exists() and torch.load(checkpoint, weights_only=True)["trainer"]["epoch"] >= 3):
        assert training.poll() is None, training.communicate()
        time.sleep(0.2)
    server.close()
    try:
        _, stderr = training.communicate(timeout=300)
    finally:
        server.start()

    assert training.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("vaelab:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"vaelab: error: the MLflow tracking server {server.uri} does not answer")
    assert "run `dvc repro` again once the server is back" in errors[0]
    stopped_at = torch.load(checkpoint, weights_only=True)["trainer"]["epoch"]
    assert 3 <= stopped_at < 300

    resumed = run(["dvc", "repro", "--single-item", "train@vae"], repo, env)

    assert f"vae: resuming after epoch {stopped_at} of 300" in resumed.stderr
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("vaelab")
    (trained,) = client.search_runs([experiment.experiment_id], f"tags.variant = 'vae' and params.epochs = '300'")
    assert trained.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(trained.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 301))  # every epoch once: none lost, none twice
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train@vae"]["outs"]
