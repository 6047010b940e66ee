"""Working as a team: a DVC remote shares every result, and a teammate's clone reuses them instead
of retraining, whichever MLflow store it points at. Real dvc, git and MLflow stores."""

import hashlib

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import make_repo, run, small_params


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, mirror):
    """A project whose pipeline ran, committed with a DVC remote it pushed to: what a teammate clones."""
    directory, md5 = mirror
    root = tmp_path_factory.mktemp("team")
    first = make_repo(root / "first", small_params(md5, epochs=1))
    run(["dvc", "repro"], first, env={"MNIST_MIRROR": str(directory)})
    run(["dvc", "remote", "add", "-d", "team", str(root / "remote")], first)
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-q", "-m", "results"], first)
    run(["dvc", "push"], first)
    return first


def test_a_clone_that_pulls_from_the_remote_is_up_to_date_and_trains_nothing(pushed, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pushed), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)

    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    # no MNIST mirror is given: any stage that ran would have to download and fail
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], clone).stdout
    assert not (clone / "mlflow.db").exists()  # no run was made
    assert (clone / "models/vae.pt").read_bytes() == (pushed / "models/vae.pt").read_bytes()


def test_a_clone_pointed_at_another_store_logs_to_a_new_run_tagged_with_the_model(pushed, tmp_path, mirror):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pushed), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)

    rendered = run(["dvc", "repro", "--force", "--single-item", "render@vae"], clone, env={"MNIST_MIRROR": str(mirror[0])})
    evaluated = run(["dvc", "repro", "--force", "--single-item", "evaluate@vae"], clone, env={"MNIST_MIRROR": str(mirror[0])})

    digest = hashlib.sha256((clone / "models/vae.pt").read_bytes()).hexdigest()
    said = [line for line in rendered.stderr.splitlines() if "no run in this MLflow store" in line]
    assert said == [
        f"vae: no run in this MLflow store trained models/vae.pt (sha256 {digest[:12]}): its results go to a new run, "
        + said[0].rsplit(" ", 1)[-1]
    ]
    assert "no run in this MLflow store" not in evaluated.stderr  # the second stage found the new run
    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    (new,) = client.search_runs([client.get_experiment_by_name("vaelab").experiment_id])
    assert new.info.status == "FINISHED"
    assert new.data.tags["model_sha256"] == digest and new.data.tags["variant"] == "vae"
    assert new.data.params["latent_dim"] == "4"
    assert {a.path for a in client.list_artifacts(new.info.run_id, "images")} >= {"images/samples.png"}
    assert "test_elbo" in new.data.metrics  # the evaluate stage filled in what the training run's curves would hold


def test_changed_params_reverted_and_repeated_retrain_nothing(pushed, tmp_path, mirror):
    """A reverted or repeated -S must not cost a retrain: `git checkout . && dvc checkout` restores
    the committed results, and DVC's run-cache restores those of params trained before."""
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pushed), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    env = {"MNIST_MIRROR": str(mirror[0])}
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["variants"]["vae"]["hidden"] = [24]

    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    trained = run(["dvc", "repro", "--single-item", "train@vae"], clone, env)
    run(["git", "checkout", "."], clone)
    run(["dvc", "checkout"], clone)
    status = run(["dvc", "status"], clone).stdout
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = run(["dvc", "repro", "--single-item", "train@vae"], clone, env)

    assert "vae epoch 1" in trained.stdout + trained.stderr
    assert "Data and pipelines are up to date" in status
    assert "Stage 'train@vae' is cached - skipping run" in again.stdout
    assert "vae epoch" not in again.stdout + again.stderr
