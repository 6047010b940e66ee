"""Reliability under faults: reproducible to the bit, resumable after SIGKILL, clean on Ctrl-C,
clear answers to bad input, and parallel sweeps that lose nothing. Real dvc, processes and signals."""

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import suppress

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import make_repo, run, small_params

VARIANTS = ["vae", "vae_deep", "cvae", "vae_anneal"]
WALL_CLOCK = {"epoch_seconds", "wall_seconds"}


def resumable_params(md5):
    """vae trains long enough (many small batches) to be killed in the middle of an epoch."""
    params = small_params(md5)
    params["batch_size"] = 8
    params["variants"]["vae"]["epochs"] = 12
    return params


def results(repo) -> dict:
    """Every figure the pipeline wrote, except wall-clock times, which are kept apart on purpose."""
    found = {}
    for name in VARIANTS:
        found[f"{name}/curves"] = pd.read_csv(repo / f"reports/{name}/curves.csv").drop(columns="epoch_seconds").to_dict("list")
        for kind in ("train", "test"):
            data = yaml.safe_load((repo / f"reports/{name}/{kind}.json").read_text())
            found[f"{name}/{kind}"] = {k: v for k, v in data.items() if k not in WALL_CLOCK}
    return found


def mlflow_runs(repo, variant):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vaelab")
    if experiment is None:
        return client, []
    return client, client.search_runs([experiment.experiment_id], filter_string=f"tags.variant = '{variant}'")


def start(command, repo, env):
    """Start a command in its own process group, as a terminal would run it."""
    full_env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}", **env}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(command, cwd=repo, env=full_env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(repo, variant, epoch, process, timeout=120):
    checkpoint = repo / f"checkpoints/{variant}.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["trainer"]["epoch"] >= epoch:
            return
        time.sleep(0.02)
    raise AssertionError(f"{variant} never reached epoch {epoch}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mirror):
    directory, md5 = mirror
    repo = make_repo(tmp_path_factory.mktemp("straight") / "repo", resumable_params(md5))
    run(["dvc", "repro"], repo, env={"MNIST_MIRROR": str(directory)})
    return repo


def test_two_runs_from_scratch_are_bit_identical(tmp_path, mirror, uninterrupted):
    directory, md5 = mirror
    again = make_repo(tmp_path / "again", resumable_params(md5))
    run(["dvc", "repro"], again, env={"MNIST_MIRROR": str(directory)})
    assert results(again) == results(uninterrupted)


COMPETITOR = """
import torch
from vaelab.device import pick_device
pick_device()  # holds a share of the cores, as a second training would
print("holding", flush=True)
x = torch.rand(400, 400)
while True:
    x = (x @ x).clamp(-1, 1)
"""


def test_a_train_stage_killed_mid_epoch_resumes_in_the_same_run_with_identical_results(tmp_path, mirror, uninterrupted):
    directory, md5 = mirror
    repo = make_repo(tmp_path / "killed", resumable_params(md5))
    env = {"MNIST_MIRROR": str(directory)}
    process = start(["dvc", "repro"], repo, env)
    wait_for_epoch(repo, "vae", 3, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (repo / "models/vae.pt").exists()

    # another training competes for the cores while this one resumes: it gets fewer threads
    competitor = start([sys.executable, "-c", COMPETITOR], repo, {})
    try:
        assert competitor.stdout.readline().strip() == "holding"
        resumed = run(["dvc", "repro"], repo, env)
    finally:
        competitor.kill()
        competitor.wait()

    assert "vae: resuming after epoch" in resumed.stderr
    assert results(repo) == results(uninterrupted)
    client, runs = mlflow_runs(repo, "vae")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 13))


def test_one_thread_and_two_threads_train_to_the_same_bits(tmp_path, mirror):
    directory, md5 = mirror
    params = small_params(md5, epochs=2)
    params["variants"]["vae"]["hidden"] = [400]  # products large enough for MKL to split between threads
    figures = {}
    for threads in (1, 2):
        repo = make_repo(tmp_path / f"threads-{threads}", params)
        env = {"MNIST_MIRROR": str(directory), "OMP_NUM_THREADS": str(threads)}
        run(["dvc", "repro", "evaluate@vae"], repo, env=env)
        curves = pd.read_csv(repo / "reports/vae/curves.csv").drop(columns="epoch_seconds").to_dict("list")
        test = yaml.safe_load((repo / "reports/vae/test.json").read_text())
        weights = torch.load(repo / "models/vae.pt", weights_only=True)["state_dict"]
        figures[threads] = curves, test, weights
    (curves_1, test_1, weights_1), (curves_2, test_2, weights_2) = figures[1], figures[2]
    assert curves_1 == curves_2 and test_1 == test_2
    assert weights_1.keys() == weights_2.keys()
    for name in weights_1:
        assert torch.equal(weights_1[name], weights_2[name]), name


