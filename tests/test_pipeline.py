"""End to end: the real `dvc repro` and `dvc exp run` on a small generated mirror, checked as a user sees it."""

import json
import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import N_TEST, make_repo, run, small_params

VARIANTS = ["vae", "vae_deep", "cvae", "vae_anneal"]
EPOCHS = 2


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mirror):
    directory, md5 = mirror
    path = make_repo(tmp_path_factory.mktemp("pipeline") / "repo", small_params(md5, epochs=EPOCHS))
    run(["dvc", "repro"], path, env={"MNIST_MIRROR": str(directory)})
    return path


@pytest.fixture(scope="module")
def store(repo):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    return client, client.get_experiment_by_name("vaelab").experiment_id


def runs_by_variant(store, latent_dim: int) -> dict:
    client, experiment_id = store
    found = client.search_runs([experiment_id], filter_string=f"params.latent_dim = '{latent_dim}'")
    return {r.data.tags["variant"]: r for r in found}


def test_every_variant_has_one_finished_run_with_params_and_tags(repo, store):
    runs = runs_by_variant(store, 4)
    assert sorted(runs) == sorted(VARIANTS)
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    for name, r in runs.items():
        assert r.info.status == "FINISHED"
        assert r.data.params["epochs"] == str(EPOCHS)
        assert r.data.params["batch_size"] == "64"
        assert r.data.params["conditional"] == str(name == "cvae")
        assert r.data.tags["git_commit"] == head


