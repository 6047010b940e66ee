"""What thread-count-independent figures cost: a training epoch with MKL's strict reproducibility and without.

Run from the repository root, on a quiet machine:

    MNIST_MIRROR=../shared/data/mnist python -m bench.reproducible [--repeats 3] [--variants vae cvae]

vaelab sets MKL_CBWR=AUTO,STRICT (vaelab/__init__.py): MKL's matrix products then give the same
bits whatever the thread count. Each measurement is one epoch of Trainer.train_epoch() (the train
stage's loop, test pass included) in a fresh process, since MKL reads the setting once per
process, with the thread count fixed by OMP_NUM_THREADS: `strict` (vaelab's setting) and `off`
(MKL_CBWR=OFF, MKL's fastest kernels for the thread count), interleaved in an order that rotates
between repeats. A strict run with one thread checks that the figures do not move with the count.

Ends with exactly:
    strict_cost=<median strict epoch / median off epoch, for the first variant>
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"strict": "AUTO,STRICT", "off": "OFF"}


def one_epoch(name: str, root: Path) -> None:
    """In a fresh process: one epoch of variant `name` from the seed; prints seconds, loss and a weight digest."""
    import torch

    from vaelab.data import load_split
    from vaelab.models import VAE
    from vaelab.params import load_params
    from vaelab.train import Trainer

    torch.set_flush_denormal(True)  # as every stage (vaelab/device.py)
    params = load_params()
    cpu = torch.device("cpu")
    train, test = load_split(True, cpu, root), load_split(False, cpu, root)
    torch.manual_seed(params.seed)
    model = VAE.for_variant(params.variant(name))
    started = time.perf_counter()
    record = Trainer(model, params.variant(name), params, train, test).train_epoch()
    seconds = time.perf_counter() - started
    digest = sum(float(p.detach().double().sum()) for p in model.parameters()).hex()
    print(json.dumps({"seconds": seconds, "train_loss": record["train_loss"], "test_elbo": record["test_elbo"], "weights": digest}))


def measure(name: str, root: Path, setting: str, threads: int) -> dict:
    env = {**os.environ, "MKL_CBWR": SETTINGS[setting], "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "bench.reproducible", "--one", name, "--data-root", str(root)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["vae", "cvae"])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one_epoch(args.one, args.data_root)

    from vaelab.data import fetch_mnist, mirror_from_env
    from vaelab.params import load_params

    print(f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fetch_mnist(root, mirror_from_env(), load_params().data.md5)
        runs = {name: {setting: [] for setting in SETTINGS} for name in args.variants}
        for repeat in range(args.repeats):
            order = list(SETTINGS)[repeat % 2 :] + list(SETTINGS)[: repeat % 2]
            for name in args.variants:
                for setting in order:
                    runs[name][setting].append(measure(name, root, setting, args.threads))
        one_thread = {name: measure(name, root, "strict", 1) for name in args.variants}

    print(f"\none training epoch in a fresh process, median of {args.repeats} (seconds):")
    print(f"  {'variant':<11s} {'strict':>8s} {'off':>8s} {'strict/off':>11s}  strict: {args.threads} threads vs 1 thread")
    cost = {}
    for name in args.variants:
        strict = statistics.median(r["seconds"] for r in runs[name]["strict"])
        off = statistics.median(r["seconds"] for r in runs[name]["off"])
        cost[name] = strict / off
        same = all({k: r[k] for k in ("train_loss", "test_elbo", "weights")} == {k: one_thread[name][k] for k in ("train_loss", "test_elbo", "weights")}
                   for r in runs[name]["strict"])
        print(f"  {name:<11s} {strict:8.2f} {off:8.2f} {cost[name]:11.2f}  {'bit-identical' if same else 'DIFFERENT'}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"strict_cost={cost[args.variants[0]]:.2f}")


if __name__ == "__main__":
    main()