@pytest.mark.parametrize("change", ["params", "code"])
def test_changed_params_or_code_never_resume_from_an_old_checkpoint(tmp_path, mirror, change):
    directory, md5 = mirror
    params = resumable_params(md5)
    repo = make_repo(tmp_path / "changed", params)
    env = {"MNIST_MIRROR": str(directory)}
    process = start(["dvc", "repro", "train@vae"], repo, env)
    wait_for_epoch(repo, "vae", 2, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    if change == "params":
        params["lr"] = 0.002
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    else:
        with open(repo / "vaelab/elbo.py", "a") as source:
            source.write("# a fix made after the crash\n")
    again = run(["dvc", "repro", "train@vae"], repo, env)

    assert "resuming" not in again.stderr
    client, runs = mlflow_runs(repo, "vae")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    finished = next(r for r in runs if r.info.status == "FINISHED")
    assert finished.data.params["lr"] == str(params["lr"])
    assert len(client.get_metric_history(finished.info.run_id, "train_loss")) == 12


def test_a_finished_training_run_again_trains_afresh(tmp_path, mirror):
    """`dvc repro -f`, or new code or data, re-runs a finished stage: it must train, not replay the checkpoint."""
    directory, md5 = mirror
    repo = make_repo(tmp_path / "forced", small_params(md5, epochs=2))
    env = {"MNIST_MIRROR": str(directory)}
    run(["dvc", "repro", "train@vae"], repo, env)
    first_model = (repo / "models/vae.pt").read_bytes()

    again = run(["dvc", "repro", "--force", "--single-item", "train@vae"], repo, env)

    assert "resuming" not in again.stderr
    client, runs = mlflow_runs(repo, "vae")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    for r in runs:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "train_loss")) == [1, 2]
    # the same training gives the same bytes: the model file names no run; both runs carry its hash
    assert (repo / "models/vae.pt").read_bytes() == first_model
    digest = hashlib.sha256(first_model).hexdigest()
    assert [r.data.tags["model_sha256"] for r in runs] == [digest, digest]


def test_ctrl_c_stops_training_keeps_the_checkpoint_and_marks_the_run_killed(tmp_path, mirror):
    directory, md5 = mirror
    repo = make_repo(tmp_path / "interrupted", resumable_params(md5))
    env = {"MNIST_MIRROR": str(directory)}
    process = start(["dvc", "repro", "train@vae"], repo, env)
    wait_for_epoch(repo, "vae", 2, process)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode != 0
    assert "Traceback" not in stderr
    assert torch.load(repo / "checkpoints/vae.pt", weights_only=True)["trainer"]["epoch"] >= 2
    assert not (repo / "models/vae.pt").exists()
    _, runs = mlflow_runs(repo, "vae")
    assert [r.info.status for r in runs] == ["KILLED"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, mirror):
    """A repository whose data is downloaded, for running single stages with bad input."""
    directory, md5 = mirror
    repo = make_repo(tmp_path_factory.mktemp("bad-input") / "repo", small_params(md5))
    run(["dvc", "repro", "download"], repo, env={"MNIST_MIRROR": str(directory)})
    return repo


