"""What working as a team costs, measured side by side on this machine.

Run from the repository root, as root (the sweep runs in a network namespace), with PostgreSQL
installed (apt-get install postgresql):

    MNIST_MIRROR=../shared/data/mnist python -m bench.team [--epochs 1]

In a throwaway copy of the project on the real MNIST (MNIST_MIRROR, or the official mirrors like
the download stage), with every variant's and the judge's epochs set to --epochs:
- the team's MLflow server (team/mlflow_server.sh on PostgreSQL and SeaweedFS, all on loopback):
  seconds from its start until /health answers;
- the whole pipeline, `dvc repro --force`, logging to the embedded SQLite store and then to the
  server: same params, one run each, in that order;
- `dvc push` of everything to a local-folder DVC remote, then `git clone` + `dvc pull` of a fresh clone;
- two experiments (two seeds) swept on a Ray cluster of two one-CPU worker nodes
  (tests/ray_loopback.sh: inside a network namespace with only loopback, its own MLflow server
  on SQLite), against two more run one after the other by team/experiment.sh in the same namespace.
Ends with key=value lines.
"""

import argparse
import os
import secrets
import shlex
import shutil
import time
from pathlib import Path

import yaml

from tests.conftest import PROJECT, make_repo, run
from tests.servers import free_port, team_server


def timed(command: list[str], cwd: Path, env: dict | None = None) -> float:
    started = time.monotonic()
    run(command, cwd, env=env)
    return time.monotonic() - started


def bench_params(epochs: int) -> dict:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for variant in params["variants"].values():
        variant["epochs"] = epochs
        variant["kl_warmup_epochs"] = min(variant["kl_warmup_epochs"], epochs)
    params["judge"]["epochs"] = epochs
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"vaelab-bench-team-{os.getpid()}"
    mirror = {"MNIST_MIRROR": os.environ["MNIST_MIRROR"]} if "MNIST_MIRROR" in os.environ else {}
    figures = {}

    with team_server() as server:
        figures["server_start_seconds"] = server.start_seconds

        repo = make_repo(root / "repo", bench_params(args.epochs))
        run(["dvc", "repro", "download"], repo, env=mirror)
        figures["pipeline_embedded_seconds"] = timed(["dvc", "repro", "--force"], repo, env=mirror)
        figures["pipeline_server_seconds"] = timed(["dvc", "repro", "--force"], repo,
                                                   env={**mirror, "MLFLOW_TRACKING_URI": server.uri})
        figures["server_over_embedded"] = figures["pipeline_server_seconds"] / figures["pipeline_embedded_seconds"]

        run(["git", "init", "-q", "--bare", "-b", "main", str(root / "origin.git")], root)
        run(["dvc", "remote", "add", "-d", "team", str(root / "dvc-remote")], repo)
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-q", "-m", "results"], repo)
        run(["git", "remote", "add", "origin", str(root / "origin.git")], repo)
        run(["git", "push", "-q", "origin", "main"], repo)
        figures["dvc_push_seconds"] = timed(["dvc", "push"], repo)
        cloned = time.monotonic()
        run(["git", "clone", "-q", str(root / "origin.git"), str(root / "clone")], root)
        run(["dvc", "pull"], root / "clone")
        figures["clone_and_pull_seconds"] = time.monotonic() - cloned

    # inside the namespace: the sweep on Ray, then the same work one experiment after the other
    commit = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    port = free_port(also_free_at=1)
    inner = (
        f"s=$SECONDS; python -m vaelab.sweep ray -S seed=1,2 --cpus 1 --address 127.0.0.1:{port} >&2 || exit 1; "
        "echo sweep_on_ray_seconds=$((SECONDS - s)); s=$SECONDS; "
        f"for seed in 3 4; do bash team/experiment.sh one-after-other-$seed {shlex.quote(str(root / 'origin.git'))} {commit} "
        "-S seed=$seed >&2 || exit 1; done; echo one_after_the_other_seconds=$((SECONDS - s))"
    )
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    result = run(["unshare", "-n", "bash", str(PROJECT / "tests/ray_loopback.sh"), str(port), str(root), "bash", "-c", inner],
                 repo, env=env)
    figures.update((key, float(value)) for key, value in (line.split("=") for line in result.stdout.split() if "=" in line))
    figures["ray_over_one_after_the_other"] = figures["sweep_on_ray_seconds"] / figures["one_after_the_other_seconds"]

    shutil.rmtree(root)
    for key, value in figures.items():
        print(f"{key}={value:.2f}")


if __name__ == "__main__":
    main()
