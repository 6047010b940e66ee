"""How fast vaelab trains and evaluates, against the notebooks' loop and against the hardware's floor.

Run from the repository root (so that `vaelab` and params.yaml are found), on a quiet machine:

    python -m bench.speed [--repeats 3] [--variants vae vae_deep cvae]

Training, for each variant, one epoch (60,000 images) of:
  a      the reference: the published notebooks' loop (bench/reference.py);
  b      vaelab: Trainer.train_epoch() exactly as the train stage runs it, test ELBO included, with
         the stage's per-epoch logging (curves CSV, MLflow into a throwaway SQLite store);
  c      the floor: torch.mm alone on the GEMM shapes of the epoch's training steps;
  adam   the fused Adam step alone, once per training step: memory-bound, it is the part of b that
         no change to the loop can remove.
With the test pass that b includes (the per-epoch test ELBO, timed on its own), c + adam + test is
the least any loop doing the same math can take: it bounds speedup b/a and floor fraction c/b from
above, and the table prints those bounds beside the measured ratios.
Candidates run interleaved, in an order that rotates between repeats; each repeat starts a and b
from the same weights. It prints medians: images/s, speedup b/a, floor fraction c/b, and checks
that a and b reach the same mean train loss. Then it profiles one vaelab epoch of vae.

IWAE: the importance-weighted bound (k=1000) of a vae trained for one epoch, by vaelab's own
iwae_bound over the 10,000 test images, timed block by block interleaved with its floor (the
decoder's matrix multiplies alone on the same samples).

Ends with exactly:
    speedup_vs_reference=<b/a for vae> floor_fraction=<c/b for vae>
    iwae_floor_fraction=<floor seconds / iwae_bound seconds over the 10,000 test images>
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench import reference
from bench.floor import gemm_floor, linear_shapes
from vaelab.data import N_PIXELS, Split, fetch_mnist, load_split, mirror_from_env
from vaelab.device import pick_device
from vaelab.elbo import IWAE_CHUNK_ELEMENTS, iwae_bound
from vaelab.metrics import test_elbo
from vaelab.models import VAE
from vaelab.params import Params, load_params
from vaelab.paths import write_csv
from vaelab.train import Trainer

LOSS_TOLERANCE = 0.03  # relative: a and b do the same math, so only sampling noise separates them


@dataclass
class Bench:
    params: Params
    train: Split
    test: Split
    loader: torch.utils.data.DataLoader
    tmp: Path


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


# ---------------------------------------------------------------- training: a, b, c


def fresh_model(bench: Bench, name: str, repeat: int) -> VAE:
    """The same initial weights for every candidate of one repeat."""
    torch.manual_seed(bench.params.seed + repeat)
    return VAE.for_variant(bench.params.variant(name))


def run_reference(bench: Bench, model: VAE) -> tuple[float, float]:
    """a: one notebook epoch, from the vaelab model's initial weights; (seconds, mean loss)."""
    net = reference.ReferenceVAE.like(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    return timed(reference.train, net, optimizer, bench.loader)


def run_vaelab(bench: Bench, name: str, model: VAE, run_name: str) -> tuple[float, float, float]:
    """b: one epoch of the train stage, logging included; (seconds, mean loss, test pass seconds)."""
    trainer = Trainer(model, bench.params.variant(name), bench.params, bench.train, bench.test)
    with mlflow.start_run(run_name=run_name):
        start = time.perf_counter()
        record = trainer.train_epoch()
        write_csv(bench.tmp / "curves.csv", [record])
        mlflow.log_metrics({key: value for key, value in record.items() if key != "epoch"}, step=record["epoch"])
        seconds = time.perf_counter() - start
    test_seconds, _ = timed(test_elbo, model, bench.test, bench.params.evaluate.batch_size, bench.params.seed)
    return seconds, record["train_loss"], test_seconds


def run_floor(shapes: list[tuple[int, int]], n_images: int, batch_size: int) -> float:
    """c: the GEMMs of one epoch's steps alone (bench/floor.py)."""
    return gemm_floor(shapes, n_images, batch_size, torch.device("cpu"))


def run_adam(model: VAE, steps: int, lr: float) -> float:
    """adam: the optimizer's fused step alone, `steps` times, on the model's parameters and gradients."""
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return time.perf_counter() - start


# ---------------------------------------------------------------- profile


def profile_epoch(bench: Bench, name: str, top: int = 12) -> None:
    """Self CPU time per op over one vaelab epoch, test pass included (profiler overhead included)."""
    model = fresh_model(bench, name, 0)
    trainer = Trainer(model, bench.params.variant(name), bench.params, bench.train, bench.test)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall, _ = timed(trainer.train_epoch)
    events = sorted(prof.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    in_ops = sum(event.self_cpu_time_total for event in events) / 1e6
    print(f"\nprofile of one {name} epoch: {wall:.2f} s under the profiler, {in_ops:.2f} s inside ops (self CPU time):")
    for event in events[:top]:
        seconds = event.self_cpu_time_total / 1e6
        print(f"  {event.key:<40s} {seconds:6.3f} s  {seconds / wall:6.1%}  {event.count:6d} calls")
    print(f"  {'(between ops: Python, autograd engine)':<40s} {wall - in_ops:6.3f} s  {(wall - in_ops) / wall:6.1%}")


# ---------------------------------------------------------------- IWAE


@torch.inference_mode()
def iwae_floor(model: VAE, n_images: int, k: int) -> float:
    """The decoder's matrix multiplies alone for k samples of n_images, in iwae_bound's chunks."""
    chunk_rows = max(1, IWAE_CHUNK_ELEMENTS["cpu"] // (n_images * N_PIXELS)) * n_images
    layers = [(layer.weight, torch.empty(chunk_rows, layer.out_features)) for layer in model.decoder if isinstance(layer, nn.Linear)]
    rows = torch.rand(chunk_rows, layers[0][0].shape[1])
    start = time.perf_counter()
    for _ in range(-(-n_images * k // chunk_rows)):
        inputs = rows
        for weight, out in layers:
            inputs = torch.mm(inputs, weight.t(), out=out)
    return time.perf_counter() - start


@torch.inference_mode()
def full_iwae(model: VAE, test: Split, k: int, block: int) -> float:
    """vaelab's bound over every test image, timed block by block interleaved with its floor; returns floor/t."""
    generator = torch.Generator().manual_seed(0)
    total = bound_seconds = floor_seconds = 0.0
    for start in range(0, len(test), block):
        x = test.images[start : start + block]
        elapsed, bounds = timed(iwae_bound, model, x, None, k, generator)
        bound_seconds += elapsed
        total += float(bounds.sum())
        floor_seconds += iwae_floor(model, len(x), k)
    print(f"\nIWAE k={k} over all {len(test)} test images, {block} at a time: {total / len(test):.3f} nats per image")
    print(f"  vaelab's iwae_bound {bound_seconds:.1f} s ({len(test) * k / bound_seconds / 1e6:.2f} M samples/s), "
          f"the decoder's GEMMs alone {floor_seconds:.1f} s")
    return floor_seconds / bound_seconds


# ---------------------------------------------------------------- main


def setup(tmp: Path) -> Bench:
    fetch_mnist(tmp, mirror_from_env(), {})
    cpu = torch.device("cpu")
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    with mlflow.start_run(run_name="warm-up"):  # creates the store: its schema migration is not an epoch's cost
        mlflow.log_metrics({"warm_up": 0.0}, step=0)
    return Bench(load_params(), load_split(True, cpu, tmp), load_split(False, cpu, tmp), reference.train_loader(str(tmp)), tmp)


def train_round(bench: Bench, names: list[str], repeat: int, results: dict) -> None:
    """One repeat: every candidate of every variant once, starting from the same weights per repeat."""
    batch = bench.params.batch_size
    steps = -(-len(bench.train) // batch)
    for name in names:
        shapes = linear_shapes(fresh_model(bench, name, repeat))
        candidates = [
            ("a", lambda: run_reference(bench, fresh_model(bench, name, repeat))),
            ("b", lambda: run_vaelab(bench, name, fresh_model(bench, name, repeat), f"{name} {repeat}")),
            ("c", lambda: (run_floor(shapes, len(bench.train), batch),)),
            ("adam", lambda: (run_adam(fresh_model(bench, name, repeat), steps, bench.params.lr),)),
        ]
        shift = repeat % len(candidates)  # rotate the order so no candidate always runs first
        for label, run in candidates[shift:] + candidates[:shift]:
            results[name][label].append(run())


def report_training(names: list[str], results: dict, n_images: int) -> tuple[dict, list[str]]:
    """Print the table and the loss check; return the medians in seconds and any failures."""
    median = {name: {label: statistics.median(r[0] for r in runs) for label, runs in results[name].items()} for name in names}
    for name in names:
        median[name]["test"] = statistics.median(r[2] for r in results[name]["b"])
        median[name]["least"] = median[name]["c"] + median[name]["adam"] + median[name]["test"]
    print(f"\ntraining, one epoch of {n_images} images (median seconds and images/s):")
    print(f"  {'variant':<9s} {'a reference':>13s} {'b vaelab':>13s} {'c GEMM floor':>13s} {'speedup b/a':>12s} "
          f"{'floor c/b':>10s} {'test pass':>10s} {'Adam alone':>11s} {'(c+Adam)/b':>11s}")
    for name in names:
        m = median[name]
        cells = " ".join(f"{m[x]:5.2f}s {n_images / m[x]:6.0f}" for x in "abc")
        print(f"  {name:<9s} {cells} {m['a'] / m['b']:12.2f} {m['c'] / m['b']:10.2f} {m['test']:9.2f}s "
              f"{m['adam']:10.2f}s {(m['c'] + m['adam']) / m['b']:11.2f}")
    print("\nthe most any loop doing the same math could reach, if all but the GEMMs (c), Adam and the test pass cost nothing:")
    print(f"  {'variant':<9s} {'c+Adam+test':>12s} {'speedup a/(c+Adam+test)':>24s} {'floor c/(c+Adam+test)':>22s}")
    for name in names:
        m = median[name]
        print(f"  {name:<9s} {m['least']:11.2f}s {m['a'] / m['least']:24.2f} {m['c'] / m['least']:22.2f}")
    failures = []
    print(f"\nmean train loss after one epoch from the same weights (median of repeats; tolerance {LOSS_TOLERANCE:.0%}):")
    for name in names:
        losses = {label: statistics.median(r[1] for r in runs) for label, runs in results[name].items() if label in "ab"}
        gap = losses["b"] / losses["a"] - 1
        ok = abs(gap) <= LOSS_TOLERANCE
        if not ok:
            failures.append(f"{name}: loss {losses['b']:.3f} vs reference {losses['a']:.3f}")
        print(f"  {name:<9s} a {losses['a']:9.3f}  b {losses['b']:9.3f}  {gap:+6.2%}{'' if ok else '  MISMATCH'}")
    return median, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["vae", "vae_deep", "cvae"])
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--iwae-block", type=int, help="test images per iwae_bound call (default: evaluate.batch_size, as the assess stage)")
    args = parser.parse_args()
    if "vae" not in args.variants:
        parser.error("the final figures are for vae: include it in --variants")

    pick_device()  # first, as the train stage does: the CPU's threads and how they treat tiny numbers
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}")
    if load > 1:
        print("warning: other processes are busy on this machine; every figure below suffers")
    with tempfile.TemporaryDirectory() as tmp:
        bench = setup(Path(tmp))
        results = defaultdict(lambda: defaultdict(list))
        for repeat in range(args.repeats):
            train_round(bench, args.variants, repeat, results)
        median, failures = report_training(args.variants, results, len(bench.train))
        profile_epoch(bench, "vae")

        torch.manual_seed(bench.params.seed)
        model = VAE.for_variant(bench.params.variant("vae"))
        elbo = Trainer(model, bench.params.variant("vae"), bench.params, bench.train, bench.test).train_epoch()["test_elbo"]
        print(f"\nIWAE model: vae after one epoch, test ELBO {elbo:.3f} nats per image")
        block = args.iwae_block or bench.params.evaluate.batch_size
        iwae_fraction = full_iwae(model.eval(), bench.test, args.iwae_k, block)

    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (other processes on these 2 cores slow every figure)")
    vae = median["vae"]
    print(f"speedup_vs_reference={vae['a'] / vae['b']:.2f} floor_fraction={vae['c'] / vae['b']:.2f}")
    print(f"iwae_floor_fraction={iwae_fraction:.2f}")
    if failures:
        sys.exit("LOSS CHECK FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()
