"""Two experiments at once through DVC's queue, against the same two run one after the other.

Run from the repository root, on a quiet machine:

    python -m bench.queue [--repeats 1] [--epochs 2]      # each repeat runs four whole experiments

In a throwaway copy of the project's working tree, on the real MNIST (MNIST_MIRROR or the
official mirrors, like the download stage), with every variant's and the judge's epochs set to --epochs:
one baseline `dvc repro`, then per repeat two pairs of queued experiments, each with a seed of its
own (a seed sweep: DVC's run cache cannot skip any stage, and the judge is trained again): one pair run by
`dvc queue start -j 1` (one after the other) and one by `dvc queue start -j 2`, the order
alternating between repeats. Every experiment must succeed. Ends with exactly:

    queue_parallel_ratio=<median -j 2 seconds / median -j 1 seconds>
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def sh(*command: str, cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def make_project(repo: Path, epochs: int) -> None:
    """A git + DVC copy of the working tree's tracked and new files, every variant trained for `epochs`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True, check=True).stdout
    for name in files.split():
        if Path(name).exists() and not name.startswith((".ci/", ".dvc/", "tests/", "bench/")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for variant in params["variants"].values():
        variant["epochs"] = epochs
    params["judge"]["epochs"] = epochs  # a new seed trains a new judge too
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("git", "config", "user.name", "vaelab bench", cwd=repo)
    sh("git", "config", "user.email", "bench@vaelab.invalid", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "config", "core.analytics", "false", cwd=repo)
    sh("dvc", "repro", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "baseline", cwd=repo)


def run_pair(repo: Path, seeds: tuple[int, int], jobs: int) -> float:
    """Queue two experiments, run them with `dvc queue start -j jobs`, wait; return the wall time."""
    names = [f"seed{seed}-j{jobs}" for seed in seeds]
    for seed, name in zip(seeds, names):
        sh("dvc", "exp", "run", "--queue", "-n", name, "-S", f"seed={seed}", cwd=repo)
    start = time.perf_counter()
    sh("dvc", "queue", "start", "-j", str(jobs), cwd=repo)
    while True:
        status = sh("dvc", "queue", "status", cwd=repo)
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(1)
    seconds = time.perf_counter() - start
    for name in names:
        line = next((line for line in status.splitlines() if name in line), "")
        if "Success" not in line:
            sys.exit(f"experiment {name} did not succeed:\n{status}\n{sh('dvc', 'queue', 'logs', name, cwd=repo)}")
    sh("dvc", "queue", "stop", cwd=repo)  # the workers would otherwise linger between pairs
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every variant in each experiment")
    args = parser.parse_args()

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; every variant and the judge trained for {args.epochs} epochs")
    seconds = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        make_project(repo, args.epochs)
        seed = 1000
        for repeat in range(args.repeats):
            for jobs in (1, 2) if repeat % 2 == 0 else (2, 1):
                elapsed = run_pair(repo, (seed, seed + 1), jobs)
                seed += 2
                seconds[jobs].append(elapsed)
                print(f"  repeat {repeat + 1}: two experiments with -j {jobs}: {elapsed:6.1f} s")
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    print(f"median: -j 1 (one after the other) {one:.1f} s, -j 2 (both at once) {two:.1f} s")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"queue_parallel_ratio={two / one:.2f}")


if __name__ == "__main__":
    main()