def test_runs_hold_step_wise_curves_and_test_metrics(store):
    client, _ = store
    for name, r in runs_by_variant(store, 4).items():
        for key in ["train_loss", "train_rec", "train_kl", "test_elbo", "kl_weight", "lr", "epoch_seconds"]:
            history = client.get_metric_history(r.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (name, key)
        assert r.data.metrics["test/elbo"] == pytest.approx(-(r.data.metrics["test/rec"] + r.data.metrics["test/kl"]))
        assert r.data.metrics["test/elbo"] < 0
        assert {f"per_class/{d}/bce" for d in range(10)} <= set(r.data.metrics)
    anneal = runs_by_variant(store, 4)["vae_anneal"]
    weights = [m.value for m in sorted(client.get_metric_history(anneal.info.run_id, "kl_weight"), key=lambda m: m.step)]
    assert weights == [0.0, 1.0]


def test_runs_hold_the_images_and_the_model(store):
    client, experiment_id = store
    runs = runs_by_variant(store, 4)
    for name, r in runs.items():
        images = {a.path for a in client.list_artifacts(r.info.run_id, "images")}
        expected = {
            f"images/{picture}.png"
            for picture in ["reconstructions", "samples", "interpolation_3_to_8", "traversals", "latent_map"]
        }
        if name == "cvae":
            expected.add("images/digits_on_demand.png")
        assert images == expected
    mlflow.set_tracking_uri(client.tracking_uri)
    models = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list")
    assert {m.source_run_id for m in models} >= {r.info.run_id for r in runs.values()}
    served = mlflow.pyfunc.load_model(f"models:/{next(m for m in models if m.source_run_id == runs['cvae'].info.run_id).model_id}")
    assert served.metadata.get_input_schema() is not None


def test_metrics_files_are_what_dvc_lists(repo):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = next(iter(shown.values()))["data"]
    for name in VARIANTS:
        test = files[f"reports/{name}/test.json"]["data"]
        assert set(test) == {"test", "per_class"}
        assert set(test["per_class"]) == {str(d) for d in range(10)}
        assert all(v["bce"] > 0 and 0 < v["mse"] < 1 for v in test["per_class"].values())
        train = files[f"reports/{name}/train.json"]["data"]
        assert train["train_loss"] > 0 and train["wall_seconds"] > 0
        curves = (repo / f"reports/{name}/curves.csv").read_text().splitlines()
        assert curves[0].startswith("epoch,train_loss,train_rec,train_kl,test_elbo")
        assert len(curves) == EPOCHS + 1


def test_pngs_are_rendered_for_every_variant(repo):
    for name in VARIANTS:
        images = repo / f"reports/{name}/images"
        with Image.open(images / "samples.png") as grid:
            assert grid.size == (8 * 30 + 2, 8 * 30 + 2)  # 8x8 digits of 28 px, 2 px apart
        with Image.open(images / "reconstructions.png") as pairs:
            assert pairs.size == (8 * 30 + 2, 2 * 30 + 2)
        assert (images / "interpolation_3_to_8.png").exists()
    with Image.open(repo / "reports/cvae/images/digits_on_demand.png") as digits:
        assert digits.size == (8 * 30 + 2, 10 * 30 + 2)


def test_the_judge_is_trained_and_tracked_in_its_own_run(repo, store):
    metrics = json.loads((repo / "reports/judge/metrics.json").read_text())
    assert 0.5 < metrics["test_accuracy"] <= 1 and metrics["n_parameters"] > 0
    client, experiment_id = store
    (judge,) = client.search_runs([experiment_id], filter_string="tags.variant = 'judge'")
    assert judge.info.status == "FINISHED"
    assert judge.data.metrics["test_accuracy"] == metrics["test_accuracy"]


def test_assessments_are_in_the_metrics_files_and_the_runs(repo, store):
    client, _ = store
    runs = runs_by_variant(store, 4)
    for name in VARIANTS:
        assess = json.loads((repo / f"reports/{name}/assess.json").read_text())
        test = json.loads((repo / f"reports/{name}/test.json").read_text())["test"]
        assert assess["iwae"]["k"] == 8 and assess["iwae"]["bound"] < 0
        assert 0 <= assess["active_units"] <= assess["latent_dim"] == 4
        assert sum(assess["kl_per_dim"].values()) == pytest.approx(test["kl"], rel=1e-4)
        assert sum(assess["prior_samples"]["shares"].values()) == pytest.approx(1)
        assert ("conditional_accuracy" in assess) == (name == "cvae")
        kl_rows = (repo / f"reports/{name}/kl_per_dim.csv").read_text().splitlines()
        assert kl_rows[0] == "dim,kl" and len(kl_rows) == 5
        logged = runs[name].data.metrics
        assert logged["assess/iwae/bound"] == assess["iwae"]["bound"]
        assert logged["assess/active_units"] == assess["active_units"]
        binarized = assess["binarized"]
        assert (binarized["proposal"], binarized["seed"], binarized["k"]) == ("q(z|x)", 0, 8)
        assert binarized["bits_per_dim"] == pytest.approx(-binarized["bound"] / (784 * math.log(2)))
        assert logged["assess/binarized/bound"] == binarized["bound"] < 0
        assert runs[name].data.tags["binarized_proposal"] == "q(z|x)"
        assert -1 < assess["mutual_information"] <= math.log(N_TEST) and logged["assess/mutual_information"] == assess["mutual_information"]
        # the generated digits' grey levels: ~30% noise on every pixel
        assert assess["grey_entropy_floor"] > 100
        report = {a.path for a in client.list_artifacts(runs[name].info.run_id, "report")}
        assert "report/README.md" in report
        figures = {a.path for a in client.list_artifacts(runs[name].info.run_id, "report/figures")}
        assert figures == {f"report/figures/{f}.png" for f in ["learning_curves", "kl_per_dim", "prior_classes"]}
    cvae = json.loads((repo / "reports/cvae/assess.json").read_text())["conditional_accuracy"]
    assert runs["cvae"].data.metrics["assess/conditional_accuracy/overall"] == cvae["overall"]


def test_the_report_shows_the_numbers_of_the_metrics_files(repo):
    report = (repo / "comparison/README.md").read_text()
    summary = report.split("## Every variant")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in summary.splitlines() if line.startswith("| `")}
    for name in VARIANTS:
        assess = json.loads((repo / f"reports/{name}/assess.json").read_text())
        test = json.loads((repo / f"reports/{name}/test.json").read_text())["test"]
        train = json.loads((repo / f"reports/{name}/train.json").read_text())
        row = rows[name]
        assert row[1] == str(EPOCHS)
        assert row[2] == f"{assess['n_parameters']:,}"
        assert row[3] == f"{train['wall_seconds']:.0f} s"
        assert row[4:9] == ["grey", f"{test['elbo']:.2f}", f"{assess['iwae']['bound']:.2f}", f"{test['rec']:.2f}", f"{test['kl']:.2f}"]
        assert row[9:11] == [f"{assess['binarized']['bound']:.2f}", f"{assess['binarized']['bits_per_dim']:.3f}"]
        assert row[11:13] == [f"{assess['active_units']} of 4", f"{assess['mutual_information']:.2f}"]
    floor = json.loads((repo / "reports/vae/assess.json").read_text())["grey_entropy_floor"]
    assert f"own grey levels, {floor:.2f} nats per image" in report
    judge = json.loads((repo / "reports/judge/metrics.json").read_text())
    assert f"{100 * judge['test_accuracy']:.1f}%" in report
    for figure in ["figures/learning_curves.png", "figures/kl_per_dim.png", "figures/prior_classes.png", "../reports/cvae/images/digits_on_demand.png"]:
        assert f"({figure})" in report and (repo / "comparison" / figure).exists()


