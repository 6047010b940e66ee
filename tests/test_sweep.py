"""Sweeps across machines: `python -m vaelab.sweep` sends a grid to a real Ray cluster (a head and
two worker nodes, token auth, loopback only), one clone per experiment; the experiments come back through git and DVC, their runs
through MLflow, and a failed one is named without stopping the others. The Slurm array script runs
the same per-experiment script."""

import csv
import io
import os
import secrets
import shlex
import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT, make_repo, run, small_params
from tests.servers import free_port

VARIANTS = ["vae", "vae_deep", "cvae", "vae_anneal"]


@pytest.fixture(scope="module")
def team(tmp_path_factory, mirror):
    """A researcher's clone whose commit and data are on the team's git and DVC remotes."""
    directory, md5 = mirror
    root = tmp_path_factory.mktemp("sweep")
    run(["git", "init", "-q", "--bare", "-b", "main", str(root / "origin.git")], root)
    here = make_repo(root / "here", small_params(md5, epochs=1))
    run(["dvc", "repro", "download"], here, env={"MNIST_MIRROR": str(directory)})
    run(["dvc", "remote", "add", "-d", "team", str(root / "dvc-remote")], here)
    run(["git", "add", "-A"], here)
    run(["git", "commit", "-q", "-m", "data and the team's DVC remote"], here)
    run(["git", "remote", "add", "origin", str(root / "origin.git")], here)
    run(["git", "push", "-q", "origin", "main"], here)
    run(["dvc", "push"], here)
    (root / "tmp").mkdir()
    return {"here": here, "root": root, "env": {"TMPDIR": str(root / "tmp")}}


def exp_show(repo) -> list[dict]:
    return list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo).stdout)))


def test_a_sweep_on_ray_runs_each_experiment_in_its_own_clone_and_names_the_one_that_failed(team):
    if subprocess.run(["unshare", "-n", "true"]).returncode:
        pytest.skip("a network namespace (unshare -n) needs root; Ray would otherwise bind every interface")
    if not (shutil.which("ip") and shutil.which("ss")):
        pytest.skip("ip and ss are not installed (Debian: apt-get install iproute2; .ci/run does)")
    here, root = team["here"], team["root"]
    port = free_port(also_free_at=1)
    env = {**team["env"], "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # latent_dim=0 is refused by the params check: that experiment fails, the other two go on
    result = run(["unshare", "-n", "bash", str(PROJECT / "tests/ray_loopback.sh"), str(port), str(root),
                  "python", "-m", "vaelab.sweep", "sw", "-S", "latent_dim=2,0,3", "--address", f"127.0.0.1:{port}",
                  "--cpus", "1"], here, env=env, check=False)

    lines = result.stdout.strip().splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines[0].startswith("3 experiments from commit") and lines[0].endswith(f"127.0.0.1:{port}")
    ended = dict(line.split(": ", 1) for line in lines[1:4])  # in the order they ended
    assert set(ended) == {"sw-1 (latent_dim=2)", "sw-2 (latent_dim=0)", "sw-3 (latent_dim=3)"}
    assert ended["sw-1 (latent_dim=2)"].startswith("done in ") and ended["sw-3 (latent_dim=3)"].startswith("done in ")
    assert ended["sw-2 (latent_dim=0)"].startswith("failed: ") and ended["sw-2 (latent_dim=0)"].endswith(
        "(log: sweep_logs/sw-2.log)")
    assert "latent_dim: input should be greater than 0 (got 0)" in (here / "sweep_logs/sw-2.log").read_text()
    assert lines[4] == "2 of 3 experiments done, failed: sw-2; fetch them with `dvc exp pull origin`, then `dvc exp show`"
    # Ray and MLflow listened on loopback only; Ray behind its token
    listening = (root / "listening").read_text().split()
    assert listening and all(address.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for address in listening)
    assert not [name for name in os.listdir(root / "tmp") if name.startswith("vaelab-experiment-")]  # clones removed

    run(["dvc", "exp", "pull", "origin"], here)
    rows = {row["Experiment"]: row for row in exp_show(here) if row["Experiment"]}
    assert {name: row["latent_dim"] for name, row in rows.items()} == {"sw-1": "2", "sw-3": "3"}

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("vaelab").experiment_id])
    assert sorted((r.data.tags["dvc_experiment"], r.data.tags["variant"], r.info.status) for r in runs) == sorted(
        (name, variant, "FINISHED") for name in ("sw-1", "sw-3") for variant in VARIANTS)
    judges = client.search_runs([client.get_experiment_by_name("vaelab-judge").experiment_id])
    assert sorted(r.data.tags["dvc_experiment"] for r in judges) == ["sw-1", "sw-3"]
    for r in runs:
        assert "test_elbo" in r.data.metrics and "iwae_bound" in r.data.metrics
        # logged through the server's artifact proxy, into its folder
        assert len(list((root / "artifacts").glob(f"*/{r.info.run_id}/artifacts/images/*.png"))) >= 3