def one_line_failure(result, *fragments):
    lines = [line for line in result.stderr.splitlines() if line.startswith("vaelab: error:")]
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "change, fragments",
    [
        (lambda p: p.update(latnet_dim=3), ["unknown key 'latnet_dim'", "allowed here"]),
        (lambda p: p["variants"]["cvae"].update(hiden=[8]), ["unknown key 'variants.cvae.hiden'", "did you mean 'hidden'"]),
        (lambda p: p.update(latent_dim=0), ["latent_dim", "greater than 0", "got 0"]),
        (lambda p: p.update(latent_dim=-2), ["latent_dim", "greater than 0", "got -2"]),
        (lambda p: p.update(latent_dim="big"), ["latent_dim", "valid integer", "'big'"]),
        (lambda p: p.update(lr=0), ["lr", "greater than 0"]),
        (lambda p: p["variants"]["cvae"].update(epochs=0), ["variants.cvae.epochs", "greater than 0"]),
        (lambda p: p.update(batch_size=100_000), ["batch_size 100000 is larger than the 320 training images", "lower it"]),
        (lambda p: p.update(latent_dim=100_000_000), ["latent_dim 100000000 with variants.cvae.hidden [32]", "GiB", "more than the"]),
    ],
)
def test_bad_params_stop_training_with_one_line_and_no_output(prepared, tmp_path, change, fragments):
    params = yaml.safe_load((prepared / "params.yaml").read_text())
    change(params)
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        one_line_failure(run([sys.executable, "-m", "stages.train", "cvae"], prepared, check=False), *fragments)
    finally:
        run(["git", "checkout", "params.yaml"], prepared)
    assert not (prepared / "models").exists() and not (prepared / "reports").exists()


@pytest.mark.parametrize("stage", ["train", "evaluate", "render", "assess"])
def test_a_per_variant_stage_started_without_its_variant_says_how_to_start_it(prepared, stage):
    result = run([sys.executable, "-m", f"stages.{stage}"], prepared, check=False)
    one_line_failure(result, f"usage: python -m stages.{stage} VARIANT", "vae, vae_deep, cvae, vae_anneal")


@pytest.fixture
def store_aside(prepared):
    """The prepared repository's MLflow store moved aside for the test, and put back after it."""
    store, aside = prepared / "mlflow.db", prepared / "mlflow.db.aside"
    if store.exists():
        store.rename(aside)
    yield store
    store.unlink(missing_ok=True)
    if aside.exists():
        aside.rename(store)


def test_a_damaged_mlflow_store_is_named_with_what_to_do(prepared, store_aside):
    store_aside.write_bytes(b"this is no SQLite database " * 200)
    result = run([sys.executable, "-m", "stages.train", "vae"], prepared, check=False)
    one_line_failure(result, f"the MLflow store sqlite:///{store_aside}", "restore it from a backup", "MLFLOW_TRACKING_URI")