def test_nothing_changed_means_nothing_to_do(repo):
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo).stdout


def test_an_experiment_with_another_latent_dim_gets_new_runs_in_the_same_store(repo, store, mirror):
    """Queued, so it runs in DVC's temporary copy: the relative mirror and the store still resolve
    against the repository (tests/test_reliability.py runs a parallel queue)."""
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline results"], repo)
    run(["dvc", "exp", "run", "--queue", "-n", "queued", "-S", "latent_dim=5"], repo, env={"MNIST_MIRROR": "../mirror-link"})
    (repo.parent / "mirror-link").symlink_to(mirror[0])
    run(["dvc", "exp", "run", "--run-all"], repo, env={"MNIST_MIRROR": "../mirror-link"})

    runs = runs_by_variant(store, 5)
    assert sorted(runs) == sorted(VARIANTS)
    client, _ = store
    for r in runs.values():
        assert r.info.status == "FINISHED" and r.data.tags["dvc_experiment"] == "queued"
        assert client.list_artifacts(r.info.run_id, "images")
    assert not (repo / ".dvc/tmp/exps").exists() or not any((repo / ".dvc/tmp/exps").rglob("mlflow.db"))
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], repo).stdout
    assert "queued" in shown and "test.elbo" in shown



def test_variants_added_to_or_removed_from_the_pipeline_are_picked_up_everywhere(repo, store, mirror):
    """burda_vae, off the default pipeline, joins it for a short run (its own experiment, as the README
    runs it) and vae_deep leaves it."""
    run(["dvc", "exp", "run", "-n", "retuned", "-S", "pipeline=[vae,cvae,vae_anneal,burda_vae]"],
        repo, env={"MNIST_MIRROR": str(mirror[0])})

    client, experiment_id = store
    found = client.search_runs([experiment_id], filter_string="tags.dvc_experiment = 'retuned'")
    # only the new variant trains: the others' stages are unchanged, and DVC reuses their results
    assert [(r.data.tags["variant"], r.info.status) for r in found] == [("burda_vae", "FINISHED")]
    assert {key: found[0].data.params[key] for key in ("activation", "binarize", "lr_schedule", "batch_size", "latent_dim")} == {
        "activation": "tanh", "binarize": "True", "lr_schedule": "staged", "batch_size": "20", "latent_dim": "50"
    }
    report = (repo / "comparison/README.md").read_text()
    summary = report.split("## Every variant")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in summary.splitlines() if line.startswith("| `")}
    assert list(rows) == ["vae", "cvae", "vae_anneal", "burda_vae"]
    assert [row[4] for row in rows.values()] == ["grey", "grey", "grey", "binary"]
    assert "vae_deep" not in report
    assessed = json.loads((repo / "reports/burda_vae/assess.json").read_text())
    assert assessed["binarized"]["proposal"] == "q(z|b)" and assessed["binarized"]["bound"] == assessed["iwae"]["bound"]
    assert json.loads((repo / "reports/burda_vae/test.json").read_text())["test"]["elbo"] < 0
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], repo).stdout
    assert "reports/burda_vae/test.json:test.elbo" in shown.splitlines()[0]
