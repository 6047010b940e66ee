"""Sweeps across machines: one Ray task per experiment, each in a clone of its own on a worker.

`dvc queue` runs experiments on one machine. This sends the same `-S` overrides to a Ray cluster,
expanded into a grid by DVC's own code (`-S latent_dim=10,20,40 -S seed=0,1,2` is nine experiments,
named NAME-1 ... NAME-9 as `dvc exp run --queue -n NAME` names them). Each task runs
team/experiment.sh, which a Slurm array job runs just the same (team/sweep.sbatch, fed by --list).

    python -m vaelab.sweep NAME -S PARAM=VALUES ... [--address HOST:PORT] [--cpus N]
    python -m vaelab.sweep NAME -S PARAM=VALUES ... --list

Workers clone the commit checked out here from the git remote `origin` and push their experiment
back there; then `dvc exp pull origin` and `dvc exp show` here, and the MLflow UI, show them all.
"""

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from vaelab.errors import VaelabError, run_stage

EXPERIMENT_SCRIPT = Path(__file__).resolve().parents[1] / "team" / "experiment.sh"
LOGS = Path("sweep_logs")


def experiments(name: str, overrides: list[str]) -> list[tuple[str, list[str]]]:
    """Each point of the grid: its experiment name and its `dvc exp run` arguments."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    points = get_hydra_sweeps(to_path_overrides(overrides)) if overrides else [{}]
    return [
        (f"{name}-{number}", [arg for file, values in point.items() for value in values
                              for arg in ("-S", value if file == "params.yaml" else f"{file}:{value}")])
        for number, point in enumerate(points, 1)
    ]


def run_experiment(script: str, name: str, url: str, commit: str, args: list[str], env: dict) -> tuple[int, str, float]:
    """A Ray task: team/experiment.sh, given as text (a worker has no checkout until it clones)."""
    started = time.monotonic()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the worker's dvc and git
    process = subprocess.Popen(["bash", "-c", script, "team/experiment.sh", name, url, commit, *args],
                               env={**os.environ, "PATH": path, **env}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate()
    except KeyboardInterrupt:  # ray.cancel: stop the experiment and all it started (stages end their runs KILLED)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise
    return process.returncode, output, time.monotonic() - started


def sweep_on_ray(jobs: list[tuple[str, list[str]]], url: str, commit: str, address: str | None, cpus: float,
                 env: dict) -> list[str]:
    """Run every experiment as a Ray task; report each as it ends; return the names of those that failed."""
    import ray

    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as err:
        raise VaelabError(
            f"no Ray cluster answers at {address or os.environ.get('RAY_ADDRESS', 'this machine')} ({err}); with token "
            "authentication (RAY_AUTH_MODE=token), RAY_AUTH_TOKEN must hold the cluster's token"
        ) from None
    task = ray.remote(num_cpus=cpus, max_retries=0)(run_experiment)
    script = EXPERIMENT_SCRIPT.read_text()
    pending = {task.remote(script, name, url, commit, args, env): (name, args) for name, args in jobs}
    print(f"{len(jobs)} experiments from commit {commit[:7]} sent to the Ray cluster at {ray.get_runtime_context().gcs_address}",
          flush=True)
    LOGS.mkdir(exist_ok=True)
    failed = []
    try:
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            name, args = pending.pop(ready)
            try:
                code, output, seconds = ray.get(ready)
            except ray.exceptions.RayError as err:  # the task's worker or node died
                code, output, seconds = -1, str(err), float("nan")
            (LOGS / f"{name}.log").write_text(output)
            settings = " ".join(args[1::2]) or "no overrides"
            if code == 0:
                print(f"{name} ({settings}): done in {seconds:.0f} s", flush=True)
            else:
                failed.append(name)
                last_line = next((line for line in reversed(output.splitlines()) if line.strip()), "no output")
                print(f"{name} ({settings}): failed: {last_line} (log: {LOGS / name}.log)", flush=True)
    finally:  # on Ctrl-C, stop the experiments still out there, and give them time to stop
        for ref in pending:
            ray.cancel(ref)
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=60)
        ray.shutdown()
    return failed


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise VaelabError(
            f"set MLFLOW_TRACKING_URI to the team's MLflow server, http(s)://HOST:PORT (it is {uri or 'unset'}): "
            "experiments log there; a store in a file would keep runs or artifacts inside a worker's temporary clone"
        )
    return uri


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def pushed_commit(remote: str) -> tuple[str, str]:
    """The URL workers clone, and the commit checked out here, which must already be there."""
    try:
        url, commit = git("remote", "get-url", remote), git("rev-parse", "HEAD")
        git("fetch", "-q", remote)
    except subprocess.CalledProcessError as err:
        raise VaelabError(f"git {' '.join(err.cmd[1:])} failed: {err.stderr.strip()}") from None
    if not git("branch", "-r", "--contains", commit, "--list", f"{remote}/*"):
        raise VaelabError(f"commit {commit[:7]} is not on the git remote {remote} ({url}), which workers clone: git push it first")
    if git("status", "--porcelain", "--untracked-files=no"):
        print(f"note: uncommitted changes here are not part of the sweep: workers run commit {commit[:7]}", file=sys.stderr)
    return url, commit


def refuse_names_taken(remote: str, names: list[str]) -> None:
    """Experiments are pushed under their names: a name already on the remote would be refused after training."""
    refs = git("ls-remote", remote, "refs/exps/*").split()
    if taken := sorted({ref.rsplit("/", 1)[1] for ref in refs if ref.startswith("refs/exps/")} & set(names)):
        raise VaelabError(f"the git remote {remote} already holds experiments named {', '.join(taken)}: give the sweep another name")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vaelab.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the sweep's name; its experiments are NAME-1, NAME-2, ...")
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="PARAM=VALUES",
                        help="as for `dvc exp run -S`; comma-separated values and range() make a grid")
    parser.add_argument("--address", help="the Ray cluster (default: RAY_ADDRESS, or a cluster started here)")
    parser.add_argument("--cpus", type=float, default=2, help="CPUs Ray reserves per experiment (default 2)")
    parser.add_argument("--remote", default="origin", help="the git remote workers clone and push to (default origin)")
    parser.add_argument("--list", action="store_true", help="print one line per experiment, team/experiment.sh's "
                        "arguments (for team/sweep.sbatch), and run nothing")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        raise VaelabError(f"sweep name {args.name!r}: use letters, digits, '.', '_' and '-', as git ref names allow")
    env = {"MLFLOW_TRACKING_URI": tracking_uri()}
    jobs = experiments(args.name, args.overrides)
    url, commit = pushed_commit(args.remote)
    refuse_names_taken(args.remote, [name for name, _ in jobs])
    if args.list:
        print("\n".join(shlex.join([name, url, commit, *job_args]) for name, job_args in jobs))
        return
    failed = sweep_on_ray(jobs, url, commit, args.address, args.cpus, env)
    print(f"{len(jobs) - len(failed)} of {len(jobs)} experiments done" + (f", failed: {' '.join(failed)}" if failed else "")
          + f"; fetch them with `dvc exp pull {args.remote}`, then `dvc exp show`")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    run_stage(main)