def test_a_store_locked_past_the_busy_timeout_is_named_with_what_to_do(prepared, store_aside):
    params = yaml.safe_load((prepared / "params.yaml").read_text())
    params["mlflow"]["busy_timeout_seconds"] = 1
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    holder = sqlite3.connect(store_aside, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, and taking its time
    try:
        result = run([sys.executable, "-m", "stages.train", "vae"], prepared, check=False)
    finally:
        holder.close()
        run(["git", "checkout", "params.yaml"], prepared)
    one_line_failure(result, "stayed locked by another process", "database is locked", "run again when it is free")


def test_a_misspelt_variant_on_the_command_line_is_named(prepared):
    one_line_failure(run([sys.executable, "-m", "stages.train", "cvea"], prepared, check=False), "unknown variant 'cvea'")


def test_a_loss_that_turns_nan_fails_the_run_and_leaves_no_model(prepared):
    params = yaml.safe_load((prepared / "params.yaml").read_text())
    params["lr"] = 1e30
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        result = run([sys.executable, "-m", "stages.train", "vae_deep"], prepared, check=False)
    finally:
        run(["git", "checkout", "params.yaml"], prepared)
    one_line_failure(result, "vae_deep: the training loss became", "lower lr")
    assert not (prepared / "models/vae_deep.pt").exists() and not (prepared / "reports/vae_deep").exists()
    _, runs = mlflow_runs(prepared, "vae_deep")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_corrupt_checkpoint_is_named_with_what_to_do(prepared):
    checkpoint = prepared / "checkpoints/vae.pt"
    checkpoint.parent.mkdir(exist_ok=True)
    checkpoint.write_bytes(b"not a checkpoint")
    try:
        result = run([sys.executable, "-m", "stages.train", "vae"], prepared, check=False)
    finally:
        checkpoint.unlink()
    one_line_failure(result, "checkpoint checkpoints/vae.pt cannot be read", "delete it to train from scratch")
    assert not (prepared / "models/vae.pt").exists()


@pytest.mark.parametrize("problem", ["missing directory", "dead URL", "truncated gz", "wrong checksum"])
def test_bad_mirrors_stop_the_download_with_one_line_and_no_data(tmp_path, mirror, problem):
    directory, md5 = mirror
    repo = make_repo(tmp_path / "repo", small_params(md5))
    broken = tmp_path / "broken"
    broken.mkdir()
    for source in directory.iterdir():
        (broken / source.name).write_bytes(source.read_bytes())
    target = broken / "t10k-images-idx3-ubyte.gz"
    if problem == "missing directory":
        env, fragments = {"MNIST_MIRROR": str(tmp_path / "nowhere")}, ["is not a directory"]
    elif problem == "dead URL":
        env, fragments = {"MNIST_MIRROR": "http://127.0.0.1:9/"}, ["cannot download", "127.0.0.1:9", "MNIST_MIRROR"]
    elif problem == "truncated gz":
        target.write_bytes(target.read_bytes()[:500])
        env, fragments = {"MNIST_MIRROR": str(broken)}, ["t10k-images-idx3-ubyte.gz", "does not match"]
    else:
        target.write_bytes(target.read_bytes()[::-1])
        env, fragments = {"MNIST_MIRROR": str(broken)}, ["t10k-images-idx3-ubyte.gz", md5[target.name], "does not match"]

    result = run(["dvc", "repro", "download"], repo, env=env, check=False)

    one_line_failure(result, *fragments)
    assert not (repo / "data/MNIST").exists()
    assert not (repo / "dvc.lock").exists()


def test_a_download_killed_half_way_leaves_nothing_that_passes_for_data(tmp_path, mirror):
    directory, md5 = mirror
    repo = make_repo(tmp_path / "repo", small_params(md5))
    # a mirror that sends a few bytes and then stalls, so the download is surely mid-way when killed
    server = subprocess.Popen([sys.executable, "-c", STALLING_SERVER], stdout=subprocess.PIPE, text=True)
    port = server.stdout.readline().strip()
    try:
        process = start(["dvc", "repro", "download"], repo, {"MNIST_MIRROR": f"http://127.0.0.1:{port}/"})
        deadline = time.monotonic() + 60
        while not list((repo / ".dvc/tmp/vaelab").glob(".vaelab-*-MNIST/raw/*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        server.kill()
    assert not (repo / "data/MNIST").exists()
    assert list((repo / ".dvc/tmp/vaelab").glob(".vaelab-*-MNIST/raw/*")), "the download was not under way"
    assert run(["git", "status", "--porcelain", "--untracked-files=all"], repo).stdout == ""  # git sees nothing left behind
    run(["dvc", "repro", "download"], repo, env={"MNIST_MIRROR": str(directory)})
    assert sorted(p.name for p in (repo / "data").iterdir()) == [".gitignore", "MNIST"]
    assert not list((repo / ".dvc/tmp/vaelab").glob("*"))  # the next start removed what the killed one left


def test_a_mirror_that_accepts_but_never_answers_times_out_naming_the_file_and_the_mirror(tmp_path, mirror):
    directory, md5 = mirror
    params = small_params(md5)
    params["data"]["timeout_seconds"] = 1
    repo = make_repo(tmp_path / "repo", params)
    with socket.socket() as silent:  # the kernel accepts connections into the backlog; nothing ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        result = run(["dvc", "repro", "download"], repo, env={"MNIST_MIRROR": url}, check=False)
    one_line_failure(result, f"cannot download train-images-idx3-ubyte.gz ({url}train-images-idx3-ubyte.gz: no answer within 1 s")
    assert not (repo / "data/MNIST").exists()
    assert not list((repo / ".dvc/tmp/vaelab").glob("*"))


STALLING_SERVER = """
import http.server, time
class Stall(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(200); self.send_header("Content-Length", "1000000"); self.end_headers()
    def do_GET(self):
        self.do_HEAD(); self.wfile.write(b"\\x1f\\x8b" + b"0" * 1000); self.wfile.flush(); time.sleep(600)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
print(server.server_port, flush=True)
server.serve_forever()
"""


def test_a_parallel_queue_loses_no_run(tmp_path, mirror):
    """Two experiments at once, -j 2: both write to the same SQLite store and DVC workspace."""
    directory, md5 = mirror
    repo = make_repo(tmp_path / "sweep", small_params(md5))
    env = {"MNIST_MIRROR": str(directory)}
    run(["dvc", "repro", "download"], repo, env=env)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "data"], repo)
    for latent_dim in (2, 5):
        run(["dvc", "exp", "run", "--queue", "-n", f"z{latent_dim}", "-S", f"latent_dim={latent_dim}"], repo, env=env)

    run(["dvc", "exp", "run", "--run-all", "-j", "2"], repo, env=env)

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vaelab")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags["variant"] in VARIANTS]
    assert sorted((r.data.tags["dvc_experiment"], r.data.tags["variant"]) for r in runs) == sorted(
        (f"z{d}", v) for d in (2, 5) for v in VARIANTS
    )
    for r in runs:
        assert r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "train_loss")) == 1
        assert "test_elbo" in r.data.metrics and "iwae_bound" in r.data.metrics
        assert len(client.list_artifacts(r.info.run_id, "images")) >= 3
    logs = "".join(run(["dvc", "queue", "logs", f"z{d}"], repo, check=False).stdout for d in (2, 5))
    assert "database is locked" not in logs

    # the same experiment alone, with the cores to itself, forced past the run-cache (which would
    # restore z5's outputs): the same figures as in the parallel queue
    run(["dvc", "exp", "run", "--force", "-n", "alone5", "-S", "latent_dim=5"], repo, env=env)

    def figures(dvc_experiment: str) -> dict:
        """Every variant's metrics in that experiment's runs, wall-clock times aside."""
        found = client.search_runs([experiment.experiment_id], filter_string=f"tags.dvc_experiment = '{dvc_experiment}'")
        return {
            r.data.tags["variant"]: {k: v for k, v in r.data.metrics.items() if "seconds" not in k}
            for r in found if r.data.tags["variant"] in VARIANTS
        }

    alone = figures("alone5")
    assert set(alone) == set(VARIANTS) and alone == figures("z5")