def test_a_slurm_array_task_runs_its_line_of_the_sweep(team):
    here = team["here"]
    env = {**team["env"], "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # never reached: the experiment fails first
    listed = run(["python", "-m", "vaelab.sweep", "sl", "-S", "latent_dim=2,0", "--list"], here, env=env)
    lines = listed.stdout.splitlines()
    commit = run(["git", "rev-parse", "HEAD"], here).stdout.strip()
    origin = str(team["root"] / "origin.git")
    assert [shlex.split(line) for line in lines] == [["sl-1", origin, commit, "-S", "latent_dim=2"],
                                                    ["sl-2", origin, commit, "-S", "latent_dim=0"]]
    (here / "sweep_logs").mkdir(exist_ok=True)
    (here / "sweep_logs/sl.txt").write_text(listed.stdout)

    # what Slurm runs for `sbatch --array=1-2 team/sweep.sbatch sweep_logs/sl.txt`, array task 2: its
    # experiment, in a clone of its own, refused by the params check before any run is logged
    task = run(["bash", "team/sweep.sbatch", "sweep_logs/sl.txt"], here, env={**env, "SLURM_ARRAY_TASK_ID": "2"}, check=False)
    assert task.returncode != 0 and "Reproducing experiment 'sl-2'" in task.stdout
    assert "latent_dim: input should be greater than 0 (got 0)" in task.stderr
    assert not [name for name in os.listdir(team["root"] / "tmp") if name.startswith("vaelab-experiment-")]
    missing = run(["bash", "team/sweep.sbatch", "sweep_logs/sl.txt"], here, env={"SLURM_ARRAY_TASK_ID": "3"}, check=False)
    assert missing.returncode == 2 and missing.stderr.strip() == "team/sweep.sbatch: sweep_logs/sl.txt has no line 3"


def test_a_sweep_that_cannot_work_says_why_in_one_line_and_sends_nothing(team, tmp_path):
    here = team["here"]
    server = {**team["env"], "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    unpushed = tmp_path / "unpushed"
    run(["git", "clone", "-q", str(team["root"] / "origin.git"), str(unpushed)], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@vaelab.invalid", "commit", "-q", "--allow-empty", "-m", "local"],
        unpushed)
    run(["git", "push", "-q", "origin", "HEAD:refs/exps/ab/cdef0123/taken-1"], here)  # as `dvc exp push` names them
    for cwd, name, env, message in [
        (here, "sw", team["env"], "set MLFLOW_TRACKING_URI to the team's MLflow server, http(s)://HOST:PORT (it is unset)"),
        (here, "sw", {**team["env"], "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, "(it is sqlite:///mlflow.db)"),
        (here, "a b", server, "sweep name 'a b': use letters, digits"),
        (unpushed, "sw", server, "is not on the git remote origin"),
        (here, "taken", server, "the git remote origin already holds experiments named taken-1: give the sweep another name"),
    ]:
        result = run(["python", "-m", "vaelab.sweep", name, "-S", "latent_dim=2,3"], cwd, env=env, check=False)
        assert result.returncode == 1 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