def test_a_stage_killed_while_adding_to_a_finished_run_leaves_it_finished(tmp_path, mirror):
    directory, md5 = mirror
    repo = make_repo(tmp_path / "repo", small_params(md5))
    env = {"MNIST_MIRROR": str(directory)}
    run(["dvc", "repro", "evaluate@vae"], repo, env=env)
    client, [trained] = mlflow_runs(repo, "vae")

    process = start(["dvc", "repro", "--force", "--single-item", "evaluate@vae"], repo, {**env, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:  # the stage's one line comes once it has added its results to the run
        if line.startswith("vae: test ELBO"):
            break
    with suppress(ProcessLookupError):  # DVC is still recording the stage, unless the machine was quick
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    after = client.get_run(trained.info.run_id).info
    assert after.status == "FINISHED" and after.end_time == trained.info.end_time
    assert [r.info.status for r in mlflow_runs(repo, "vae")[1]] == ["FINISHED"]
    # run again on the same run, the stage leaves its table as it was (MLflow would append the rows)
    mlflow.set_tracking_uri(client.tracking_uri)  # load_table searches runs through it
    table = client.load_table(trained.info.experiment_id, "evaluate/per_digit_reconstruction.json", run_ids=[trained.info.run_id])
    assert sorted(table["digit"]) == list(range(10))


def test_a_full_disk_while_writing_a_checkpoint_says_so_and_keeps_the_previous_one(tmp_path, mirror):
    directory, md5 = mirror
    repo = make_repo(tmp_path / "repo", small_params(md5, epochs=3))  # a vae checkpoint is ~0.6 MiB
    run(["dvc", "repro", "download"], repo, env={"MNIST_MIRROR": str(directory)})
    disk = repo / "checkpoints"
    disk.mkdir()
    # a 1 MiB file system: one checkpoint fits, a second one written beside it does not (needs root, as CI runs)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        result = run([sys.executable, "-m", "stages.train", "vae"], repo, check=False)
        checkpoint = torch.load(disk / "vae.pt", weights_only=True)
        left = sorted(p.name for p in disk.iterdir())
    finally:
        subprocess.run(["umount", str(disk)], check=True)

    one_line_failure(result, f"no space left on the disk holding {disk}", "vae.pt", "free some space",
                     "the previous checkpoints/vae.pt is kept")
    assert checkpoint["trainer"]["epoch"] == 1 and not checkpoint["completed"]
    assert left == ["vae.pt"]
